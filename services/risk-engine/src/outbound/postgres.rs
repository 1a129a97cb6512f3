use anyhow::Context;
use paystream_domain::{PaymentId, PaymentRequested, RiskDecision};
use sqlx::{PgConnection, Row};

use crate::domain::Verdict;

/// Stores the verdict, or returns the one stored before for this payment.
pub async fn save_decision(
    tx: &mut PgConnection,
    payment_id: PaymentId,
    request: &PaymentRequested,
    verdict: Verdict,
) -> anyhow::Result<Verdict> {
    let decision = match verdict.decision {
        RiskDecision::Approved => "approved",
        RiskDecision::Declined => "declined",
    };
    let row = sqlx::query(
        "INSERT INTO risk.decisions (payment_id, merchant_id, decision, score, reasons)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (payment_id) DO UPDATE SET payment_id = EXCLUDED.payment_id
         RETURNING decision, score, reasons",
    )
    .bind(payment_id.as_uuid())
    .bind(request.merchant_id.as_str())
    .bind(decision)
    .bind(verdict.score as i32)
    .bind(serde_json::to_value(&verdict.reasons).context("encoding reasons")?)
    .fetch_one(&mut *tx)
    .await
    .context("saving the risk decision")?;
    let stored: String = row.try_get("decision")?;
    let score: i32 = row.try_get("score")?;
    let reasons: serde_json::Value = row.try_get("reasons")?;
    Ok(Verdict {
        decision: if stored == "approved" {
            RiskDecision::Approved
        } else {
            RiskDecision::Declined
        },
        score: score.max(0) as u32,
        reasons: serde_json::from_value(reasons).unwrap_or_default(),
    })
}
