//! `psp-sim`: the project's Stripe-like PSP emulator. It speaks the PSP wire protocol of
//! DESIGN.md §4 so the gateway can be tested against realistic failure modes (declines,
//! timeouts, responses lost after the charge was made) without a real provider.
//!
//! A library with a thin binary, so tests start the real server in-process on port 0 and then
//! inspect its ledger through a [`SimHandle`].

mod config;
mod domain;
mod inbound;
mod outbound;
pub mod signature;
mod sim;

pub use config::{Faults, SimConfig};
pub use domain::ledger::{Charge, ChargeStatus, Refund};
pub use sim::SimHandle;

use anyhow::Context;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;

/// A bound but not yet serving simulator: binding first lets callers learn the port (and hand
/// the URL to the gateway under test) before any request can arrive.
pub struct Application {
    listener: TcpListener,
    local_addr: SocketAddr,
    handle: SimHandle,
}

/// Validates the configuration and binds `addr` (use port 0 in tests).
pub async fn build(config: SimConfig, addr: &str) -> anyhow::Result<Application> {
    config.validate()?;
    let webhook = config
        .webhook_url
        .as_deref()
        .map(|url| outbound::webhook::WebhookSender::new(url, &config.webhook_secret))
        .transpose()
        .context("building the webhook client")?;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let local_addr = listener.local_addr()?;
    let shared = sim::Shared::new(config.name, config.api_key, webhook, config.faults);
    Ok(Application {
        listener,
        local_addr,
        handle: SimHandle {
            shared: Arc::new(shared),
        },
    })
}

impl Application {
    pub fn port(&self) -> u16 {
        self.local_addr.port()
    }

    /// A URL a local client can use, even when bound to the unspecified address.
    pub fn base_url(&self) -> String {
        let ip = self.local_addr.ip();
        let host = match ip {
            ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_owned(),
            ip if ip.is_unspecified() => "[::1]".to_owned(),
            std::net::IpAddr::V6(v6) => format!("[{v6}]"),
            std::net::IpAddr::V4(v4) => v4.to_string(),
        };
        format!("http://{host}:{}", self.port())
    }

    pub fn handle(&self) -> SimHandle {
        self.handle.clone()
    }

    /// Serves until `shutdown` resolves, then lets in-flight requests finish; simulated hangs
    /// are cut short so a stop is never delayed by `hang_ms`.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let shared = Arc::clone(&self.handle.shared);
        let router = inbound::http::router(Arc::clone(&shared));
        tracing::info!(psp = %shared.name, addr = %self.local_addr, "psp-sim listening");
        axum::serve(self.listener, router)
            .with_graceful_shutdown(async move {
                shutdown.await;
                shared.begin_shutdown();
            })
            .await
            .context("serving HTTP")?;
        Ok(())
    }
}
