//! Dead letter and retry records. Both keep the original key, value and headers byte for byte;
//! what the runtime adds travels in headers of its own (`dlt.*`, `retry.*`, contract names).

use chrono::{DateTime, Utc};
use paystream_domain::topics;

use crate::outbox::OutboxRecord;

/// A consumed record as it came off the wire, before any parsing.
#[derive(Debug, Clone)]
pub struct RawRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Not JSON, not an envelope, schema-invalid or of an unknown type: never retried.
    Poison,
    /// The handler says retrying cannot help (a rule of the domain refuses the record).
    Permanent,
    /// Transient failures that did not go away within the configured attempts.
    Exhausted,
}

impl ErrorKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Poison => "poison",
            Self::Permanent => "permanent",
            Self::Exhausted => "exhausted",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Failure {
    pub kind: ErrorKind,
    pub message: String,
    pub attempts: u32,
    pub first_failure: DateTime<Utc>,
    pub last_failure: DateTime<Utc>,
}

pub const RETRY_ATTEMPTS: &str = "retry.attempts";
pub const RETRY_DUE_AT: &str = "retry.due.at";
pub const RETRY_FIRST_FAILURE: &str = "retry.first.failure";
pub const RETRY_LAST_ERROR: &str = "retry.last.error";
const RETRY_ORIGINAL_TOPIC: &str = "retry.original.topic";
const RETRY_ORIGINAL_PARTITION: &str = "retry.original.partition";
const RETRY_ORIGINAL_OFFSET: &str = "retry.original.offset";
const RETRY_ORIGINAL_TIMESTAMP: &str = "retry.original.timestamp";

/// Where a record first entered the fleet's consumers: itself, or, for a copy on a retry topic,
/// the record the copy was made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
}

impl RawRecord {
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    fn header_num(&self, name: &str) -> Option<i64> {
        self.header_str(name).and_then(|s| s.parse().ok())
    }

    pub fn retry_attempts(&self) -> u32 {
        self.header_num(RETRY_ATTEMPTS)
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(0)
    }

    pub fn retry_due_at_ms(&self) -> Option<i64> {
        self.header_num(RETRY_DUE_AT)
    }

    pub fn first_failure(&self) -> Option<DateTime<Utc>> {
        self.header_str(RETRY_FIRST_FAILURE)
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.with_timezone(&Utc))
    }

    /// A retry copy names its original in `retry.original.*`; a dead letter an operator replayed
    /// names it in `dlt.original.*`.
    pub fn origin(&self) -> Origin {
        let named = |topic: &str, partition: &str, offset: &str, ts: &str| match (
            self.header_str(topic),
            self.header_num(partition),
            self.header_num(offset),
        ) {
            (Some(topic), Some(partition), Some(offset)) => Some(Origin {
                topic: topic.to_owned(),
                partition: i32::try_from(partition).unwrap_or(-1),
                offset,
                timestamp_ms: self.header_num(ts),
            }),
            _ => None,
        };
        let found = named(
            RETRY_ORIGINAL_TOPIC,
            RETRY_ORIGINAL_PARTITION,
            RETRY_ORIGINAL_OFFSET,
            RETRY_ORIGINAL_TIMESTAMP,
        )
        .or_else(|| {
            named(
                "dlt.original.topic",
                "dlt.original.partition",
                "dlt.original.offset",
                "dlt.original.timestamp",
            )
        });
        match found {
            Some(origin) => origin,
            None => Origin {
                topic: self.topic.clone(),
                partition: self.partition,
                offset: self.offset,
                timestamp_ms: self.timestamp_ms,
            },
        }
    }

    /// The headers the producer of the original record wrote, without the runtime's own
    /// (`replay.count` stays: it is how a replayed record is kept from looping for ever).
    pub fn original_headers(&self) -> Vec<(String, Vec<u8>)> {
        self.headers
            .iter()
            .filter(|(n, _)| !n.starts_with("retry.") && !n.starts_with("dlt."))
            .cloned()
            .collect()
    }
}

fn h(name: &str, value: impl ToString) -> (String, Vec<u8>) {
    (name.to_owned(), value.to_string().into_bytes())
}

/// The `payments.dlt` record for `raw`.
pub fn dead_letter(raw: &RawRecord, group: &str, service: &str, failure: &Failure) -> OutboxRecord {
    let origin = raw.origin();
    let mut headers = raw.original_headers();
    headers.extend([
        h("dlt.original.topic", &origin.topic),
        h("dlt.original.partition", origin.partition),
        h("dlt.original.offset", origin.offset),
        h("dlt.original.timestamp", origin.timestamp_ms.unwrap_or(-1)),
        h("dlt.consumer.group", group),
        h("dlt.service", service),
        h("dlt.error.kind", failure.kind.as_str()),
        h("dlt.error.message", truncate(&failure.message, 2000)),
        h("dlt.attempts", failure.attempts),
        h("dlt.first.failure", failure.first_failure.to_rfc3339()),
        h("dlt.last.failure", failure.last_failure.to_rfc3339()),
    ]);
    OutboxRecord {
        topic: topics::PAYMENTS_DLT.to_owned(),
        key: raw.key.clone(),
        value: raw.value.clone().unwrap_or_default(),
        headers,
    }
}

/// The `<group>.retry` copy of `raw`, due at `due_at`.
pub fn retry_record(
    raw: &RawRecord,
    group: &str,
    attempts: u32,
    first_failure: DateTime<Utc>,
    last_error: &str,
    due_at: DateTime<Utc>,
) -> OutboxRecord {
    let origin = raw.origin();
    let mut headers = raw.original_headers();
    headers.extend([
        h(RETRY_ATTEMPTS, attempts),
        h(RETRY_DUE_AT, due_at.timestamp_millis()),
        h(RETRY_FIRST_FAILURE, first_failure.to_rfc3339()),
        h(RETRY_LAST_ERROR, truncate(last_error, 1000)),
        h(RETRY_ORIGINAL_TOPIC, &origin.topic),
        h(RETRY_ORIGINAL_PARTITION, origin.partition),
        h(RETRY_ORIGINAL_OFFSET, origin.offset),
        h(RETRY_ORIGINAL_TIMESTAMP, origin.timestamp_ms.unwrap_or(-1)),
    ]);
    OutboxRecord {
        topic: topics::retry_topic(group),
        key: raw.key.clone(),
        value: raw.value.clone().unwrap_or_default(),
        headers,
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw() -> RawRecord {
        RawRecord {
            topic: "payments.requested".into(),
            partition: 3,
            offset: 42,
            timestamp_ms: Some(1_700_000_000_000),
            key: Some(b"k".to_vec()),
            value: Some(vec![0xff, 0x00, b'{']),
            headers: vec![("traceparent".into(), b"00-x".to_vec())],
        }
    }

    #[test]
    fn a_dead_letter_from_a_retry_copy_names_the_original_record() {
        let now = Utc::now();
        let copy = retry_record(&raw(), "risk-engine", 3, now, "db down", now);
        let retried = RawRecord {
            topic: copy.topic.clone(),
            partition: 0,
            offset: 7,
            timestamp_ms: None,
            key: copy.key.clone(),
            value: Some(copy.value.clone()),
            headers: copy.headers.clone(),
        };
        let failure = Failure {
            kind: ErrorKind::Exhausted,
            message: "db down".into(),
            attempts: 9,
            first_failure: now,
            last_failure: now,
        };
        let dlt = dead_letter(&retried, "risk-engine", "risk-engine", &failure);
        assert_eq!(dlt.value, raw().value.unwrap_or_default());
        assert_eq!(dlt.key, raw().key);
        assert_eq!(
            dlt.header("dlt.original.topic"),
            Some(&b"payments.requested"[..])
        );
        assert_eq!(dlt.header("dlt.original.offset"), Some(&b"42"[..]));
        assert_eq!(dlt.header("traceparent"), Some(&b"00-x"[..]));
        assert!(dlt.headers.iter().all(|(n, _)| !n.starts_with("retry.")));
    }
}
