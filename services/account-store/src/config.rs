use paystream_kit::CommonConfig;
use paystream_kit::config::env_parse;

use crate::domain::{FeeSchedule, Policy};

#[derive(Debug, Clone)]
pub struct Config {
    pub common: CommonConfig,
    pub fees: FeeSchedule,
    pub policy: Policy,
    /// Tests only (never read from the environment): consume `<namespace>.<topic>` instead of
    /// each contract topic, so that a test's fleet sees only the records its test produced even
    /// when other fleets and load generators share the broker. Published records keep their
    /// contract topics. `None` in production.
    pub topic_namespace: Option<String>,
}

impl Config {
    /// `PAYSTREAM_FEE_BPS` (basis points of the captured amount, default 290 = 2.9 %),
    /// `PAYSTREAM_FEE_FIXED` (minor units per capture, default 0) and
    /// `PAYSTREAM_LEDGER_ALLOW_NEGATIVE_PAYABLE` (`true` | `false`, default false).
    pub fn from_env() -> anyhow::Result<Self> {
        let defaults = FeeSchedule::default();
        let fees = FeeSchedule::new(
            env_parse("PAYSTREAM_FEE_BPS", defaults.bps())?,
            env_parse("PAYSTREAM_FEE_FIXED", defaults.fixed())?,
        )?;
        Ok(Self {
            common: CommonConfig::from_env("127.0.0.1:9104"),
            topic_namespace: None,
            fees,
            policy: Policy {
                allow_negative_payable: env_parse(
                    "PAYSTREAM_LEDGER_ALLOW_NEGATIVE_PAYABLE",
                    false,
                )?,
            },
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
