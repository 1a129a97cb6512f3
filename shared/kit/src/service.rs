//! What every consuming service is made of: a pool, migrations, a metrics registry, the
//! idempotent producer, the outbox relay, the consumer runtime and the admin listener, all
//! stopped by one token.

use anyhow::Context;
use paystream_messaging::kafka::producer_config;
use paystream_messaging::{ConsumerRuntime, Handler, MessagingMetrics, OutboxRelay, RuntimeConfig};
use prometheus::Registry;
use rdkafka::producer::FutureProducer;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::{AdminServer, CommonConfig, db};

/// Connections and registries shared by the parts of one service instance.
pub struct ServiceBase {
    pub name: String,
    pub common: CommonConfig,
    pub pool: PgPool,
    pub registry: Registry,
    pub metrics: MessagingMetrics,
}

impl ServiceBase {
    pub async fn connect(
        name: &str,
        common: CommonConfig,
        max_db_connections: u32,
    ) -> anyhow::Result<Self> {
        let pool = db::connect(&common.database_url, max_db_connections).await?;
        db::migrate(&pool).await?;
        let registry = Registry::new();
        let metrics = MessagingMetrics::new(name, &registry)?;
        Ok(Self {
            name: name.to_owned(),
            common,
            pool,
            registry,
            metrics,
        })
    }

    pub fn producer(&self) -> anyhow::Result<FutureProducer> {
        producer_config(&self.common.kafka_bootstrap)
            .create()
            .context("creating the Kafka producer")
    }

    pub fn relay(&self, db_schema: &str) -> anyhow::Result<OutboxRelay> {
        Ok(OutboxRelay::new(
            self.pool.clone(),
            db_schema,
            self.producer()?,
            self.metrics.clone(),
        ))
    }

    pub fn runtime_config(&self, db_schema: &str, topics: &[&str]) -> RuntimeConfig {
        let mut cfg =
            RuntimeConfig::new(&self.name, &self.common.kafka_bootstrap, db_schema, topics);
        if let Some(group) = &self.common.group_id {
            cfg.group_id = group.clone();
        }
        cfg
    }

    /// Assembles the consuming service around `handler`.
    pub async fn consumer_service<H: Handler>(
        self,
        runtime: RuntimeConfig,
        handler: H,
    ) -> anyhow::Result<ConsumerService<H>> {
        let relay = self.relay(&runtime.db_schema)?;
        let admin = AdminServer::bind(
            &self.common.admin_addr,
            self.registry.clone(),
            Some(self.pool.clone()),
        )
        .await?;
        let runtime =
            ConsumerRuntime::new(runtime, self.pool.clone(), handler, self.metrics.clone());
        Ok(ConsumerService {
            admin,
            runtime,
            relay,
            pool: self.pool,
        })
    }
}

pub struct ConsumerService<H: Handler> {
    admin: AdminServer,
    runtime: ConsumerRuntime<H>,
    relay: OutboxRelay,
    pool: PgPool,
}

impl<H: Handler> ConsumerService<H> {
    pub fn admin_port(&self) -> u16 {
        self.admin.port()
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Runs until `shutdown`: the consumers finish and commit their batch, then the relay
    /// publishes what the last batches wrote, then the admin listener closes.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let relay_stop = CancellationToken::new();
        let admin_stop = CancellationToken::new();
        let relay = tokio::spawn(self.relay.run_until_stopped(relay_stop.clone()));
        let admin = tokio::spawn(self.admin.run_until_stopped(admin_stop.clone()));
        let consumed = self.runtime.run_until_stopped(shutdown).await;
        relay_stop.cancel();
        let relayed = relay.await.context("relay task")?;
        admin_stop.cancel();
        let served = admin.await.context("admin task")?;
        consumed.and(relayed).and(served)
    }
}
