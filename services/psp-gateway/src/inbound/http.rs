//! The gateway's HTTP listener: the kit's `/healthz`, `/readyz`, `/metrics`, plus
//! `POST /webhooks/{psp}` for PSP webhooks.
//!
//! Nothing from the `PSP-Signature` header, and no secret, is ever logged: refusals log the PSP
//! name and the kind of problem only.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use prometheus::Registry;
use serde_json::json;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::gateway::Gateway;
use crate::domain::webhook::{WebhookEvent, verify};
use crate::metrics::GatewayMetrics;

/// Webhook secrets per PSP name. Not `Debug`: it must never end up in a log line.
pub struct WebhookSecrets(pub BTreeMap<String, Vec<u8>>);

struct WebhookState {
    gateway: Arc<Gateway>,
    secrets: WebhookSecrets,
    tolerance_secs: u64,
    metrics: GatewayMetrics,
}

pub struct HttpServer {
    listener: TcpListener,
    router: Router,
}

impl HttpServer {
    pub async fn bind(
        addr: &str,
        registry: Registry,
        pool: PgPool,
        gateway: Arc<Gateway>,
        secrets: WebhookSecrets,
        tolerance_secs: u64,
    ) -> anyhow::Result<Self> {
        let metrics = gateway.metrics.clone();
        let state = Arc::new(WebhookState {
            gateway,
            secrets,
            tolerance_secs,
            metrics,
        });
        let webhooks = Router::new()
            .route("/webhooks/{psp}", post(receive))
            .layer(DefaultBodyLimit::max(256 * 1024))
            .with_state(state);
        let router = paystream_kit::admin::router(registry, Some(pool)).merge(webhooks);
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the gateway's HTTP listener on {addr}"))?;
        Ok(Self { listener, router })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
            .context("gateway HTTP listener")
    }
}

fn refuse(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"type": "invalid_request_error", "code": code, "message": message}})),
    )
        .into_response()
}

async fn receive(
    State(state): State<Arc<WebhookState>>,
    Path(psp): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(secret) = state.secrets.0.get(&psp) else {
        state
            .metrics
            .webhooks
            .with_label_values(&["unknown", "unknown_psp"])
            .inc();
        return refuse(StatusCode::NOT_FOUND, "unknown_psp", "no such PSP");
    };
    // From here on `psp` is a configured name, safe as a metric label.
    let count = |result: &str| {
        state
            .metrics
            .webhooks
            .with_label_values(&[psp.as_str(), result])
            .inc()
    };
    let span = tracing::info_span!(
        "webhook",
        psp = %psp,
        event_id = tracing::field::Empty,
        payment_id = tracing::field::Empty
    );
    async {
        let Some(header) = headers.get("PSP-Signature").and_then(|v| v.to_str().ok()) else {
            count("malformed");
            tracing::warn!("webhook refused: no PSP-Signature header");
            return refuse(StatusCode::BAD_REQUEST, "signature_missing", "PSP-Signature header required");
        };
        let now = chrono::Utc::now().timestamp();
        if let Err(e) = verify(secret, header, &body, now, state.tolerance_secs) {
            count(e.label());
            tracing::warn!(reason = %e, "webhook refused");
            return refuse(StatusCode::BAD_REQUEST, &format!("signature_{}", e.label()), &e.to_string());
        }
        let event = match WebhookEvent::parse(&body) {
            Ok(event) => event,
            Err(e) => {
                count("malformed");
                tracing::warn!(reason = %e, "webhook refused: body is not a webhook event");
                return refuse(StatusCode::BAD_REQUEST, "malformed_event", "body is not a webhook event");
            }
        };
        let current = tracing::Span::current();
        current.record("event_id", event.id.as_str());
        current.record("payment_id", event.data.reference.as_str());
        match state.gateway.on_webhook(&psp, &event).await {
            Ok(outcome) => {
                count(outcome.as_str());
                let duplicate = outcome == super::webhooks::WebhookOutcome::Duplicate;
                if duplicate {
                    tracing::info!(event_type = %event.kind, "webhook replayed or redelivered; ignored");
                } else {
                    tracing::info!(event_type = %event.kind, outcome = outcome.as_str(), "webhook accepted");
                }
                (
                    StatusCode::OK,
                    Json(json!({"received": true, "duplicate": duplicate, "outcome": outcome.as_str()})),
                )
                    .into_response()
            }
            Err(e) => {
                count("error");
                tracing::error!(error = format!("{e:#}"), "webhook could not be applied; the PSP will redeliver it");
                refuse(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "try again later")
            }
        }
    }
    .instrument(span)
    .await
}
