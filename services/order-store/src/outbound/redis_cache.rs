//! Invalidation of the ingress's read cache (`paystream_kit::order_cache`): after each committed
//! batch, every changed payment gets a tombstone carrying the version the store committed, read
//! back from `order_store.orders`. A reader that read the row before the commit can then not put
//! the old state back: its fill carries an older version and is refused.

use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use paystream_domain::PaymentId;
use paystream_kit::order_cache::VersionedOrderCache;
use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::ports::{CacheError, OrderCache};

/// The ingress caches `GET /v1/payments/{id}` under this key (shared contract with api-ingress).
pub fn cache_key(id: &PaymentId) -> String {
    paystream_kit::order_cache::cache_key(id)
}

/// An invalidation runs between two batches; a slow Postgres must not hold up consumption for
/// longer than this (Redis calls have their own bound in the kit).
const VERSIONS_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct RedisOrderCache {
    cache: VersionedOrderCache,
    /// Where the committed versions are read back from. Without it (handler tests) entries are
    /// deleted instead of tombstoned, which leaves the slow-reader race open.
    versions: Option<PgPool>,
}

impl RedisOrderCache {
    /// Connects lazily: a Redis outage at start must not keep orders from being stored, since the
    /// cache is only an optimisation of reads.
    pub fn connect(url: &str) -> anyhow::Result<Self> {
        Ok(Self {
            cache: VersionedOrderCache::connect(url)?,
            versions: None,
        })
    }

    /// Tombstones carry the version committed in `order_store.orders`, read through `pool`.
    pub fn with_versions_from(mut self, pool: PgPool) -> Self {
        self.versions = Some(pool);
        self
    }

    async fn committed_versions(
        pool: &PgPool,
        ids: &[PaymentId],
    ) -> anyhow::Result<Vec<(PaymentId, i64)>> {
        let uuids: Vec<Uuid> = ids.iter().map(PaymentId::as_uuid).collect();
        let rows: Vec<(Uuid, i32)> = tokio::time::timeout(
            VERSIONS_TIMEOUT,
            sqlx::query_as(
                "SELECT payment_id, version FROM order_store.orders WHERE payment_id = ANY($1)",
            )
            .bind(&uuids)
            .fetch_all(pool),
        )
        .await
        .context("reading committed versions timed out")?
        .context("reading committed versions")?;
        Ok(rows
            .into_iter()
            .map(|(id, v)| (PaymentId::from_uuid(id), i64::from(v)))
            .collect())
    }
}

#[async_trait]
impl OrderCache for RedisOrderCache {
    async fn invalidate(&self, ids: &[PaymentId]) -> Result<(), CacheError> {
        if ids.is_empty() {
            return Ok(());
        }
        let Some(pool) = &self.versions else {
            return self
                .cache
                .remove(ids)
                .await
                .map_err(|e| CacheError::Unavailable(e.to_string()));
        };
        // Read after the commit: the version may be newer still if another instance committed
        // since, which only makes the tombstone stricter. A payment without a row has nothing
        // the ingress could have cached from this store.
        let committed = Self::committed_versions(pool, ids)
            .await
            .map_err(|e| CacheError::Unavailable(format!("{e:#}")))?;
        self.cache
            .tombstone(&committed)
            .await
            .map_err(|e| CacheError::Unavailable(e.to_string()))?;
        Ok(())
    }
}
