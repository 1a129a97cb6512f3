use async_trait::async_trait;
use paystream_domain::{IdempotencyKey, MerchantId, PaymentId, PaymentRequested};

use crate::domain::payment::PaymentView;

/// What a POST with an idempotency key turned out to be.
#[derive(Debug)]
pub enum Accepted {
    /// First use of the key: the request is now durable.
    Created(Box<PaymentView>),
    /// The key was used before for this same request: the saved answer.
    Replayed {
        status: u16,
        body: serde_json::Value,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the idempotency key was used with a different request")]
    KeyReused,
    #[error("a request with this idempotency key is still being processed")]
    KeyInFlight,
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// Durable side of the API: idempotency keys, accepted payments and their outbox records.
#[async_trait]
pub trait PaymentStore: Send + Sync {
    async fn create_payment(
        &self,
        key: &IdempotencyKey,
        request_hash: &str,
        payment_id: PaymentId,
        request: &PaymentRequested,
        traceparent: &str,
    ) -> Result<Accepted, StoreError>;

    /// The payment as the order store knows it, or as accepted if the order store has not seen
    /// it yet. `None` when it does not exist or belongs to another merchant.
    async fn find_payment(
        &self,
        merchant: Option<&MerchantId>,
        id: PaymentId,
    ) -> Result<Option<(PaymentView, bool)>, anyhow::Error>;
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// Read-through cache of order-store rows; the order store deletes entries on every update.
#[async_trait]
pub trait PaymentCache: Send + Sync {
    async fn get(&self, id: PaymentId) -> Result<Option<PaymentView>, CacheError>;
    async fn put(&self, view: &PaymentView) -> Result<(), CacheError>;
}
