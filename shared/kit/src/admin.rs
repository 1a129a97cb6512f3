//! The admin listener every service has: `/healthz` (the process runs), `/readyz` (its
//! dependencies answer) and `/metrics` (Prometheus text).

use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{Encoder, Registry, TextEncoder};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
struct AdminState {
    registry: Registry,
    pool: Option<PgPool>,
}

pub struct AdminServer {
    listener: TcpListener,
    router: Router,
}

impl AdminServer {
    pub async fn bind(
        addr: &str,
        registry: Registry,
        pool: Option<PgPool>,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the admin listener on {addr}"))?;
        Ok(Self {
            listener,
            router: router(registry, pool),
        })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
            .context("admin server")
    }
}

/// The health and metrics routes, for services that merge them into their own HTTP router.
pub fn router(registry: Registry, pool: Option<PgPool>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(Arc::new(AdminState { registry, pool }))
}

async fn readyz(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    if let Some(pool) = &state.pool
        && let Err(e) = sqlx::query("SELECT 1").execute(pool).await
    {
        tracing::warn!(error = %e, "readiness check failed");
        return (StatusCode::SERVICE_UNAVAILABLE, "database unavailable");
    }
    (StatusCode::OK, "ready")
}

async fn metrics(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    let mut buf = Vec::new();
    let families = state.registry.gather();
    match TextEncoder::new().encode(&families, &mut buf) {
        Ok(()) => (
            StatusCode::OK,
            [("content-type", "text/plain; version=0.0.4")],
            buf,
        ),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [("content-type", "text/plain")],
            b"metrics encoding failed".to_vec(),
        ),
    }
}
