//! `/openapi.json`: OpenAPI 3.1 generated from the handlers' annotations and the response types,
//! with the error codes of [`crate::domain::error::ERROR_CODES`] added to the document.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde::Serialize;
use serde_json::{Value, json};
use utoipa::{OpenApi, ToSchema};

use crate::domain::error::ERROR_CODES;

/// Body of `POST /v1/payments` (documentation only: the handler parses each field by hand so
/// that every error names its field).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct CreatePaymentBody {
    /// Minor units, > 0, at most PAYSTREAM_API_MAX_AMOUNT.
    amount: i64,
    /// ISO 4217, upper case.
    #[schema(example = "EUR")]
    currency: String,
    /// 1-128 characters of letters, digits, _ - . @
    customer_id: String,
    /// A token such as pm_card_visa; raw card numbers are refused (raw_card_data_refused).
    #[schema(example = "pm_card_visa")]
    payment_method: String,
    /// automatic (default) | manual
    capture: Option<String>,
    /// At most 1000 characters.
    description: Option<String>,
    /// At most 20 pairs; keys 1-40 characters, values at most 500.
    metadata: Option<BTreeMap<String, String>>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct CaptureBody {
    /// Minor units, at most the authorised amount; all of it when absent.
    amount: Option<i64>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct RefundBody {
    /// Minor units, at most what is left to refund; all of it when absent.
    amount: Option<i64>,
}

/// The contract error.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// invalid_request_error | authentication_error | permission_error | idempotency_error |
    /// rate_limit_error | api_error
    #[serde(rename = "type")]
    kind: String,
    /// See `x-error-codes`.
    code: String,
    message: String,
    /// The field, query parameter or header at fault.
    param: Option<String>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "paystream merchant API",
        description = "Payments over Kafka: create, read, list, capture, cancel, refund, balance. Every POST takes an Idempotency-Key.",
    ),
    paths(
        crate::inbound::http::create_payment,
        crate::inbound::http::list_payments,
        crate::inbound::http::get_payment,
        crate::inbound::http::capture_payment,
        crate::inbound::http::cancel_payment,
        crate::inbound::http::refund_payment,
        crate::inbound::http::list_refunds,
        crate::inbound::http::get_balance,
    ),
    components(schemas(
        ErrorBody,
        ErrorDetail,
        CreatePaymentBody,
        CaptureBody,
        RefundBody,
        crate::domain::payment::PaymentView,
        crate::domain::commands::RefundView,
        crate::domain::listing::PaymentList,
        crate::domain::listing::RefundList,
        crate::domain::listing::Balance,
        crate::domain::listing::BalanceAmount,
    ))
)]
struct ApiDoc;

/// The document, built once.
pub fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(build)
}

fn build() -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_else(|_| json!({}));
    let codes: Vec<Value> = ERROR_CODES
        .iter()
        .map(|(status, code, meaning)| json!({"status": status, "code": code, "meaning": meaning}))
        .collect();
    let names: Vec<&str> = ERROR_CODES.iter().map(|(_, c, _)| *c).collect();
    let mut table =
        String::from("\n\n## Error codes\n\n| status | code | meaning |\n|---|---|---|\n");
    for (status, code, meaning) in ERROR_CODES {
        table.push_str(&format!("| {status} | `{code}` | {meaning} |\n"));
    }
    if let Some(desc) = doc.pointer_mut("/info/description") {
        let text = format!("{}{table}", desc.as_str().unwrap_or_default());
        *desc = Value::String(text);
    }
    if let Some(code) = doc.pointer_mut("/components/schemas/ErrorDetail/properties/code") {
        code["enum"] = json!(names);
    }
    if let Some(components) = doc.get_mut("components") {
        components["securitySchemes"] = json!({
            "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                       "description": "HS256; claims sub, role (merchant | operator | analyst), exp"}
        });
    }
    doc["x-error-codes"] = Value::Array(codes);
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_is_openapi_3_1_with_every_route_and_error_code() {
        let doc = document();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
        for path in [
            "/v1/payments",
            "/v1/payments/{id}",
            "/v1/payments/{id}/capture",
            "/v1/payments/{id}/cancel",
            "/v1/payments/{id}/refunds",
            "/v1/balance",
        ] {
            assert!(doc["paths"].get(path).is_some(), "{path}");
        }
        for (path, method) in [
            ("/v1/payments", "get"),
            ("/v1/payments", "post"),
            ("/v1/payments/{id}/refunds", "get"),
            ("/v1/payments/{id}/refunds", "post"),
        ] {
            assert!(doc["paths"][path].get(method).is_some(), "{method} {path}");
        }
        assert_eq!(
            doc["x-error-codes"].as_array().unwrap().len(),
            ERROR_CODES.len()
        );
        let codes = &doc["components"]["schemas"]["ErrorDetail"]["properties"]["code"]["enum"];
        assert!(
            codes
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c == "idempotency_key_reused")
        );
    }
}
