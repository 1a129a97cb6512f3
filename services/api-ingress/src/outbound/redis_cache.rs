//! The ingress side of the versioned order cache (`paystream_kit::order_cache`): reads, and
//! fills after a miss that the order store's tombstones can refuse.

use std::time::Instant;

use async_trait::async_trait;
use paystream_domain::PaymentId;
use paystream_kit::order_cache::{Fill, Lookup, VersionedOrderCache};
use prometheus::{IntCounterVec, Opts, Registry};

use crate::domain::payment::PaymentView;
use crate::domain::ports::{CacheError, PaymentCache};

pub struct RedisPaymentCache {
    cache: VersionedOrderCache,
    lookups: IntCounterVec,
}

impl RedisPaymentCache {
    /// Connects lazily: with Redis down the API still answers, from Postgres.
    pub fn connect(url: &str, registry: &Registry) -> anyhow::Result<Self> {
        let lookups = IntCounterVec::new(
            Opts::new(
                "api_ingress_cache_operations_total",
                "Payment cache reads (hit, miss, tombstone) and fills (stored, refused, current)",
            ),
            &["result"],
        )?;
        registry.register(Box::new(lookups.clone()))?;
        Ok(Self {
            cache: VersionedOrderCache::connect(url)?,
            lookups,
        })
    }

    fn count(&self, result: &str) {
        self.lookups.with_label_values(&[result]).inc();
    }
}

#[async_trait]
impl PaymentCache for RedisPaymentCache {
    async fn get(&self, id: PaymentId) -> Result<Option<PaymentView>, CacheError> {
        let found = self.cache.get(&id).await.map_err(|e| {
            self.count("error");
            CacheError::Unavailable(e.to_string())
        })?;
        Ok(match found {
            Lookup::Hit { payload, .. } => match serde_json::from_str(&payload) {
                Ok(view) => {
                    self.count("hit");
                    Some(view)
                }
                // An entry of an older layout: read the store, whose fill replaces it.
                Err(_) => {
                    self.count("miss");
                    None
                }
            },
            Lookup::Tombstone { .. } => {
                self.count("tombstone");
                None
            }
            Lookup::Miss => {
                self.count("miss");
                None
            }
        })
    }

    async fn fill(&self, view: &PaymentView, read_started: Instant) -> Result<(), CacheError> {
        let payload = serde_json::to_string(view)
            .map_err(|e| CacheError::Unavailable(format!("encoding the entry: {e}")))?;
        let filled = self
            .cache
            .fill(&view.id, i64::from(view.version), &payload, read_started)
            .await
            .map_err(|e| CacheError::Unavailable(e.to_string()))?;
        self.count(match filled {
            Fill::Stored => "stored",
            Fill::Refused => "refused",
            Fill::AlreadyCurrent => "current",
        });
        Ok(())
    }
}
