//! Environment configuration with dev defaults. The variable names are contract (DESIGN.md §4).

use std::str::FromStr;

pub fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

/// A parsed variable, or its default. A malformed value is a start-up error: running with a
/// silently different setting than the operator wrote is worse than not starting.
pub fn env_parse<T: FromStr>(name: &str, default: T) -> anyhow::Result<T>
where
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v
            .parse()
            .map_err(|e| anyhow::anyhow!("environment variable {name}={v:?} is invalid: {e}")),
        _ => Ok(default),
    }
}

pub const DEFAULT_KAFKA: &str = "127.0.0.1:9092";
pub const DEFAULT_DATABASE_URL: &str = "postgres://paystream:paystream@127.0.0.1:5432/paystream";
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
pub const DEFAULT_JWT_SECRET: &str = "dev-secret-change-me";

/// Settings every service reads.
#[derive(Debug, Clone)]
pub struct CommonConfig {
    pub kafka_bootstrap: String,
    pub database_url: String,
    pub redis_url: String,
    /// Where `/healthz`, `/readyz` and `/metrics` listen.
    pub admin_addr: String,
    /// Instances of one service share this consumer group.
    pub group_id: Option<String>,
}

impl CommonConfig {
    pub fn from_env(default_admin_addr: &str) -> Self {
        Self {
            kafka_bootstrap: env_or("KAFKA_BOOTSTRAP_SERVERS", DEFAULT_KAFKA),
            database_url: env_or("DATABASE_URL", DEFAULT_DATABASE_URL),
            redis_url: env_or("REDIS_URL", DEFAULT_REDIS_URL),
            admin_addr: env_or("PAYSTREAM_ADMIN_ADDR", default_admin_addr),
            group_id: std::env::var("PAYSTREAM_GROUP_ID")
                .ok()
                .filter(|v| !v.is_empty()),
        }
    }

    /// For tests: everything from the environment (or defaults), admin on an ephemeral port.
    pub fn for_tests() -> Self {
        Self::from_env("127.0.0.1:0")
    }
}
