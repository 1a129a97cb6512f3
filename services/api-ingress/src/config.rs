use std::time::Duration;

use paystream_domain::Amount;
use paystream_kit::CommonConfig;
use paystream_kit::config::{DEFAULT_JWT_SECRET, env_or, env_parse};

/// Idempotency keys are kept at least this long (contract).
pub const MIN_IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 3600);

#[derive(Clone)]
pub struct Config {
    pub common: CommonConfig,
    /// `PAYSTREAM_API_ADDR` (contract), default 127.0.0.1:8080.
    pub api_addr: String,
    /// `PAYSTREAM_JWT_SECRET` (contract). Never printed.
    pub jwt_secret: String,
    /// `PAYSTREAM_API_MAX_AMOUNT`: the largest `amount` a payment may ask for, in minor units
    /// (default and ceiling: the domain's `Amount::MAX`).
    pub max_amount: i64,
    /// `PAYSTREAM_API_MAX_BODY_BYTES`: larger bodies get 413 (default 64 KiB).
    pub max_body_bytes: usize,
    /// `PAYSTREAM_API_RATE_PER_SEC` and `PAYSTREAM_API_RATE_BURST`: token bucket per merchant (per
    /// token subject) in Redis, shared by every ingress instance. A rate of 0 turns it off.
    pub rate: RateLimit,
    /// `PAYSTREAM_API_IDEMPOTENCY_TTL_HOURS` (default and minimum 24).
    pub idempotency_ttl: Duration,
    /// `PAYSTREAM_API_IDEMPOTENCY_PURGE_SECS`: how often expired keys are purged (default 300).
    pub idempotency_purge_interval: Duration,
    /// `PAYSTREAM_API_IDEMPOTENCY_WAIT_MS`: how long a request waits for another request holding
    /// the same key before it answers 409 (default 2000).
    pub idempotency_wait: Duration,
    /// `PAYSTREAM_API_DB_CONNECTIONS`: Postgres pool size (default 20).
    pub db_connections: u32,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub per_sec: f64,
    pub burst: u32,
}

impl RateLimit {
    pub fn enabled(&self) -> bool {
        self.per_sec > 0.0 && self.burst > 0
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("common", &self.common)
            .field("api_addr", &self.api_addr)
            .field("jwt_secret", &"<redacted>")
            .field("max_amount", &self.max_amount)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("rate", &self.rate)
            .field("idempotency_ttl", &self.idempotency_ttl)
            .field(
                "idempotency_purge_interval",
                &self.idempotency_purge_interval,
            )
            .field("idempotency_wait", &self.idempotency_wait)
            .field("db_connections", &self.db_connections)
            .finish()
    }
}

impl Config {
    /// Every setting from the environment over its default. A malformed value is an error: a
    /// service running with another limit than the operator wrote is worse than one that does
    /// not start.
    pub fn from_env() -> anyhow::Result<Self> {
        let per_sec: f64 = env_parse("PAYSTREAM_API_RATE_PER_SEC", 100.0)?;
        anyhow::ensure!(
            per_sec.is_finite() && per_sec >= 0.0,
            "PAYSTREAM_API_RATE_PER_SEC must be a number >= 0"
        );
        let default_burst = (per_sec * 2.0).ceil().clamp(1.0, f64::from(u32::MAX)) as u32;
        let burst: u32 = env_parse("PAYSTREAM_API_RATE_BURST", default_burst)?;
        let max_amount: i64 = env_parse("PAYSTREAM_API_MAX_AMOUNT", Amount::MAX)?;
        anyhow::ensure!(
            (1..=Amount::MAX).contains(&max_amount),
            "PAYSTREAM_API_MAX_AMOUNT must be between 1 and {}",
            Amount::MAX
        );
        let ttl_hours: u64 = env_parse("PAYSTREAM_API_IDEMPOTENCY_TTL_HOURS", 24)?;
        anyhow::ensure!(
            ttl_hours >= 24,
            "PAYSTREAM_API_IDEMPOTENCY_TTL_HOURS must be at least 24 (keys are kept at least 24 h)"
        );
        Ok(Self {
            common: CommonConfig::from_env("127.0.0.1:8080"),
            api_addr: env_or("PAYSTREAM_API_ADDR", "127.0.0.1:8080"),
            jwt_secret: env_or("PAYSTREAM_JWT_SECRET", DEFAULT_JWT_SECRET),
            max_amount,
            max_body_bytes: env_parse("PAYSTREAM_API_MAX_BODY_BYTES", 64 * 1024)?,
            rate: RateLimit { per_sec, burst },
            idempotency_ttl: Duration::from_secs(ttl_hours * 3600),
            idempotency_purge_interval: Duration::from_secs(
                env_parse("PAYSTREAM_API_IDEMPOTENCY_PURGE_SECS", 300u64)?.max(1),
            ),
            idempotency_wait: Duration::from_millis(env_parse(
                "PAYSTREAM_API_IDEMPOTENCY_WAIT_MS",
                2000u64,
            )?),
            db_connections: env_parse("PAYSTREAM_API_DB_CONNECTIONS", 20u32)?.max(2),
        })
    }
}
