use serde::{Deserialize, Serialize};
use std::fmt;

/// Who this simulated PSP is. One binary plays both `alpha` and `beta`, so everything that
/// distinguishes them (credentials, webhook target, misbehaviour) is configuration.
#[derive(Clone)]
pub struct SimConfig {
    pub name: String,
    pub api_key: String,
    pub webhook_secret: String,
    /// Where to deliver signed webhooks; `None` keeps the simulator silent (most unit tests).
    pub webhook_url: Option<String>,
    pub faults: Faults,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            name: "alpha".to_owned(),
            api_key: "sk_test_alpha".to_owned(),
            webhook_secret: "whsec_alpha".to_owned(),
            webhook_url: None,
            faults: Faults::default(),
        }
    }
}

/// Hand-written so that printing a config (in logs, in a failed assertion) never leaks
/// the API key or the webhook secret.
impl fmt::Debug for SimConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimConfig")
            .field("name", &self.name)
            .field("api_key", &"<redacted>")
            .field("webhook_secret", &"<redacted>")
            .field("webhook_url", &self.webhook_url)
            .field("faults", &self.faults)
            .finish()
    }
}

impl SimConfig {
    pub(crate) fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(!self.name.trim().is_empty(), "PSP name must not be empty");
        anyhow::ensure!(!self.api_key.is_empty(), "API key must not be empty");
        anyhow::ensure!(
            !self.webhook_secret.is_empty(),
            "webhook secret must not be empty"
        );
        self.faults.validate()
    }
}

/// The misbehaviour a real PSP shows in production, injected at random per request so that the
/// gateway's handling of unknown outcomes is exercised, not just its happy path.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Faults {
    /// Added to every `/v1` call; also widens the window in which a retry sees `409 in flight`.
    pub latency_ms: u64,
    /// Share of charges declined with `card_declined` although the card is fine.
    pub decline_rate: f64,
    /// Share of mutating calls that hang and answer 504; half of them did the work anyway.
    pub timeout_rate: f64,
    /// Share of mutating calls that do the work, store the result and then answer 500.
    pub ambiguous_rate: f64,
    /// How long a timed-out call hangs before its 504, so clients hit their own timeout first.
    pub hang_ms: u64,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            latency_ms: 0,
            decline_rate: 0.0,
            timeout_rate: 0.0,
            ambiguous_rate: 0.0,
            hang_ms: 30_000,
        }
    }
}

impl Faults {
    pub(crate) fn validate(&self) -> anyhow::Result<()> {
        for (name, rate) in [
            ("decline_rate", self.decline_rate),
            ("timeout_rate", self.timeout_rate),
            ("ambiguous_rate", self.ambiguous_rate),
        ] {
            anyhow::ensure!(
                (0.0..=1.0).contains(&rate),
                "{name} must be between 0 and 1, got {rate}"
            );
        }
        Ok(())
    }
}
