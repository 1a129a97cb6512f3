use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use chrono::NaiveDate;
use paystream_domain::PaymentId;
use serde::Deserialize;

use crate::config::PspEndpoint;
use crate::domain::PspCharge;
use crate::domain::ports::{PspLedger, PspLedgerError};
use crate::domain::reconcile::SettlementLine;

/// Status inquiry over the PSP wire protocol (`GET /v1/charges?reference=<payment id>`) and the
/// settlement report (`GET /v1/settlements?date=YYYY-MM-DD`).
pub struct WirePspLedger {
    name: String,
    url: String,
    api_key: String,
    http: reqwest::Client,
}

impl WirePspLedger {
    pub fn new(endpoint: &PspEndpoint) -> anyhow::Result<Self> {
        Ok(Self {
            name: endpoint.name.clone(),
            url: endpoint.url.trim_end_matches('/').to_owned(),
            api_key: endpoint.api_key.clone(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .context("building the PSP HTTP client")?,
        })
    }
}

#[derive(Deserialize)]
struct WireCharge {
    id: String,
    status: String,
    amount: i64,
    #[serde(default)]
    amount_captured: i64,
    #[serde(default)]
    amount_refunded: i64,
}

#[derive(Deserialize)]
struct WireList {
    data: Vec<WireCharge>,
}

#[derive(Deserialize)]
struct WireSettlementLine {
    charge: String,
    reference: String,
    currency: String,
    captured: i64,
    #[serde(default)]
    refunded: i64,
}

#[derive(Deserialize)]
struct WireSettlement {
    lines: Vec<WireSettlementLine>,
}

impl WirePspLedger {
    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T, PspLedgerError> {
        let response = self
            .http
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.api_key)
            .query(query)
            .send()
            .await
            .map_err(|e| PspLedgerError::Unavailable(e.to_string()))?;
        if !response.status().is_success() {
            return Err(PspLedgerError::Unavailable(format!(
                "{path} answered {}",
                response.status()
            )));
        }
        response
            .json()
            .await
            .map_err(|e| PspLedgerError::Unavailable(format!("unreadable answer from {path}: {e}")))
    }
}

#[async_trait]
impl PspLedger for WirePspLedger {
    fn name(&self) -> &str {
        &self.name
    }

    async fn charges_for(&self, payment_id: PaymentId) -> Result<Vec<PspCharge>, PspLedgerError> {
        let list: WireList = self
            .get("/v1/charges", &[("reference", payment_id.to_string())])
            .await?;
        Ok(list
            .data
            .into_iter()
            .map(|c| PspCharge {
                psp: self.name.clone(),
                id: c.id,
                status: c.status,
                amount: c.amount,
                amount_captured: c.amount_captured,
                amount_refunded: c.amount_refunded,
            })
            .collect())
    }

    async fn settlement(&self, date: NaiveDate) -> Result<Vec<SettlementLine>, PspLedgerError> {
        let report: WireSettlement = self
            .get(
                "/v1/settlements",
                &[("date", date.format("%Y-%m-%d").to_string())],
            )
            .await?;
        Ok(report
            .lines
            .into_iter()
            .map(|l| SettlementLine {
                psp: self.name.clone(),
                date,
                charge: l.charge,
                reference: l.reference,
                currency: l.currency,
                captured: l.captured,
                refunded: l.refunded,
            })
            .collect())
    }
}
