use async_trait::async_trait;
use paystream_domain::PaymentId;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("order cache unavailable: {0}")]
    Unavailable(String),
}

/// Where the ingress keeps read copies of payments. The store only ever removes entries: the
/// next read repopulates them from Postgres, so the cache never holds a state the store did not
/// commit.
#[async_trait]
pub trait OrderCache: Send + Sync + 'static {
    async fn invalidate(&self, ids: &[PaymentId]) -> Result<(), CacheError>;
}
