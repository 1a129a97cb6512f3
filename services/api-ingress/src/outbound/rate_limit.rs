//! Token bucket per subject in Redis, so that every ingress instance draws from the same bucket.
//! One Lua script reads, refills and takes a token atomically, on the Redis clock.

use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::config::RateLimit;
use crate::domain::ports::{RateDecision, RateLimitError, RateLimiter};

/// A limiter that cannot answer quickly is treated as down (the API fails open).
const CALL_TIMEOUT: Duration = Duration::from_millis(500);

// KEYS[1] bucket; ARGV[1] tokens per second; ARGV[2] burst. Returns {allowed, retry_after_ms}.
const TAKE: &str = r#"
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1])
local ts = tonumber(b[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
local elapsed = now - ts
if elapsed < 0 then elapsed = 0 end
tokens = math.min(burst, tokens + elapsed * rate / 1000)
local allowed = 0
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = math.ceil((1 - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return {allowed, wait}
"#;

pub struct RedisRateLimiter {
    conn: ConnectionManager,
    limit: RateLimit,
}

impl RedisRateLimiter {
    /// Connects lazily; see `acquire` for what happens while Redis is down.
    pub fn connect(url: &str, limit: RateLimit) -> anyhow::Result<Self> {
        let client = redis::Client::open(url).context("parsing REDIS_URL")?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(300)))
            .set_response_timeout(Some(CALL_TIMEOUT))
            .set_number_of_retries(0);
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .context("creating the Redis connection manager")?;
        Ok(Self { conn, limit })
    }
}

pub fn bucket_key(subject: &str) -> String {
    format!("paystream:ratelimit:{subject}")
}

#[async_trait]
impl RateLimiter for RedisRateLimiter {
    async fn acquire(&self, subject: &str) -> Result<RateDecision, RateLimitError> {
        let mut conn = self.conn.clone();
        let mut eval = redis::cmd("EVAL");
        eval.arg(TAKE)
            .arg(1)
            .arg(bucket_key(subject))
            .arg(self.limit.per_sec)
            .arg(self.limit.burst);
        let answer: Result<(i64, i64), _> =
            tokio::time::timeout(CALL_TIMEOUT, eval.query_async(&mut conn))
                .await
                .map_err(|_| RateLimitError::Unavailable("no answer in time".to_owned()))?;
        let (allowed, wait_ms) = answer.map_err(|e| RateLimitError::Unavailable(e.to_string()))?;
        Ok(if allowed == 1 {
            RateDecision::Allowed
        } else {
            RateDecision::Limited {
                retry_after: Duration::from_millis(wait_ms.max(1).unsigned_abs()),
            }
        })
    }
}

/// For `PAYSTREAM_API_RATE_PER_SEC=0`.
pub struct Unlimited;

#[async_trait]
impl RateLimiter for Unlimited {
    async fn acquire(&self, _subject: &str) -> Result<RateDecision, RateLimitError> {
        Ok(RateDecision::Allowed)
    }
}
