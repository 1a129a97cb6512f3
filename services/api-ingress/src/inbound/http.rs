//! The HTTP edge: authentication, parsing into domain types, and the contract error shape.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use paystream_domain::{IdempotencyKey, MerchantId, PaymentId};
use paystream_kit::auth::{self, Claims, Role, TokenError};
use paystream_messaging::trace;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use serde_json::json;
use sqlx::PgPool;
use tracing::Instrument;

use crate::domain::payment::{RawCreatePayment, parse_create, request_hash};
use crate::domain::ports::{Accepted, PaymentCache, PaymentStore, StoreError};

const MAX_BODY_BYTES: usize = 64 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn PaymentStore>,
    pub cache: Arc<dyn PaymentCache>,
    pub jwt_secret: Arc<str>,
    pub metrics: HttpMetrics,
}

#[derive(Clone)]
pub struct HttpMetrics {
    requests: IntCounterVec,
    latency: HistogramVec,
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
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        Ok(Self { requests, latency })
    }
}

pub fn router(state: AppState, registry: Registry, pool: PgPool) -> Router {
    let api = Router::new()
        .route("/v1/payments", post(create_payment))
        .route("/v1/payments/{id}", get(get_payment))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state);
    api.merge(paystream_kit::admin::router(registry, Some(pool)))
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

/// The contract error: `{"error": {"type", "code", "message", "param"?}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    code: &'static str,
    message: String,
    param: Option<String>,
}

impl ApiError {
    fn new(
        status: StatusCode,
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
        }
    }

    fn param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            code,
            message,
        )
    }

    fn not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "resource_missing",
            "no such payment",
        )
        .param("id")
    }

    /// A real fault: the cause chain is logged once, here, and the merchant gets no internals.
    fn internal(err: anyhow::Error) -> Self {
        tracing::error!(error = format!("{err:#}"), "request failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "api_error",
            "internal_error",
            "an internal error occurred; the request may be retried with the same Idempotency-Key",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({"type": self.kind, "code": self.code, "message": self.message});
        if let Some(p) = self.param {
            error["param"] = json!(p);
        }
        let mut response = (self.status, Json(json!({ "error": error }))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert("www-authenticate", HeaderValue::from_static("Bearer"));
        }
        response
    }
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "route_not_found",
        "no such route",
    )
}

fn authenticate(headers: &HeaderMap, secret: &str) -> Result<Claims, ApiError> {
    let unauthorized = |code, msg: &str| {
        ApiError::new(StatusCode::UNAUTHORIZED, "authentication_error", code, msg)
    };
    let value = headers
        .get("authorization")
        .ok_or_else(|| unauthorized("missing_token", "send Authorization: Bearer <token>"))?;
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            unauthorized(
                "malformed_token",
                "the Authorization header must be Bearer <token>",
            )
        })?;
    auth::verify(secret, token).map_err(|e| match e {
        TokenError::Expired => unauthorized("expired_token", "the token has expired"),
        TokenError::Invalid => unauthorized(
            "invalid_token",
            "the token is malformed or its signature is invalid",
        ),
    })
}

fn require_merchant(claims: &Claims) -> Result<MerchantId, ApiError> {
    if claims.role != Role::Merchant {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "permission_error",
            "role_not_allowed",
            "this endpoint is for merchants",
        ));
    }
    MerchantId::parse(&claims.sub).map_err(|_| {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "permission_error",
            "invalid_subject",
            "the token's subject is not a valid merchant id",
        )
    })
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

fn traceparent(headers: &HeaderMap) -> String {
    let incoming = headers.get("traceparent").and_then(|v| v.to_str().ok());
    trace::child_traceparent(incoming)
}

async fn create_payment(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let claims = authenticate(&headers, &state.jwt_secret)?;
    let merchant = require_merchant(&claims)?;
    let key = idempotency_key(&headers)?;
    let raw: RawCreatePayment = serde_json::from_slice(&body).map_err(|e| {
        ApiError::invalid(
            "body_invalid",
            format!("the body must be a JSON object: {}", e.classify_message()),
        )
    })?;
    let request = parse_create(raw, merchant)
        .map_err(|e| ApiError::invalid(e.code, e.message).param(e.param))?;
    let hash = request_hash("create", &request);
    let payment_id = PaymentId::new();
    let span = tracing::info_span!("create_payment", payment_id = %payment_id, merchant_id = %request.merchant_id);
    let stored = state
        .store
        .create_payment(&key, &hash, payment_id, &request, &traceparent(&headers))
        .instrument(span.clone())
        .await;
    let _enter = span.enter();
    match stored {
        Ok(Accepted::Created(view)) => {
            tracing::info!(amount = view.amount, currency = %view.currency, "payment accepted");
            Ok((StatusCode::ACCEPTED, Json(view)).into_response())
        }
        Ok(Accepted::Replayed { status, body }) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            let mut response = (status, Json(body)).into_response();
            response
                .headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            Ok(response)
        }
        Err(StoreError::KeyReused) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_error",
            "idempotency_key_reused",
            "this Idempotency-Key was already used with a different request",
        )
        .param("Idempotency-Key")),
        Err(StoreError::KeyInFlight) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "idempotency_error",
            "request_in_flight",
            "a request with this Idempotency-Key is still being processed; retry later",
        )
        .param("Idempotency-Key")),
        Err(StoreError::Other(e)) => Err(ApiError::internal(e)),
    }
}

trait ClassifyMessage {
    fn classify_message(&self) -> String;
}

impl ClassifyMessage for serde_json::Error {
    /// serde's message without echoing the input, which could hold card data.
    fn classify_message(&self) -> String {
        match self.classify() {
            serde_json::error::Category::Io => "could not be read".to_owned(),
            serde_json::error::Category::Syntax => format!(
                "syntax error at line {} column {}",
                self.line(),
                self.column()
            ),
            serde_json::error::Category::Data => "it is not an object".to_owned(),
            serde_json::error::Category::Eof => "it ends too early".to_owned(),
        }
    }
}

async fn get_payment(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let claims = authenticate(&headers, &state.jwt_secret)?;
    let merchant = match claims.role {
        Role::Merchant => Some(require_merchant(&claims)?),
        Role::Operator => None,
        Role::Analyst => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "permission_error",
                "role_not_allowed",
                "analysts read the reporting views",
            ));
        }
    };
    let id = PaymentId::parse(&id).map_err(|_| ApiError::not_found())?;
    match state.cache.get(id).await {
        Ok(Some(view)) => {
            return if merchant.as_ref().is_none_or(|m| &view.merchant_id == m) {
                Ok(Json(view).into_response())
            } else {
                Err(ApiError::not_found())
            };
        }
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(payment_id = %id, error = %e, "cache unavailable; reading the store")
        }
    }
    let found = state
        .store
        .find_payment(merchant.as_ref(), id)
        .await
        .map_err(ApiError::internal)?;
    let Some((view, from_order_store)) = found else {
        return Err(ApiError::not_found());
    };
    if from_order_store && let Err(e) = state.cache.put(&view).await {
        tracing::warn!(payment_id = %id, error = %e, "could not fill the cache");
    }
    Ok(Json(view).into_response())
}
