//! JSON Schemas of `schemas/`, compiled into the binary so that a service validates exactly the
//! contract it was built with, wherever it runs.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde_json::Value;

/// (event_type, version, schema text)
const EVENT_SCHEMAS: &[(&str, u32, &str)] = &[
    (
        "payment.requested",
        1,
        include_str!("../../../schemas/payment.requested.v1.json"),
    ),
    (
        "payment.risk_decided",
        1,
        include_str!("../../../schemas/payment.risk_decided.v1.json"),
    ),
    (
        "payment.psp_result",
        1,
        include_str!("../../../schemas/payment.psp_result.v1.json"),
    ),
    (
        "ledger.posting",
        1,
        include_str!("../../../schemas/ledger.posting.v1.json"),
    ),
    (
        "payment.validated",
        1,
        include_str!("../../../schemas/payment.validated.v1.json"),
    ),
];

const ENVELOPE_SCHEMA: &str = include_str!("../../../schemas/envelope.v1.json");

pub struct SchemaRegistry {
    envelope: jsonschema::Validator,
    events: HashMap<(String, u32), jsonschema::Validator>,
}

/// Why a record is not a valid event; the text goes into `dlt.error.message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    #[error("unknown event type {event_type} v{version}")]
    UnknownType { event_type: String, version: u32 },
    #[error("invalid {what}: {message}")]
    Invalid { what: String, message: String },
}

fn compile(text: &str) -> jsonschema::Validator {
    // The schemas are compiled into the binary and covered by tests: a broken one is a build
    // defect, found before anything runs.
    #[allow(clippy::expect_used)]
    let schema: Value = serde_json::from_str(text).expect("schema file is JSON");
    #[allow(clippy::expect_used)]
    jsonschema::validator_for(&schema).expect("schema compiles")
}

impl SchemaRegistry {
    pub fn global() -> &'static SchemaRegistry {
        static REGISTRY: OnceLock<SchemaRegistry> = OnceLock::new();
        REGISTRY.get_or_init(|| SchemaRegistry {
            envelope: compile(ENVELOPE_SCHEMA),
            events: EVENT_SCHEMAS
                .iter()
                .map(|(t, v, text)| (((*t).to_owned(), *v), compile(text)))
                .collect(),
        })
    }

    pub fn validate_envelope(&self, value: &Value) -> Result<(), SchemaError> {
        check(&self.envelope, value, "envelope")
    }

    pub fn validate_data(
        &self,
        event_type: &str,
        version: u32,
        data: &Value,
    ) -> Result<(), SchemaError> {
        let validator = self
            .events
            .get(&(event_type.to_owned(), version))
            .ok_or_else(|| SchemaError::UnknownType {
                event_type: event_type.to_owned(),
                version,
            })?;
        check(validator, data, &format!("{event_type} v{version} data"))
    }

    pub fn knows(&self, event_type: &str, version: u32) -> bool {
        self.events.contains_key(&(event_type.to_owned(), version))
    }
}

fn check(validator: &jsonschema::Validator, value: &Value, what: &str) -> Result<(), SchemaError> {
    let errors: Vec<String> = validator
        .iter_errors(value)
        .take(3)
        .map(|e| format!("{} at '{}'", e, e.instance_path))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(SchemaError::Invalid {
            what: what.to_owned(),
            message: errors.join("; "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_schema_compiles_and_rejects_garbage() {
        let reg = SchemaRegistry::global();
        for (t, v, _) in EVENT_SCHEMAS {
            assert!(reg.validate_data(t, *v, &json!("not an object")).is_err());
        }
        assert!(matches!(
            reg.validate_data("nope", 1, &json!({})),
            Err(SchemaError::UnknownType { .. })
        ));
    }
}
