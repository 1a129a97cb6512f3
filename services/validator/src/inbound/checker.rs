//! The periodic check of settled payments: each due payment's order, ledger transfers and PSP
//! charges against what its events said (see [`crate::domain::compare`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use futures::future::join_all;
use futures::{StreamExt, stream};
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
use crate::domain::{PspCharge, compare};
use crate::outbound::postgres;

/// Payments whose PSP charges are asked for at the same time.
const PSP_CONCURRENCY: usize = 16;

pub struct Checker {
    pool: PgPool,
    psps: Vec<Arc<dyn PspLedger>>,
    timing: Timing,
    checks: IntCounterVec,
    discrepancies: IntCounterVec,
}

impl Checker {
    pub fn new(
        pool: PgPool,
        psps: Vec<Arc<dyn PspLedger>>,
        timing: Timing,
        registry: &Registry,
    ) -> anyhow::Result<Self> {
        let checks = IntCounterVec::new(
            Opts::new(
                "validator_payments_checked_total",
                "Settled payments checked, by result",
            ),
            &["result"],
        )?;
        let discrepancies = IntCounterVec::new(
            Opts::new(
                "validator_discrepancies_total",
                "Discrepancies found, by kind",
            ),
            &["kind"],
        )?;
        registry.register(Box::new(checks.clone()))?;
        registry.register(Box::new(discrepancies.clone()))?;
        Ok(Self {
            pool,
            psps,
            timing,
            checks,
            discrepancies,
        })
    }

    /// `validator_discrepancies_total`, which the reconciliation's findings also count in.
    pub fn discrepancies_counter(&self) -> IntCounterVec {
        self.discrepancies.clone()
    }

    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        loop {
            match self.check_due().await {
                Ok(n) if n > 0 => continue,
                Ok(_) => {}
                Err(e) => tracing::warn!(
                    error = format!("{e:#}"),
                    "validation round failed; retrying"
                ),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(self.timing.poll_interval) => {}
            }
        }
    }

    /// One round: the due payments are locked, checked and released in one transaction. The
    /// PSPs are asked about all of them at once (a few concurrent requests per PSP), which is
    /// what bounds a round's time when thousands of payments settle together.
    async fn check_due(&self) -> anyhow::Result<usize> {
        let mut tx = self
            .pool
            .begin()
            .await
            .context("beginning a validation round")?;
        let due = postgres::due(&mut tx, 100).await?;
        let count = due.len();
        let asked: Vec<_> = due
            .iter()
            .filter(|item| item.expectation.expected_status != "processing")
            .map(|item| item.payment_id)
            .collect();
        let mut charges = self.psp_charges(&asked).await;
        for item in due {
            let span = tracing::info_span!("validate", payment_id = %item.payment_id);
            let psp = charges.remove(&item.payment_id);
            self.check_one(&mut tx, item, psp).instrument(span).await?;
        }
        tx.commit().await.context("committing a validation round")?;
        Ok(count)
    }

    /// Every PSP's charges for each payment, or `None` for a payment some PSP could not answer
    /// for (its check is tried again shortly).
    async fn psp_charges(&self, ids: &[PaymentId]) -> HashMap<PaymentId, Option<Vec<PspCharge>>> {
        let asks: Vec<_> = ids
            .iter()
            .map(|&id| ask_psps(self.psps.clone(), id))
            .collect();
        stream::iter(asks)
            .buffer_unordered(PSP_CONCURRENCY)
            .collect()
            .await
    }

    async fn check_one(
        &self,
        tx: &mut PgConnection,
        item: postgres::Due,
        charges: Option<Option<Vec<PspCharge>>>,
    ) -> anyhow::Result<()> {
        let found = if item.expectation.expected_status == "processing" {
            vec![Discrepancy {
                kind: "not_settled".to_owned(),
                message: format!(
                    "no outcome {} s after the request",
                    self.timing.deadline.as_secs()
                ),
            }]
        } else {
            let Some(Some(mut charges)) = charges else {
                postgres::reschedule(&mut *tx, item.payment_id, Duration::from_secs(5)).await?;
                return Ok(());
            };
            let mut observed = postgres::observe(&mut *tx, item.payment_id).await?;
            observed.charges.append(&mut charges);
            compare(&item.expectation, &observed)
        };
        let settled_for = item
            .settled_at
            .map(|t| (Utc::now() - t).to_std().unwrap_or_default())
            .unwrap_or(Duration::MAX);
        if !found.is_empty() && settled_for < self.timing.grace {
            // The stores may still be catching up; look again shortly.
            postgres::reschedule(&mut *tx, item.payment_id, Duration::from_millis(500)).await?;
            return Ok(());
        }
        postgres::finish(&mut *tx, item.payment_id, &found).await?;
        let result = if found.is_empty() {
            "ok"
        } else {
            "discrepancy"
        };
        self.checks.with_label_values(&[result]).inc();
        for d in &found {
            self.discrepancies
                .with_label_values(&[d.kind.as_str()])
                .inc();
            tracing::warn!(kind = %d.kind, detail = %d.message, "discrepancy");
        }
        let merchant = MerchantId::parse(&item.merchant_id)
            .map_err(|e| anyhow::anyhow!("stored merchant id: {e}"))?;
        let event = PaymentValidated {
            merchant_id: merchant,
            status: item.expectation.expected_status.clone(),
            discrepancies: found,
        };
        let tp = trace::new_traceparent();
        let record =
            OutboxRecord::event(item.payment_id, event, &tp, &item.payment_id.to_string())?;
        outbox::enqueue(&mut *tx, DB_SCHEMA, &[record]).await?;
        Ok(())
    }
}

/// One payment's charges at every PSP (owned inputs, so the future can run on any task).
async fn ask_psps(
    psps: Vec<Arc<dyn PspLedger>>,
    id: PaymentId,
) -> (PaymentId, Option<Vec<PspCharge>>) {
    let answers = join_all(psps.iter().map(|psp| psp.charges_for(id))).await;
    let mut all = Vec::new();
    for (psp, answer) in psps.iter().zip(answers) {
        match answer {
            Ok(mut charges) => all.append(&mut charges),
            Err(e) => {
                tracing::warn!(payment_id = %id, psp = psp.name(), error = %e, "PSP unavailable for validation");
                return (id, None);
            }
        }
    }
    (id, Some(all))
}
