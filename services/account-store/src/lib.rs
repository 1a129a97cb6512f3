//! account-store: the double-entry ledger. Consumes `payments.psp-results`: each captured
//! payment (an automatic capture's `payment.psp_result`, a manual capture's `payment.captured`)
//! becomes one balanced capture transfer (PSP clearing → merchant payable and platform fees), and
//! each `payment.refunded` a refund transfer that reverses the capture's split in proportion.
//! Transfers are stored with running account totals and published on `ledger.postings`.
//!
//! Ledger batches serialise on one transaction-scoped lock (see `outbound::postgres::lock_ledger`)
//! so that batches of different instances can never deadlock on account rows; a refund that
//! arrives before its capture is parked in `account_store.parked_refunds` and posted right after
//! the capture.

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
    let consumed = config.consumed_topics(&[topics::PAYMENTS_PSP_RESULTS]);
    let consumed: Vec<&str> = consumed.iter().map(String::as_str).collect();
    let runtime = base.runtime_config(DB_SCHEMA, &consumed);
    let handler = LedgerHandler::new(config.fees)
        .with_policy(config.policy)
        .with_registry(&base.registry)?;
    base.consumer_service(runtime, handler).await
}
