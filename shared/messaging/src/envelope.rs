use chrono::{DateTime, Utc};
use paystream_domain::{Event, PaymentId};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The record value every topic carries (contract, DESIGN.md §3).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub event_id: Uuid,
    pub event_type: String,
    pub schema_version: u32,
    pub payment_id: PaymentId,
    pub occurred_at: DateTime<Utc>,
    pub data: T,
}

impl<E: Event> Envelope<E> {
    pub fn new(payment_id: PaymentId, data: E) -> Self {
        Self {
            event_id: Uuid::now_v7(),
            event_type: E::EVENT_TYPE.to_owned(),
            schema_version: E::SCHEMA_VERSION,
            payment_id,
            occurred_at: Utc::now(),
            data,
        }
    }
}

/// A consumed record that passed envelope and schema validation. `data` stays JSON until the
/// handler asks for its typed form, because a handler may accept several event types.
#[derive(Debug, Clone)]
pub struct InboundEvent {
    pub event_id: Uuid,
    pub event_type: String,
    pub schema_version: u32,
    pub payment_id: PaymentId,
    pub occurred_at: DateTime<Utc>,
    pub data: serde_json::Value,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub traceparent: Option<String>,
    pub correlation_id: Option<String>,
}

impl InboundEvent {
    /// The typed payload. The schema was already checked, so a failure here means the schema and
    /// the Rust type disagree: a permanent error for this record, not a reason to retry.
    pub fn data<E: Event>(&self) -> anyhow::Result<E> {
        if self.event_type != E::EVENT_TYPE {
            anyhow::bail!(
                "expected event type {} but the record is {}",
                E::EVENT_TYPE,
                self.event_type
            );
        }
        serde_json::from_value(self.data.clone())
            .map_err(|e| anyhow::anyhow!("{} data does not fit its type: {e}", E::EVENT_TYPE))
    }
}
