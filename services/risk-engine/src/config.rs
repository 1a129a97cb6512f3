use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use paystream_domain::Currency;
use paystream_kit::CommonConfig;
use paystream_kit::config::{env_or, env_parse};

use crate::domain::Rules;

#[derive(Debug, Clone)]
pub struct Config {
    pub common: CommonConfig,
    /// The rules in force when no file is configured and `risk.rule_sets` is empty: the amount
    /// limits of `PAYSTREAM_RISK_MAX_AMOUNT[_<CUR>]`.
    pub rules: Rules,
    /// `PAYSTREAM_RISK_RULES_FILE`: when set, the rules come from this file (TOML, or JSON for a
    /// `.json` name) and replace `rules` entirely; otherwise from the `risk.rule_sets` table.
    pub rules_file: Option<PathBuf>,
    /// `PAYSTREAM_RISK_RULES_RELOAD_MS` (default 1000): how often the source is polled.
    pub rules_reload: Duration,
    /// `PAYSTREAM_RISK_BLOCKLIST_CACHE_MS` (default 30000): how long a blocklist lookup (hit or
    /// miss) is cached in Redis, hence how long a new entry may take to apply.
    pub blocklist_cache_ttl: Duration,
    /// `PAYSTREAM_RISK_REDIS_PREFIX` (default `paystream:risk`): namespace of the Redis keys.
    pub redis_prefix: String,
}

impl Config {
    /// `PAYSTREAM_RISK_MAX_AMOUNT` (minor units, any currency) and
    /// `PAYSTREAM_RISK_MAX_AMOUNT_<CUR>` per currency, plus the variables above.
    pub fn from_env() -> anyhow::Result<Self> {
        let mut per_currency = BTreeMap::new();
        for (name, value) in std::env::vars() {
            if let Some(code) = name.strip_prefix("PAYSTREAM_RISK_MAX_AMOUNT_") {
                let currency = Currency::parse(code).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
                let limit: i64 = value
                    .parse()
                    .map_err(|e| anyhow::anyhow!("{name}={value:?}: {e}"))?;
                per_currency.insert(currency, limit);
            }
        }
        let rules = Rules {
            version: "env".to_owned(),
            max_amount: env_parse("PAYSTREAM_RISK_MAX_AMOUNT", Rules::default().max_amount)?,
            max_amount_per_currency: per_currency,
            ..Rules::default()
        };
        rules.validate()?;
        let rules_file = std::env::var("PAYSTREAM_RISK_RULES_FILE")
            .ok()
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
        Ok(Self {
            common: CommonConfig::from_env("127.0.0.1:9101"),
            rules,
            rules_file,
            rules_reload: Duration::from_millis(
                env_parse("PAYSTREAM_RISK_RULES_RELOAD_MS", 1000u64)?.max(50),
            ),
            blocklist_cache_ttl: Duration::from_millis(env_parse(
                "PAYSTREAM_RISK_BLOCKLIST_CACHE_MS",
                30_000u64,
            )?),
            redis_prefix: env_or("PAYSTREAM_RISK_REDIS_PREFIX", "paystream:risk"),
        })
    }
}
