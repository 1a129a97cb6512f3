//! psp-gateway: charges approved payments at a PSP exactly once. Consumes
//! `payments.risk-decided`, publishes `payments.psp-results`.
//!
//! The rule that keeps customers from being charged twice: an attempt (PSP, PSP idempotency key)
//! is committed to request storage before the call, and an unknown outcome is only ever resolved
//! against the same PSP with the same key. Only a definitive decline moves on to the next PSP.

pub mod config;
pub mod domain;
mod inbound;
mod outbound;

use std::sync::Arc;

use paystream_domain::topics;
use paystream_kit::{ConsumerService, ServiceBase};

pub use config::{Config, PspConfig};
pub use inbound::kafka::GatewayHandler;

pub const SERVICE: &str = "psp-gateway";
pub const DB_SCHEMA: &str = "psp_gateway";

pub type Application = ConsumerService<GatewayHandler>;

pub async fn build(config: Config) -> anyhow::Result<Application> {
    let base = ServiceBase::connect(SERVICE, config.common.clone(), 10).await?;
    let mut psps: Vec<Arc<dyn domain::ports::Psp>> = Vec::new();
    for psp in &config.psps {
        psps.push(Arc::new(outbound::wire_psp::WirePsp::new(
            psp,
            config.call_timeout,
        )?));
    }
    let router = domain::routing::Router::new(config.route.clone());
    let handler = GatewayHandler::new(base.pool.clone(), psps, router, config.resolve_attempts);
    let runtime = base.runtime_config(DB_SCHEMA, &[topics::PAYMENTS_RISK_DECIDED]);
    base.consumer_service(runtime, handler).await
}
