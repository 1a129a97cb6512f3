//! The validator's own tables, and read-only queries on the order store and the ledger.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use paystream_domain::{Discrepancy, PaymentId, PaymentStatus};
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::config::Timing;
use crate::domain::reconcile::{
    AccountTotals, Books, BrokenTransfer, CapturedOrder, CurrencyTotals, Finding, LedgerSnapshot,
    OrderBook,
};
use crate::domain::{Expectation, Observed, OrderFacts, TransferFacts, advances};

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
    /// `None` when the event does not carry the authorised amount (a capture's outcome).
    pub amount: Option<i64>,
    pub currency: Option<&'a str>,
    pub status: PaymentStatus,
    pub psp: Option<&'a str>,
    pub charge_id: Option<&'a str>,
    /// Set by events that tell what was captured (an automatic capture, a manual capture).
    pub amount_captured: Option<i64>,
}

/// Creates the payment's row if this is the first event seen for it (checked at the deadline
/// unless an outcome comes), and locks it for the rest of the transaction.
async fn row_for_update(
    tx: &mut PgConnection,
    payment_id: PaymentId,
    merchant: &str,
    deadline: Duration,
) -> anyhow::Result<String> {
    sqlx::query(
        "INSERT INTO validator.payments (payment_id, merchant_id, check_after)
         VALUES ($1, $2, now() + make_interval(secs => $3))
         ON CONFLICT (payment_id) DO NOTHING",
    )
    .bind(payment_id.as_uuid())
    .bind(merchant)
    .bind(interval(deadline))
    .execute(&mut *tx)
    .await
    .context("creating the payment's expectation")?;
    sqlx::query_scalar(
        "SELECT expected_status FROM validator.payments WHERE payment_id = $1 FOR UPDATE",
    )
    .bind(payment_id.as_uuid())
    .fetch_one(&mut *tx)
    .await
    .context("locking the payment's expectation")
}

/// A settling event: if it moves the expected status forward (see
/// [`crate::domain::advances`]), the payment is checked `settle_delay` from now (again, if it
/// was checked). A late event that does not move it only fills in what was still unknown.
pub async fn record_outcome(
    tx: &mut PgConnection,
    payment_id: PaymentId,
    o: Outcome<'_>,
    settle_delay: Duration,
    deadline: Duration,
) -> anyhow::Result<()> {
    let current = row_for_update(tx, payment_id, o.merchant, deadline).await?;
    if advances(&current, o.status) {
        sqlx::query(
            "UPDATE validator.payments
             SET expected_status = $2,
                 psp = COALESCE($3, psp),
                 charge_id = COALESCE($4, charge_id),
                 amount_captured = COALESCE($5, amount_captured),
                 amount = COALESCE(amount, $6),
                 currency = COALESCE(currency, $7),
                 settled_at = now(), check_after = now() + make_interval(secs => $8),
                 checked_at = NULL, result = NULL, updated_at = now()
             WHERE payment_id = $1",
        )
        .bind(payment_id.as_uuid())
        .bind(o.status.as_str())
        .bind(o.psp)
        .bind(o.charge_id)
        .bind(o.amount_captured)
        .bind(o.amount)
        .bind(o.currency)
        .bind(interval(settle_delay))
        .execute(&mut *tx)
        .await
        .context("recording the payment outcome")?;
    } else {
        sqlx::query(
            "UPDATE validator.payments
             SET psp = COALESCE(psp, $2), charge_id = COALESCE(charge_id, $3),
                 amount = COALESCE(amount, $4), currency = COALESCE(currency, $5),
                 updated_at = now()
             WHERE payment_id = $1",
        )
        .bind(payment_id.as_uuid())
        .bind(o.psp)
        .bind(o.charge_id)
        .bind(o.amount)
        .bind(o.currency)
        .execute(&mut *tx)
        .await
        .context("filling in the payment's expectation")?;
        tracing::info!(current = %current, reported = %o.status, "late outcome does not move the expectation");
    }
    Ok(())
}

/// A refund announced by `payment.refunded`, counted once per refund id; the payment is checked
/// again `settle_delay` from now.
pub struct RefundSeen<'a> {
    pub merchant: &'a str,
    pub refund_id: &'a str,
    pub amount: i64,
    pub psp: &'a str,
}

pub async fn record_refund(
    tx: &mut PgConnection,
    payment_id: PaymentId,
    refund: RefundSeen<'_>,
    timing: &Timing,
) -> anyhow::Result<()> {
    let RefundSeen {
        merchant,
        refund_id,
        amount,
        psp,
    } = refund;
    row_for_update(tx, payment_id, merchant, timing.deadline).await?;
    let inserted = sqlx::query(
        "INSERT INTO validator.refunds (refund_id, payment_id, amount, psp)
         VALUES ($1, $2, $3, $4) ON CONFLICT (refund_id) DO NOTHING",
    )
    .bind(refund_id)
    .bind(payment_id.as_uuid())
    .bind(amount)
    .bind(psp)
    .execute(&mut *tx)
    .await
    .context("recording the refund")?
    .rows_affected();
    if inserted == 0 {
        return Ok(());
    }
    sqlx::query(
        "UPDATE validator.payments
         SET amount_refunded = amount_refunded + $2, refund_count = refund_count + 1,
             settled_at = now(), check_after = now() + make_interval(secs => $3),
             checked_at = NULL, result = NULL, updated_at = now()
         WHERE payment_id = $1",
    )
    .bind(payment_id.as_uuid())
    .bind(amount)
    .bind(interval(timing.settle_delay))
    .execute(&mut *tx)
    .await
    .context("adding the refund to the expectation")?;
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
        "SELECT payment_id, merchant_id, amount, expected_status, psp, charge_id, amount_captured,
                amount_refunded, refund_count, settled_at
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
                    amount_refunded: r.try_get("amount_refunded")?,
                    refund_count: i64::from(r.try_get::<i32, _>("refund_count")?),
                },
                settled_at: r.try_get("settled_at")?,
            })
        })
        .collect()
}

/// What the order store and the ledger hold for the payment.
pub async fn observe(conn: &mut PgConnection, payment_id: PaymentId) -> anyhow::Result<Observed> {
    let order = sqlx::query(
        "SELECT status, amount, amount_captured, amount_refunded
         FROM order_store.orders WHERE payment_id = $1",
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
            amount_refunded: r.try_get("amount_refunded")?,
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

// ---- reconciliation --------------------------------------------------------------------------

/// Takes the reconciliation's lock for this transaction if no other instance holds it.
pub async fn try_lock_reconciliation(tx: &mut PgConnection) -> anyhow::Result<bool> {
    sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtext('validator.reconcile'), 0)")
        .fetch_one(&mut *tx)
        .await
        .context("taking the reconciliation lock")
}

/// When the last reconciliation (of any instance) finished.
pub async fn last_reconciliation(tx: &mut PgConnection) -> anyhow::Result<Option<DateTime<Utc>>> {
    sqlx::query_scalar("SELECT max(finished_at) FROM validator.reconciliations")
        .fetch_one(&mut *tx)
        .await
        .context("reading the last reconciliation")
}

/// The ledger's totals per currency, per account (beside its entries) and its broken transfers.
/// Run it in a REPEATABLE READ transaction so the three reads see one state.
pub async fn ledger_snapshot(conn: &mut PgConnection) -> anyhow::Result<LedgerSnapshot> {
    let currencies = sqlx::query(
        "SELECT currency,
                COALESCE(SUM(amount) FILTER (WHERE side = 'debit'), 0)::bigint AS debits,
                COALESCE(SUM(amount) FILTER (WHERE side = 'credit'), 0)::bigint AS credits
         FROM account_store.entries GROUP BY currency ORDER BY currency",
    )
    .fetch_all(&mut *conn)
    .await
    .context("summing the ledger per currency")?
    .iter()
    .map(|r| {
        Ok(CurrencyTotals {
            currency: r.try_get("currency")?,
            debits: r.try_get("debits")?,
            credits: r.try_get("credits")?,
        })
    })
    .collect::<Result<_, sqlx::Error>>()
    .context("decoding currency totals")?;
    let accounts = sqlx::query(
        "SELECT a.account, a.currency, a.debits, a.credits,
                COALESCE(e.debits, 0)::bigint AS entry_debits,
                COALESCE(e.credits, 0)::bigint AS entry_credits
         FROM account_store.accounts a
         LEFT JOIN (
             SELECT account, currency,
                    SUM(amount) FILTER (WHERE side = 'debit') AS debits,
                    SUM(amount) FILTER (WHERE side = 'credit') AS credits
             FROM account_store.entries GROUP BY account, currency
         ) e USING (account, currency)
         ORDER BY a.account, a.currency",
    )
    .fetch_all(&mut *conn)
    .await
    .context("comparing accounts with their entries")?
    .iter()
    .map(|r| {
        Ok(AccountTotals {
            account: r.try_get("account")?,
            currency: r.try_get("currency")?,
            debits: r.try_get("debits")?,
            credits: r.try_get("credits")?,
            entry_debits: r.try_get("entry_debits")?,
            entry_credits: r.try_get("entry_credits")?,
        })
    })
    .collect::<Result<_, sqlx::Error>>()
    .context("decoding account totals")?;
    let broken_transfers = sqlx::query(
        "SELECT t.transfer_id, t.payment_id,
                COALESCE(SUM(e.amount) FILTER (WHERE e.side = 'debit'), 0)::bigint AS debits,
                COALESCE(SUM(e.amount) FILTER (WHERE e.side = 'credit'), 0)::bigint AS credits,
                COALESCE(bool_or(e.currency <> t.currency), false) AS mixed
         FROM account_store.transfers t
         LEFT JOIN account_store.entries e USING (transfer_id)
         GROUP BY t.transfer_id, t.payment_id
         HAVING COALESCE(SUM(e.amount) FILTER (WHERE e.side = 'debit'), 0)
                    <> COALESCE(SUM(e.amount) FILTER (WHERE e.side = 'credit'), 0)
             OR COALESCE(bool_or(e.currency <> t.currency), false)
             OR count(e.id) = 0",
    )
    .fetch_all(&mut *conn)
    .await
    .context("looking for unbalanced transfers")?
    .iter()
    .map(|r| {
        Ok(BrokenTransfer {
            transfer_id: r.try_get("transfer_id")?,
            payment_id: PaymentId::from_uuid(r.try_get("payment_id")?),
            debits: r.try_get("debits")?,
            credits: r.try_get("credits")?,
            mixed_currencies: r.try_get("mixed")?,
        })
    })
    .collect::<Result<_, sqlx::Error>>()
    .context("decoding unbalanced transfers")?;
    Ok(LedgerSnapshot {
        currencies,
        accounts,
        broken_transfers,
    })
}

/// What the order store and the ledger hold for each of `ids`.
pub async fn books_for(
    conn: &mut PgConnection,
    ids: &[PaymentId],
) -> anyhow::Result<BTreeMap<PaymentId, Books>> {
    let uuids: Vec<Uuid> = ids.iter().map(PaymentId::as_uuid).collect();
    let rows = sqlx::query(
        "SELECT p.id AS payment_id, o.payment_id IS NOT NULL AS known, o.psp, o.charge_id,
                o.currency, o.amount_captured, o.amount_refunded,
                COALESCE(l.captured, 0)::bigint AS ledger_captured,
                COALESCE(l.refunded, 0)::bigint AS ledger_refunded
         FROM UNNEST($1::uuid[]) AS p(id)
         LEFT JOIN order_store.orders o ON o.payment_id = p.id
         LEFT JOIN (
             SELECT t.payment_id,
                    SUM(e.amount) FILTER (WHERE t.kind = 'capture' AND e.side = 'debit') AS captured,
                    SUM(e.amount) FILTER (WHERE t.kind = 'refund' AND e.side = 'credit') AS refunded
             FROM account_store.transfers t JOIN account_store.entries e USING (transfer_id)
             WHERE t.payment_id = ANY($1)
             GROUP BY t.payment_id
         ) l ON l.payment_id = p.id",
    )
    .bind(&uuids)
    .fetch_all(&mut *conn)
    .await
    .context("reading the books of settled payments")?;
    let mut books = BTreeMap::new();
    for r in &rows {
        let id = PaymentId::from_uuid(r.try_get("payment_id").context("payment_id")?);
        let known: bool = r.try_get("known").context("known")?;
        let order = if known {
            Some(OrderBook {
                psp: r.try_get("psp").context("orders.psp")?,
                charge_id: r.try_get("charge_id").context("orders.charge_id")?,
                currency: r.try_get("currency").context("orders.currency")?,
                amount_captured: r
                    .try_get("amount_captured")
                    .context("orders.amount_captured")?,
                amount_refunded: r
                    .try_get("amount_refunded")
                    .context("orders.amount_refunded")?,
            })
        } else {
            None
        };
        books.insert(
            id,
            Books {
                order,
                ledger_captured: r.try_get("ledger_captured").context("ledger_captured")?,
                ledger_refunded: r.try_get("ledger_refunded").context("ledger_refunded")?,
            },
        );
    }
    Ok(books)
}

/// Orders that captured money at one of `psps`, created after `created_after` and unchanged for
/// the grace period (so the PSP's report must already show their charge).
pub async fn captured_orders(
    conn: &mut PgConnection,
    psps: &[String],
    created_after: DateTime<Utc>,
    grace: Duration,
) -> anyhow::Result<Vec<CapturedOrder>> {
    sqlx::query(
        "SELECT payment_id, psp, charge_id, amount_captured FROM order_store.orders
         WHERE amount_captured > 0 AND psp = ANY($1) AND created_at >= $2
           AND updated_at < now() - make_interval(secs => $3)",
    )
    .bind(psps)
    .bind(created_after)
    .bind(interval(grace))
    .fetch_all(&mut *conn)
    .await
    .context("reading captured orders")?
    .iter()
    .map(|r| {
        Ok(CapturedOrder {
            payment_id: PaymentId::from_uuid(r.try_get("payment_id")?),
            psp: r.try_get("psp")?,
            charge_id: r.try_get("charge_id")?,
            amount_captured: r.try_get("amount_captured")?,
        })
    })
    .collect::<Result<_, sqlx::Error>>()
    .context("decoding captured orders")
}

/// Remembers the findings that may only be lag, forgets those no longer seen, and returns the
/// ones seen for longer than `grace`.
pub async fn lasting_suspects(
    tx: &mut PgConnection,
    suspects: &[Finding],
    grace: Duration,
) -> anyhow::Result<Vec<Finding>> {
    let fingerprints: Vec<&str> = suspects.iter().map(|f| f.fingerprint.as_str()).collect();
    let kinds: Vec<&str> = suspects.iter().map(|f| f.kind.as_str()).collect();
    let payments: Vec<Option<Uuid>> = suspects
        .iter()
        .map(|f| f.payment_id.map(|p| p.as_uuid()))
        .collect();
    let messages: Vec<&str> = suspects.iter().map(|f| f.message.as_str()).collect();
    sqlx::query(
        "DELETE FROM validator.reconcile_suspects WHERE NOT (fingerprint = ANY($1::text[]))",
    )
    .bind(&fingerprints)
    .execute(&mut *tx)
    .await
    .context("forgetting resolved suspects")?;
    sqlx::query(
        "INSERT INTO validator.reconcile_suspects (fingerprint, kind, payment_id, message)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::uuid[], $4::text[])
         ON CONFLICT (fingerprint) DO UPDATE
         SET last_seen = now(), message = EXCLUDED.message",
    )
    .bind(&fingerprints)
    .bind(&kinds)
    .bind(&payments)
    .bind(&messages)
    .execute(&mut *tx)
    .await
    .context("remembering suspects")?;
    let lasting: Vec<String> = sqlx::query_scalar(
        "SELECT fingerprint FROM validator.reconcile_suspects
         WHERE first_seen <= now() - make_interval(secs => $1)",
    )
    .bind(interval(grace))
    .fetch_all(&mut *tx)
    .await
    .context("reading lasting suspects")?;
    Ok(suspects
        .iter()
        .filter(|f| lasting.contains(&f.fingerprint))
        .cloned()
        .collect())
}

/// Stores the findings not reported before; returns those (each fingerprint is reported once).
pub async fn report_findings(
    tx: &mut PgConnection,
    findings: &[Finding],
) -> anyhow::Result<Vec<Finding>> {
    let mut new = Vec::new();
    for f in findings {
        let inserted = sqlx::query(
            "INSERT INTO validator.discrepancies (payment_id, kind, message, source, fingerprint)
             VALUES ($1, $2, $3, 'reconciliation', $4)
             ON CONFLICT (fingerprint) WHERE fingerprint IS NOT NULL DO NOTHING",
        )
        .bind(f.payment_id.map(|p| p.as_uuid()))
        .bind(&f.kind)
        .bind(&f.message)
        .bind(&f.fingerprint)
        .execute(&mut *tx)
        .await
        .context("recording a reconciliation finding")?
        .rows_affected();
        if inserted == 1 {
            new.push(f.clone());
        }
    }
    Ok(new)
}

pub struct RunLog {
    pub started_at: DateTime<Utc>,
    pub accounts: usize,
    pub settlement_lines: usize,
    pub suspects: usize,
    pub reported: usize,
}

pub async fn log_reconciliation(tx: &mut PgConnection, run: &RunLog) -> anyhow::Result<()> {
    let n = |v: usize| i32::try_from(v).unwrap_or(i32::MAX);
    sqlx::query(
        "INSERT INTO validator.reconciliations
             (started_at, accounts, settlement_lines, suspects, reported)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(run.started_at)
    .bind(n(run.accounts))
    .bind(n(run.settlement_lines))
    .bind(n(run.suspects))
    .bind(n(run.reported))
    .execute(&mut *tx)
    .await
    .context("logging the reconciliation")?;
    Ok(())
}

/// The merchant and status of each payment the order store knows, for `payment.validated`.
pub async fn order_owners(
    conn: &mut PgConnection,
    ids: &[PaymentId],
) -> anyhow::Result<BTreeMap<PaymentId, (String, String)>> {
    let uuids: Vec<Uuid> = ids.iter().map(PaymentId::as_uuid).collect();
    let rows = sqlx::query(
        "SELECT payment_id, merchant_id, status FROM order_store.orders WHERE payment_id = ANY($1)",
    )
    .bind(&uuids)
    .fetch_all(&mut *conn)
    .await
    .context("reading the owners of reported payments")?;
    rows.iter()
        .map(|r| {
            Ok((
                PaymentId::from_uuid(r.try_get("payment_id")?),
                (r.try_get("merchant_id")?, r.try_get("status")?),
            ))
        })
        .collect::<Result<_, sqlx::Error>>()
        .context("decoding payment owners")
}
