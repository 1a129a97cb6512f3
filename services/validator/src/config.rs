use std::time::Duration;

use paystream_kit::CommonConfig;
use paystream_kit::config::{env_or, env_parse};

#[derive(Clone)]
pub struct PspEndpoint {
    pub name: String,
    pub url: String,
    pub api_key: String,
}

impl std::fmt::Debug for PspEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PspEndpoint")
            .field("name", &self.name)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
pub struct Timing {
    /// Wait after a payment settles before the first check, so the stores can catch up.
    pub settle_delay: Duration,
    /// How long a difference may persist before it is reported: the stores consume at their own
    /// pace, and a lagging consumer is not a discrepancy.
    pub grace: Duration,
    /// A payment with no outcome this long after its request is reported as not settled.
    pub deadline: Duration,
    pub poll_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub common: CommonConfig,
    pub psps: Vec<PspEndpoint>,
    pub timing: Timing,
}

impl Config {
    pub fn from_env() -> anyhow::Result<Self> {
        let psps = [("alpha", 8091), ("beta", 8092)]
            .iter()
            .map(|(name, port)| {
                let upper = name.to_uppercase();
                PspEndpoint {
                    name: (*name).to_owned(),
                    url: env_or(
                        &format!("PSP_{upper}_URL"),
                        &format!("http://127.0.0.1:{port}"),
                    ),
                    api_key: env_or(&format!("PSP_{upper}_API_KEY"), &format!("sk_test_{name}")),
                }
            })
            .collect();
        Ok(Self {
            common: CommonConfig::from_env("127.0.0.1:9105"),
            psps,
            timing: Timing {
                settle_delay: Duration::from_millis(env_parse(
                    "PAYSTREAM_VALIDATOR_SETTLE_MS",
                    1000u64,
                )?),
                grace: Duration::from_millis(env_parse("PAYSTREAM_VALIDATOR_GRACE_MS", 30_000u64)?),
                deadline: Duration::from_millis(env_parse(
                    "PAYSTREAM_VALIDATOR_DEADLINE_MS",
                    300_000u64,
                )?),
                poll_interval: Duration::from_millis(env_parse(
                    "PAYSTREAM_VALIDATOR_POLL_MS",
                    500u64,
                )?),
            },
        })
    }
}
