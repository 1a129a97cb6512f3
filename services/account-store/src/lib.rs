//! account-store: the double-entry ledger. Consumes `payments.psp-results`; each captured
//! payment becomes one balanced transfer (PSP clearing → merchant payable and platform fees),
//! stored with running account totals and published on `ledger.postings`.

pub mod config;
pub mod domain;
mod inbound;
mod outbound;

use paystream_domain::topics;
use paystream_kit::{ConsumerService, ServiceBase};

pub use config::Config;
pub use inbound::kafka::LedgerHandler;
pub use outbound::postgres::balances;

pub const SERVICE: &str = "account-store";
pub const DB_SCHEMA: &str = "account_store";

pub type Application = ConsumerService<LedgerHandler>;

pub async fn build(config: Config) -> anyhow::Result<Application> {
    let base = ServiceBase::connect(SERVICE, config.common.clone(), 10).await?;
    let runtime = base.runtime_config(DB_SCHEMA, &[topics::PAYMENTS_PSP_RESULTS]);
    base.consumer_service(runtime, LedgerHandler::new(config.fees))
        .await
}
