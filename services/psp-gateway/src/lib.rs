//! psp-gateway: charges approved payments at a PSP exactly once, and carries out captures,
//! cancels and refunds. Consumes `payments.risk-decided` and `payments.commands`, publishes
//! `payments.psp-results`; receives PSP webhooks at `POST /webhooks/<psp>`.
//!
//! The rule that keeps customers from being charged twice: an attempt (PSP, PSP idempotency key)
//! is committed to request storage before the call, and an unknown outcome is only ever resolved
//! against the same PSP with the same key. Only a definitive decline moves on to the next PSP;
//! an open circuit breaker only skips a PSP for a new attempt (see `domain::breaker`).

pub mod config;
pub mod domain;
mod inbound;
pub mod metrics;
mod outbound;

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context;
use paystream_domain::topics;
use paystream_kit::ServiceBase;
use paystream_messaging::{ConsumerRuntime, OutboxRelay};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub use config::{Config, PspConfig};
pub use inbound::kafka::GatewayHandler;

use crate::domain::breaker::BreakerBoard;
use crate::domain::ports::Psp;
use crate::inbound::gateway::Gateway;
use crate::inbound::http::{HttpServer, WebhookSecrets};
use crate::metrics::GatewayMetrics;

pub const SERVICE: &str = "psp-gateway";
pub const DB_SCHEMA: &str = "psp_gateway";

/// The consumer runtime, the outbox relay and the HTTP listener (health, metrics, webhooks),
/// stopped by one token.
pub struct Application {
    runtime: ConsumerRuntime<GatewayHandler>,
    relay: OutboxRelay,
    http: HttpServer,
    pool: PgPool,
}

impl Application {
    /// The port of the HTTP listener (`PAYSTREAM_ADMIN_ADDR`): health, metrics and webhooks.
    pub fn admin_port(&self) -> u16 {
        self.http.port()
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Runs until `shutdown`: the consumers finish and commit their batch, then the relay
    /// publishes what the last batches wrote, then the listener closes (webhooks keep being
    /// accepted until then).
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let relay_stop = CancellationToken::new();
        let http_stop = CancellationToken::new();
        let relay = tokio::spawn(self.relay.run_until_stopped(relay_stop.clone()));
        let http = tokio::spawn(self.http.run_until_stopped(http_stop.clone()));
        let consumed = self.runtime.run_until_stopped(shutdown).await;
        http_stop.cancel();
        let served = http.await.context("HTTP task")?;
        relay_stop.cancel();
        let relayed = relay.await.context("relay task")?;
        consumed.and(relayed).and(served)
    }
}

pub async fn build(config: Config) -> anyhow::Result<Application> {
    let routing = config.routing_rules()?;
    let base = ServiceBase::connect(SERVICE, config.common.clone(), 16).await?;
    let metrics = GatewayMetrics::new(&base.registry)?;
    let names: Vec<String> = config.psps.iter().map(|p| p.name.clone()).collect();
    let observer_metrics = metrics.clone();
    let breakers = Arc::new(BreakerBoard::new(
        &names,
        config.breaker_failures,
        config.breaker_cooldown,
        Arc::new(move |psp: &str, state| {
            observer_metrics
                .breaker_state
                .with_label_values(&[psp])
                .set(state.gauge());
            observer_metrics
                .breaker_transitions
                .with_label_values(&[psp, state.as_str()])
                .inc();
            tracing::warn!(
                psp,
                state = state.as_str(),
                "PSP circuit breaker changed state"
            );
        }),
    ));
    let mut psps: BTreeMap<String, Arc<dyn Psp>> = BTreeMap::new();
    for psp in &config.psps {
        let wire: Arc<dyn Psp> =
            Arc::new(outbound::wire_psp::WirePsp::new(psp, config.call_timeout)?);
        let instrumented =
            outbound::instrumented::InstrumentedPsp::new(wire, breakers.clone(), metrics.clone());
        psps.insert(psp.name.clone(), Arc::new(instrumented));
    }
    let gateway = Arc::new(Gateway {
        pool: base.pool.clone(),
        psps,
        routing,
        breakers,
        resolve_attempts: config.resolve_attempts.max(1),
        resolve_backoff: config.resolve_backoff,
        metrics,
    });
    let secrets = WebhookSecrets(
        config
            .psps
            .iter()
            .map(|p| (p.name.clone(), p.webhook_secret.as_bytes().to_vec()))
            .collect(),
    );
    let http = HttpServer::bind(
        &base.common.admin_addr,
        base.registry.clone(),
        base.pool.clone(),
        gateway.clone(),
        secrets,
        config.webhook_tolerance_secs,
    )
    .await?;
    let relay = base.relay(DB_SCHEMA)?;
    let runtime_config = base.runtime_config(
        DB_SCHEMA,
        &[topics::PAYMENTS_RISK_DECIDED, topics::PAYMENTS_COMMANDS],
    );
    let runtime = ConsumerRuntime::new(
        runtime_config,
        base.pool.clone(),
        GatewayHandler::new(gateway),
        base.metrics.clone(),
    );
    Ok(Application {
        runtime,
        relay,
        http,
        pool: base.pool,
    })
}
