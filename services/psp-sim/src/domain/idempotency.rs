//! Idempotency records: the guarantee the gateway's exactly-once story rests on. The same key
//! always means the same operation; a repeat gets the first answer back byte for byte.

use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::HashMap;

/// A response exactly as first sent, so a replay is indistinguishable from the original.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredResponse {
    pub status: u16,
    pub body: Vec<u8>,
}

pub type Fingerprint = [u8; 32];

#[derive(Debug, PartialEq, Eq)]
pub enum Begin {
    /// First use of the key: the caller now owns it until it completes or releases it.
    Reserved,
    /// Another request with this key is still being processed.
    InFlight,
    /// The key was used for a different request (other endpoint or other body).
    Reused,
    Replay(StoredResponse),
}

enum Entry {
    InFlight,
    Done(StoredResponse),
}

struct Record {
    fingerprint: Fingerprint,
    entry: Entry,
}

/// Keys are kept for the life of the process: an emulator's run is short, and a real PSP's
/// retention (days) is longer than any of our retries.
#[derive(Default)]
pub struct IdempotencyStore {
    records: HashMap<String, Record>,
}

impl IdempotencyStore {
    pub fn begin(&mut self, key: &str, fingerprint: Fingerprint) -> Begin {
        match self.records.get(key) {
            Some(record) if record.fingerprint != fingerprint => Begin::Reused,
            Some(Record {
                entry: Entry::InFlight,
                ..
            }) => Begin::InFlight,
            Some(Record {
                entry: Entry::Done(response),
                ..
            }) => Begin::Replay(response.clone()),
            None => {
                self.records.insert(
                    key.to_owned(),
                    Record {
                        fingerprint,
                        entry: Entry::InFlight,
                    },
                );
                Begin::Reserved
            }
        }
    }

    pub fn complete(&mut self, key: &str, response: StoredResponse) {
        if let Some(record) = self.records.get_mut(key) {
            record.entry = Entry::Done(response);
        }
    }

    /// Forgets a reservation whose work never happened, so a retry runs it afresh.
    pub fn release(&mut self, key: &str) {
        if let Some(Record {
            entry: Entry::InFlight,
            ..
        }) = self.records.get(key)
        {
            self.records.remove(key);
        }
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }
}

/// Hash of the operation and its canonical body. Object keys are sorted here rather than relying
/// on `serde_json::Map` ordering, which flips to insertion order if any crate in the build turns
/// on serde_json's `preserve_order` feature; `{"a":1,"b":2}` and `{"b":2,"a":1}` are one request.
pub fn fingerprint(operation: &str, body: &Value) -> Fingerprint {
    let mut hasher = Sha256::new();
    hasher.update(operation.as_bytes());
    hasher.update(b"\n");
    write_canonical(&mut hasher, body);
    hasher.finalize().into()
}

fn write_canonical(hasher: &mut Sha256, value: &Value) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            hasher.update(b"{");
            for key in keys {
                write_canonical(hasher, &Value::String(key.clone()));
                hasher.update(b":");
                if let Some(v) = map.get(key) {
                    write_canonical(hasher, v);
                }
                hasher.update(b",");
            }
            hasher.update(b"}");
        }
        Value::Array(items) => {
            hasher.update(b"[");
            for item in items {
                write_canonical(hasher, item);
                hasher.update(b",");
            }
            hasher.update(b"]");
        }
        scalar => hasher.update(scalar.to_string().as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_order_does_not_change_the_fingerprint() {
        let a = fingerprint("POST /v1/charges", &json!({"amount": 1, "currency": "EUR"}));
        let b = fingerprint("POST /v1/charges", &json!({"currency": "EUR", "amount": 1}));
        assert_eq!(a, b);
        let other_op = fingerprint("POST /v1/refunds", &json!({"amount": 1, "currency": "EUR"}));
        assert_ne!(a, other_op);
    }

    #[test]
    fn lifecycle() {
        let mut store = IdempotencyStore::default();
        let fp = fingerprint("op", &json!({"a": 1}));
        assert_eq!(store.begin("k", fp), Begin::Reserved);
        assert_eq!(store.begin("k", fp), Begin::InFlight);
        assert_eq!(store.begin("k", [0; 32]), Begin::Reused);
        store.release("k");
        assert_eq!(store.begin("k", fp), Begin::Reserved);
        let response = StoredResponse {
            status: 200,
            body: b"{}".to_vec(),
        };
        store.complete("k", response.clone());
        store.release("k");
        assert_eq!(store.begin("k", fp), Begin::Replay(response));
    }
}
