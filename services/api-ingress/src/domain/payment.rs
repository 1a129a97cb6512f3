use std::collections::BTreeMap;

use paystream_domain::{
    Amount, CaptureMode, Currency, CustomerId, MerchantId, ParseError, PaymentId, PaymentMethod,
    PaymentRequested, PaymentStatus,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A validation failure that names the offending field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub param: String,
    pub message: String,
    pub code: &'static str,
}

impl FieldError {
    pub fn new(param: &str, err: ParseError) -> Self {
        let code = match err {
            ParseError::RawCardNumber => "raw_card_data_refused",
            ParseError::Invalid(_) => "parameter_invalid",
        };
        Self {
            param: param.to_owned(),
            message: format!("{param}: {err}"),
            code,
        }
    }

    pub fn missing(param: &str) -> Self {
        Self {
            param: param.to_owned(),
            message: format!("{param} is required"),
            code: "parameter_missing",
        }
    }

    pub fn invalid(param: &str, message: &str) -> Self {
        Self::with_code(param, "parameter_invalid", message)
    }

    pub fn with_code(param: &str, code: &'static str, message: &str) -> Self {
        Self {
            param: param.to_owned(),
            message: format!("{param}: {message}"),
            code,
        }
    }

    pub fn unknown(param: &str) -> Self {
        Self::with_code(param, "parameter_unknown", "is not a known parameter")
    }
}

/// The body of a POST as JSON gives it: a map of loosely typed fields, so that each problem can
/// be reported against its field instead of as a generic parse error.
pub type RawBody = serde_json::Map<String, serde_json::Value>;

/// Limits that come from configuration rather than from the domain types.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `PAYSTREAM_API_MAX_AMOUNT`.
    pub max_amount: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_amount: Amount::MAX,
        }
    }
}

/// Postgres text cannot hold U+0000, so free text refuses it at the edge.
const NUL_MESSAGE: &str = "must not contain NUL (U+0000) characters";

/// Checks that `raw` has only `known` fields.
pub fn only_known(raw: &RawBody, known: &[&str]) -> Result<(), FieldError> {
    match raw.keys().find(|k| !known.contains(&k.as_str())) {
        Some(name) => Err(unknown_field(name)),
        None => Ok(()),
    }
}

/// The error for a parameter the endpoint does not take, naming it unless it could be card data
/// (then the whole body is at fault), and at most 64 characters of it.
pub fn unknown_field(name: &str) -> FieldError {
    if paystream_domain::ids::looks_like_card_number(name) {
        return FieldError::new("body", ParseError::RawCardNumber);
    }
    let shown: String = name.chars().take(64).collect();
    FieldError::unknown(&shown)
}

fn present<'a>(raw: &'a RawBody, name: &str) -> Option<&'a serde_json::Value> {
    raw.get(name).filter(|v| !v.is_null())
}

fn string_field<'a>(raw: &'a RawBody, param: &str) -> Result<&'a str, FieldError> {
    match present(raw, param) {
        None => Err(FieldError::missing(param)),
        Some(serde_json::Value::String(s)) => Ok(s),
        Some(_) => Err(FieldError::invalid(param, "must be a string")),
    }
}

/// An `amount` field: an integer in minor units, > 0, at most `max`. `None` when absent.
pub fn amount_field(raw: &RawBody, max: i64) -> Result<Option<Amount>, FieldError> {
    let value = match present(raw, "amount") {
        None => return Ok(None),
        Some(serde_json::Value::Number(n)) => n
            .as_i64()
            .ok_or_else(|| FieldError::invalid("amount", "must be an integer in minor units"))?,
        Some(_) => {
            return Err(FieldError::invalid(
                "amount",
                "must be an integer in minor units",
            ));
        }
    };
    let amount = Amount::new(value).map_err(|e| match e {
        ParseError::Invalid(msg) if value > Amount::MAX => {
            FieldError::with_code("amount", "amount_too_large", msg)
        }
        other => FieldError::new("amount", other),
    })?;
    if amount.minor() > max {
        return Err(FieldError::with_code(
            "amount",
            "amount_too_large",
            &format!("must be at most {max}"),
        ));
    }
    Ok(Some(amount))
}

const CREATE_FIELDS: &[&str] = &[
    "amount",
    "currency",
    "customer_id",
    "payment_method",
    "capture",
    "description",
    "metadata",
];

/// Parses the body of `POST /v1/payments` into the domain request. The first problem found is
/// reported.
pub fn parse_create(
    raw: &RawBody,
    merchant: MerchantId,
    limits: Limits,
) -> Result<PaymentRequested, FieldError> {
    only_known(raw, CREATE_FIELDS)?;
    let amount =
        amount_field(raw, limits.max_amount)?.ok_or_else(|| FieldError::missing("amount"))?;
    let currency = Currency::parse(string_field(raw, "currency")?)
        .map_err(|e| FieldError::new("currency", e))?;
    let customer_id = CustomerId::parse(string_field(raw, "customer_id")?)
        .map_err(|e| FieldError::new("customer_id", e))?;
    let payment_method = PaymentMethod::parse(string_field(raw, "payment_method")?)
        .map_err(|e| FieldError::new("payment_method", e))?;
    let capture = match present(raw, "capture") {
        None => CaptureMode::Automatic,
        Some(serde_json::Value::String(s)) if s == "automatic" => CaptureMode::Automatic,
        Some(serde_json::Value::String(s)) if s == "manual" => CaptureMode::Manual,
        Some(_) => {
            return Err(FieldError::invalid(
                "capture",
                "must be automatic or manual",
            ));
        }
    };
    let description = match present(raw, "description") {
        None => None,
        Some(serde_json::Value::String(s)) if s.chars().count() <= 1000 => {
            if s.contains('\0') {
                return Err(FieldError::invalid("description", NUL_MESSAGE));
            }
            if paystream_domain::ids::looks_like_card_number(s) {
                return Err(FieldError::new("description", ParseError::RawCardNumber));
            }
            Some(s.clone())
        }
        Some(_) => {
            return Err(FieldError::invalid(
                "description",
                "must be a string of at most 1000 characters",
            ));
        }
    };
    let metadata = parse_metadata(present(raw, "metadata"))?;
    Ok(PaymentRequested {
        merchant_id: merchant,
        amount,
        currency,
        customer_id,
        payment_method,
        capture,
        description,
        metadata,
    })
}

fn parse_metadata(
    value: Option<&serde_json::Value>,
) -> Result<BTreeMap<String, String>, FieldError> {
    let map = match value {
        None => return Ok(BTreeMap::new()),
        Some(serde_json::Value::Object(map)) => map,
        Some(_) => {
            return Err(FieldError::invalid(
                "metadata",
                "must be an object of string values",
            ));
        }
    };
    if map.len() > 20 {
        return Err(FieldError::invalid("metadata", "at most 20 keys"));
    }
    let mut out = BTreeMap::new();
    for (k, v) in map {
        // The key goes into `param`; a key that could be card data is not echoed.
        let shown = if paystream_domain::ids::looks_like_card_number(k) {
            "metadata".to_owned()
        } else {
            format!("metadata[{}]", k.chars().take(40).collect::<String>())
        };
        if paystream_domain::ids::looks_like_card_number(k) {
            return Err(FieldError::new(&shown, ParseError::RawCardNumber));
        }
        if k.is_empty() || k.chars().count() > 40 {
            return Err(FieldError::invalid(&shown, "keys are 1-40 characters"));
        }
        if k.contains('\0') {
            return Err(FieldError::invalid("metadata", NUL_MESSAGE));
        }
        let serde_json::Value::String(s) = v else {
            return Err(FieldError::invalid(&shown, "must be a string"));
        };
        if s.chars().count() > 500 {
            return Err(FieldError::invalid(&shown, "at most 500 characters"));
        }
        if s.contains('\0') {
            return Err(FieldError::invalid(&shown, NUL_MESSAGE));
        }
        if paystream_domain::ids::looks_like_card_number(s) {
            return Err(FieldError::new(&shown, ParseError::RawCardNumber));
        }
        out.insert(k.clone(), s.clone());
    }
    Ok(out)
}

/// Fingerprint of what the merchant asked for, after parsing: two bodies that mean the same
/// request (key order, an explicit default) get the same hash.
pub fn request_hash(operation: &str, request: &impl Serialize) -> String {
    let canonical = serde_json::to_vec(request).unwrap_or_default();
    let mut h = Sha256::new();
    h.update(operation.as_bytes());
    h.update([0]);
    h.update(&canonical);
    hex::encode(h.finalize())
}

/// A payment as the API shows it (and as the cache holds it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PaymentView {
    /// `pay_<uuid>`; UUIDv7, so ids sort by creation time.
    #[schema(value_type = String, example = "pay_0190b1e2-7c1a-7d4e-9a53-1b2c3d4e5f60")]
    pub id: PaymentId,
    /// Always `payment`.
    pub object: String,
    #[schema(value_type = String)]
    pub merchant_id: MerchantId,
    /// Minor units.
    pub amount: i64,
    /// ISO 4217, upper case.
    pub currency: String,
    #[schema(value_type = String, example = "processing")]
    /// processing | requires_capture | succeeded | declined | failed | canceled
    pub status: PaymentStatus,
    /// automatic | manual
    pub capture: String,
    pub customer_id: Option<String>,
    pub description: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub amount_captured: i64,
    pub amount_refunded: i64,
    pub decline_code: Option<String>,
    pub failure_reason: Option<String>,
    pub risk_score: Option<i32>,
    pub psp: Option<String>,
    /// Unix seconds.
    pub created: i64,
    /// The order store's version of this payment (0 while only the ingress knows it).
    pub version: i32,
}

impl PaymentView {
    pub fn accepted(id: PaymentId, r: &PaymentRequested, created: i64) -> Self {
        Self {
            id,
            object: "payment".to_owned(),
            merchant_id: r.merchant_id.clone(),
            amount: r.amount.minor(),
            currency: r.currency.to_string(),
            status: PaymentStatus::Processing,
            capture: match r.capture {
                CaptureMode::Automatic => "automatic".to_owned(),
                CaptureMode::Manual => "manual".to_owned(),
            },
            customer_id: Some(r.customer_id.to_string()),
            description: r.description.clone(),
            metadata: r.metadata.clone(),
            amount_captured: 0,
            amount_refunded: 0,
            decline_code: None,
            failure_reason: None,
            risk_score: None,
            psp: None,
            created,
            version: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(json: serde_json::Value) -> RawBody {
        serde_json::from_value(json).unwrap()
    }

    fn merchant() -> MerchantId {
        MerchantId::parse("m_1").unwrap()
    }

    fn parse(body: serde_json::Value) -> Result<PaymentRequested, FieldError> {
        parse_create(&raw(body), merchant(), Limits::default())
    }

    #[test]
    fn each_bad_field_is_named() {
        let base = serde_json::json!({"amount": 100, "currency": "EUR", "customer_id": "c1", "payment_method": "pm_card_visa"});
        for (field, value, code) in [
            ("amount", serde_json::json!(0), "parameter_invalid"),
            ("amount", serde_json::json!(1.5), "parameter_invalid"),
            ("amount", serde_json::json!("100"), "parameter_invalid"),
            (
                "amount",
                serde_json::json!(100_000_000_000i64),
                "amount_too_large",
            ),
            ("currency", serde_json::json!("eur"), "parameter_invalid"),
            (
                "payment_method",
                serde_json::json!("4242424242424242"),
                "raw_card_data_refused",
            ),
            ("capture", serde_json::json!("later"), "parameter_invalid"),
            ("extra", serde_json::json!(1), "parameter_unknown"),
        ] {
            let mut body = base.clone();
            body[field] = value;
            let err = parse(body).unwrap_err();
            assert_eq!((err.param.as_str(), err.code), (field, code));
        }
        let mut body = base.clone();
        body.as_object_mut().unwrap().remove("customer_id");
        assert_eq!(parse(body).unwrap_err().code, "parameter_missing");
    }

    #[test]
    fn the_configured_maximum_applies() {
        let body = raw(
            serde_json::json!({"amount": 5001, "currency": "EUR", "customer_id": "c1", "payment_method": "pm_x"}),
        );
        let err = parse_create(&body, merchant(), Limits { max_amount: 5000 }).unwrap_err();
        assert_eq!(
            (err.param.as_str(), err.code),
            ("amount", "amount_too_large")
        );
        let ok = raw(
            serde_json::json!({"amount": 5000, "currency": "EUR", "customer_id": "c1", "payment_method": "pm_x"}),
        );
        assert!(parse_create(&ok, merchant(), Limits { max_amount: 5000 }).is_ok());
    }

    #[test]
    fn nul_characters_are_refused_in_free_text() {
        for body in [
            serde_json::json!({"amount": 1, "currency": "EUR", "customer_id": "c1", "payment_method": "pm_x", "description": "a\u{0}b"}),
            serde_json::json!({"amount": 1, "currency": "EUR", "customer_id": "c1", "payment_method": "pm_x", "metadata": {"k": "a\u{0}"}}),
            serde_json::json!({"amount": 1, "currency": "EUR", "customer_id": "c1", "payment_method": "pm_x", "metadata": {"k\u{0}": "a"}}),
        ] {
            let err = parse(body).unwrap_err();
            assert_eq!(err.code, "parameter_invalid");
            assert!(err.param.starts_with("description") || err.param.starts_with("metadata"));
        }
    }

    #[test]
    fn card_numbers_in_metadata_keys_are_not_echoed() {
        let err = parse(serde_json::json!({"amount": 1, "currency": "EUR", "customer_id": "c1", "payment_method": "pm_x", "metadata": {"4242424242424242": "x"}})).unwrap_err();
        assert_eq!(err.code, "raw_card_data_refused");
        assert!(!err.param.contains("4242") && !err.message.contains("4242"));
    }

    #[test]
    fn same_meaning_same_hash() {
        let a = parse(serde_json::json!({"amount": 100, "currency": "EUR", "customer_id": "c1", "payment_method": "pm_x"})).unwrap();
        let b = parse(serde_json::json!({"payment_method": "pm_x", "capture": "automatic", "customer_id": "c1", "currency": "EUR", "amount": 100})).unwrap();
        assert_eq!(request_hash("create", &a), request_hash("create", &b));
        let c = parse(serde_json::json!({"amount": 101, "currency": "EUR", "customer_id": "c1", "payment_method": "pm_x"})).unwrap();
        assert_ne!(request_hash("create", &a), request_hash("create", &c));
    }
}
