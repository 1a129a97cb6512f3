use anyhow::Context;
use async_trait::async_trait;
use paystream_domain::PaymentId;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;

use crate::domain::payment::PaymentView;
use crate::domain::ports::{CacheError, PaymentCache};

/// Entries expire on their own as a backstop; correctness comes from the order store deleting
/// the entry after each committed update.
const TTL_SECS: u64 = 300;

pub fn cache_key(id: PaymentId) -> String {
    format!("paystream:order:{id}")
}

pub struct RedisPaymentCache {
    conn: ConnectionManager,
}

impl RedisPaymentCache {
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let client = redis::Client::open(url).context("parsing REDIS_URL")?;
        let conn = ConnectionManager::new(client)
            .await
            .context("connecting to Redis (REDIS_URL)")?;
        Ok(Self { conn })
    }
}

#[async_trait]
impl PaymentCache for RedisPaymentCache {
    async fn get(&self, id: PaymentId) -> Result<Option<PaymentView>, CacheError> {
        let mut conn = self.conn.clone();
        let raw: Option<String> = conn.get(cache_key(id)).await.context("reading the cache")?;
        Ok(raw.and_then(|s| serde_json::from_str(&s).ok()))
    }

    async fn put(&self, view: &PaymentView) -> Result<(), CacheError> {
        let mut conn = self.conn.clone();
        let json = serde_json::to_string(view).context("encoding the cache entry")?;
        let _: () = conn
            .set_ex(cache_key(view.id), json, TTL_SECS)
            .await
            .context("writing the cache")?;
        Ok(())
    }
}
