use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use paystream_domain::PaymentId;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::domain::ports::{CacheError, OrderCache};

/// The ingress caches `GET /v1/payments/{id}` under this key (shared contract with api-ingress).
pub fn cache_key(id: &PaymentId) -> String {
    format!("paystream:order:{id}")
}

/// An invalidation runs between two batches; a slow Redis must not hold up consumption for
/// longer than this.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct RedisOrderCache {
    conn: ConnectionManager,
}

impl RedisOrderCache {
    /// Connects lazily: a Redis outage at start must not keep orders from being stored, since the
    /// cache is only an optimisation of reads.
    pub fn connect(url: &str) -> anyhow::Result<Self> {
        let client = redis::Client::open(url).context("parsing REDIS_URL")?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(1)))
            .set_number_of_retries(1);
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .context("creating the Redis connection manager")?;
        Ok(Self { conn })
    }
}

#[async_trait]
impl OrderCache for RedisOrderCache {
    async fn invalidate(&self, ids: &[PaymentId]) -> Result<(), CacheError> {
        if ids.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = ids.iter().map(cache_key).collect();
        let mut conn = self.conn.clone();
        let mut del = redis::cmd("DEL");
        del.arg(&keys);
        match tokio::time::timeout(CALL_TIMEOUT, del.query_async::<()>(&mut conn)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(CacheError::Unavailable(e.to_string())),
            Err(_) => Err(CacheError::Unavailable(format!(
                "DEL did not answer within {} ms",
                CALL_TIMEOUT.as_millis()
            ))),
        }
    }
}
