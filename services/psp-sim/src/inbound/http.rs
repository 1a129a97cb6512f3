//! The PSP wire protocol (DESIGN.md §4) over axum, with fault injection on top.

use crate::config::Faults;
use crate::domain::idempotency::{Fingerprint, StoredResponse, fingerprint};
use crate::domain::ledger::{
    ChargeStatus, DeclineCode, LedgerError, NewCharge, deterministic_decline,
};
use crate::domain::{ChargeEvent, Event};
use crate::sim::{Outcome, Shared, Start, State};
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State as AxumState};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rand::Rng;
use serde::Serialize;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

type SimState = AxumState<Arc<Shared>>;

/// Above this, sums over a day could overflow i64; no real card payment comes close.
const MAX_AMOUNT: i64 = 1_000_000_000_000;
const MAX_TEXT_LEN: usize = 255;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let v1 = Router::new()
        .route("/v1/charges", post(create_charge).get(list_charges))
        .route("/v1/charges/{id}", get(get_charge))
        .route("/v1/charges/{id}/capture", post(capture_charge))
        .route("/v1/charges/{id}/cancel", post(cancel_charge))
        .route("/v1/refunds", post(create_refund))
        .route("/v1/refunds/{id}", get(get_refund))
        .route("/v1/settlements", get(settlement))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&shared),
            require_api_key,
        ));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/sim/stats", get(stats))
        .merge(v1)
        .fallback(unknown_route)
        .with_state(shared)
}

// ---------------------------------------------------------------------------------------------
// Errors

#[derive(Debug, Serialize)]
struct ErrorBody {
    #[serde(rename = "type")]
    kind: &'static str,
    code: &'static str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    param: Option<&'static str>,
    /// Like Stripe, a card error names the failed charge so the client can look it up.
    #[serde(skip_serializing_if = "Option::is_none")]
    charge: Option<String>,
}

#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    body: ErrorBody,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, code: &'static str, message: String) -> Self {
        Self {
            status,
            body: ErrorBody {
                kind,
                code,
                message,
                param: None,
                charge: None,
            },
        }
    }

    fn invalid(code: &'static str, param: &'static str, message: impl Into<String>) -> Self {
        let mut error = Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            code,
            message.into(),
        );
        error.body.param = Some(param);
        error
    }

    fn missing(param: &'static str, message: impl Into<String>) -> Self {
        let mut error = Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "resource_missing",
            message.into(),
        );
        error.body.param = Some(param);
        error
    }

    fn declined(code: DeclineCode, charge: &str) -> Self {
        let mut error = Self::new(
            StatusCode::PAYMENT_REQUIRED,
            "card_error",
            code.code(),
            code.message().to_owned(),
        );
        error.body.charge = Some(charge.to_owned());
        error
    }

    fn from_ledger(error: LedgerError, id_param: &'static str) -> Self {
        let message = error.to_string();
        match error {
            LedgerError::NoSuchCharge(_) => Self::missing(id_param, message),
            LedgerError::AlreadyCaptured(_) => {
                Self::invalid("charge_already_captured", id_param, message)
            }
            LedgerError::NotCapturable { .. } => {
                Self::invalid("charge_not_capturable", id_param, message)
            }
            LedgerError::NotCancelable { .. } => {
                Self::invalid("charge_not_cancelable", id_param, message)
            }
            LedgerError::NotRefundable { .. } => {
                Self::invalid("charge_not_refundable", id_param, message)
            }
            LedgerError::AlreadyRefunded(_) => {
                Self::invalid("charge_already_refunded", id_param, message)
            }
            LedgerError::AmountTooLarge { .. } => {
                Self::invalid("amount_too_large", "amount", message)
            }
        }
    }

    fn stored(&self) -> StoredResponse {
        stored(self.status, &json!({ "error": &self.body }))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        respond(&self.stored(), false)
    }
}

fn stored(status: StatusCode, body: &impl Serialize) -> StoredResponse {
    // Serialising our own plain structs cannot fail; if it ever did, the client gets a 500
    // rather than a half-written body.
    match serde_json::to_vec(body) {
        Ok(body) => StoredResponse {
            status: status.as_u16(),
            body,
        },
        Err(_) => StoredResponse {
            status: 500,
            body: br#"{"error":{"type":"api_error","code":"internal_error","message":"serialisation failed"}}"#.to_vec(),
        },
    }
}

fn respond(response: &StoredResponse, replayed: bool) -> Response {
    let status = StatusCode::from_u16(response.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut http = (status, Body::from(response.body.clone())).into_response();
    let headers = http.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if replayed {
        headers.insert("Idempotent-Replayed", HeaderValue::from_static("true"));
    }
    http
}

async fn unknown_route() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "resource_missing",
        "Unrecognized request URL.".to_owned(),
    )
}

// ---------------------------------------------------------------------------------------------
// Authentication

async fn require_api_key(shared: SimState, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim);
    let message = match presented {
        None => "No API key provided. Use 'Authorization: Bearer <api key>'.",
        Some(key) if constant_time_eq(key.as_bytes(), shared.api_key.as_bytes()) => {
            return next.run(request).await;
        }
        // The presented key is deliberately not echoed: it may be another PSP's real key.
        Some(_) => "Invalid API key provided.",
    };
    let mut response = ApiError::new(
        StatusCode::UNAUTHORIZED,
        "authentication_error",
        "invalid_api_key",
        message.to_owned(),
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// Compares without an early exit so response timing does not reveal how much of a guessed key
/// was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

// ---------------------------------------------------------------------------------------------
// Request parsing

fn idempotency_key(headers: &HeaderMap) -> Result<String, ApiError> {
    let value = headers.get("Idempotency-Key").ok_or_else(|| {
        ApiError::invalid(
            "idempotency_key_missing",
            "Idempotency-Key",
            "An Idempotency-Key header is required for this request.",
        )
    })?;
    match value.to_str() {
        Ok(key) if !key.trim().is_empty() && key.len() <= MAX_TEXT_LEN => Ok(key.to_owned()),
        _ => Err(ApiError::invalid(
            "idempotency_key_invalid",
            "Idempotency-Key",
            "The Idempotency-Key header must be 1 to 255 visible ASCII characters.",
        )),
    }
}

/// An empty body is the same request as `{}`, so an optional-body call retried with or without
/// a body keeps its idempotency fingerprint.
fn json_object(body: &Bytes) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(Map::new()));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(value @ Value::Object(_)) => Ok(value),
        Ok(_) => Err(ApiError::invalid(
            "parameter_invalid",
            "body",
            "The request body must be a JSON object.",
        )),
        Err(error) => Err(ApiError::invalid(
            "parameter_invalid",
            "body",
            format!("The request body is not valid JSON: {error}"),
        )),
    }
}

fn field<'a>(body: &'a Value, name: &str) -> Option<&'a Value> {
    body.get(name).filter(|v| !v.is_null())
}

fn amount_field(body: &Value, name: &'static str) -> Result<Option<i64>, ApiError> {
    let Some(value) = field(body, name) else {
        return Ok(None);
    };
    match value.as_i64() {
        Some(amount) if amount > 0 && amount <= MAX_AMOUNT => Ok(Some(amount)),
        _ => Err(ApiError::invalid(
            "parameter_invalid",
            name,
            format!("{name} must be a positive integer in minor units (at most {MAX_AMOUNT})."),
        )),
    }
}

fn text_field(body: &Value, name: &'static str) -> Result<String, ApiError> {
    match field(body, name) {
        None => Err(ApiError::invalid(
            "parameter_missing",
            name,
            format!("Missing required param: {name}."),
        )),
        Some(Value::String(text)) if !text.trim().is_empty() && text.len() <= MAX_TEXT_LEN => {
            Ok(text.clone())
        }
        Some(_) => Err(ApiError::invalid(
            "parameter_invalid",
            name,
            format!("{name} must be a non-empty string of at most {MAX_TEXT_LEN} characters."),
        )),
    }
}

fn new_charge(body: &Value) -> Result<NewCharge, ApiError> {
    let amount = amount_field(body, "amount")?.ok_or_else(|| {
        ApiError::invalid(
            "parameter_missing",
            "amount",
            "Missing required param: amount.",
        )
    })?;
    let currency = text_field(body, "currency")?;
    if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(ApiError::invalid(
            "parameter_invalid",
            "currency",
            "currency must be an ISO 4217 code in upper case, such as EUR.",
        ));
    }
    let payment_method = text_field(body, "payment_method")?;
    if !payment_method.starts_with("pm_") {
        // Also keeps raw card numbers out of the ledger: only tokens are accepted.
        return Err(ApiError::invalid(
            "parameter_invalid",
            "payment_method",
            "payment_method must be a payment method token (pm_...).",
        ));
    }
    let capture = match field(body, "capture") {
        None => true,
        Some(Value::Bool(capture)) => *capture,
        Some(_) => {
            return Err(ApiError::invalid(
                "parameter_invalid",
                "capture",
                "capture must be true or false.",
            ));
        }
    };
    let reference = text_field(body, "reference")?;
    Ok(NewCharge {
        amount,
        currency,
        payment_method,
        capture,
        reference,
    })
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}

fn event(kind: ChargeEvent, charge: &crate::domain::ledger::Charge) -> Event {
    Event::new(new_id("evt"), kind, now(), charge.clone())
}

// ---------------------------------------------------------------------------------------------
// Fault injection and the idempotent mutation pipeline

enum Fault {
    None,
    /// The client gets a 504 after a hang; `committed` says whether the work happened anyway.
    Timeout {
        committed: bool,
    },
    Ambiguous,
}

fn chance(rate: f64) -> bool {
    rand::rng().random::<f64>() < rate
}

fn roll_fault(faults: &Faults) -> Fault {
    if chance(faults.timeout_rate) {
        Fault::Timeout {
            committed: chance(0.5),
        }
    } else if chance(faults.ambiguous_rate) {
        Fault::Ambiguous
    } else {
        Fault::None
    }
}

/// Runs one mutating call under its idempotency key: replays, conflicts and key reuse are
/// answered without touching the ledger; otherwise the operation runs at most once, and its
/// result is stored before any injected fault decides what the client actually hears.
async fn mutate(
    shared: Arc<Shared>,
    key: String,
    fingerprint: Fingerprint,
    operation: impl FnOnce(&mut State) -> Outcome + Send,
) -> Response {
    let reservation = match shared.begin(&key, fingerprint) {
        Start::Reserved(reservation) => reservation,
        Start::Replay(response) => return respond(&response, true),
        Start::InFlight => {
            return ApiError::new(
                StatusCode::CONFLICT,
                "idempotency_error",
                "request_in_flight",
                "A request with this Idempotency-Key is still being processed; retry later."
                    .to_owned(),
            )
            .into_response();
        }
        Start::Reused => {
            return ApiError::invalid(
                "idempotency_key_reused",
                "Idempotency-Key",
                "This Idempotency-Key was already used with a different request.",
            )
            .into_response();
        }
    };
    let faults = shared.lock().faults;
    shared.pause(faults.latency_ms).await;
    match roll_fault(&faults) {
        Fault::None => {
            let outcome = reservation.commit(operation);
            shared.dispatch(outcome.events);
            respond(&outcome.response, false)
        }
        Fault::Ambiguous => {
            let outcome = reservation.commit(operation);
            shared.lock().stats.ambiguous += 1;
            shared.dispatch(outcome.events);
            tracing::info!(psp = %shared.name, "injected ambiguous failure: work done, answering 500");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "api_error",
                "internal_error",
                "An error occurred while processing the request.".to_owned(),
            )
            .into_response()
        }
        Fault::Timeout { committed } => {
            if committed {
                let outcome = reservation.commit(operation);
                shared.lock().stats.timeouts_committed += 1;
                shared.dispatch(outcome.events);
            } else {
                drop(reservation);
                shared.lock().stats.timeouts_lost += 1;
            }
            tracing::info!(psp = %shared.name, committed, "injected timeout");
            shared.pause(faults.hang_ms).await;
            ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "api_error",
                "timeout",
                "The request timed out.".to_owned(),
            )
            .into_response()
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Handlers

async fn create_charge(
    shared: SimState,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let body = json_object(&body)?;
    let request = new_charge(&body)?;
    let fingerprint = fingerprint("POST /v1/charges", &body);
    let name = shared.name.clone();
    Ok(mutate(shared.0, key, fingerprint, move |state| {
        let decline = deterministic_decline(&request.payment_method).or_else(|| {
            let declined = chance(state.faults.decline_rate);
            if declined {
                state.stats.random_declines += 1;
            }
            declined.then_some(DeclineCode::CardDeclined)
        });
        let charge = state
            .ledger
            .create_charge(new_id("ch"), request, now(), decline);
        tracing::info!(
            psp = %name,
            charge = %charge.id,
            reference = %charge.reference,
            status = charge.status.as_str(),
            "charge created"
        );
        match decline {
            Some(code) => Outcome {
                response: ApiError::declined(code, &charge.id).stored(),
                events: vec![event(ChargeEvent::Failed, &charge)],
            },
            None => Outcome {
                response: stored(StatusCode::OK, &charge),
                events: vec![event(ChargeEvent::Succeeded, &charge)],
            },
        }
    })
    .await)
}

async fn capture_charge(
    shared: SimState,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let body = json_object(&body)?;
    let amount = amount_field(&body, "amount")?;
    let fingerprint = fingerprint(&format!("POST /v1/charges/{id}/capture"), &body);
    Ok(mutate(shared.0, key, fingerprint, move |state| {
        match state.ledger.capture(&id, amount) {
            Ok(charge) => Outcome {
                response: stored(StatusCode::OK, &charge),
                events: vec![event(ChargeEvent::Succeeded, &charge)],
            },
            Err(error) => Outcome {
                response: ApiError::from_ledger(error, "id").stored(),
                events: Vec::new(),
            },
        }
    })
    .await)
}

async fn cancel_charge(
    shared: SimState,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let body = json_object(&body)?;
    let fingerprint = fingerprint(&format!("POST /v1/charges/{id}/cancel"), &body);
    Ok(mutate(shared.0, key, fingerprint, move |state| {
        let response = match state.ledger.cancel(&id) {
            Ok(charge) => stored(StatusCode::OK, &charge),
            Err(error) => ApiError::from_ledger(error, "id").stored(),
        };
        Outcome {
            response,
            events: Vec::new(),
        }
    })
    .await)
}

async fn create_refund(
    shared: SimState,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let body = json_object(&body)?;
    let charge_id = text_field(&body, "charge")?;
    let amount = amount_field(&body, "amount")?;
    let fingerprint = fingerprint("POST /v1/refunds", &body);
    Ok(mutate(shared.0, key, fingerprint, move |state| {
        match state
            .ledger
            .refund_charge(new_id("re"), &charge_id, amount, now())
        {
            Ok((refund, charge)) => Outcome {
                response: stored(StatusCode::OK, &refund),
                events: vec![event(ChargeEvent::Refunded, &charge)],
            },
            Err(error) => Outcome {
                response: ApiError::from_ledger(error, "charge").stored(),
                events: Vec::new(),
            },
        }
    })
    .await)
}

fn query(
    params: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<HashMap<String, String>, ApiError> {
    params.map(|Query(params)| params).map_err(|error| {
        ApiError::invalid(
            "parameter_invalid",
            "query",
            format!("Invalid query string: {error}"),
        )
    })
}

async fn list_charges(
    shared: SimState,
    params: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let params = query(params)?;
    let latency = shared.lock().faults.latency_ms;
    shared.pause(latency).await;
    let state = shared.lock();
    let data: Vec<_> = match params.get("reference") {
        Some(reference) => state
            .ledger
            .charges_for_reference(reference)
            .cloned()
            .collect(),
        None => state.ledger.charges().to_vec(),
    };
    Ok(Json(json!({ "object": "list", "data": data })))
}

async fn get_charge(shared: SimState, Path(id): Path<String>) -> Result<Response, ApiError> {
    let latency = shared.lock().faults.latency_ms;
    shared.pause(latency).await;
    let state = shared.lock();
    let charge = state
        .ledger
        .charge(&id)
        .ok_or_else(|| ApiError::missing("id", format!("No such charge: {id}")))?;
    Ok(respond(&stored(StatusCode::OK, charge), false))
}

async fn get_refund(shared: SimState, Path(id): Path<String>) -> Result<Response, ApiError> {
    let latency = shared.lock().faults.latency_ms;
    shared.pause(latency).await;
    let state = shared.lock();
    let refund = state
        .ledger
        .refund(&id)
        .ok_or_else(|| ApiError::missing("id", format!("No such refund: {id}")))?;
    Ok(respond(&stored(StatusCode::OK, refund), false))
}

async fn settlement(
    shared: SimState,
    params: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let params = query(params)?;
    let date = params
        .get("date")
        .ok_or_else(|| ApiError::invalid("parameter_missing", "date", "Missing param: date."))?;
    let day = chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d")
        .map_err(|_| ApiError::invalid("parameter_invalid", "date", "date must be YYYY-MM-DD."))?;
    let latency = shared.lock().faults.latency_ms;
    shared.pause(latency).await;
    let (lines, totals) = shared.lock().ledger.settlement(day);
    Ok(Json(json!({
        "object": "settlement",
        "date": day.format("%Y-%m-%d").to_string(),
        "psp": shared.name,
        "lines": lines,
        "totals": totals,
    })))
}

async fn stats(shared: SimState) -> Json<Value> {
    let state = shared.lock();
    let mut by_status: BTreeMap<&str, usize> = [
        ChargeStatus::Succeeded,
        ChargeStatus::RequiresCapture,
        ChargeStatus::Canceled,
        ChargeStatus::Failed,
    ]
    .into_iter()
    .map(|status| (status.as_str(), 0))
    .collect();
    for charge in state.ledger.charges() {
        *by_status.entry(charge.status.as_str()).or_default() += 1;
    }
    Json(json!({
        "psp": shared.name,
        "charges": {
            "total": state.ledger.charges().len(),
            "by_status": by_status,
        },
        "refunds": state.ledger.refunds().len(),
        "idempotency_keys": state.idempotency.len(),
        "faults": {
            "config": state.faults,
            "injected": state.stats,
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_compares_whole_keys() {
        assert!(constant_time_eq(b"sk_test_alpha", b"sk_test_alpha"));
        assert!(!constant_time_eq(b"sk_test_alphx", b"sk_test_alpha"));
        assert!(!constant_time_eq(b"sk_test_alph", b"sk_test_alpha"));
    }

    #[test]
    fn charge_body_validation_names_the_field() {
        let cases = [
            (json!({"currency": "EUR"}), "amount"),
            (json!({"amount": 1.5}), "amount"),
            (json!({"amount": 0}), "amount"),
            (json!({"amount": 100, "currency": "eur"}), "currency"),
            (
                json!({"amount": 100, "currency": "EUR", "payment_method": "4242424242424242"}),
                "payment_method",
            ),
            (
                json!({"amount": 100, "currency": "EUR", "payment_method": "pm_x", "capture": "yes"}),
                "capture",
            ),
            (
                json!({"amount": 100, "currency": "EUR", "payment_method": "pm_x"}),
                "reference",
            ),
        ];
        for (body, param) in cases {
            match new_charge(&body) {
                Err(error) => assert_eq!(error.body.param, Some(param), "{body}"),
                Ok(_) => panic!("{body} should be refused"),
            }
        }
    }
}
