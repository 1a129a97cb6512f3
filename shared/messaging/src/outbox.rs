//! The transactional outbox: outgoing records are rows written in the same transaction as the
//! effect that caused them, and [`crate::OutboxRelay`] publishes them afterwards. A crash between
//! the two only delays a record; the inbox of the consumer drops the copy a re-publish may make.

use anyhow::Context;
use paystream_domain::{Event, PaymentId};
use sqlx::{AssertSqlSafe, PgConnection};

use crate::envelope::Envelope;
use crate::trace;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRecord {
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl OutboxRecord {
    /// An event record keyed by payment id, with the contract headers.
    pub fn event<E: Event>(
        payment_id: PaymentId,
        data: E,
        traceparent: &str,
        correlation_id: &str,
    ) -> anyhow::Result<Self> {
        let envelope = Envelope::new(payment_id, data);
        let value = serde_json::to_vec(&envelope).context("serialising an event envelope")?;
        Ok(Self {
            topic: E::TOPIC.to_owned(),
            key: Some(payment_id.to_string().into_bytes()),
            value,
            headers: vec![
                ("event_type".to_owned(), E::EVENT_TYPE.as_bytes().to_vec()),
                ("traceparent".to_owned(), traceparent.as_bytes().to_vec()),
                (
                    "correlation_id".to_owned(),
                    correlation_id.as_bytes().to_vec(),
                ),
            ],
        })
    }

    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }
}

/// Collects what a handler wants to publish. The runtime writes it to the outbox only if the
/// handler succeeds, inside the handler's savepoint, so a failed record publishes nothing.
#[derive(Debug, Default)]
pub struct Emitter {
    parent_traceparent: Option<String>,
    correlation_id: Option<String>,
    records: Vec<OutboxRecord>,
}

impl Emitter {
    pub fn new(parent_traceparent: Option<String>, correlation_id: Option<String>) -> Self {
        Self {
            parent_traceparent,
            correlation_id,
            records: Vec::new(),
        }
    }

    pub fn emit<E: Event>(&mut self, payment_id: PaymentId, data: E) -> anyhow::Result<()> {
        let traceparent = trace::child_traceparent(self.parent_traceparent.as_deref());
        let correlation = self
            .correlation_id
            .clone()
            .unwrap_or_else(|| payment_id.to_string());
        let record = OutboxRecord::event(payment_id, data, &traceparent, &correlation)?;
        self.records.push(record);
        Ok(())
    }

    pub fn push(&mut self, record: OutboxRecord) {
        self.records.push(record);
    }

    pub fn take(&mut self) -> Vec<OutboxRecord> {
        std::mem::take(&mut self.records)
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

/// Appends records to `<schema>.outbox` on the caller's transaction.
pub async fn enqueue(
    conn: &mut PgConnection,
    schema: &str,
    records: &[OutboxRecord],
) -> anyhow::Result<()> {
    if records.is_empty() {
        return Ok(());
    }
    let mut topics = Vec::with_capacity(records.len());
    let mut keys = Vec::with_capacity(records.len());
    let mut values = Vec::with_capacity(records.len());
    let mut headers = Vec::with_capacity(records.len());
    for r in records {
        topics.push(r.topic.clone());
        keys.push(r.key.clone());
        values.push(r.value.clone());
        headers.push(encode_headers(&r.headers));
    }
    let sql = format!(
        "INSERT INTO {schema}.outbox (topic, key, value, headers)
         SELECT * FROM UNNEST($1::text[], $2::bytea[], $3::bytea[], $4::jsonb[])"
    );
    sqlx::query(AssertSqlSafe(sql))
        .bind(&topics)
        .bind(&keys)
        .bind(&values)
        .bind(&headers)
        .execute(&mut *conn)
        .await
        .with_context(|| format!("writing {} records to {schema}.outbox", records.len()))?;
    // Wakes the relay at once instead of at its next poll; delivered only on commit.
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(notify_channel(schema))
        .execute(&mut *conn)
        .await
        .context("notifying the outbox relay")?;
    Ok(())
}

pub fn notify_channel(schema: &str) -> String {
    format!("{schema}_outbox")
}

/// Header values are bytes and must survive byte-for-byte (dead letter contract), so they are
/// stored as hex inside a JSON array of `[name, hex]` pairs.
fn encode_headers(headers: &[(String, Vec<u8>)]) -> serde_json::Value {
    serde_json::Value::Array(
        headers
            .iter()
            .map(|(n, v)| serde_json::json!([n, hex_encode(v)]))
            .collect(),
    )
}

pub(crate) fn decode_headers(value: &serde_json::Value) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let items = value
        .as_array()
        .context("outbox headers are not an array")?;
    items
        .iter()
        .map(|pair| {
            let name = pair
                .get(0)
                .and_then(|v| v.as_str())
                .context("outbox header without a name")?;
            let hex = pair
                .get(1)
                .and_then(|v| v.as_str())
                .context("outbox header without a value")?;
            Ok((name.to_owned(), hex_decode(hex)?))
        })
        .collect()
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(s: &str) -> anyhow::Result<Vec<u8>> {
    anyhow::ensure!(s.len().is_multiple_of(2), "odd hex length in outbox header");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).context("bad hex digit in outbox header"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_survive_the_round_trip_byte_for_byte() {
        let headers = vec![
            ("a".to_owned(), vec![0u8, 255, 10, 13]),
            ("empty".to_owned(), vec![]),
        ];
        assert_eq!(
            decode_headers(&encode_headers(&headers)).ok(),
            Some(headers)
        );
    }
}
