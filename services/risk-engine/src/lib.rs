//! risk-engine: decides whether a requested payment may go to a PSP, with reasons a person can
//! read. Consumes `payments.requested`, publishes `payments.risk-decided`.
//!
//! Rules are configuration (a file or the `risk.rule_sets` table) reloaded while running;
//! velocity windows live in Redis, keyed so that a redelivered record never counts twice;
//! blocklists live in Postgres behind a Redis cache. When a fact cannot be established (Redis
//! down), the record is retried: the engine never approves by default.

pub mod config;
pub mod domain;
mod inbound;
pub mod metrics;
mod outbound;
mod reload;

use std::sync::Arc;

use anyhow::Context;
use paystream_domain::topics;
use paystream_kit::{ConsumerService, ServiceBase};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use inbound::kafka::RiskHandler;

use crate::domain::ports::RulesSource;
use crate::domain::{RiskEngine, RulesHandle};
use crate::metrics::RiskMetrics;
use crate::reload::Reloader;

pub const SERVICE: &str = "risk-engine";
pub const DB_SCHEMA: &str = "risk";

/// The consuming service plus the rules reloader, stopped together.
pub struct Application {
    service: ConsumerService<RiskHandler>,
    reloader: Reloader,
    rules: RulesHandle,
}

impl Application {
    pub fn admin_port(&self) -> u16 {
        self.service.admin_port()
    }

    pub fn pool(&self) -> &PgPool {
        self.service.pool()
    }

    /// The rules in force right now (for tests and diagnostics).
    pub fn rules(&self) -> RulesHandle {
        self.rules.clone()
    }

    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let reload = tokio::spawn(self.reloader.run_until_stopped(shutdown.clone()));
        let served = self.service.run_until_stopped(shutdown).await;
        let reloaded = reload.await.context("rules reloader task")?;
        served.and(reloaded)
    }
}

pub async fn build(config: Config) -> anyhow::Result<Application> {
    let base = ServiceBase::connect(SERVICE, config.common.clone(), 10).await?;
    let metrics = RiskMetrics::new(&base.registry)?;
    let source: Arc<dyn RulesSource> = match &config.rules_file {
        Some(path) => Arc::new(outbound::rules_file::FileRules::new(path.clone())),
        None => Arc::new(outbound::postgres::TableRules::new(base.pool.clone())),
    };
    // At start a broken source is an error: better not to start than to run on rules nobody
    // wrote. Later failures keep the last good rules.
    let initial = source
        .load()
        .await
        .with_context(|| format!("loading risk rules from {}", source.describe()))?
        .unwrap_or_else(|| config.rules.clone());
    tracing::info!(source = %source.describe(), version = %initial.version, "risk rules loaded");
    let rules = RulesHandle::new(initial);

    let redis = outbound::redis::connect(&config.common.redis_url)?;
    let velocity = Arc::new(outbound::redis::RedisVelocity::new(
        redis.clone(),
        &config.redis_prefix,
        metrics.clone(),
    ));
    let blocklist = Arc::new(outbound::redis::CachedBlocklist::new(
        redis,
        &config.redis_prefix,
        config.blocklist_cache_ttl,
        Arc::new(outbound::postgres::PostgresBlocklist::new(
            base.pool.clone(),
        )),
        metrics.clone(),
    ));
    let engine = RiskEngine::new(rules.clone(), velocity, blocklist);
    let reloader = Reloader {
        source,
        rules: rules.clone(),
        fallback: config.rules.clone(),
        interval: config.rules_reload,
        metrics: metrics.clone(),
    };
    let runtime = base.runtime_config(DB_SCHEMA, &[topics::PAYMENTS_REQUESTED]);
    let service = base
        .consumer_service(runtime, RiskHandler::new(engine, metrics))
        .await?;
    Ok(Application {
        service,
        reloader,
        rules,
    })
}
