use anyhow::Context;
use chrono::{DateTime, Utc};
use paystream_domain::{Amount, Currency, CustomerId, MerchantId, PaymentId, PaymentStatus};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::domain::outcomes::AppliedRefund;
use crate::domain::{History, Order, capture_mode_str, parse_capture_mode};

const ORDER_COLUMNS: &str = "payment_id, merchant_id, amount, currency, customer_id, capture, \
    description, metadata, status, amount_captured, amount_refunded, psp, charge_id, \
    decline_code, failure_reason, risk_score, risk_reasons, version";

/// Whether this event id already has a history row. The runtime's inbox normally stops
/// duplicates first; this keeps a replay under the same id from being applied twice even if the
/// inbox was pruned.
pub async fn already_recorded(tx: &mut PgConnection, event_id: Uuid) -> anyhow::Result<bool> {
    let found: Option<i32> =
        sqlx::query_scalar("SELECT 1 FROM order_store.order_events WHERE event_id = $1")
            .bind(event_id)
            .fetch_optional(&mut *tx)
            .await
            .context("looking up the event in the order history")?;
    Ok(found.is_some())
}

/// Reads without a lock: the write that follows checks the version instead, so readers and
/// other instances are never blocked by an order being decided.
pub async fn load(tx: &mut PgConnection, payment_id: PaymentId) -> anyhow::Result<Option<Order>> {
    let sql = format!("SELECT {ORDER_COLUMNS} FROM order_store.orders WHERE payment_id = $1");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(payment_id.as_uuid())
        .fetch_optional(&mut *tx)
        .await
        .context("reading the order")?;
    row.map(|r| decode(&r)).transpose()
}

/// Returns false when another transaction created the order first.
pub async fn insert(tx: &mut PgConnection, order: &Order) -> anyhow::Result<bool> {
    let inserted = sqlx::query(
        "INSERT INTO order_store.orders (payment_id, merchant_id, amount, currency, customer_id,
             capture, description, metadata, status, amount_captured, amount_refunded, psp,
             charge_id, decline_code, failure_reason, risk_score, risk_reasons, version)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)
         ON CONFLICT (payment_id) DO NOTHING",
    )
    .bind(order.payment_id.as_uuid())
    .bind(order.merchant_id.as_str())
    .bind(order.amount.minor())
    .bind(order.currency.as_str())
    .bind(order.customer_id.as_ref().map(CustomerId::as_str))
    .bind(order.capture.map(capture_mode_str))
    .bind(order.description.as_deref())
    .bind(serde_json::to_value(&order.metadata).context("encoding metadata")?)
    .bind(order.status.as_str())
    .bind(order.amount_captured)
    .bind(order.amount_refunded)
    .bind(order.psp.as_deref())
    .bind(order.charge_id.as_deref())
    .bind(order.decline_code.as_deref())
    .bind(order.failure_reason.as_deref())
    .bind(risk_score(order))
    .bind(risk_reasons(order)?)
    .bind(order.version)
    .execute(&mut *tx)
    .await
    .context("inserting the order")?
    .rows_affected();
    Ok(inserted == 1)
}

/// Writes `order` (carrying its new version) if the row still has `expected_version`; returns
/// false when another transaction changed it since it was read.
pub async fn update(
    tx: &mut PgConnection,
    order: &Order,
    expected_version: i32,
) -> anyhow::Result<bool> {
    let updated = sqlx::query(
        "UPDATE order_store.orders SET customer_id = $3, capture = $4, description = $5,
             metadata = $6, status = $7, amount_captured = $8, amount_refunded = $9, psp = $10,
             charge_id = $11, decline_code = $12, failure_reason = $13, risk_score = $14,
             risk_reasons = $15, version = $16, updated_at = now()
         WHERE payment_id = $1 AND version = $2",
    )
    .bind(order.payment_id.as_uuid())
    .bind(expected_version)
    .bind(order.customer_id.as_ref().map(CustomerId::as_str))
    .bind(order.capture.map(capture_mode_str))
    .bind(order.description.as_deref())
    .bind(serde_json::to_value(&order.metadata).context("encoding metadata")?)
    .bind(order.status.as_str())
    .bind(order.amount_captured)
    .bind(order.amount_refunded)
    .bind(order.psp.as_deref())
    .bind(order.charge_id.as_deref())
    .bind(order.decline_code.as_deref())
    .bind(order.failure_reason.as_deref())
    .bind(risk_score(order))
    .bind(risk_reasons(order)?)
    .bind(order.version)
    .execute(&mut *tx)
    .await
    .context("updating the order")?
    .rows_affected();
    Ok(updated == 1)
}

pub struct HistoryRow<'a> {
    pub payment_id: PaymentId,
    pub event_id: Uuid,
    pub event_type: &'a str,
    pub occurred_at: DateTime<Utc>,
    pub history: &'a History,
}

pub async fn record_history(tx: &mut PgConnection, row: &HistoryRow<'_>) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO order_store.order_events
             (payment_id, event_id, event_type, from_status, to_status, applied, note, occurred_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(row.payment_id.as_uuid())
    .bind(row.event_id)
    .bind(row.event_type)
    .bind(row.history.from.map(|s| s.as_str()))
    .bind(row.history.to.map(|s| s.as_str()))
    .bind(row.history.applied)
    .bind(&row.history.note)
    .bind(row.occurred_at)
    .execute(&mut *tx)
    .await
    .context("appending to the order history")?;
    Ok(())
}

fn risk_score(order: &Order) -> Option<i32> {
    order
        .risk_score
        .map(|s| i32::try_from(s).unwrap_or(i32::MAX))
}

fn risk_reasons(order: &Order) -> anyhow::Result<Option<serde_json::Value>> {
    order
        .risk_reasons
        .as_ref()
        .map(|r| serde_json::to_value(r).context("encoding risk reasons"))
        .transpose()
}

/// Rows are only written by this service, so a value that does not parse means the table was
/// edited by hand; the error names the column for whoever has to look.
fn decode(row: &PgRow) -> anyhow::Result<Order> {
    let text = |col: &str| -> anyhow::Result<String> {
        row.try_get::<String, _>(col)
            .with_context(|| format!("reading orders.{col}"))
    };
    let opt_text = |col: &str| -> anyhow::Result<Option<String>> {
        row.try_get::<Option<String>, _>(col)
            .with_context(|| format!("reading orders.{col}"))
    };
    let invalid = |col: &str, e: &dyn std::fmt::Display| anyhow::anyhow!("orders.{col}: {e}");

    let payment_id: Uuid = row
        .try_get("payment_id")
        .context("reading orders.payment_id")?;
    let merchant_id =
        MerchantId::parse(&text("merchant_id")?).map_err(|e| invalid("merchant_id", &e))?;
    let amount = Amount::new(row.try_get("amount").context("reading orders.amount")?)
        .map_err(|e| invalid("amount", &e))?;
    let currency = Currency::parse(&text("currency")?).map_err(|e| invalid("currency", &e))?;
    let customer_id = opt_text("customer_id")?
        .map(|c| CustomerId::parse(&c).map_err(|e| invalid("customer_id", &e)))
        .transpose()?;
    let capture = opt_text("capture")?
        .map(|c| parse_capture_mode(&c).ok_or_else(|| invalid("capture", &c)))
        .transpose()?;
    let status_text = text("status")?;
    let status =
        PaymentStatus::parse(&status_text).ok_or_else(|| invalid("status", &status_text))?;
    let metadata: serde_json::Value = row.try_get("metadata").context("reading orders.metadata")?;
    let risk_reasons: Option<serde_json::Value> = row
        .try_get("risk_reasons")
        .context("reading orders.risk_reasons")?;
    let risk_score: Option<i32> = row
        .try_get("risk_score")
        .context("reading orders.risk_score")?;
    Ok(Order {
        payment_id: PaymentId::from_uuid(payment_id),
        merchant_id,
        amount,
        currency,
        customer_id,
        capture,
        description: opt_text("description")?,
        metadata: serde_json::from_value(metadata).map_err(|e| invalid("metadata", &e))?,
        status,
        amount_captured: row
            .try_get("amount_captured")
            .context("reading orders.amount_captured")?,
        amount_refunded: row
            .try_get("amount_refunded")
            .context("reading orders.amount_refunded")?,
        psp: opt_text("psp")?,
        charge_id: opt_text("charge_id")?,
        decline_code: opt_text("decline_code")?,
        failure_reason: opt_text("failure_reason")?,
        risk_score: risk_score.map(|s| s.max(0).unsigned_abs()),
        risk_reasons: risk_reasons
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| invalid("risk_reasons", &e))?,
        version: row.try_get("version").context("reading orders.version")?,
    })
}

/// Serialises the handling of one payment's events across batches and instances, until the
/// transaction ends. Parking needs it: without it, an event parked by one transaction while
/// another applies the change it waits for could be missed by both (each reading before the
/// other commits). The two-key form keeps these locks apart from the relay's single-key lock.
pub async fn lock_payment(tx: &mut PgConnection, payment_id: PaymentId) -> anyhow::Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('order_store.payment'), hashtext($1))")
        .bind(payment_id.as_uuid().to_string())
        .execute(&mut *tx)
        .await
        .context("locking the payment")?;
    Ok(())
}

/// Whether the event is already parked: like [`already_recorded`], a guard beyond the inbox.
pub async fn already_parked(tx: &mut PgConnection, event_id: Uuid) -> anyhow::Result<bool> {
    let found: Option<i32> =
        sqlx::query_scalar("SELECT 1 FROM order_store.parked_events WHERE event_id = $1")
            .bind(event_id)
            .fetch_optional(&mut *tx)
            .await
            .context("looking up the event among parked events")?;
    Ok(found.is_some())
}

pub async fn refund_applied(tx: &mut PgConnection, refund_id: &str) -> anyhow::Result<bool> {
    let found: Option<i32> =
        sqlx::query_scalar("SELECT 1 FROM order_store.refunds WHERE refund_id = $1")
            .bind(refund_id)
            .fetch_optional(&mut *tx)
            .await
            .context("looking up the refund")?;
    Ok(found.is_some())
}

/// Returns false when the refund id is already taken (applied by a concurrent transaction).
pub async fn insert_refund(
    tx: &mut PgConnection,
    payment_id: PaymentId,
    event_id: Uuid,
    refund: &AppliedRefund,
) -> anyhow::Result<bool> {
    let inserted = sqlx::query(
        "INSERT INTO order_store.refunds
             (refund_id, payment_id, amount, currency, psp, psp_refund_id, event_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (refund_id) DO NOTHING",
    )
    .bind(&refund.refund_id)
    .bind(payment_id.as_uuid())
    .bind(refund.amount)
    .bind(refund.currency.as_str())
    .bind(&refund.psp)
    .bind(&refund.psp_refund_id)
    .bind(event_id)
    .execute(&mut *tx)
    .await
    .context("recording the refund")?
    .rows_affected();
    Ok(inserted == 1)
}

/// An event kept until the order reaches the state it needs.
#[derive(Debug, Clone)]
pub struct Parked {
    pub seq: i64,
    pub event_id: Uuid,
    pub event_type: String,
    pub data: serde_json::Value,
    pub occurred_at: DateTime<Utc>,
    pub reason: String,
    pub parked_at: DateTime<Utc>,
}

pub async fn park(
    tx: &mut PgConnection,
    payment_id: PaymentId,
    event_id: Uuid,
    event_type: &str,
    data: &serde_json::Value,
    occurred_at: DateTime<Utc>,
    reason: &str,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO order_store.parked_events
             (event_id, payment_id, event_type, data, occurred_at, reason)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(event_id)
    .bind(payment_id.as_uuid())
    .bind(event_type)
    .bind(data)
    .bind(occurred_at)
    .bind(reason)
    .execute(&mut *tx)
    .await
    .context("parking the event")?;
    Ok(())
}

/// The payment's parked events in arrival order.
pub async fn waiting(tx: &mut PgConnection, payment_id: PaymentId) -> anyhow::Result<Vec<Parked>> {
    let rows = sqlx::query(
        "SELECT seq, event_id, event_type, data, occurred_at, reason, parked_at
         FROM order_store.parked_events
         WHERE payment_id = $1 AND resolved_at IS NULL ORDER BY seq",
    )
    .bind(payment_id.as_uuid())
    .fetch_all(&mut *tx)
    .await
    .context("reading parked events")?;
    rows.iter()
        .map(|r| {
            Ok(Parked {
                seq: r.try_get("seq")?,
                event_id: r.try_get("event_id")?,
                event_type: r.try_get("event_type")?,
                data: r.try_get("data")?,
                occurred_at: r.try_get("occurred_at")?,
                reason: r.try_get("reason")?,
                parked_at: r.try_get("parked_at")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .context("decoding parked events")
}

pub async fn resolve(tx: &mut PgConnection, seq: i64, applied: bool) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE order_store.parked_events SET resolved_at = now(), resolution = $2 WHERE seq = $1",
    )
    .bind(seq)
    .bind(if applied { "applied" } else { "refused" })
    .execute(&mut *tx)
    .await
    .context("resolving a parked event")?;
    Ok(())
}
