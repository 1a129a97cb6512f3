//! api-ingress: the merchant-facing HTTP API (DESIGN.md §4). A payment request becomes durable
//! (idempotency key, accepted payment, outbox record) in one transaction before 202 is answered;
//! the outbox relay then publishes it on `payments.requested`.

pub mod config;
pub mod domain;
mod inbound;
mod outbound;

use std::sync::Arc;

use anyhow::Context;
use paystream_kit::ServiceBase;
use paystream_messaging::OutboxRelay;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Config;

pub const SERVICE: &str = "api-ingress";
pub const DB_SCHEMA: &str = "ingress";

pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    relay: OutboxRelay,
}

pub async fn build(config: Config) -> anyhow::Result<Application> {
    let base = ServiceBase::connect(SERVICE, config.common.clone(), 20).await?;
    let cache = outbound::redis_cache::RedisPaymentCache::connect(&config.common.redis_url).await?;
    let relay = base.relay(DB_SCHEMA)?;
    let state = inbound::http::AppState {
        store: Arc::new(outbound::postgres::PgPaymentStore::new(base.pool.clone())),
        cache: Arc::new(cache),
        jwt_secret: Arc::from(config.jwt_secret.as_str()),
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
    })
}

impl Application {
    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// Serves until `shutdown`; requests in progress complete, then the relay publishes what
    /// they wrote.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let relay_stop = CancellationToken::new();
        let relay = tokio::spawn(self.relay.run_until_stopped(relay_stop.clone()));
        let stop = shutdown.clone();
        let served = axum::serve(self.listener, self.router)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
            .context("serving the API");
        relay_stop.cancel();
        let relayed = relay.await.context("relay task")?;
        served.and(relayed)
    }
}
