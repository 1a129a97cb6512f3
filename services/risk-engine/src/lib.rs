//! risk-engine: decides whether a requested payment may go to a PSP, with reasons a person can
//! read. Consumes `payments.requested`, publishes `payments.risk-decided`.

pub mod config;
pub mod domain;
mod inbound;
mod outbound;

use paystream_domain::topics;
use paystream_kit::{ConsumerService, ServiceBase};

pub use config::Config;
pub use inbound::kafka::RiskHandler;

pub const SERVICE: &str = "risk-engine";
pub const DB_SCHEMA: &str = "risk";

pub type Application = ConsumerService<RiskHandler>;

pub async fn build(config: Config) -> anyhow::Result<Application> {
    let base = ServiceBase::connect(SERVICE, config.common.clone(), 10).await?;
    let runtime = base.runtime_config(DB_SCHEMA, &[topics::PAYMENTS_REQUESTED]);
    base.consumer_service(runtime, RiskHandler::new(config.rules))
        .await
}
