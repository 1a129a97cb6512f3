use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use paystream_kit::CommonConfig;
use paystream_kit::config::{env_or, env_parse};

use crate::domain::routing::RoutingRules;

/// One PSP speaking the PSP wire protocol. Secrets are kept out of `Debug` so that a config dump
/// in a log cannot leak them.
#[derive(Clone)]
pub struct PspConfig {
    pub name: String,
    pub url: String,
    pub api_key: String,
    /// Verifies this PSP's webhooks (`PSP_<NAME>_WEBHOOK_SECRET`).
    pub webhook_secret: String,
}

impl std::fmt::Debug for PspConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PspConfig")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("api_key", &"<redacted>")
            .field("webhook_secret", &"<redacted>")
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub common: CommonConfig,
    pub psps: Vec<PspConfig>,
    /// PSP names in order of preference when no routing rule matches; later ones are used only
    /// after a definitive decline (`PAYSTREAM_PSP_ROUTE`).
    pub route: Vec<String>,
    /// Routing rules (`PAYSTREAM_PSP_ROUTING_FILE`); `None`: `route` for every payment.
    pub routing: Option<RoutingRules>,
    /// Bound on every PSP call, connect and body included (`PAYSTREAM_PSP_TIMEOUT_MS`).
    pub call_timeout: Duration,
    /// Calls with the same key before an unknown outcome is handed back to the runtime's retry
    /// (`PAYSTREAM_PSP_RESOLVE_ATTEMPTS`).
    pub resolve_attempts: u32,
    /// Pause before the n-th same-key call: n × this (`PAYSTREAM_PSP_RESOLVE_BACKOFF_MS`).
    pub resolve_backoff: Duration,
    /// Consecutive failed calls (timeouts, 5xx, resets) that open a PSP's breaker
    /// (`PAYSTREAM_PSP_BREAKER_FAILURES`).
    pub breaker_failures: u32,
    /// How long an open breaker skips its PSP for new charges before a probe
    /// (`PAYSTREAM_PSP_BREAKER_COOLDOWN_MS`).
    pub breaker_cooldown: Duration,
    /// Accepted clock difference for webhook signatures (`PAYSTREAM_PSP_WEBHOOK_TOLERANCE_S`).
    pub webhook_tolerance_secs: u64,
}

impl Config {
    /// `PAYSTREAM_PSP_NAMES` (default `alpha,beta`) and per PSP `PSP_<NAME>_URL` (default
    /// `http://127.0.0.1:<8091 + i>`), `PSP_<NAME>_API_KEY` (`sk_test_<name>`),
    /// `PSP_<NAME>_WEBHOOK_SECRET` (`whsec_<name>`); the other variables are on the fields.
    pub fn from_env() -> anyhow::Result<Self> {
        let names: Vec<String> = env_or("PAYSTREAM_PSP_NAMES", "alpha,beta")
            .split(',')
            .map(|s| s.trim().to_lowercase())
            .filter(|s| !s.is_empty())
            .collect();
        let psps = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let upper = name.to_uppercase();
                PspConfig {
                    name: name.clone(),
                    url: env_or(
                        &format!("PSP_{upper}_URL"),
                        &format!("http://127.0.0.1:{}", 8091 + i),
                    ),
                    api_key: env_or(&format!("PSP_{upper}_API_KEY"), &format!("sk_test_{name}")),
                    webhook_secret: env_or(
                        &format!("PSP_{upper}_WEBHOOK_SECRET"),
                        &format!("whsec_{name}"),
                    ),
                }
            })
            .collect();
        let route = env_or("PAYSTREAM_PSP_ROUTE", "alpha,beta")
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        let routing = match std::env::var("PAYSTREAM_PSP_ROUTING_FILE") {
            Ok(path) if !path.is_empty() => Some(load_routing(PathBuf::from(path))?),
            _ => None,
        };
        Ok(Self {
            common: CommonConfig::from_env("127.0.0.1:9102"),
            psps,
            route,
            routing,
            call_timeout: Duration::from_millis(env_parse("PAYSTREAM_PSP_TIMEOUT_MS", 5000u64)?),
            resolve_attempts: env_parse("PAYSTREAM_PSP_RESOLVE_ATTEMPTS", 3u32)?,
            resolve_backoff: Duration::from_millis(env_parse(
                "PAYSTREAM_PSP_RESOLVE_BACKOFF_MS",
                100u64,
            )?),
            breaker_failures: env_parse("PAYSTREAM_PSP_BREAKER_FAILURES", 5u32)?,
            breaker_cooldown: Duration::from_millis(env_parse(
                "PAYSTREAM_PSP_BREAKER_COOLDOWN_MS",
                10_000u64,
            )?),
            webhook_tolerance_secs: env_parse("PAYSTREAM_PSP_WEBHOOK_TOLERANCE_S", 300u64)?,
        })
    }

    /// The routing rules in force, validated against the configured PSPs.
    pub fn routing_rules(&self) -> anyhow::Result<RoutingRules> {
        let mut rules = self
            .routing
            .clone()
            .unwrap_or_else(|| RoutingRules::fallback_only(self.route.clone()));
        if rules.default.is_empty() {
            rules.default = self.route.clone();
        }
        let known: Vec<String> = self.psps.iter().map(|p| p.name.clone()).collect();
        rules
            .validate(&known)
            .map_err(|e| anyhow::anyhow!("PSP routing: {e}"))?;
        Ok(rules)
    }
}

pub fn load_routing(path: PathBuf) -> anyhow::Result<RoutingRules> {
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading PAYSTREAM_PSP_ROUTING_FILE {}", path.display()))?;
    let json = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    RoutingRules::parse(&text, json)
        .map_err(|e| anyhow::anyhow!("PAYSTREAM_PSP_ROUTING_FILE {}: {e}", path.display()))
}
