//! The validator's own tables, and read-only queries on the order store and the ledger.

use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use paystream_domain::{Discrepancy, PaymentId};
use sqlx::{PgConnection, Row};

use crate::domain::{Expectation, Observed, OrderFacts, TransferFacts};

fn interval(d: Duration) -> f64 {
    d.as_secs_f64()
}

pub async fn record_requested(
    tx: &mut PgConnection,
    payment_id: PaymentId,
    merchant: &str,
    amount: i64,
    currency: &str,
    deadline: Duration,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO validator.payments (payment_id, merchant_id, amount, currency, check_after)
         VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5))
         ON CONFLICT (payment_id) DO UPDATE
         SET amount = EXCLUDED.amount, currency = EXCLUDED.currency, updated_at = now()",
    )
    .bind(payment_id.as_uuid())
    .bind(merchant)
    .bind(amount)
    .bind(currency)
    .bind(interval(deadline))
    .execute(&mut *tx)
    .await
    .context("recording the requested payment")?;
    Ok(())
}

pub struct Outcome<'a> {
    pub merchant: &'a str,
    pub amount: i64,
    pub currency: &'a str,
    pub expected_status: &'a str,
    pub psp: Option<&'a str>,
    pub charge_id: Option<&'a str>,
    pub amount_captured: i64,
}

/// A settling event: the payment is checked `settle_delay` from now (again, if it was checked).
pub async fn record_outcome(
    tx: &mut PgConnection,
    payment_id: PaymentId,
    o: Outcome<'_>,
    settle_delay: Duration,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO validator.payments
           (payment_id, merchant_id, amount, currency, expected_status, psp, charge_id, amount_captured,
            settled_at, check_after)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now(), now() + make_interval(secs => $9))
         ON CONFLICT (payment_id) DO UPDATE
         SET expected_status = EXCLUDED.expected_status,
             psp = COALESCE(EXCLUDED.psp, validator.payments.psp),
             charge_id = COALESCE(EXCLUDED.charge_id, validator.payments.charge_id),
             amount_captured = EXCLUDED.amount_captured,
             amount = COALESCE(validator.payments.amount, EXCLUDED.amount),
             currency = COALESCE(validator.payments.currency, EXCLUDED.currency),
             settled_at = now(), check_after = EXCLUDED.check_after,
             checked_at = NULL, result = NULL, updated_at = now()",
    )
    .bind(payment_id.as_uuid())
    .bind(o.merchant)
    .bind(o.amount)
    .bind(o.currency)
    .bind(o.expected_status)
    .bind(o.psp)
    .bind(o.charge_id)
    .bind(o.amount_captured)
    .bind(interval(settle_delay))
    .execute(&mut *tx)
    .await
    .context("recording the payment outcome")?;
    Ok(())
}

pub struct Due {
    pub payment_id: PaymentId,
    pub merchant_id: String,
    pub expectation: Expectation,
    pub settled_at: Option<DateTime<Utc>>,
}

/// Payments whose check is due, locked so that several validator instances share the work.
pub async fn due(tx: &mut PgConnection, limit: i64) -> anyhow::Result<Vec<Due>> {
    let rows = sqlx::query(
        "SELECT payment_id, merchant_id, amount, expected_status, psp, charge_id, amount_captured, settled_at
         FROM validator.payments
         WHERE checked_at IS NULL AND check_after <= now()
         ORDER BY check_after LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(&mut *tx)
    .await
    .context("reading due checks")?;
    rows.iter()
        .map(|r| {
            Ok(Due {
                payment_id: PaymentId::from_uuid(r.try_get("payment_id")?),
                merchant_id: r.try_get("merchant_id")?,
                expectation: Expectation {
                    expected_status: r.try_get("expected_status")?,
                    amount: r.try_get("amount")?,
                    psp: r.try_get("psp")?,
                    charge_id: r.try_get("charge_id")?,
                    amount_captured: r.try_get("amount_captured")?,
                },
                settled_at: r.try_get("settled_at")?,
            })
        })
        .collect()
}

/// What the order store and the ledger hold for the payment.
pub async fn observe(conn: &mut PgConnection, payment_id: PaymentId) -> anyhow::Result<Observed> {
    let order = sqlx::query(
        "SELECT status, amount, amount_captured FROM order_store.orders WHERE payment_id = $1",
    )
    .bind(payment_id.as_uuid())
    .fetch_optional(&mut *conn)
    .await
    .context("reading the order")?
    .map(|r| -> anyhow::Result<OrderFacts> {
        Ok(OrderFacts {
            status: r.try_get("status")?,
            amount: r.try_get("amount")?,
            amount_captured: r.try_get("amount_captured")?,
        })
    })
    .transpose()?;
    let transfers = sqlx::query(
        "SELECT t.transfer_id, t.kind,
                COALESCE(SUM(e.amount) FILTER (WHERE e.side = 'debit'), 0)::bigint AS debits,
                COALESCE(SUM(e.amount) FILTER (WHERE e.side = 'credit'), 0)::bigint AS credits
         FROM account_store.transfers t LEFT JOIN account_store.entries e USING (transfer_id)
         WHERE t.payment_id = $1 GROUP BY t.transfer_id, t.kind",
    )
    .bind(payment_id.as_uuid())
    .fetch_all(&mut *conn)
    .await
    .context("reading the ledger transfers")?
    .iter()
    .map(|r| -> anyhow::Result<TransferFacts> {
        Ok(TransferFacts {
            transfer_id: r.try_get("transfer_id")?,
            kind: r.try_get("kind")?,
            debits: r.try_get("debits")?,
            credits: r.try_get("credits")?,
        })
    })
    .collect::<anyhow::Result<_>>()?;
    Ok(Observed {
        order,
        transfers,
        charges: Vec::new(),
    })
}

pub async fn reschedule(
    tx: &mut PgConnection,
    payment_id: PaymentId,
    after: Duration,
) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE validator.payments SET check_after = now() + make_interval(secs => $2) WHERE payment_id = $1",
    )
    .bind(payment_id.as_uuid())
    .bind(interval(after))
    .execute(&mut *tx)
    .await
    .context("rescheduling a check")?;
    Ok(())
}

pub async fn finish(
    tx: &mut PgConnection,
    payment_id: PaymentId,
    discrepancies: &[Discrepancy],
) -> anyhow::Result<()> {
    let result = if discrepancies.is_empty() {
        "ok"
    } else {
        "discrepancy"
    };
    sqlx::query(
        "UPDATE validator.payments SET checked_at = now(), result = $2 WHERE payment_id = $1",
    )
    .bind(payment_id.as_uuid())
    .bind(result)
    .execute(&mut *tx)
    .await
    .context("recording the check result")?;
    record_discrepancies(tx, Some(payment_id), discrepancies).await
}

pub async fn record_discrepancies(
    tx: &mut PgConnection,
    payment_id: Option<PaymentId>,
    discrepancies: &[Discrepancy],
) -> anyhow::Result<()> {
    for d in discrepancies {
        sqlx::query(
            "INSERT INTO validator.discrepancies (payment_id, kind, message) VALUES ($1, $2, $3)",
        )
        .bind(payment_id.map(|p| p.as_uuid()))
        .bind(&d.kind)
        .bind(&d.message)
        .execute(&mut *tx)
        .await
        .context("recording a discrepancy")?;
    }
    Ok(())
}
