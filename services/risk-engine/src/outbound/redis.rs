//! Redis adapters: the per-customer velocity windows, and the cache in front of the blocklist.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use paystream_domain::{CustomerId, MerchantId, PaymentMethod};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::domain::ports::{
    Blocklist, BlocklistError, VelocityEntry, VelocityError, VelocityStore,
};
use crate::domain::rules::WindowStats;
use crate::metrics::RiskMetrics;

/// A decision waits on Redis; a hung Redis must become a retry quickly, not a stalled partition.
const CALL_TIMEOUT: Duration = Duration::from_millis(1500);

/// One round trip, atomic: add the payment (NX, so a redelivery neither adds a second entry nor
/// moves the first one's time), drop entries older than the longest window, then count and sum
/// per window ending at the payment's time. Members are `<payment id>|<currency>|<amount>`: the
/// payment id makes them unique per payment, the rest lets the script sum per currency.
const VELOCITY_SCRIPT: &str = r#"
local at = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], 'NX', at, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. (at - tonumber(ARGV[3])))
local out = {}
for i = 5, #ARGV do
  local members = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. (at - tonumber(ARGV[i])), at)
  local sum = 0
  for _, m in ipairs(members) do
    local _, _, cur, amount = string.find(m, '|(%u%u%u)|(%d+)$')
    if cur == ARGV[4] then sum = sum + tonumber(amount) end
  end
  table.insert(out, #members)
  table.insert(out, sum)
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]) + 60000)
return out
"#;

pub fn connect(url: &str) -> anyhow::Result<ConnectionManager> {
    let client = redis::Client::open(url).context("parsing REDIS_URL")?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(CALL_TIMEOUT))
        .set_number_of_retries(1);
    // Lazy: Redis down at start makes decisions retry; it does not keep the service down.
    ConnectionManager::new_lazy_with_config(client, config)
        .context("creating the Redis connection manager")
}

async fn bounded<T>(
    what: &str,
    fut: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, String> {
    match tokio::time::timeout(CALL_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!(
            "{what}: no answer within {} ms",
            CALL_TIMEOUT.as_millis()
        )),
    }
}

pub struct RedisVelocity {
    conn: ConnectionManager,
    prefix: String,
    script: redis::Script,
    metrics: RiskMetrics,
}

impl RedisVelocity {
    pub fn new(conn: ConnectionManager, prefix: &str, metrics: RiskMetrics) -> Self {
        Self {
            conn,
            prefix: prefix.to_owned(),
            script: redis::Script::new(VELOCITY_SCRIPT),
            metrics,
        }
    }

    /// Customer ids belong to a merchant, so the window is per (merchant, customer).
    pub fn key(prefix: &str, merchant: &MerchantId, customer: &CustomerId) -> String {
        format!("{prefix}:vel:{merchant}:{customer}")
    }
}

#[async_trait]
impl VelocityStore for RedisVelocity {
    async fn record_and_count(
        &self,
        entry: &VelocityEntry<'_>,
        windows_secs: &[u64],
        retain_secs: u64,
    ) -> Result<Vec<WindowStats>, VelocityError> {
        let key = Self::key(&self.prefix, entry.merchant_id, entry.customer_id);
        let member = format!(
            "{}|{}|{}",
            entry.payment_id,
            entry.currency,
            entry.amount.minor()
        );
        let mut invocation = self.script.key(&key);
        invocation
            .arg(&member)
            .arg(entry.at.timestamp_millis())
            .arg(retain_secs.saturating_mul(1000))
            .arg(entry.currency.as_str());
        for w in windows_secs {
            invocation.arg(w.saturating_mul(1000));
        }
        let mut conn = self.conn.clone();
        let raw: Vec<i64> = bounded("velocity script", invocation.invoke_async(&mut conn))
            .await
            .map_err(|e| {
                self.metrics
                    .dependency_errors
                    .with_label_values(&["redis_velocity"])
                    .inc();
                VelocityError::Unavailable(e)
            })?;
        if raw.len() != windows_secs.len() * 2 {
            return Err(VelocityError::Other(anyhow::anyhow!(
                "velocity script returned {} numbers for {} windows",
                raw.len(),
                windows_secs.len()
            )));
        }
        Ok(raw
            .chunks(2)
            .map(|c| WindowStats {
                count: c[0].max(0) as u64,
                sum: c[1],
            })
            .collect())
    }
}

/// Cache-aside over the Postgres blocklist (`source`), hits and misses alike, for `ttl`. A new entry takes
/// effect within `ttl` (operators can also delete the cache keys). When Redis fails, the lookup
/// goes to Postgres: the table is the truth, so that is slower but never wrong.
pub struct CachedBlocklist {
    conn: ConnectionManager,
    prefix: String,
    ttl: Duration,
    source: Arc<dyn Blocklist>,
    metrics: RiskMetrics,
}

impl CachedBlocklist {
    pub fn new(
        conn: ConnectionManager,
        prefix: &str,
        ttl: Duration,
        source: Arc<dyn Blocklist>,
        metrics: RiskMetrics,
    ) -> Self {
        Self {
            conn,
            prefix: prefix.to_owned(),
            ttl,
            source,
            metrics,
        }
    }

    async fn check<F>(
        &self,
        kind: &'static str,
        merchant: &MerchantId,
        value: &str,
        source: F,
    ) -> Result<Option<String>, BlocklistError>
    where
        F: std::future::Future<Output = Result<Option<String>, BlocklistError>>,
    {
        let key = format!("{}:bl:{kind}:{merchant}:{value}", self.prefix);
        let mut conn = self.conn.clone();
        let cached: Result<Option<String>, String> = bounded(
            "blocklist cache read",
            redis::cmd("GET").arg(&key).query_async(&mut conn),
        )
        .await;
        match cached {
            Ok(Some(v)) => return Ok(v.strip_prefix("1:").map(str::to_owned)),
            Ok(None) => {}
            Err(e) => {
                self.metrics
                    .dependency_errors
                    .with_label_values(&["redis_blocklist_cache"])
                    .inc();
                tracing::warn!(error = %e, "blocklist cache unavailable; reading Postgres");
                return source.await;
            }
        }
        let found = source.await?;
        let stored = match &found {
            Some(reason) => format!("1:{reason}"),
            None => "0".to_owned(),
        };
        let ttl_ms = self.ttl.as_millis().max(1) as u64;
        let write: Result<(), String> = bounded(
            "blocklist cache write",
            redis::cmd("SET")
                .arg(&key)
                .arg(stored)
                .arg("PX")
                .arg(ttl_ms)
                .query_async(&mut conn),
        )
        .await;
        if let Err(e) = write {
            tracing::warn!(error = %e, "blocklist cache write failed");
        }
        Ok(found)
    }
}

#[async_trait]
impl Blocklist for CachedBlocklist {
    async fn customer(
        &self,
        merchant: &MerchantId,
        customer: &CustomerId,
    ) -> Result<Option<String>, BlocklistError> {
        let source = self.source.customer(merchant, customer);
        self.check("customer", merchant, customer.as_str(), source)
            .await
    }

    async fn payment_method(
        &self,
        merchant: &MerchantId,
        method: &PaymentMethod,
    ) -> Result<Option<String>, BlocklistError> {
        let source = self.source.payment_method(merchant, method);
        self.check("payment_method", merchant, method.as_str(), source)
            .await
    }
}
