use std::time::{Duration, Instant};

use async_trait::async_trait;
use paystream_domain::{IdempotencyKey, MerchantId, PaymentId, PaymentRequested};

use crate::domain::commands::{CancelRequest, CaptureRequest, RefundRequest, RefundView};
use crate::domain::listing::{Balance, ListQuery};
use crate::domain::payment::PaymentView;

/// A POST under an `Idempotency-Key`: the key is scoped to the merchant, bound to one operation
/// (method and path) and to the hash of the parsed request.
#[derive(Debug, Clone)]
pub struct Idempotent<'a> {
    pub merchant: &'a MerchantId,
    pub key: &'a IdempotencyKey,
    pub operation: String,
    pub request_hash: String,
}

/// The answer to a POST: the status and body saved with the key, new or replayed. Refusals that
/// come from executing the request (wrong state, amount above what is refundable, unknown
/// payment) are answers too and replay the same way; validation errors, 409 and 5xx are not
/// saved, so the key can be used again.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: u16,
    pub body: serde_json::Value,
    pub replayed: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the idempotency key was used with a different request")]
    KeyReused,
    #[error("a request with this idempotency key is still being processed")]
    KeyInFlight,
    #[error("another request held the payment for too long")]
    LockTimeout,
    #[error(transparent)]
    Unavailable(#[from] anyhow::Error),
}

/// A payment as found by id: from the order store (cacheable), or as the ingress accepted it.
#[derive(Debug, Clone, PartialEq)]
pub struct FoundPayment {
    pub view: PaymentView,
    pub from_order_store: bool,
}

/// Durable side of the API: idempotency keys, accepted payments, commands and refunds with their
/// outbox records, and the reads of the order store and ledger.
#[async_trait]
pub trait PaymentStore: Send + Sync {
    /// Accepts a payment: key, payment and `payments.requested` record in one transaction.
    async fn create_payment(
        &self,
        idem: &Idempotent<'_>,
        payment_id: PaymentId,
        request: &PaymentRequested,
        traceparent: &str,
    ) -> Result<Answer, StoreError>;

    async fn capture(
        &self,
        idem: &Idempotent<'_>,
        request: &CaptureRequest,
        traceparent: &str,
    ) -> Result<Answer, StoreError>;

    async fn cancel(
        &self,
        idem: &Idempotent<'_>,
        request: &CancelRequest,
        traceparent: &str,
    ) -> Result<Answer, StoreError>;

    /// Reserves the refund's amount under the payment's row lock, so that concurrent refunds
    /// cannot together exceed what was captured.
    async fn refund(
        &self,
        idem: &Idempotent<'_>,
        request: &RefundRequest,
        traceparent: &str,
    ) -> Result<Answer, StoreError>;

    /// `None` when it does not exist or `scope` is another merchant.
    async fn find_payment(
        &self,
        scope: Option<&MerchantId>,
        id: PaymentId,
    ) -> Result<Option<FoundPayment>, StoreError>;

    /// One page, newest first, and whether more follow.
    async fn list_payments(
        &self,
        query: &ListQuery,
    ) -> Result<(Vec<PaymentView>, bool), StoreError>;

    /// `None` when the payment does not exist for `scope`.
    async fn list_refunds(
        &self,
        scope: Option<&MerchantId>,
        id: PaymentId,
    ) -> Result<Option<Vec<RefundView>>, StoreError>;

    async fn balance(&self, merchant: &MerchantId) -> Result<Balance, StoreError>;

    /// Deletes up to `batch` expired idempotency keys; returns how many.
    async fn purge_expired_keys(&self, batch: i64) -> Result<u64, StoreError>;
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("payment cache unavailable: {0}")]
    Unavailable(String),
}

/// Versioned read-through cache of order-store rows (`paystream_kit::order_cache`): the order
/// store tombstones entries with the version it committed, and a fill older than that is
/// refused.
#[async_trait]
pub trait PaymentCache: Send + Sync {
    /// The cached view, or `None` on a miss or a tombstone.
    async fn get(&self, id: PaymentId) -> Result<Option<PaymentView>, CacheError>;
    /// Offers `view` (read from the order store when `read_started`) to the cache.
    async fn fill(&self, view: &PaymentView, read_started: Instant) -> Result<(), CacheError>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateDecision {
    Allowed,
    Limited { retry_after: Duration },
}

#[derive(Debug, thiserror::Error)]
pub enum RateLimitError {
    #[error("rate limiter unavailable: {0}")]
    Unavailable(String),
}

/// Requests per subject, shared by every ingress instance.
#[async_trait]
pub trait RateLimiter: Send + Sync {
    async fn acquire(&self, subject: &str) -> Result<RateDecision, RateLimitError>;
}
