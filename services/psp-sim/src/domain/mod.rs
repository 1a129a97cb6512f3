//! Pure PSP rules: no HTTP, no clock, no randomness (callers pass `now` and the decline).

pub mod idempotency;
pub mod ledger;

use ledger::Charge;
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ChargeEvent {
    #[serde(rename = "charge.succeeded")]
    Succeeded,
    #[serde(rename = "charge.failed")]
    Failed,
    #[serde(rename = "charge.refunded")]
    Refunded,
}

/// A webhook event; `data` is the charge as it stands right after the change.
#[derive(Clone, Debug, Serialize)]
pub struct Event {
    pub id: String,
    pub object: &'static str,
    #[serde(rename = "type")]
    pub kind: ChargeEvent,
    pub created: i64,
    pub data: Charge,
}

impl Event {
    pub fn new(id: String, kind: ChargeEvent, created: i64, data: Charge) -> Self {
        Self {
            id,
            object: "event",
            kind,
            created,
            data,
        }
    }
}
