use paystream_kit::CommonConfig;
use paystream_kit::config::env_parse;

use crate::domain::FeeSchedule;

#[derive(Debug, Clone)]
pub struct Config {
    pub common: CommonConfig,
    pub fees: FeeSchedule,
}

impl Config {
    /// `PAYSTREAM_FEE_BPS` (basis points of the captured amount, default 290 = 2.9 %) and
    /// `PAYSTREAM_FEE_FIXED` (minor units per capture, default 0).
    pub fn from_env() -> anyhow::Result<Self> {
        let defaults = FeeSchedule::default();
        let fees = FeeSchedule::new(
            env_parse("PAYSTREAM_FEE_BPS", defaults.bps())?,
            env_parse("PAYSTREAM_FEE_FIXED", defaults.fixed())?,
        )?;
        Ok(Self {
            common: CommonConfig::from_env("127.0.0.1:9104"),
            fees,
        })
    }
}
