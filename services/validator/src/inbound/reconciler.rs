//! The periodic reconciliation (`PAYSTREAM_VALIDATOR_RECONCILE_MS`): the whole ledger, and each
//! PSP's settlement report of yesterday and today (UTC) against the order store and the ledger.
//!
//! Ledger findings come from one REPEATABLE READ snapshot, where transfers are all or nothing,
//! so they are reported at once. Settlement findings compare a PSP with stores that consume at
//! their own pace: a settlement line the books disagree with is reported once the difference
//! has lasted the grace period, a captured order missing from the reports once the order has
//! not changed for the grace period. Each finding is reported once (by fingerprint), however
//! many runs see it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Days, NaiveDate, Utc};
use futures::future::join_all;
use paystream_domain::{Discrepancy, MerchantId, PaymentId, PaymentValidated};
use paystream_messaging::outbox::{self, OutboxRecord};
use paystream_messaging::trace;
use prometheus::{IntCounterVec, Opts, Registry};
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::DB_SCHEMA;
use crate::config::Timing;
use crate::domain::ports::PspLedger;
use crate::domain::reconcile::{self, Finding, SettlementLine};
use crate::outbound::postgres::{self, RunLog};

/// Orders created this long after the start of yesterday (UTC) are the oldest whose charge must
/// be in the two reports read: an order is created before or shortly after its charge.
const WINDOW_MARGIN: Duration = Duration::from_secs(600);

pub struct Reconciler {
    pool: PgPool,
    psps: Vec<Arc<dyn PspLedger>>,
    timing: Timing,
    interval: Duration,
    allow_negative_payable: bool,
    findings: IntCounterVec,
    discrepancies: IntCounterVec,
}

/// What one run saw, for the log and the run table.
#[derive(Debug, Default)]
pub struct RunSummary {
    pub ran: bool,
    pub accounts: usize,
    pub settlement_lines: usize,
    pub suspects: usize,
    pub reported: Vec<Finding>,
}

impl Reconciler {
    pub fn new(
        pool: PgPool,
        psps: Vec<Arc<dyn PspLedger>>,
        timing: Timing,
        interval: Duration,
        allow_negative_payable: bool,
        discrepancies: IntCounterVec,
        registry: &Registry,
    ) -> anyhow::Result<Self> {
        let findings = IntCounterVec::new(
            Opts::new(
                "validator_reconciliation_findings_total",
                "Problems found by the periodic reconciliation, by kind (each reported once)",
            ),
            &["kind"],
        )?;
        registry.register(Box::new(findings.clone()))?;
        Ok(Self {
            pool,
            psps,
            timing,
            interval,
            allow_negative_payable,
            findings,
            discrepancies,
        })
    }

    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        if self.interval.is_zero() {
            tracing::info!("reconciliation disabled (PAYSTREAM_VALIDATOR_RECONCILE_MS=0)");
            return Ok(());
        }
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(self.interval) => {}
            }
            match self
                .run_once()
                .instrument(tracing::info_span!("reconcile"))
                .await
            {
                Ok(summary) if summary.ran => tracing::info!(
                    accounts = summary.accounts,
                    settlement_lines = summary.settlement_lines,
                    suspects = summary.suspects,
                    reported = summary.reported.len(),
                    "reconciliation done"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(
                    error = format!("{e:#}"),
                    "reconciliation failed; retrying at the next interval"
                ),
            }
        }
    }

    /// One run, unless another instance holds the lock or ran less than half an interval ago.
    pub async fn run_once(&self) -> anyhow::Result<RunSummary> {
        let started_at = Utc::now();
        let mut tx = self
            .pool
            .begin()
            .await
            .context("beginning a reconciliation")?;
        // One snapshot for every read, so the ledger's totals, entries and transfers agree.
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            .execute(&mut *tx)
            .await
            .context("making the reconciliation's reads consistent")?;
        if !postgres::try_lock_reconciliation(&mut tx).await? {
            return Ok(RunSummary::default());
        }
        if let Some(last) = postgres::last_reconciliation(&mut tx).await?
            && (started_at - last).to_std().unwrap_or_default() < self.interval / 2
        {
            return Ok(RunSummary::default());
        }

        let mut summary = RunSummary {
            ran: true,
            ..RunSummary::default()
        };
        let ledger = postgres::ledger_snapshot(&mut tx).await?;
        summary.accounts = ledger.accounts.len();
        let mut findings = reconcile::ledger_findings(&ledger, self.allow_negative_payable);

        if let Some(lines) = self.settlement_lines(started_at.date_naive()).await {
            summary.settlement_lines = lines.len();
            let ids: Vec<PaymentId> = lines
                .iter()
                .filter_map(|l| PaymentId::parse(&l.reference).ok())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let books = postgres::books_for(&mut tx, &ids).await?;
            let window_start = yesterday_start(started_at) + WINDOW_MARGIN;
            let names: Vec<String> = self.psps.iter().map(|p| p.name().to_owned()).collect();
            let captured =
                postgres::captured_orders(&mut tx, &names, window_start, self.timing.grace).await?;
            // A captured order missing from the reports was already left alone for the grace
            // period (see `captured_orders`); a line the books disagree with may be lag.
            let (settled, suspects): (Vec<Finding>, Vec<Finding>) =
                reconcile::settlement_findings(&lines, &books, &captured)
                    .into_iter()
                    .partition(|f| f.kind == reconcile::SETTLEMENT_MISSING_CHARGE);
            summary.suspects = suspects.len();
            findings.extend(settled);
            findings
                .extend(postgres::lasting_suspects(&mut tx, &suspects, self.timing.grace).await?);
        }

        let reported = postgres::report_findings(&mut tx, &findings).await?;
        self.publish(&mut tx, &reported).await?;
        postgres::log_reconciliation(
            &mut tx,
            &RunLog {
                started_at,
                accounts: summary.accounts,
                settlement_lines: summary.settlement_lines,
                suspects: summary.suspects,
                reported: reported.len(),
            },
        )
        .await?;
        tx.commit().await.context("committing the reconciliation")?;
        for f in &reported {
            self.findings.with_label_values(&[f.kind.as_str()]).inc();
            self.discrepancies
                .with_label_values(&[f.kind.as_str()])
                .inc();
            tracing::warn!(kind = %f.kind, payment_id = ?f.payment_id.map(|p| p.to_string()), detail = %f.message, "reconciliation discrepancy");
        }
        summary.reported = reported;
        Ok(summary)
    }

    /// Yesterday's and today's lines of every PSP, or `None` if one of them could not be read:
    /// half the reports would make every charge of the missing half look unsettled.
    async fn settlement_lines(&self, today: NaiveDate) -> Option<Vec<SettlementLine>> {
        let days = [today.checked_sub_days(Days::new(1)).unwrap_or(today), today];
        let asks = self
            .psps
            .iter()
            .flat_map(|psp| days.iter().map(move |day| (psp, *day)))
            .map(|(psp, day)| async move { (psp.name().to_owned(), psp.settlement(day).await) });
        let mut lines = Vec::new();
        for (psp, answer) in join_all(asks).await {
            match answer {
                Ok(mut more) => lines.append(&mut more),
                Err(e) => {
                    tracing::warn!(psp = %psp, error = %e, "settlement report unavailable; settlement check skipped this run");
                    return None;
                }
            }
        }
        Some(lines)
    }

    /// A `payment.validated` record for each per-payment finding whose payment the order store
    /// knows (the record names the merchant); ledger-wide findings are rows and metrics only.
    async fn publish(&self, tx: &mut PgConnection, reported: &[Finding]) -> anyhow::Result<()> {
        let mut by_payment: BTreeMap<PaymentId, Vec<Discrepancy>> = BTreeMap::new();
        for f in reported {
            if let Some(id) = f.payment_id {
                by_payment.entry(id).or_default().push(Discrepancy {
                    kind: f.kind.clone(),
                    message: f.message.clone(),
                });
            }
        }
        if by_payment.is_empty() {
            return Ok(());
        }
        let ids: Vec<PaymentId> = by_payment.keys().copied().collect();
        let owners = postgres::order_owners(&mut *tx, &ids).await?;
        let mut records = Vec::new();
        for (id, discrepancies) in by_payment {
            let Some((merchant, status)) = owners.get(&id) else {
                continue;
            };
            let Ok(merchant_id) = MerchantId::parse(merchant) else {
                continue;
            };
            let event = PaymentValidated {
                merchant_id,
                status: status.clone(),
                discrepancies,
            };
            records.push(OutboxRecord::event(
                id,
                event,
                &trace::new_traceparent(),
                &id.to_string(),
            )?);
        }
        outbox::enqueue(&mut *tx, DB_SCHEMA, &records).await
    }
}

fn yesterday_start(now: DateTime<Utc>) -> DateTime<Utc> {
    let day = now
        .date_naive()
        .checked_sub_days(Days::new(1))
        .unwrap_or(now.date_naive());
    day.and_hms_opt(0, 0, 0).map(|t| t.and_utc()).unwrap_or(now)
}
