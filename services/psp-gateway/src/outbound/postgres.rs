//! Request storage (`psp_gateway.attempts`) and seen webhooks (`psp_gateway.webhook_events`).
//!
//! An attempt row is committed before its PSP call, on its own connection, so that whatever
//! happens next, a later delivery finds the PSP and the key the operation may already have been
//! made under. State changes only move forward — pending → unknown → a final state — and each
//! update says whether it made the change, so that the Kafka path and a webhook racing on one
//! attempt publish its outcome once.

use anyhow::Context;
use paystream_domain::{MerchantId, PaymentId};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Row};

use crate::domain::ports::ChargeRequest;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptState {
    Pending,
    Succeeded,
    RequiresCapture,
    Declined,
    Failed,
    Unknown,
}

impl AttemptState {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Succeeded => "succeeded",
            Self::RequiresCapture => "requires_capture",
            Self::Declined => "declined",
            Self::Failed => "failed",
            Self::Unknown => "unknown",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "succeeded" => Self::Succeeded,
            "requires_capture" => Self::RequiresCapture,
            "declined" => Self::Declined,
            "failed" => Self::Failed,
            "unknown" => Self::Unknown,
            _ => Self::Pending,
        }
    }

    /// The PSP's outcome is not known: only the same PSP with the same key may settle it.
    pub fn in_doubt(&self) -> bool {
        matches!(self, Self::Pending | Self::Unknown)
    }

    pub fn charged(&self) -> bool {
        matches!(self, Self::Succeeded | Self::RequiresCapture)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Capture,
    Cancel,
    Refund,
}

impl Operation {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Capture => "capture",
            Self::Cancel => "cancel",
            Self::Refund => "refund",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Attempt {
    pub psp: String,
    pub psp_key: String,
    pub attempt: i32,
    pub state: AttemptState,
    pub charge_id: Option<String>,
    pub decline_code: Option<String>,
    pub error_message: Option<String>,
    pub command_id: Option<String>,
    pub merchant_id: Option<String>,
    pub amount: Option<i64>,
    pub currency: Option<String>,
}

const COLUMNS: &str = "psp, psp_key, attempt, state, charge_id, decline_code, error_message, \
    command_id, merchant_id, amount, currency";

fn attempt(r: &PgRow) -> anyhow::Result<Attempt> {
    Ok(Attempt {
        psp: r.try_get("psp")?,
        psp_key: r.try_get("psp_key")?,
        attempt: r.try_get("attempt")?,
        state: AttemptState::parse(r.try_get::<&str, _>("state")?),
        charge_id: r.try_get("charge_id")?,
        decline_code: r.try_get("decline_code")?,
        error_message: r.try_get("error_message")?,
        command_id: r.try_get("command_id")?,
        merchant_id: r.try_get("merchant_id")?,
        amount: r.try_get("amount")?,
        currency: r.try_get("currency")?,
    })
}

/// The charge attempts of a payment, oldest first.
pub async fn charge_attempts(
    conn: &mut PgConnection,
    payment_id: PaymentId,
) -> anyhow::Result<Vec<Attempt>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM psp_gateway.attempts
         WHERE payment_id = $1 AND operation = 'charge' ORDER BY attempt"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(payment_id.as_uuid())
        .fetch_all(&mut *conn)
        .await
        .context("reading PSP attempts")?;
    rows.iter().map(attempt).collect()
}

/// Commits a charge attempt (number `number`, at `psp`) before the PSP sees the request, and
/// returns the row stored under that number: if another instance stored one first, that one
/// (possibly at another PSP), which the caller must then honour instead.
pub async fn insert_charge_attempt(
    pool: &PgPool,
    payment_id: PaymentId,
    merchant_id: &MerchantId,
    request: &ChargeRequest,
    psp: &str,
    number: i32,
) -> anyhow::Result<Attempt> {
    let psp_key = format!("{payment_id}:charge:{psp}:{number}");
    sqlx::query(
        "INSERT INTO psp_gateway.attempts
            (payment_id, psp, psp_key, attempt, operation, state, merchant_id, amount, currency, capture)
         VALUES ($1, $2, $3, $4, 'charge', 'pending', $5, $6, $7, $8)
         ON CONFLICT DO NOTHING",
    )
    .bind(payment_id.as_uuid())
    .bind(psp)
    .bind(&psp_key)
    .bind(number)
    .bind(merchant_id.as_str())
    .bind(request.amount.minor())
    .bind(request.currency.as_str())
    .bind(request.capture)
    .execute(pool)
    .await
    .context("storing the PSP attempt")?;
    let sql = format!(
        "SELECT {COLUMNS} FROM psp_gateway.attempts
         WHERE payment_id = $1 AND operation = 'charge' AND attempt = $2"
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(payment_id.as_uuid())
        .bind(number)
        .fetch_one(pool)
        .await
        .context("reading back the PSP attempt")?;
    attempt(&row)
}

/// What a final state records besides itself.
#[derive(Debug, Default)]
pub struct Finish<'a> {
    pub charge_id: Option<&'a str>,
    pub psp_object_id: Option<&'a str>,
    pub error_code: Option<&'a str>,
    pub error_message: Option<&'a str>,
}

/// Moves an in-doubt attempt to a final state. Returns false when it was final already (a
/// webhook or another instance settled it first): the caller must not publish the outcome again.
pub async fn finish(
    conn: &mut PgConnection,
    psp_key: &str,
    state: AttemptState,
    detail: Finish<'_>,
) -> anyhow::Result<bool> {
    let changed = sqlx::query(
        "UPDATE psp_gateway.attempts
         SET state = $2, charge_id = COALESCE($3, charge_id), psp_object_id = COALESCE($4, psp_object_id),
             decline_code = COALESCE($5, decline_code), error_message = COALESCE($6, error_message),
             updated_at = now()
         WHERE psp_key = $1 AND state IN ('pending', 'unknown')",
    )
    .bind(psp_key)
    .bind(state.as_str())
    .bind(detail.charge_id)
    .bind(detail.psp_object_id)
    .bind(detail.error_code)
    .bind(detail.error_message)
    .execute(&mut *conn)
    .await
    .context("updating the PSP attempt")?
    .rows_affected();
    Ok(changed == 1)
}

/// Marks a pending attempt as in doubt, committed at once (outside the batch, which is about to
/// be rolled back for a retry) so that operators and webhooks see it.
pub async fn mark_unknown(pool: &PgPool, psp_key: &str) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE psp_gateway.attempts SET state = 'unknown', updated_at = now()
         WHERE psp_key = $1 AND state = 'pending'",
    )
    .bind(psp_key)
    .execute(pool)
    .await
    .context("marking the PSP attempt unknown")?;
    Ok(())
}

pub async fn attempt_by_key(conn: &mut PgConnection, psp_key: &str) -> anyhow::Result<Attempt> {
    let sql = format!("SELECT {COLUMNS} FROM psp_gateway.attempts WHERE psp_key = $1");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(psp_key)
        .fetch_one(&mut *conn)
        .await
        .context("reading the PSP attempt")?;
    attempt(&row)
}

pub async fn command_attempt(
    conn: &mut PgConnection,
    operation: Operation,
    command_id: &str,
) -> anyhow::Result<Option<Attempt>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM psp_gateway.attempts WHERE operation = $1 AND command_id = $2"
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(operation.as_str())
        .bind(command_id)
        .fetch_optional(&mut *conn)
        .await
        .context("reading the command attempt")?;
    row.as_ref().map(attempt).transpose()
}

/// What a command attempt stores.
pub struct NewCommand<'a> {
    pub payment_id: PaymentId,
    pub operation: Operation,
    pub command_id: &'a str,
    pub psp: &'a str,
    pub psp_key: &'a str,
    pub charge_id: Option<&'a str>,
    pub merchant_id: &'a MerchantId,
    pub amount: Option<i64>,
    pub currency: Option<&'a str>,
    /// `pending` before a PSP call; `failed` for a command refused without one.
    pub state: AttemptState,
}

/// Commits a command's attempt (one per command id) and returns the stored row; `None` when
/// another command of the payment took the same attempt number at the same moment (retry).
pub async fn insert_command_attempt(
    pool: &PgPool,
    cmd: &NewCommand<'_>,
) -> anyhow::Result<Option<Attempt>> {
    sqlx::query(
        "INSERT INTO psp_gateway.attempts
            (payment_id, psp, psp_key, attempt, operation, state, command_id, charge_id,
             merchant_id, amount, currency)
         SELECT $1, $2, $3, COALESCE(MAX(attempt), 0) + 1, $4, $5, $6, $7, $8, $9, $10
         FROM psp_gateway.attempts WHERE payment_id = $1 AND operation = $4
         ON CONFLICT DO NOTHING",
    )
    .bind(cmd.payment_id.as_uuid())
    .bind(cmd.psp)
    .bind(cmd.psp_key)
    .bind(cmd.operation.as_str())
    .bind(cmd.state.as_str())
    .bind(cmd.command_id)
    .bind(cmd.charge_id)
    .bind(cmd.merchant_id.as_str())
    .bind(cmd.amount)
    .bind(cmd.currency)
    .execute(pool)
    .await
    .context("storing the command attempt")?;
    let mut conn = pool.acquire().await.context("acquiring a connection")?;
    command_attempt(&mut conn, cmd.operation, cmd.command_id).await
}

/// Stores a command refused without a PSP call, on the caller's transaction. False when the
/// command was stored before.
pub async fn insert_refused_command(
    conn: &mut PgConnection,
    cmd: &NewCommand<'_>,
) -> anyhow::Result<bool> {
    let inserted = sqlx::query(
        "INSERT INTO psp_gateway.attempts
            (payment_id, psp, psp_key, attempt, operation, state, command_id, merchant_id, amount)
         SELECT $1, $2, $3, COALESCE(MAX(attempt), 0) + 1, $4, $5, $6, $7, $8
         FROM psp_gateway.attempts WHERE payment_id = $1 AND operation = $4
         ON CONFLICT DO NOTHING",
    )
    .bind(cmd.payment_id.as_uuid())
    .bind(cmd.psp)
    .bind(cmd.psp_key)
    .bind(cmd.operation.as_str())
    .bind(cmd.state.as_str())
    .bind(cmd.command_id)
    .bind(cmd.merchant_id.as_str())
    .bind(cmd.amount)
    .execute(&mut *conn)
    .await
    .context("storing the refused command")?
    .rows_affected();
    Ok(inserted == 1)
}

/// Claims a webhook event id; false when it was seen before (a replay or a redelivery).
pub async fn claim_webhook(
    conn: &mut PgConnection,
    psp: &str,
    event_id: &str,
    event_type: &str,
    reference: &str,
    charge_id: &str,
) -> anyhow::Result<bool> {
    let inserted = sqlx::query(
        "INSERT INTO psp_gateway.webhook_events (psp, event_id, event_type, reference, charge_id, outcome)
         VALUES ($1, $2, $3, $4, $5, 'received') ON CONFLICT DO NOTHING",
    )
    .bind(psp)
    .bind(event_id)
    .bind(event_type)
    .bind(reference)
    .bind(charge_id)
    .execute(&mut *conn)
    .await
    .context("recording the webhook event")?
    .rows_affected();
    Ok(inserted == 1)
}

pub async fn set_webhook_outcome(
    conn: &mut PgConnection,
    psp: &str,
    event_id: &str,
    outcome: &str,
) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE psp_gateway.webhook_events SET outcome = $3 WHERE psp = $1 AND event_id = $2",
    )
    .bind(psp)
    .bind(event_id)
    .bind(outcome)
    .execute(&mut *conn)
    .await
    .context("recording the webhook outcome")?;
    Ok(())
}

/// The in-doubt charge attempt of a payment at a PSP, locked for this transaction; `None` when
/// there is none or when the gateway is settling it right now (row locked: SKIP LOCKED, so a
/// webhook never waits on a consumer batch).
pub async fn lock_in_doubt_charge(
    conn: &mut PgConnection,
    payment_id: PaymentId,
    psp: &str,
) -> anyhow::Result<Option<Attempt>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM psp_gateway.attempts
         WHERE payment_id = $1 AND psp = $2 AND operation = 'charge' AND state IN ('pending', 'unknown')
         ORDER BY attempt LIMIT 1 FOR UPDATE SKIP LOCKED"
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(payment_id.as_uuid())
        .bind(psp)
        .fetch_optional(&mut *conn)
        .await
        .context("locking the in-doubt charge attempt")?;
    row.as_ref().map(attempt).transpose()
}

/// Like [`lock_in_doubt_charge`], for a capture of `charge_id`.
pub async fn lock_in_doubt_capture(
    conn: &mut PgConnection,
    charge_id: &str,
    psp: &str,
) -> anyhow::Result<Option<Attempt>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM psp_gateway.attempts
         WHERE charge_id = $1 AND psp = $2 AND operation = 'capture' AND state IN ('pending', 'unknown')
         ORDER BY attempt LIMIT 1 FOR UPDATE SKIP LOCKED"
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(charge_id)
        .bind(psp)
        .fetch_optional(&mut *conn)
        .await
        .context("locking the in-doubt capture attempt")?;
    row.as_ref().map(attempt).transpose()
}
