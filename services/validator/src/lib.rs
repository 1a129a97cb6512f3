//! validator: proves, payment by payment, that the fleet's side effects are what the events say
//! they must be. It learns expectations from every topic (requests, decisions, PSP results,
//! captures, cancels and refunds), and once a payment settles checks the order store, the ledger
//! and the PSPs; any difference is a discrepancy (a row, a record on `payments.validation`, a
//! metric, a message a person can read). A periodic reconciliation checks the whole ledger and
//! the PSPs' settlement reports against the orders and the ledger.

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

pub use inbound::reconciler::{Reconciler, RunSummary};

pub struct Application {
    service: ConsumerService<ValidatorHandler>,
    checker: inbound::checker::Checker,
    reconciler: Reconciler,
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
        psps.clone(),
        config.timing.clone(),
        &base.registry,
    )?;
    let reconciler = Reconciler::new(
        base.pool.clone(),
        psps,
        config.timing.clone(),
        config.reconcile_interval,
        config.allow_negative_payable,
        checker.discrepancies_counter(),
        &base.registry,
    )?;
    let handler = ValidatorHandler::new(config.timing.clone());
    let consumed = config.consumed_topics(&[
        topics::PAYMENTS_REQUESTED,
        topics::PAYMENTS_RISK_DECIDED,
        topics::PAYMENTS_PSP_RESULTS,
        topics::LEDGER_POSTINGS,
    ]);
    let consumed: Vec<&str> = consumed.iter().map(String::as_str).collect();
    let runtime = base.runtime_config(DB_SCHEMA, &consumed);
    let service = base.consumer_service(runtime, handler).await?;
    Ok(Application {
        service,
        checker,
        reconciler,
    })
}

impl Application {
    pub fn admin_port(&self) -> u16 {
        self.service.admin_port()
    }

    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let checker = tokio::spawn(self.checker.run_until_stopped(shutdown.clone()));
        let reconciler = tokio::spawn(self.reconciler.run_until_stopped(shutdown.clone()));
        let served = self.service.run_until_stopped(shutdown).await;
        let checked = checker.await.context("checker task")?;
        let reconciled = reconciler.await.context("reconciler task")?;
        served.and(checked).and(reconciled)
    }
}
