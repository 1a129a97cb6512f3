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
    (
        "payment.capture_requested",
        1,
        include_str!("../../../schemas/payment.capture_requested.v1.json"),
    ),
    (
        "payment.cancel_requested",
        1,
        include_str!("../../../schemas/payment.cancel_requested.v1.json"),
    ),
    (
        "payment.refund_requested",
        1,
        include_str!("../../../schemas/payment.refund_requested.v1.json"),
    ),
    (
        "payment.captured",
        1,
        include_str!("../../../schemas/payment.captured.v1.json"),
    ),
    (
        "payment.canceled",
        1,
        include_str!("../../../schemas/payment.canceled.v1.json"),
    ),
    (
        "payment.refunded",
        1,
        include_str!("../../../schemas/payment.refunded.v1.json"),
    ),
    (
        "payment.command_failed",
        1,
        include_str!("../../../schemas/payment.command_failed.v1.json"),
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

#[cfg(test)]
mod round_trip {
    use paystream_domain::*;

    use super::SchemaRegistry;

    fn check<E: Event>(data: E) {
        let value = serde_json::to_value(&data).unwrap();
        SchemaRegistry::global()
            .validate_data(E::EVENT_TYPE, E::SCHEMA_VERSION, &value)
            .unwrap_or_else(|e| panic!("{}: {e}", E::EVENT_TYPE));
    }

    /// Every event the Rust code emits is valid against its published schema.
    #[test]
    fn rust_events_satisfy_their_schemas() {
        let m = MerchantId::parse("m_1").unwrap();
        let eur = Currency::parse("EUR").unwrap();
        let amount = Amount::new(500).unwrap();
        let request = PaymentRequested {
            merchant_id: m.clone(),
            amount,
            currency: eur,
            customer_id: CustomerId::parse("c_1").unwrap(),
            payment_method: PaymentMethod::parse("pm_card_visa").unwrap(),
            capture: CaptureMode::Manual,
            description: Some("d".into()),
            metadata: [("k".to_owned(), "v".to_owned())].into(),
        };
        check(request.clone());
        check(RiskDecided {
            decision: RiskDecision::Approved,
            score: 3,
            reasons: vec!["ok".into()],
            request,
        });
        check(PspResult {
            merchant_id: m.clone(),
            outcome: PspOutcome::RequiresCapture,
            psp: "alpha".into(),
            charge_id: Some("ch_1".into()),
            amount,
            currency: eur,
            amount_captured: 0,
            decline_code: None,
            message: None,
        });
        check(LedgerPosting {
            transfer_id: "tr_1".into(),
            payment_id: PaymentId::new().to_string(),
            kind: TransferKind::Capture,
            currency: eur,
            entries: vec![
                PostingEntry {
                    account: "psp:alpha:clearing".into(),
                    side: Side::Debit,
                    amount: 500,
                },
                PostingEntry {
                    account: "merchant:m_1:payable".into(),
                    side: Side::Credit,
                    amount: 500,
                },
            ],
        });
        check(PaymentValidated {
            merchant_id: m.clone(),
            status: "succeeded".into(),
            discrepancies: vec![],
        });
        check(CaptureRequested {
            merchant_id: m.clone(),
            command_id: "cmd_1".into(),
            amount: Some(amount),
        });
        check(CancelRequested {
            merchant_id: m.clone(),
            command_id: "cmd_2".into(),
        });
        check(RefundRequested {
            merchant_id: m.clone(),
            refund_id: "re_1".into(),
            amount,
            currency: eur,
        });
        check(PaymentCaptured {
            merchant_id: m.clone(),
            command_id: "cmd_1".into(),
            psp: "alpha".into(),
            charge_id: "ch_1".into(),
            currency: eur,
            amount_captured: 500,
        });
        check(PaymentCanceled {
            merchant_id: m.clone(),
            command_id: "cmd_2".into(),
            psp: "alpha".into(),
            charge_id: "ch_1".into(),
        });
        check(PaymentRefunded {
            merchant_id: m.clone(),
            refund_id: "re_1".into(),
            psp: "alpha".into(),
            charge_id: "ch_1".into(),
            psp_refund_id: "re_p".into(),
            amount,
            currency: eur,
        });
        check(CommandFailed {
            merchant_id: m,
            command: CommandKind::Refund,
            command_id: "re_1".into(),
            code: "c".into(),
            message: "m".into(),
        });
    }
}
