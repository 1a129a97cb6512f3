//! The HTTP edge: authentication and roles, rate limiting, parsing into domain types, and the
//! contract error shape. Every failure answers `{"error": {"type", "code", "message", "param"?}}`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{
    DefaultBodyLimit, FromRequest, FromRequestParts, MatchedPath, Path, Query, Request, State,
};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use paystream_domain::{IdempotencyKey, MerchantId, PaymentId};
use paystream_kit::auth::{self, Claims, Role, TokenError};
use paystream_messaging::trace;
use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry};
use sqlx::PgPool;
use tracing::Instrument;

use crate::domain::commands::{parse_cancel, parse_capture, parse_refund};
use crate::domain::error::{ApiError, kind};
use crate::domain::listing::{Caller, PaymentList, RefundList, parse_balance, parse_list};
use crate::domain::payment::{Limits, RawBody, parse_create, request_hash};
use crate::domain::ports::{
    Answer, Idempotent, PaymentCache, PaymentStore, RateDecision, RateLimiter, StoreError,
};
use crate::inbound::openapi;

#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn PaymentStore>,
    pub cache: Arc<dyn PaymentCache>,
    pub limiter: Arc<dyn RateLimiter>,
    pub jwt_secret: Arc<str>,
    pub limits: Limits,
    pub max_body_bytes: usize,
    pub metrics: HttpMetrics,
}

#[derive(Clone)]
pub struct HttpMetrics {
    requests: IntCounterVec,
    latency: HistogramVec,
    rate_limited: IntCounter,
    limiter_failures: IntCounter,
    /// Unix seconds of the last "Redis unavailable" warning, so that an outage logs once per
    /// interval instead of once per request.
    last_limiter_warning: Arc<AtomicU64>,
    last_cache_warning: Arc<AtomicU64>,
}

impl HttpMetrics {
    pub fn new(registry: &Registry) -> anyhow::Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new(
                "api_ingress_http_requests_total",
                "HTTP requests by route and status class",
            ),
            &["route", "status"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "api_ingress_http_request_duration_seconds",
                "HTTP request latency",
            ),
            &["route"],
        )?;
        let rate_limited = IntCounter::new(
            "api_ingress_rate_limited_requests_total",
            "Requests refused with 429 by the per-merchant rate limit",
        )?;
        let limiter_failures = IntCounter::new(
            "api_ingress_rate_limiter_failures_total",
            "Requests let through without a rate limit decision because Redis did not answer",
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(rate_limited.clone()))?;
        registry.register(Box::new(limiter_failures.clone()))?;
        Ok(Self {
            requests,
            latency,
            rate_limited,
            limiter_failures,
            last_limiter_warning: Arc::new(AtomicU64::new(0)),
            last_cache_warning: Arc::new(AtomicU64::new(0)),
        })
    }
}

/// True at most once per `every` for one `last` slot.
fn once_per(last: &AtomicU64, every: Duration) -> bool {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let prev = last.load(Ordering::Relaxed);
    now >= prev + every.as_secs()
        && last
            .compare_exchange(prev, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
}

pub fn router(state: AppState, registry: Registry, pool: PgPool) -> Router {
    let api = Router::new()
        .route("/v1/payments", post(create_payment).get(list_payments))
        .route("/v1/payments/{id}", get(get_payment))
        .route("/v1/payments/{id}/capture", post(capture_payment))
        .route("/v1/payments/{id}/cancel", post(cancel_payment))
        .route(
            "/v1/payments/{id}/refunds",
            post(refund_payment).get(list_refunds),
        )
        .route("/v1/balance", get(get_balance))
        .route("/openapi.json", get(openapi_json))
        .layer(DefaultBodyLimit::max(state.max_body_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state);
    // After the merge, so that the admin routes answer a wrong method in the contract shape too.
    api.merge(paystream_kit::admin::router(registry, Some(pool)))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
}

async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let started = Instant::now();
    let response = next.run(req).await;
    let class = format!("{}xx", response.status().as_u16() / 100);
    state
        .metrics
        .requests
        .with_label_values(&[route.as_str(), class.as_str()])
        .inc();
    state
        .metrics
        .latency
        .with_label_values(&[route.as_str()])
        .observe(started.elapsed().as_secs_f64());
    response
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, Json(self.body())).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert("www-authenticate", HeaderValue::from_static("Bearer"));
        }
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert("retry-after", HeaderValue::from(secs));
        }
        response
    }
}

/// A real fault: the cause chain is logged once, here, and the caller gets no internals.
fn internal(err: &anyhow::Error) -> ApiError {
    tracing::error!(error = format!("{err:#}"), "request failed");
    ApiError::internal()
}

async fn not_found() -> ApiError {
    ApiError::new(
        404,
        kind::INVALID_REQUEST,
        "route_not_found",
        "no such route",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        405,
        kind::INVALID_REQUEST,
        "method_not_allowed",
        "this route does not take this method",
    )
}

async fn openapi_json() -> Response {
    Json(openapi::document()).into_response()
}

// ---- authentication, roles, rate limits -----------------------------------------------------

fn authenticate(headers: &HeaderMap, secret: &str) -> Result<Claims, ApiError> {
    let value = headers.get("authorization").ok_or_else(|| {
        ApiError::unauthorized("missing_token", "send Authorization: Bearer <token>")
    })?;
    // The scheme is case-insensitive (RFC 9110 §11.1).
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ApiError::unauthorized(
                "malformed_token",
                "the Authorization header must be Bearer <token>",
            )
        })?;
    auth::verify(secret, token).map_err(|e| match e {
        TokenError::Expired => ApiError::unauthorized("expired_token", "the token has expired"),
        TokenError::Invalid => ApiError::unauthorized(
            "invalid_token",
            "the token is malformed or its signature is invalid",
        ),
    })
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Merchant => "merchant",
        Role::Operator => "operator",
        Role::Analyst => "analyst",
    }
}

async fn rate_limit(state: &AppState, claims: &Claims) -> Result<(), ApiError> {
    let subject = format!("{}:{}", role_name(claims.role), claims.sub);
    match state.limiter.acquire(&subject).await {
        Ok(RateDecision::Allowed) => Ok(()),
        Ok(RateDecision::Limited { retry_after }) => {
            state.metrics.rate_limited.inc();
            let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
            let mut err = ApiError::new(
                429,
                kind::RATE_LIMIT,
                "rate_limited",
                format!("too many requests; retry after {secs} s"),
            );
            err.retry_after = Some(secs);
            Err(err)
        }
        Err(e) => {
            // Fail open: an unavailable limiter must not take the payment API down with it.
            state.metrics.limiter_failures.inc();
            if once_per(&state.metrics.last_limiter_warning, Duration::from_secs(10)) {
                tracing::warn!(error = %e, "rate limiter unavailable; requests pass without a limit (fail open)");
            }
            Ok(())
        }
    }
}

/// An authenticated, rate-limited caller. Runs before the body is read, so an anonymous caller
/// cannot make the service buffer a body.
pub struct Auth(Claims);

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let claims = authenticate(&parts.headers, &state.jwt_secret)?;
        rate_limit(state, &claims).await?;
        Ok(Auth(claims))
    }
}

fn merchant_of(claims: &Claims) -> Result<MerchantId, ApiError> {
    MerchantId::parse(&claims.sub).map_err(|_| {
        ApiError::forbidden(
            "invalid_subject",
            "the token's subject is not a valid merchant id",
        )
    })
}

/// Payments are created and commanded by their merchant only.
fn merchant_only(claims: &Claims) -> Result<MerchantId, ApiError> {
    if claims.role != Role::Merchant {
        return Err(ApiError::forbidden(
            "role_not_allowed",
            "this endpoint is for merchants",
        ));
    }
    merchant_of(claims)
}

/// Reads: a merchant its own data, an operator anyone's; analysts use the reporting views.
fn reader(claims: &Claims) -> Result<Caller, ApiError> {
    match claims.role {
        Role::Merchant => Ok(Caller::Merchant(merchant_of(claims)?)),
        Role::Operator => Ok(Caller::Operator),
        Role::Analyst => Err(ApiError::forbidden(
            "role_not_allowed",
            "analysts have no API access; they read the reporting views",
        )),
    }
}

// ---- request parts ----------------------------------------------------------------------------

/// A JSON object body; `None` when the body is empty.
pub struct JsonObject(Option<RawBody>);

impl FromRequest<AppState> for JsonObject {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    413,
                    kind::INVALID_REQUEST,
                    "body_too_large",
                    format!("the body is larger than {} bytes", state.max_body_bytes),
                )
            } else {
                ApiError::invalid("body_invalid", "the body could not be read")
            }
        })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self(None));
        }
        match serde_json::from_slice::<serde_json::Value>(&bytes) {
            Ok(serde_json::Value::Object(map)) => Ok(Self(Some(map))),
            Ok(_) => Err(ApiError::invalid(
                "body_invalid",
                "the body must be a JSON object",
            )),
            Err(e) => Err(ApiError::invalid(
                "body_invalid",
                format!("the body must be a JSON object: {}", classify(&e)),
            )),
        }
    }
}

/// serde's message without echoing the input, which could hold card data.
fn classify(e: &serde_json::Error) -> String {
    match e.classify() {
        serde_json::error::Category::Io => "it could not be read".to_owned(),
        serde_json::error::Category::Syntax => {
            format!("syntax error at line {} column {}", e.line(), e.column())
        }
        serde_json::error::Category::Data => "it is not an object".to_owned(),
        serde_json::error::Category::Eof => "it ends too early".to_owned(),
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<IdempotencyKey, ApiError> {
    let raw = headers.get("idempotency-key").ok_or_else(|| {
        ApiError::invalid(
            "idempotency_key_missing",
            "the Idempotency-Key header is required",
        )
        .param("Idempotency-Key")
    })?;
    let raw = raw.to_str().map_err(|_| {
        ApiError::invalid(
            "idempotency_key_invalid",
            "Idempotency-Key must be visible ASCII",
        )
        .param("Idempotency-Key")
    })?;
    IdempotencyKey::parse(raw).map_err(|e| {
        ApiError::invalid("idempotency_key_invalid", e.to_string()).param("Idempotency-Key")
    })
}

/// A payment id from the path; anything else is a payment that does not exist.
fn payment_id(path: Result<Path<String>, PathRejection>) -> Result<PaymentId, ApiError> {
    path.ok()
        .and_then(|Path(raw)| PaymentId::parse(&raw).ok())
        .ok_or_else(ApiError::not_found)
}

fn query_pairs(
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Vec<(String, String)>, ApiError> {
    query.map(|Query(pairs)| pairs).map_err(|_| {
        ApiError::invalid(
            "parameter_invalid",
            "the query string is not valid URL encoding",
        )
    })
}

fn traceparent(headers: &HeaderMap) -> String {
    let incoming = headers.get("traceparent").and_then(|v| v.to_str().ok());
    trace::child_traceparent(incoming)
}

fn body_object(body: Result<JsonObject, ApiError>, required: bool) -> Result<RawBody, ApiError> {
    match body? {
        JsonObject(Some(map)) => Ok(map),
        JsonObject(None) if !required => Ok(RawBody::new()),
        JsonObject(None) => Err(ApiError::invalid(
            "body_invalid",
            "the body must be a JSON object",
        )),
    }
}

/// The saved or new answer of a POST, or the idempotency error.
fn respond(stored: Result<Answer, StoreError>, what: &str) -> Result<Response, ApiError> {
    match stored {
        Ok(answer) => {
            tracing::info!(status = answer.status, replayed = answer.replayed, "{what}");
            let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK);
            let mut response = (status, Json(answer.body)).into_response();
            if answer.replayed {
                response
                    .headers_mut()
                    .insert("idempotent-replayed", HeaderValue::from_static("true"));
            }
            Ok(response)
        }
        Err(StoreError::KeyReused) => Err(ApiError::new(
            422,
            kind::IDEMPOTENCY,
            "idempotency_key_reused",
            "this Idempotency-Key was already used with a different request",
        )
        .param("Idempotency-Key")),
        Err(StoreError::KeyInFlight) => Err(ApiError::new(
            409,
            kind::IDEMPOTENCY,
            "request_in_flight",
            "a request with this Idempotency-Key is still being processed; retry later",
        )
        .param("Idempotency-Key")),
        Err(StoreError::LockTimeout) => Err(ApiError::conflict(
            "lock_timeout",
            "another request on this payment is in progress; retry",
        )),
        Err(StoreError::Unavailable(e)) => Err(internal(&e)),
    }
}

fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::Unavailable(e) => internal(&e),
        other => internal(&anyhow::anyhow!("{other}")),
    }
}

// ---- handlers ---------------------------------------------------------------------------------

const CREATE: &str = "POST /v1/payments";

#[utoipa::path(
    post, path = "/v1/payments", tag = "payments",
    params(("Idempotency-Key" = String, Header, description = "1-255 visible ASCII characters, scoped to the merchant; kept at least 24 h")),
    request_body = openapi::CreatePaymentBody,
    responses(
        (status = 202, description = "Accepted and durable; `status` is `processing`. A replay (same key, same body) answers the saved status and body with `Idempotent-Replayed: true`.", body = crate::domain::payment::PaymentView),
        (status = 400, description = "body_invalid, parameter_missing, parameter_invalid, parameter_unknown, raw_card_data_refused, amount_too_large, idempotency_key_missing, idempotency_key_invalid", body = openapi::ErrorBody),
        (status = 401, description = "missing_token, malformed_token, invalid_token, expired_token", body = openapi::ErrorBody),
        (status = 403, description = "role_not_allowed (merchants only), invalid_subject", body = openapi::ErrorBody),
        (status = 409, description = "request_in_flight", body = openapi::ErrorBody),
        (status = 413, description = "body_too_large", body = openapi::ErrorBody),
        (status = 422, description = "idempotency_key_reused (type idempotency_error)", body = openapi::ErrorBody),
        (status = 429, description = "rate_limited, with Retry-After", body = openapi::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn create_payment(
    State(state): State<AppState>,
    Auth(claims): Auth,
    headers: HeaderMap,
    body: Result<JsonObject, ApiError>,
) -> Result<Response, ApiError> {
    let merchant = merchant_only(&claims)?;
    let key = idempotency_key(&headers)?;
    let raw = body_object(body, true)?;
    let request = parse_create(&raw, merchant.clone(), state.limits)?;
    let idem = Idempotent {
        merchant: &merchant,
        key: &key,
        operation: CREATE.to_owned(),
        request_hash: request_hash(CREATE, &request),
    };
    let id = PaymentId::new();
    let span = tracing::info_span!("create_payment", payment_id = %id, merchant_id = %merchant);
    let stored = state
        .store
        .create_payment(&idem, id, &request, &traceparent(&headers))
        .instrument(span.clone())
        .await;
    span.in_scope(|| respond(stored, "payment request answered"))
}

#[utoipa::path(
    post, path = "/v1/payments/{id}/capture", tag = "payments",
    params(
        ("id" = String, Path, description = "pay_..."),
        ("Idempotency-Key" = String, Header, description = "1-255 visible ASCII characters"),
    ),
    request_body(content = openapi::CaptureBody, description = "optional; `amount` defaults to all that was authorised"),
    responses(
        (status = 202, description = "The capture is durable and sent to the PSP; the payment is returned as it is now (still `requires_capture`) and becomes `succeeded` once the PSP confirmed.", body = crate::domain::payment::PaymentView),
        (status = 400, description = "amount_too_large (above the authorised amount), parameter_invalid, parameter_unknown, body_invalid, idempotency_key_missing, idempotency_key_invalid", body = openapi::ErrorBody),
        (status = 401, description = "missing_token, malformed_token, invalid_token, expired_token", body = openapi::ErrorBody),
        (status = 403, description = "role_not_allowed", body = openapi::ErrorBody),
        (status = 404, description = "resource_missing (also another merchant's payment)", body = openapi::ErrorBody),
        (status = 409, description = "payment_unexpected_state (only requires_capture), payment_command_in_progress, request_in_flight, lock_timeout", body = openapi::ErrorBody),
        (status = 422, description = "idempotency_key_reused", body = openapi::ErrorBody),
        (status = 429, description = "rate_limited", body = openapi::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn capture_payment(
    State(state): State<AppState>,
    Auth(claims): Auth,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<JsonObject, ApiError>,
) -> Result<Response, ApiError> {
    let merchant = merchant_only(&claims)?;
    let id = payment_id(path)?;
    let key = idempotency_key(&headers)?;
    let request = parse_capture(&body_object(body, false)?, id)?;
    let operation = format!("POST /v1/payments/{id}/capture");
    let idem = Idempotent {
        merchant: &merchant,
        key: &key,
        request_hash: request_hash(&operation, &request),
        operation,
    };
    let span = tracing::info_span!("capture_payment", payment_id = %id, merchant_id = %merchant);
    let stored = state
        .store
        .capture(&idem, &request, &traceparent(&headers))
        .instrument(span.clone())
        .await;
    span.in_scope(|| respond(stored, "capture answered"))
}

#[utoipa::path(
    post, path = "/v1/payments/{id}/cancel", tag = "payments",
    params(
        ("id" = String, Path, description = "pay_..."),
        ("Idempotency-Key" = String, Header, description = "1-255 visible ASCII characters"),
    ),
    responses(
        (status = 202, description = "The cancel is durable and sent to the PSP; the payment is returned as it is now and becomes `canceled` once the PSP confirmed.", body = crate::domain::payment::PaymentView),
        (status = 400, description = "parameter_unknown, body_invalid, idempotency_key_missing, idempotency_key_invalid", body = openapi::ErrorBody),
        (status = 401, description = "missing_token, malformed_token, invalid_token, expired_token", body = openapi::ErrorBody),
        (status = 403, description = "role_not_allowed", body = openapi::ErrorBody),
        (status = 404, description = "resource_missing", body = openapi::ErrorBody),
        (status = 409, description = "payment_unexpected_state (only requires_capture), payment_command_in_progress, request_in_flight, lock_timeout", body = openapi::ErrorBody),
        (status = 422, description = "idempotency_key_reused", body = openapi::ErrorBody),
        (status = 429, description = "rate_limited", body = openapi::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn cancel_payment(
    State(state): State<AppState>,
    Auth(claims): Auth,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<JsonObject, ApiError>,
) -> Result<Response, ApiError> {
    let merchant = merchant_only(&claims)?;
    let id = payment_id(path)?;
    let key = idempotency_key(&headers)?;
    let request = parse_cancel(&body_object(body, false)?, id)?;
    let operation = format!("POST /v1/payments/{id}/cancel");
    let idem = Idempotent {
        merchant: &merchant,
        key: &key,
        request_hash: request_hash(&operation, &request),
        operation,
    };
    let span = tracing::info_span!("cancel_payment", payment_id = %id, merchant_id = %merchant);
    let stored = state
        .store
        .cancel(&idem, &request, &traceparent(&headers))
        .instrument(span.clone())
        .await;
    span.in_scope(|| respond(stored, "cancel answered"))
}

#[utoipa::path(
    post, path = "/v1/payments/{id}/refunds", tag = "refunds",
    params(
        ("id" = String, Path, description = "pay_..."),
        ("Idempotency-Key" = String, Header, description = "1-255 visible ASCII characters"),
    ),
    request_body(content = openapi::RefundBody, description = "optional; `amount` defaults to all that is left to refund"),
    responses(
        (status = 202, description = "The refund is reserved against the capture and sent to the PSP (`status` pending).", body = crate::domain::commands::RefundView),
        (status = 400, description = "amount_exceeds_refundable (above captured minus refunds succeeded or pending), parameter_invalid, parameter_unknown, body_invalid, idempotency_key_missing, idempotency_key_invalid", body = openapi::ErrorBody),
        (status = 401, description = "missing_token, malformed_token, invalid_token, expired_token", body = openapi::ErrorBody),
        (status = 403, description = "role_not_allowed", body = openapi::ErrorBody),
        (status = 404, description = "resource_missing", body = openapi::ErrorBody),
        (status = 409, description = "payment_unexpected_state (only succeeded), request_in_flight, lock_timeout", body = openapi::ErrorBody),
        (status = 422, description = "idempotency_key_reused", body = openapi::ErrorBody),
        (status = 429, description = "rate_limited", body = openapi::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn refund_payment(
    State(state): State<AppState>,
    Auth(claims): Auth,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<JsonObject, ApiError>,
) -> Result<Response, ApiError> {
    let merchant = merchant_only(&claims)?;
    let id = payment_id(path)?;
    let key = idempotency_key(&headers)?;
    let request = parse_refund(&body_object(body, false)?, id)?;
    let operation = format!("POST /v1/payments/{id}/refunds");
    let idem = Idempotent {
        merchant: &merchant,
        key: &key,
        request_hash: request_hash(&operation, &request),
        operation,
    };
    let span = tracing::info_span!("refund_payment", payment_id = %id, merchant_id = %merchant);
    let stored = state
        .store
        .refund(&idem, &request, &traceparent(&headers))
        .instrument(span.clone())
        .await;
    span.in_scope(|| respond(stored, "refund answered"))
}

#[utoipa::path(
    get, path = "/v1/payments/{id}", tag = "payments",
    params(("id" = String, Path, description = "pay_...")),
    responses(
        (status = 200, description = "The payment, through the versioned Redis cache (never older than the last update the order store finished)", body = crate::domain::payment::PaymentView),
        (status = 401, description = "missing_token, malformed_token, invalid_token, expired_token", body = openapi::ErrorBody),
        (status = 403, description = "role_not_allowed (analysts)", body = openapi::ErrorBody),
        (status = 404, description = "resource_missing (also another merchant's payment)", body = openapi::ErrorBody),
        (status = 429, description = "rate_limited", body = openapi::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get_payment(
    State(state): State<AppState>,
    Auth(claims): Auth,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let caller = reader(&claims)?;
    let id = payment_id(path)?;
    let span = tracing::info_span!("get_payment", payment_id = %id);
    async move {
        match state.cache.get(id).await {
            Ok(Some(view)) => {
                return if caller.scope().is_none_or(|m| &view.merchant_id == m) {
                    Ok(Json(view).into_response())
                } else {
                    Err(ApiError::not_found())
                };
            }
            Ok(None) => {}
            Err(e) => {
                if once_per(&state.metrics.last_cache_warning, Duration::from_secs(10)) {
                    tracing::warn!(error = %e, "payment cache unavailable; reading the store");
                }
            }
        }
        let read_started = Instant::now();
        let found = state
            .store
            .find_payment(caller.scope(), id)
            .await
            .map_err(store_error)?
            .ok_or_else(ApiError::not_found)?;
        // Only the order store's rows carry a version the order store's tombstones can refuse.
        if found.from_order_store
            && let Err(e) = state.cache.fill(&found.view, read_started).await
            && once_per(&state.metrics.last_cache_warning, Duration::from_secs(10))
        {
            tracing::warn!(error = %e, "could not fill the payment cache");
        }
        Ok(Json(found.view).into_response())
    }
    .instrument(span)
    .await
}

#[utoipa::path(
    get, path = "/v1/payments", tag = "payments",
    params(
        ("limit" = Option<u32>, Query, description = "1-100, default 10"),
        ("starting_after" = Option<String>, Query, description = "a payment id: the page after it (newest first)"),
        ("status" = Option<String>, Query, description = "processing | requires_capture | succeeded | declined | failed | canceled"),
        ("merchant_id" = Option<String>, Query, description = "operators only: one merchant's payments"),
    ),
    responses(
        (status = 200, description = "Newest first, cursor pagination by id (UUIDv7). Payments the order store has not seen yet are listed as `processing`.", body = PaymentList),
        (status = 400, description = "parameter_invalid, parameter_unknown, parameter_not_allowed (merchant_id for a merchant)", body = openapi::ErrorBody),
        (status = 401, description = "missing_token, malformed_token, invalid_token, expired_token", body = openapi::ErrorBody),
        (status = 403, description = "role_not_allowed (analysts)", body = openapi::ErrorBody),
        (status = 429, description = "rate_limited", body = openapi::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list_payments(
    State(state): State<AppState>,
    Auth(claims): Auth,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let caller = reader(&claims)?;
    let query = parse_list(&query_pairs(query)?, &caller)?;
    let (data, has_more) = state
        .store
        .list_payments(&query)
        .await
        .map_err(store_error)?;
    Ok(Json(PaymentList {
        object: "list".to_owned(),
        data,
        has_more,
        url: "/v1/payments".to_owned(),
    })
    .into_response())
}

#[utoipa::path(
    get, path = "/v1/payments/{id}/refunds", tag = "refunds",
    params(("id" = String, Path, description = "pay_...")),
    responses(
        (status = 200, description = "The payment's refunds, newest first", body = RefundList),
        (status = 401, description = "missing_token, malformed_token, invalid_token, expired_token", body = openapi::ErrorBody),
        (status = 403, description = "role_not_allowed (analysts)", body = openapi::ErrorBody),
        (status = 404, description = "resource_missing", body = openapi::ErrorBody),
        (status = 429, description = "rate_limited", body = openapi::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list_refunds(
    State(state): State<AppState>,
    Auth(claims): Auth,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let caller = reader(&claims)?;
    let id = payment_id(path)?;
    let data = state
        .store
        .list_refunds(caller.scope(), id)
        .await
        .map_err(store_error)?
        .ok_or_else(ApiError::not_found)?;
    Ok(Json(RefundList {
        object: "list".to_owned(),
        data,
        has_more: false,
        url: format!("/v1/payments/{id}/refunds"),
    })
    .into_response())
}

#[utoipa::path(
    get, path = "/v1/balance", tag = "balance",
    params(("merchant_id" = Option<String>, Query, description = "operators only (required for them)")),
    responses(
        (status = 200, description = "`available`: the merchant's payable ledger account per currency (credits - debits). `pending`: authorised but not captured (sum of amount - amount_captured of its requires_capture payments) per currency.", body = crate::domain::listing::Balance),
        (status = 400, description = "parameter_missing, parameter_invalid, parameter_unknown, parameter_not_allowed", body = openapi::ErrorBody),
        (status = 401, description = "missing_token, malformed_token, invalid_token, expired_token", body = openapi::ErrorBody),
        (status = 403, description = "role_not_allowed (analysts)", body = openapi::ErrorBody),
        (status = 429, description = "rate_limited", body = openapi::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get_balance(
    State(state): State<AppState>,
    Auth(claims): Auth,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let caller = reader(&claims)?;
    let merchant = parse_balance(&query_pairs(query)?, &caller)?;
    let balance = state.store.balance(&merchant).await.map_err(store_error)?;
    Ok(Json(balance).into_response())
}
