//! validator: proves, payment by payment, that the fleet's side effects are what the events say
//! they must be. It learns expectations from every topic, and once a payment settles checks the
//! order store, the ledger and the PSP; any difference is a discrepancy (a row, a record on
//! `payments.validation`, a metric).

pub mod config;
pub mod domain;
mod inbound;
mod outbound;

use std::sync::Arc;

use anyhow::Context;
use paystream_domain::topics;
use paystream_kit::{ConsumerService, ServiceBase};
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use inbound::kafka::ValidatorHandler;

pub const SERVICE: &str = "validator";
pub const DB_SCHEMA: &str = "validator";

pub struct Application {
    service: ConsumerService<ValidatorHandler>,
    checker: inbound::checker::Checker,
}

pub async fn build(config: Config) -> anyhow::Result<Application> {
    let base = ServiceBase::connect(SERVICE, config.common.clone(), 10).await?;
    let psps: Vec<Arc<dyn domain::ports::PspLedger>> = config
        .psps
        .iter()
        .map(|p| {
            outbound::psp::WirePspLedger::new(p)
                .map(|l| Arc::new(l) as Arc<dyn domain::ports::PspLedger>)
        })
        .collect::<anyhow::Result<_>>()?;
    let checker = inbound::checker::Checker::new(
        base.pool.clone(),
        psps,
        config.timing.clone(),
        &base.registry,
    )?;
    let handler = ValidatorHandler::new(config.timing.clone());
    let runtime = base.runtime_config(
        DB_SCHEMA,
        &[
            topics::PAYMENTS_REQUESTED,
            topics::PAYMENTS_RISK_DECIDED,
            topics::PAYMENTS_PSP_RESULTS,
            topics::LEDGER_POSTINGS,
        ],
    );
    let service = base.consumer_service(runtime, handler).await?;
    Ok(Application { service, checker })
}

impl Application {
    pub fn admin_port(&self) -> u16 {
        self.service.admin_port()
    }

    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let checker = tokio::spawn(self.checker.run_until_stopped(shutdown.clone()));
        let served = self.service.run_until_stopped(shutdown).await;
        let checked = checker.await.context("checker task")?;
        served.and(checked)
    }
}
