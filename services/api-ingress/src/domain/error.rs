//! The contract error (DESIGN.md §4): `{"error": {"type", "code", "message", "param"?}}` with its
//! HTTP status. Plain data, so that the domain can decide a refusal and the store can save it as
//! the idempotent answer of a request; the HTTP adapter only renders it.

use serde_json::{Value, json};

use crate::domain::payment::FieldError;

/// `type` values (contract).
pub mod kind {
    pub const INVALID_REQUEST: &str = "invalid_request_error";
    pub const AUTHENTICATION: &str = "authentication_error";
    pub const PERMISSION: &str = "permission_error";
    pub const IDEMPOTENCY: &str = "idempotency_error";
    pub const RATE_LIMIT: &str = "rate_limit_error";
    pub const API: &str = "api_error";
}

/// Every `code` the API answers with, its status and when. `/openapi.json` lists them.
pub const ERROR_CODES: &[(u16, &str, &str)] = &[
    (400, "body_invalid", "the body is not a JSON object"),
    (
        400,
        "parameter_missing",
        "a required field is missing (`param` names it)",
    ),
    (
        400,
        "parameter_invalid",
        "a field or query parameter has a wrong type or value",
    ),
    (
        400,
        "parameter_unknown",
        "a field or query parameter that the endpoint does not take",
    ),
    (
        400,
        "parameter_not_allowed",
        "a parameter the caller's role may not use",
    ),
    (
        400,
        "raw_card_data_refused",
        "a raw card number was sent; send a pm_... token",
    ),
    (
        400,
        "amount_too_large",
        "amount above PAYSTREAM_API_MAX_AMOUNT, or above what was authorised (capture)",
    ),
    (
        400,
        "amount_exceeds_refundable",
        "refund above what was captured minus refunds succeeded or pending",
    ),
    (
        400,
        "idempotency_key_missing",
        "POST without an Idempotency-Key header",
    ),
    (
        400,
        "idempotency_key_invalid",
        "Idempotency-Key is not 1-255 visible ASCII characters",
    ),
    (401, "missing_token", "no Authorization header"),
    (
        401,
        "malformed_token",
        "Authorization is not `Bearer <token>`",
    ),
    (
        401,
        "invalid_token",
        "the token does not decode or its signature is wrong",
    ),
    (401, "expired_token", "the token's exp is in the past"),
    (
        403,
        "role_not_allowed",
        "the token's role may not use this endpoint",
    ),
    (
        403,
        "invalid_subject",
        "a merchant token whose sub is not a valid merchant id",
    ),
    (
        404,
        "resource_missing",
        "no such payment for this caller (another merchant's payment included)",
    ),
    (404, "route_not_found", "no such route"),
    (
        405,
        "method_not_allowed",
        "the route exists but not with this method",
    ),
    (
        409,
        "request_in_flight",
        "another request with this Idempotency-Key is still being processed",
    ),
    (
        409,
        "payment_unexpected_state",
        "the payment's status does not allow the command",
    ),
    (
        409,
        "payment_command_in_progress",
        "a capture or cancel of this payment is still pending",
    ),
    (
        409,
        "lock_timeout",
        "another request on this payment held it too long; retry",
    ),
    (
        413,
        "body_too_large",
        "the body is larger than PAYSTREAM_API_MAX_BODY_BYTES",
    ),
    (
        422,
        "idempotency_key_reused",
        "the Idempotency-Key was used with another request (type idempotency_error)",
    ),
    (
        429,
        "rate_limited",
        "too many requests for this merchant; see Retry-After",
    ),
    (
        500,
        "internal_error",
        "a fault of the service; retry with the same Idempotency-Key",
    ),
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub kind: &'static str,
    pub code: &'static str,
    pub message: String,
    pub param: Option<String>,
    /// Seconds, for 429.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(
        status: u16,
        kind: &'static str,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            kind,
            code,
            message: message.into(),
            param: None,
            retry_after: None,
        }
    }

    pub fn param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(400, kind::INVALID_REQUEST, code, message)
    }

    pub fn not_found() -> Self {
        Self::new(
            404,
            kind::INVALID_REQUEST,
            "resource_missing",
            "no such payment",
        )
        .param("id")
    }

    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(403, kind::PERMISSION, code, message)
    }

    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(401, kind::AUTHENTICATION, code, message)
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(409, kind::INVALID_REQUEST, code, message)
    }

    pub fn internal() -> Self {
        Self::new(
            500,
            kind::API,
            "internal_error",
            "an internal error occurred; the request may be retried with the same Idempotency-Key",
        )
    }

    pub fn body(&self) -> Value {
        let mut error = json!({"type": self.kind, "code": self.code, "message": self.message});
        if let Some(p) = &self.param {
            error["param"] = json!(p);
        }
        json!({ "error": error })
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        ApiError::invalid(e.code, e.message).param(e.param)
    }
}
