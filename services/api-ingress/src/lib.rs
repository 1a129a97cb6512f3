//! api-ingress: the merchant-facing HTTP API (DESIGN.md §4). A request becomes durable
//! (idempotency key, the payment or command, its outbox record) in one transaction before 202 is
//! answered; the outbox relay then publishes it on `payments.requested` or `payments.commands`.
//! The ingress consumes `payments.psp-results` to learn the outcome of the commands it sent, and
//! purges expired idempotency keys.

pub mod config;
pub mod domain;
mod inbound;
mod outbound;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use paystream_domain::topics;
use paystream_kit::ServiceBase;
use paystream_messaging::{ConsumerRuntime, OutboxRelay};
use prometheus::IntCounter;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use inbound::kafka::ResultsHandler;
pub use outbound::rate_limit::bucket_key as rate_limit_key;

use crate::domain::payment::Limits;
use crate::domain::ports::{PaymentStore, RateLimiter};

pub const SERVICE: &str = "api-ingress";
pub const DB_SCHEMA: &str = "ingress";

/// Expired keys deleted per statement; the purge repeats until a batch comes back short.
const PURGE_BATCH: i64 = 1000;

pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    relay: OutboxRelay,
    results: ConsumerRuntime<ResultsHandler>,
    purge: Purge,
}

struct Purge {
    store: Arc<dyn PaymentStore>,
    interval: Duration,
    purged: IntCounter,
}

pub async fn build(config: Config) -> anyhow::Result<Application> {
    let base = ServiceBase::connect(SERVICE, config.common.clone(), config.db_connections).await?;
    let cache = outbound::redis_cache::RedisPaymentCache::connect(
        &config.common.redis_url,
        &base.registry,
    )?;
    let limiter: Arc<dyn RateLimiter> = if config.rate.enabled() {
        Arc::new(outbound::rate_limit::RedisRateLimiter::connect(
            &config.common.redis_url,
            config.rate,
        )?)
    } else {
        Arc::new(outbound::rate_limit::Unlimited)
    };
    let relay = base.relay(DB_SCHEMA)?;
    let runtime = base.runtime_config(DB_SCHEMA, &[topics::PAYMENTS_PSP_RESULTS]);
    // `payctl topics create` makes the retry topics of the fleet's groups; an ingress running
    // under a group of its own (tests, a second deployment) makes its own.
    if let Err(e) = paystream_messaging::admin::ensure_topics(
        &config.common.kafka_bootstrap,
        &[runtime.retry_topic()],
        12,
        1,
    )
    .await
    {
        tracing::warn!(error = format!("{e:#}"), topic = %runtime.retry_topic(), "could not ensure the retry topic");
    }
    let results = ConsumerRuntime::new(
        runtime,
        base.pool.clone(),
        ResultsHandler,
        base.metrics.clone(),
    );
    let store: Arc<dyn PaymentStore> = Arc::new(outbound::postgres::PgPaymentStore::new(
        base.pool.clone(),
        config.idempotency_ttl,
        config.idempotency_wait,
    ));
    let purged = IntCounter::new(
        "api_ingress_idempotency_keys_purged_total",
        "Idempotency keys deleted after their lifetime (at least 24 h)",
    )?;
    base.registry.register(Box::new(purged.clone()))?;
    let state = inbound::http::AppState {
        store: store.clone(),
        cache: Arc::new(cache),
        limiter,
        jwt_secret: Arc::from(config.jwt_secret.as_str()),
        limits: Limits {
            max_amount: config.max_amount,
        },
        max_body_bytes: config.max_body_bytes,
        metrics: inbound::http::HttpMetrics::new(&base.registry)?,
    };
    let router = inbound::http::router(state, base.registry.clone(), base.pool.clone());
    let listener = TcpListener::bind(&config.api_addr)
        .await
        .with_context(|| format!("binding the API on {}", config.api_addr))?;
    Ok(Application {
        listener,
        router,
        relay,
        results,
        purge: Purge {
            store,
            interval: config.idempotency_purge_interval,
            purged,
        },
    })
}

impl Application {
    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// The HTTP routes, for in-process tests (`tower::ServiceExt::oneshot`) that need no
    /// listener, relay or consumer.
    pub fn router(&self) -> axum::Router {
        self.router.clone()
    }

    /// Serves until `shutdown`: requests in progress complete and the results consumer commits
    /// its batch, then the relay publishes what they wrote.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let relay_stop = CancellationToken::new();
        let relay = tokio::spawn(self.relay.run_until_stopped(relay_stop.clone()));
        let results = tokio::spawn(self.results.run_until_stopped(shutdown.clone()));
        let purge = tokio::spawn(self.purge.run_until_stopped(shutdown.clone()));
        let stop = shutdown.clone();
        let served = axum::serve(self.listener, self.router)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
            .context("serving the API");
        let consumed = results.await.context("results consumer task")?;
        purge.await.context("purge task")?;
        relay_stop.cancel();
        let relayed = relay.await.context("relay task")?;
        served.and(consumed).and(relayed)
    }
}

impl Purge {
    async fn run_until_stopped(self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.interval) => {}
            }
            loop {
                match self.store.purge_expired_keys(PURGE_BATCH).await {
                    Ok(n) => {
                        self.purged.inc_by(n);
                        if n > 0 {
                            tracing::info!(purged = n, "expired idempotency keys purged");
                        }
                        if n < PURGE_BATCH.unsigned_abs() {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "purging idempotency keys failed; retrying at the next interval");
                        break;
                    }
                }
            }
        }
    }
}
