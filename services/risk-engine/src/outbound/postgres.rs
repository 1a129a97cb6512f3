//! Postgres adapters: stored decisions, the blocklist table, the rule-set table.

use anyhow::Context;
use async_trait::async_trait;
use paystream_domain::{CustomerId, MerchantId, PaymentId, PaymentMethod, RiskDecision};
use sqlx::{PgConnection, PgPool, Row};

use crate::domain::Verdict;
use crate::domain::ports::{Blocklist, BlocklistError, RulesSource, RulesSourceError};
use crate::domain::rules::{InvalidRules, Rules};

fn decision_str(d: RiskDecision) -> &'static str {
    match d {
        RiskDecision::Approved => "approved",
        RiskDecision::Declined => "declined",
    }
}

fn verdict_from_row(row: &sqlx::postgres::PgRow) -> anyhow::Result<Verdict> {
    let stored: String = row.try_get("decision")?;
    let score: i32 = row.try_get("score")?;
    let reasons: serde_json::Value = row.try_get("reasons")?;
    Ok(Verdict {
        decision: if stored == "approved" {
            RiskDecision::Approved
        } else {
            RiskDecision::Declined
        },
        score: score.clamp(0, 100) as u32,
        reasons: serde_json::from_value(reasons).context("stored reasons are not a list")?,
        fired: Vec::new(),
    })
}

/// The decision stored for a payment, if it was decided before.
pub async fn decision(
    tx: &mut PgConnection,
    payment_id: PaymentId,
) -> anyhow::Result<Option<Verdict>> {
    let row =
        sqlx::query("SELECT decision, score, reasons FROM risk.decisions WHERE payment_id = $1")
            .bind(payment_id.as_uuid())
            .fetch_optional(&mut *tx)
            .await
            .context("reading the risk decision")?;
    row.as_ref().map(verdict_from_row).transpose()
}

/// Stores the verdict, or returns the one stored before for this payment (two instances racing
/// on one payment agree on the first).
pub async fn save_decision(
    tx: &mut PgConnection,
    payment_id: PaymentId,
    merchant_id: &MerchantId,
    verdict: Verdict,
    rules_version: &str,
) -> anyhow::Result<Verdict> {
    let row = sqlx::query(
        "INSERT INTO risk.decisions (payment_id, merchant_id, decision, score, reasons, rules_version)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (payment_id) DO UPDATE SET payment_id = EXCLUDED.payment_id
         RETURNING decision, score, reasons",
    )
    .bind(payment_id.as_uuid())
    .bind(merchant_id.as_str())
    .bind(decision_str(verdict.decision))
    .bind(verdict.score as i32)
    .bind(serde_json::to_value(&verdict.reasons).context("encoding reasons")?)
    .bind(rules_version)
    .fetch_one(&mut *tx)
    .await
    .context("saving the risk decision")?;
    let mut stored = verdict_from_row(&row)?;
    if stored.decision == verdict.decision && stored.reasons == verdict.reasons {
        stored.fired = verdict.fired;
    }
    Ok(stored)
}

/// `risk.blocklist`: entries for the merchant or for every merchant (`*`).
pub struct PostgresBlocklist {
    pool: PgPool,
}

impl PostgresBlocklist {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    async fn lookup(
        &self,
        kind: &str,
        merchant: &MerchantId,
        value: &str,
    ) -> Result<Option<String>, BlocklistError> {
        let reason: Option<String> = sqlx::query_scalar(
            "SELECT reason FROM risk.blocklist
             WHERE kind = $1 AND value = $2 AND merchant_id IN ('*', $3)
             ORDER BY merchant_id DESC LIMIT 1",
        )
        .bind(kind)
        .bind(value)
        .bind(merchant.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| BlocklistError::Unavailable(format!("reading risk.blocklist: {e}")))?;
        Ok(reason.map(|r| {
            if r.is_empty() {
                "no reason given".to_owned()
            } else {
                r
            }
        }))
    }
}

#[async_trait]
impl Blocklist for PostgresBlocklist {
    async fn customer(
        &self,
        merchant: &MerchantId,
        customer: &CustomerId,
    ) -> Result<Option<String>, BlocklistError> {
        self.lookup("customer", merchant, customer.as_str()).await
    }

    async fn payment_method(
        &self,
        merchant: &MerchantId,
        method: &PaymentMethod,
    ) -> Result<Option<String>, BlocklistError> {
        self.lookup("payment_method", merchant, method.as_str())
            .await
    }
}

/// `risk.rule_sets`: the newest row is in force. A document without its own `version` is
/// labelled `rule_sets:<row version>`.
pub struct TableRules {
    pool: PgPool,
}

impl TableRules {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[async_trait]
impl RulesSource for TableRules {
    fn describe(&self) -> String {
        "table risk.rule_sets".to_owned()
    }

    async fn load(&self) -> Result<Option<Rules>, RulesSourceError> {
        let row =
            sqlx::query("SELECT version, rules FROM risk.rule_sets ORDER BY version DESC LIMIT 1")
                .fetch_optional(&self.pool)
                .await
                .context("reading risk.rule_sets")
                .map_err(RulesSourceError::Unavailable)?;
        let Some(row) = row else { return Ok(None) };
        let version: i64 = row
            .try_get("version")
            .context("risk.rule_sets.version")
            .map_err(RulesSourceError::Unavailable)?;
        let doc: serde_json::Value = row
            .try_get("rules")
            .context("risk.rule_sets.rules")
            .map_err(RulesSourceError::Unavailable)?;
        let has_version = doc.get("version").is_some();
        let mut rules: Rules = serde_json::from_value(doc)
            .map_err(|e| InvalidRules(format!("rule set {version}: {e}")))?;
        if !has_version {
            rules.version = format!("rule_sets:{version}");
        }
        rules.validate()?;
        Ok(Some(rules))
    }
}
