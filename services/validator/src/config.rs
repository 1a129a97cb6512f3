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
    /// `PAYSTREAM_VALIDATOR_RECONCILE_MS` (default 60000; 0 turns it off): how often the whole
    /// ledger and the PSPs' settlement reports are reconciled.
    pub reconcile_interval: Duration,
    /// `PAYSTREAM_LEDGER_ALLOW_NEGATIVE_PAYABLE`, as the account store reads it: a negative
    /// merchant payable is a finding unless the ledger is configured to allow it.
    pub allow_negative_payable: bool,
    /// Tests only (never read from the environment): consume `<namespace>.<topic>` instead of
    /// each contract topic, so that a test's fleet sees only the records its test produced even
    /// when other fleets and load generators share the broker. Published records keep their
    /// contract topics. `None` in production.
    pub topic_namespace: Option<String>,
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
            reconcile_interval: Duration::from_millis(env_parse(
                "PAYSTREAM_VALIDATOR_RECONCILE_MS",
                60_000u64,
            )?),
            allow_negative_payable: env_parse("PAYSTREAM_LEDGER_ALLOW_NEGATIVE_PAYABLE", false)?,
            topic_namespace: None,
        })
    }
}

impl Config {
    /// The topics to consume: the contract names, or their namespaced copies in tests.
    pub fn consumed_topics(&self, contract: &[&str]) -> Vec<String> {
        contract
            .iter()
            .map(|t| match &self.topic_namespace {
                Some(ns) => format!("{ns}.{t}"),
                None => (*t).to_owned(),
            })
            .collect()
    }
}
