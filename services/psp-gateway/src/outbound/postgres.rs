//! Request storage: one row per PSP attempt, written before the call.

use anyhow::Context;
use paystream_domain::PaymentId;
use sqlx::{PgConnection, PgPool, Row};

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
}

#[derive(Debug, Clone)]
pub struct Attempt {
    pub psp: String,
    pub psp_key: String,
    pub state: AttemptState,
    pub decline_code: Option<String>,
}

pub async fn attempts(
    conn: &mut PgConnection,
    payment_id: PaymentId,
) -> anyhow::Result<Vec<Attempt>> {
    let rows = sqlx::query(
        "SELECT psp, psp_key, state, decline_code FROM psp_gateway.attempts
         WHERE payment_id = $1 AND operation = 'charge' ORDER BY attempt",
    )
    .bind(payment_id.as_uuid())
    .fetch_all(&mut *conn)
    .await
    .context("reading PSP attempts")?;
    rows.iter()
        .map(|r| {
            Ok(Attempt {
                psp: r.try_get("psp")?,
                psp_key: r.try_get("psp_key")?,
                state: AttemptState::parse(r.try_get::<&str, _>("state")?),
                decline_code: r.try_get("decline_code")?,
            })
        })
        .collect()
}

/// Commits the attempt on its own connection, before the PSP sees the request: whatever happens
/// next, a later delivery finds the PSP and key this payment may be charged under.
pub async fn insert_attempt(
    pool: &PgPool,
    payment_id: PaymentId,
    psp: &str,
    attempt: i32,
) -> anyhow::Result<Attempt> {
    let psp_key = format!("{payment_id}:charge:{psp}:{attempt}");
    sqlx::query(
        "INSERT INTO psp_gateway.attempts (payment_id, psp, psp_key, attempt, state)
         VALUES ($1, $2, $3, $4, 'pending') ON CONFLICT (payment_id, operation, attempt) DO NOTHING",
    )
    .bind(payment_id.as_uuid())
    .bind(psp)
    .bind(&psp_key)
    .bind(attempt)
    .execute(pool)
    .await
    .context("storing the PSP attempt")?;
    let row = sqlx::query(
        "SELECT psp, psp_key, state, decline_code FROM psp_gateway.attempts
         WHERE payment_id = $1 AND operation = 'charge' AND attempt = $2",
    )
    .bind(payment_id.as_uuid())
    .bind(attempt)
    .fetch_one(pool)
    .await
    .context("reading back the PSP attempt")?;
    Ok(Attempt {
        psp: row.try_get("psp")?,
        psp_key: row.try_get("psp_key")?,
        state: AttemptState::parse(row.try_get::<&str, _>("state")?),
        decline_code: row.try_get("decline_code")?,
    })
}

pub async fn update_attempt<'e, E>(
    executor: E,
    psp_key: &str,
    state: AttemptState,
    charge_id: Option<&str>,
    decline_code: Option<&str>,
) -> anyhow::Result<()>
where
    E: sqlx::PgExecutor<'e>,
{
    sqlx::query(
        "UPDATE psp_gateway.attempts
         SET state = $2, charge_id = COALESCE($3, charge_id), decline_code = $4, updated_at = now()
         WHERE psp_key = $1",
    )
    .bind(psp_key)
    .bind(state.as_str())
    .bind(charge_id)
    .bind(decline_code)
    .execute(executor)
    .await
    .context("updating the PSP attempt")?;
    Ok(())
}
