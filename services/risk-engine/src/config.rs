use std::collections::BTreeMap;

use paystream_domain::Currency;
use paystream_kit::CommonConfig;
use paystream_kit::config::env_parse;

use crate::domain::Rules;

#[derive(Debug, Clone)]
pub struct Config {
    pub common: CommonConfig,
    pub rules: Rules,
}

impl Config {
    /// `PAYSTREAM_RISK_MAX_AMOUNT` (minor units, any currency) and
    /// `PAYSTREAM_RISK_MAX_AMOUNT_<CUR>` per currency.
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
        Ok(Self {
            common: CommonConfig::from_env("127.0.0.1:9101"),
            rules: Rules {
                max_amount: env_parse("PAYSTREAM_RISK_MAX_AMOUNT", Rules::default().max_amount)?,
                max_amount_per_currency: per_currency,
            },
        })
    }
}
