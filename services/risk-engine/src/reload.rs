//! Polls the rules source and swaps new rules in without a restart.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::domain::RulesHandle;
use crate::domain::ports::{RulesSource, RulesSourceError};
use crate::domain::rules::Rules;
use crate::metrics::RiskMetrics;

pub struct Reloader {
    pub source: Arc<dyn RulesSource>,
    pub rules: RulesHandle,
    /// In force when the source has no rules (an empty table).
    pub fallback: Rules,
    pub interval: Duration,
    pub metrics: RiskMetrics,
}

impl Reloader {
    /// One poll. Invalid or unreadable rules keep the current ones: a typo in a rule file must
    /// not turn the risk engine off, nor stop it deciding.
    pub async fn poll(&self, last_error: &mut Option<String>) {
        let loaded = match self.source.load().await {
            Ok(Some(rules)) => rules,
            Ok(None) => self.fallback.clone(),
            Err(e) => {
                let result = match e {
                    RulesSourceError::Invalid(_) => "invalid",
                    RulesSourceError::Unavailable(_) => "unavailable",
                };
                let msg = e.to_string();
                // Logged once per distinct problem, counted every time.
                if last_error.as_deref() != Some(msg.as_str()) {
                    tracing::error!(source = %self.source.describe(), error = %msg, "risk rules not reloaded; keeping the current ones");
                    *last_error = Some(msg);
                }
                self.metrics.reloads.with_label_values(&[result]).inc();
                return;
            }
        };
        *last_error = None;
        if *self.rules.current() != loaded {
            tracing::info!(source = %self.source.describe(), version = %loaded.version, "risk rules reloaded");
            self.rules.replace(loaded);
            self.metrics.reloads.with_label_values(&["applied"]).inc();
        }
    }

    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut last_error = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(self.interval) => {}
            }
            self.poll(&mut last_error).await;
        }
    }
}
