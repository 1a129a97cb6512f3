use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use paystream_domain::PaymentId;
use serde::Deserialize;

use crate::config::PspEndpoint;
use crate::domain::PspCharge;
use crate::domain::ports::{PspLedger, PspLedgerError};

/// Status inquiry over the PSP wire protocol: `GET /v1/charges?reference=<payment id>`.
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
}

#[derive(Deserialize)]
struct WireList {
    data: Vec<WireCharge>,
}

#[async_trait]
impl PspLedger for WirePspLedger {
    fn name(&self) -> &str {
        &self.name
    }

    async fn charges_for(&self, payment_id: PaymentId) -> Result<Vec<PspCharge>, PspLedgerError> {
        let response = self
            .http
            .get(format!("{}/v1/charges", self.url))
            .bearer_auth(&self.api_key)
            .query(&[("reference", payment_id.to_string())])
            .send()
            .await
            .map_err(|e| PspLedgerError::Unavailable(e.to_string()))?;
        if !response.status().is_success() {
            return Err(PspLedgerError::Unavailable(format!(
                "answered {}",
                response.status()
            )));
        }
        let list: WireList = response
            .json()
            .await
            .map_err(|e| PspLedgerError::Unavailable(format!("unreadable answer: {e}")))?;
        Ok(list
            .data
            .into_iter()
            .map(|c| PspCharge {
                psp: self.name.clone(),
                id: c.id,
                status: c.status,
                amount: c.amount,
                amount_captured: c.amount_captured,
            })
            .collect())
    }
}
