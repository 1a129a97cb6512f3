//! The periodic check of settled payments.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use paystream_domain::{Discrepancy, MerchantId, PaymentValidated};
use paystream_messaging::outbox::{self, OutboxRecord};
use paystream_messaging::trace;
use prometheus::{IntCounterVec, Opts, Registry};
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::DB_SCHEMA;
use crate::config::Timing;
use crate::domain::compare;
use crate::domain::ports::PspLedger;
use crate::outbound::postgres;

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

    /// One round: the due payments are locked, checked and released in one transaction.
    async fn check_due(&self) -> anyhow::Result<usize> {
        let mut tx = self
            .pool
            .begin()
            .await
            .context("beginning a validation round")?;
        let due = postgres::due(&mut tx, 100).await?;
        let count = due.len();
        for item in due {
            let span = tracing::info_span!("validate", payment_id = %item.payment_id);
            self.check_one(&mut tx, item).instrument(span).await?;
        }
        tx.commit().await.context("committing a validation round")?;
        Ok(count)
    }

    async fn check_one(&self, tx: &mut PgConnection, item: postgres::Due) -> anyhow::Result<()> {
        let found = if item.expectation.expected_status == "processing" {
            vec![Discrepancy {
                kind: "not_settled".to_owned(),
                message: format!(
                    "no outcome {} s after the request",
                    self.timing.deadline.as_secs()
                ),
            }]
        } else {
            let mut observed = postgres::observe(&mut *tx, item.payment_id).await?;
            let mut unavailable = false;
            for psp in &self.psps {
                match psp.charges_for(item.payment_id).await {
                    Ok(mut charges) => observed.charges.append(&mut charges),
                    Err(e) => {
                        tracing::warn!(psp = psp.name(), error = %e, "PSP unavailable for validation");
                        unavailable = true;
                    }
                }
            }
            if unavailable {
                postgres::reschedule(&mut *tx, item.payment_id, Duration::from_secs(5)).await?;
                return Ok(());
            }
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
