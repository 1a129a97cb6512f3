use std::time::Duration;

use paystream_kit::CommonConfig;
use paystream_kit::config::{env_or, env_parse};

/// One PSP speaking the PSP wire protocol. The key is kept out of `Debug` so that a config dump
/// in a log cannot leak it.
#[derive(Clone)]
pub struct PspConfig {
    pub name: String,
    pub url: String,
    pub api_key: String,
}

impl std::fmt::Debug for PspConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PspConfig")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("api_key", &"<redacted>")
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub common: CommonConfig,
    pub psps: Vec<PspConfig>,
    /// PSP names in order of preference; later ones are used only after a definitive decline.
    pub route: Vec<String>,
    pub call_timeout: Duration,
    /// Calls with the same key before an unknown outcome is handed back to the runtime's retry.
    pub resolve_attempts: u32,
}

impl Config {
    /// `PSP_<NAME>_URL` / `PSP_<NAME>_API_KEY` for alpha and beta (contract names),
    /// `PAYSTREAM_PSP_ROUTE` (default `alpha,beta`), `PAYSTREAM_PSP_TIMEOUT_MS` (default 5000).
    pub fn from_env() -> anyhow::Result<Self> {
        let psps = [("alpha", 8091), ("beta", 8092)]
            .iter()
            .map(|(name, port)| {
                let upper = name.to_uppercase();
                PspConfig {
                    name: (*name).to_owned(),
                    url: env_or(
                        &format!("PSP_{upper}_URL"),
                        &format!("http://127.0.0.1:{port}"),
                    ),
                    api_key: env_or(&format!("PSP_{upper}_API_KEY"), &format!("sk_test_{name}")),
                }
            })
            .collect();
        let route = env_or("PAYSTREAM_PSP_ROUTE", "alpha,beta")
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        Ok(Self {
            common: CommonConfig::from_env("127.0.0.1:9102"),
            psps,
            route,
            call_timeout: Duration::from_millis(env_parse("PAYSTREAM_PSP_TIMEOUT_MS", 5000u64)?),
            resolve_attempts: env_parse("PAYSTREAM_PSP_RESOLVE_ATTEMPTS", 3u32)?,
        })
    }
}
