//! Fresh topics, groups and schemas per invocation, and their removal afterwards.

use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use paystream_messaging::admin::ensure_topics;
use paystream_messaging::kafka::base_config;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use sqlx::AssertSqlSafe;

use crate::Ctx;

/// A short lower-case hex suffix: valid in topic, group and (unquoted) schema names.
pub fn unique_suffix() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    id[..10].to_owned()
}

/// Everything the benchmark created, for cleanup even when a run failed half-way.
#[derive(Default)]
pub struct Resources {
    inner: Mutex<Created>,
}

#[derive(Default, Clone)]
struct Created {
    topics: Vec<String>,
    groups: Vec<String>,
    schemas: Vec<String>,
}

impl Resources {
    fn with<R>(&self, f: impl FnOnce(&mut Created) -> R) -> R {
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut guard)
    }

    pub fn add_group(&self, group: &str) {
        self.with(|c| c.groups.push(group.to_owned()));
    }

    fn snapshot(&self) -> Created {
        self.with(|c| c.clone())
    }

    pub fn describe(&self) -> String {
        let c = self.snapshot();
        format!(
            "topics {:?}, groups {:?}, schemas {:?}",
            c.topics, c.groups, c.schemas
        )
    }
}

pub async fn create_topics(ctx: &Ctx, topics: &[String]) -> anyhow::Result<()> {
    ctx.resources
        .with(|c| c.topics.extend(topics.iter().cloned()));
    let created = ensure_topics(&ctx.bootstrap, topics, ctx.args.partitions, 1)
        .await
        .with_context(|| format!("creating topics {topics:?}"))?;
    anyhow::ensure!(
        created.len() == topics.len(),
        "topics {topics:?} already existed; the benchmark needs fresh ones"
    );
    Ok(())
}

/// `<schema>.inbox` and `<schema>.outbox` through the migration's function, plus the table the
/// benchmark handler writes its effect to.
pub async fn create_schema(ctx: &Ctx, schema: &str) -> anyhow::Result<()> {
    ctx.resources.with(|c| c.schemas.push(schema.to_owned()));
    sqlx::query("SELECT public.paystream_messaging_tables($1)")
        .bind(schema)
        .execute(&ctx.pool)
        .await
        .with_context(|| format!("creating the messaging tables of {schema}"))?;
    let sql = format!(
        "CREATE TABLE {schema}.effects (
           payment_id  text PRIMARY KEY,
           event_id    uuid NOT NULL,
           merchant_id text NOT NULL,
           amount      bigint NOT NULL,
           currency    text NOT NULL,
           created_at  timestamptz NOT NULL DEFAULT now()
         )"
    );
    sqlx::query(AssertSqlSafe(sql))
        .execute(&ctx.pool)
        .await
        .with_context(|| format!("creating {schema}.effects"))?;
    Ok(())
}

/// Best effort: a failure is reported and the rest is still removed.
pub async fn cleanup(ctx: &Ctx) {
    let created = ctx.resources.snapshot();
    for schema in &created.schemas {
        let sql = format!("DROP SCHEMA IF EXISTS {schema} CASCADE");
        if let Err(e) = sqlx::query(AssertSqlSafe(sql)).execute(&ctx.pool).await {
            eprintln!("cleanup: dropping schema {schema}: {e}");
        }
    }
    let admin: AdminClient<DefaultClientContext> = match base_config(&ctx.bootstrap).create() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("cleanup: Kafka admin client: {e}");
            return;
        }
    };
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    if !created.groups.is_empty() {
        let names: Vec<&str> = created.groups.iter().map(String::as_str).collect();
        match admin.delete_groups(&names, &opts).await {
            Ok(results) => {
                for r in results {
                    if let Err((name, code)) = r {
                        eprintln!("cleanup: deleting group {name}: {code}");
                    }
                }
            }
            Err(e) => eprintln!("cleanup: deleting groups: {e}"),
        }
    }
    if !created.topics.is_empty() {
        let names: Vec<&str> = created.topics.iter().map(String::as_str).collect();
        match admin.delete_topics(&names, &opts).await {
            Ok(results) => {
                for r in results {
                    if let Err((name, code)) = r {
                        eprintln!("cleanup: deleting topic {name}: {code}");
                    }
                }
            }
            Err(e) => eprintln!("cleanup: deleting topics: {e}"),
        }
    }
    eprintln!(
        "cleanup: removed {} topics, {} groups, {} schemas",
        created.topics.len(),
        created.groups.len(),
        created.schemas.len()
    );
}
