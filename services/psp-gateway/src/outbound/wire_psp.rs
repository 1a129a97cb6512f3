//! The adapter for any PSP speaking the PSP wire protocol (DESIGN.md §4): psp-sim, or a
//! provider's sandbox that follows it.

use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use paystream_domain::PaymentId;
use reqwest::StatusCode;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::config::PspConfig;
use crate::domain::ports::{Charge, ChargeRequest, ChargeStatus, Psp, PspError, Refund};

pub struct WirePsp {
    name: String,
    base_url: String,
    api_key: String,
    http: reqwest::Client,
}

impl WirePsp {
    /// `timeout` bounds every call end to end (connect, send, answer, body).
    pub fn new(config: &PspConfig, timeout: Duration) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(2)))
            .build()
            .context("building the PSP HTTP client")?;
        Ok(Self {
            name: config.name.clone(),
            base_url: config.url.trim_end_matches('/').to_owned(),
            api_key: config.api_key.clone(),
            http,
        })
    }

    /// Sends a mutating call with its idempotency key and maps the answer to the port's terms.
    async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        idempotency_key: &str,
        body: serde_json::Value,
    ) -> Result<T, PspError> {
        let response = self
            .http
            .post(format!("{}{path}", self.base_url))
            .bearer_auth(&self.api_key)
            .header("Idempotency-Key", idempotency_key)
            .json(&body)
            .send()
            .await
            .map_err(transport_error)?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(transport_error)?;
        match status {
            StatusCode::OK | StatusCode::CREATED => serde_json::from_slice(&bytes)
                .map_err(|e| PspError::Unknown(format!("unreadable answer: {e}"))),
            StatusCode::PAYMENT_REQUIRED => {
                let err = wire_error(&bytes);
                Err(PspError::Declined {
                    code: err.code.unwrap_or_else(|| "card_declined".to_owned()),
                    message: err.message.unwrap_or_default(),
                })
            }
            StatusCode::CONFLICT => Err(PspError::InFlight),
            // Not processed, but not a verdict on the request either: retry later, same key.
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::TOO_MANY_REQUESTS => {
                Err(PspError::Unknown(format!("PSP answered {status}")))
            }
            s if s.is_server_error() => Err(PspError::Unknown(format!("PSP answered {s}"))),
            s => {
                let err = wire_error(&bytes);
                Err(PspError::Rejected {
                    code: err.code.unwrap_or_else(|| format!("http_{}", s.as_u16())),
                    message: err.message.unwrap_or_default(),
                })
            }
        }
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

impl From<WireCharge> for Charge {
    fn from(c: WireCharge) -> Self {
        let status = match c.status.as_str() {
            "succeeded" => ChargeStatus::Succeeded,
            "requires_capture" => ChargeStatus::RequiresCapture,
            "canceled" => ChargeStatus::Canceled,
            "failed" => ChargeStatus::Failed,
            _ => ChargeStatus::Other,
        };
        // Some PSPs leave amount_captured out of a charge captured at creation.
        let amount_captured = if status == ChargeStatus::Succeeded && c.amount_captured == 0 {
            c.amount
        } else {
            c.amount_captured
        };
        Charge {
            id: c.id,
            status,
            amount: c.amount,
            amount_captured,
        }
    }
}

#[derive(Deserialize)]
struct WireRefund {
    id: String,
    charge: String,
    amount: i64,
}

#[derive(Deserialize)]
struct WireList {
    data: Vec<WireCharge>,
}

#[derive(Deserialize, Default)]
struct WireErrorBody {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Deserialize)]
struct WireError {
    error: WireErrorBody,
}

fn wire_error(bytes: &[u8]) -> WireErrorBody {
    serde_json::from_slice::<WireError>(bytes)
        .map(|e| e.error)
        .unwrap_or_default()
}

fn transport_error(e: reqwest::Error) -> PspError {
    // Whatever happened on the wire, the PSP may have acted on the request.
    PspError::Unknown(if e.is_timeout() {
        "timeout".to_owned()
    } else if e.is_connect() {
        "connection failed".to_owned()
    } else {
        format!("transport error: {e}")
    })
}

#[async_trait]
impl Psp for WirePsp {
    fn name(&self) -> &str {
        &self.name
    }

    async fn create_charge(
        &self,
        request: &ChargeRequest,
        idempotency_key: &str,
    ) -> Result<Charge, PspError> {
        let body = serde_json::json!({
            "amount": request.amount.minor(),
            "currency": request.currency.as_str(),
            "payment_method": request.payment_method.as_str(),
            "capture": request.capture,
            "reference": request.payment_id.to_string(),
        });
        self.post::<WireCharge>("/v1/charges", idempotency_key, body)
            .await
            .map(Charge::from)
    }

    async fn charges_for(&self, payment_id: PaymentId) -> Result<Vec<Charge>, PspError> {
        let response = self
            .http
            .get(format!("{}/v1/charges", self.base_url))
            .bearer_auth(&self.api_key)
            .query(&[("reference", payment_id.to_string())])
            .send()
            .await
            .map_err(transport_error)?;
        let status = response.status();
        if !status.is_success() {
            return Err(PspError::Unknown(format!(
                "charge inquiry answered {status}"
            )));
        }
        let list: WireList = response.json().await.map_err(transport_error)?;
        Ok(list.data.into_iter().map(Charge::from).collect())
    }

    async fn capture(
        &self,
        charge_id: &str,
        amount: Option<i64>,
        idempotency_key: &str,
    ) -> Result<Charge, PspError> {
        let body = match amount {
            Some(a) => serde_json::json!({ "amount": a }),
            None => serde_json::json!({}),
        };
        self.post::<WireCharge>(
            &format!("/v1/charges/{charge_id}/capture"),
            idempotency_key,
            body,
        )
        .await
        .map(Charge::from)
    }

    async fn cancel(&self, charge_id: &str, idempotency_key: &str) -> Result<Charge, PspError> {
        self.post::<WireCharge>(
            &format!("/v1/charges/{charge_id}/cancel"),
            idempotency_key,
            serde_json::json!({}),
        )
        .await
        .map(Charge::from)
    }

    async fn refund(
        &self,
        charge_id: &str,
        amount: i64,
        idempotency_key: &str,
    ) -> Result<Refund, PspError> {
        let body = serde_json::json!({ "charge": charge_id, "amount": amount });
        let r: WireRefund = self.post("/v1/refunds", idempotency_key, body).await?;
        Ok(Refund {
            id: r.id,
            charge: r.charge,
            amount: r.amount,
        })
    }
}
