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
    fn new(param: &str, err: ParseError) -> Self {
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

    fn missing(param: &str) -> Self {
        Self {
            param: param.to_owned(),
            message: format!("{param} is required"),
            code: "parameter_missing",
        }
    }

    fn invalid(param: &str, message: &str) -> Self {
        Self {
            param: param.to_owned(),
            message: format!("{param}: {message}"),
            code: "parameter_invalid",
        }
    }
}

/// The body of `POST /v1/payments` as JSON gives it: every field optional and loosely typed so
/// that each problem can be reported against its field instead of as a generic parse error.
#[derive(Debug, Deserialize)]
pub struct RawCreatePayment {
    pub amount: Option<serde_json::Value>,
    pub currency: Option<serde_json::Value>,
    pub customer_id: Option<serde_json::Value>,
    pub payment_method: Option<serde_json::Value>,
    pub capture: Option<serde_json::Value>,
    pub description: Option<serde_json::Value>,
    pub metadata: Option<serde_json::Value>,
    #[serde(flatten)]
    pub unknown: BTreeMap<String, serde_json::Value>,
}

fn string_field<'a>(
    value: &'a Option<serde_json::Value>,
    param: &str,
) -> Result<&'a str, FieldError> {
    match value {
        None | Some(serde_json::Value::Null) => Err(FieldError::missing(param)),
        Some(serde_json::Value::String(s)) => Ok(s),
        Some(_) => Err(FieldError::invalid(param, "must be a string")),
    }
}

/// Parses the raw body into the domain request. The first problem found is reported.
pub fn parse_create(
    raw: RawCreatePayment,
    merchant: MerchantId,
) -> Result<PaymentRequested, FieldError> {
    if let Some(name) = raw.unknown.keys().next() {
        return Err(FieldError::invalid(name, "is not a known parameter"));
    }
    let amount = match &raw.amount {
        None | Some(serde_json::Value::Null) => return Err(FieldError::missing("amount")),
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
    let amount = Amount::new(amount).map_err(|e| FieldError::new("amount", e))?;
    let currency = Currency::parse(string_field(&raw.currency, "currency")?)
        .map_err(|e| FieldError::new("currency", e))?;
    let customer_id = CustomerId::parse(string_field(&raw.customer_id, "customer_id")?)
        .map_err(|e| FieldError::new("customer_id", e))?;
    let payment_method = PaymentMethod::parse(string_field(&raw.payment_method, "payment_method")?)
        .map_err(|e| FieldError::new("payment_method", e))?;
    let capture = match &raw.capture {
        None | Some(serde_json::Value::Null) => CaptureMode::Automatic,
        Some(serde_json::Value::String(s)) if s == "automatic" => CaptureMode::Automatic,
        Some(serde_json::Value::String(s)) if s == "manual" => CaptureMode::Manual,
        Some(_) => {
            return Err(FieldError::invalid(
                "capture",
                "must be automatic or manual",
            ));
        }
    };
    let description = match &raw.description {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) if s.chars().count() <= 1000 => {
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
    let metadata = parse_metadata(&raw.metadata)?;
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
    value: &Option<serde_json::Value>,
) -> Result<BTreeMap<String, String>, FieldError> {
    let map = match value {
        None | Some(serde_json::Value::Null) => return Ok(BTreeMap::new()),
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
        let param = format!("metadata[{k}]");
        if k.is_empty() || k.chars().count() > 40 {
            return Err(FieldError::invalid(&param, "keys are 1-40 characters"));
        }
        let serde_json::Value::String(s) = v else {
            return Err(FieldError::invalid(&param, "must be a string"));
        };
        if s.chars().count() > 500 {
            return Err(FieldError::invalid(&param, "at most 500 characters"));
        }
        if paystream_domain::ids::looks_like_card_number(s) {
            return Err(FieldError::new(&param, ParseError::RawCardNumber));
        }
        out.insert(k.clone(), s.clone());
    }
    Ok(out)
}

/// Fingerprint of what the merchant asked for, after parsing: two bodies that mean the same
/// request (key order, an explicit default) get the same hash.
pub fn request_hash(operation: &str, request: &PaymentRequested) -> String {
    let canonical = serde_json::to_vec(request).unwrap_or_default();
    let mut h = Sha256::new();
    h.update(operation.as_bytes());
    h.update([0]);
    h.update(&canonical);
    hex::encode(h.finalize())
}

/// A payment as the API shows it (and as the cache holds it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentView {
    pub id: PaymentId,
    pub object: String,
    pub merchant_id: MerchantId,
    pub amount: i64,
    pub currency: String,
    pub status: PaymentStatus,
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
    pub created: i64,
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

    fn raw(json: serde_json::Value) -> RawCreatePayment {
        serde_json::from_value(json).unwrap()
    }

    fn merchant() -> MerchantId {
        MerchantId::parse("m_1").unwrap()
    }

    #[test]
    fn each_bad_field_is_named() {
        let base = serde_json::json!({"amount": 100, "currency": "EUR", "customer_id": "c1", "payment_method": "pm_card_visa"});
        for (field, value, code) in [
            ("amount", serde_json::json!(0), "parameter_invalid"),
            ("amount", serde_json::json!(1.5), "parameter_invalid"),
            ("amount", serde_json::json!("100"), "parameter_invalid"),
            ("currency", serde_json::json!("eur"), "parameter_invalid"),
            (
                "payment_method",
                serde_json::json!("4242424242424242"),
                "raw_card_data_refused",
            ),
            ("capture", serde_json::json!("later"), "parameter_invalid"),
        ] {
            let mut body = base.clone();
            body[field] = value;
            let err = parse_create(raw(body), merchant()).unwrap_err();
            assert_eq!((err.param.as_str(), err.code), (field, code));
        }
        let mut body = base.clone();
        body.as_object_mut().unwrap().remove("customer_id");
        assert_eq!(
            parse_create(raw(body), merchant()).unwrap_err().code,
            "parameter_missing"
        );
    }

    #[test]
    fn same_meaning_same_hash() {
        let a = parse_create(raw(serde_json::json!({"amount": 100, "currency": "EUR", "customer_id": "c1", "payment_method": "pm_x"})), merchant()).unwrap();
        let b = parse_create(raw(serde_json::json!({"payment_method": "pm_x", "capture": "automatic", "customer_id": "c1", "currency": "EUR", "amount": 100})), merchant()).unwrap();
        assert_eq!(request_hash("create", &a), request_hash("create", &b));
        let c = parse_create(raw(serde_json::json!({"amount": 101, "currency": "EUR", "customer_id": "c1", "payment_method": "pm_x"})), merchant()).unwrap();
        assert_ne!(request_hash("create", &a), request_hash("create", &c));
    }
}
