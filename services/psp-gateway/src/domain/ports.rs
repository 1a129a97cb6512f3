use async_trait::async_trait;
use paystream_domain::{Amount, Currency, PaymentId, PaymentMethod};

#[derive(Debug, Clone)]
pub struct ChargeRequest {
    pub payment_id: PaymentId,
    pub amount: Amount,
    pub currency: Currency,
    pub payment_method: PaymentMethod,
    pub capture: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChargeStatus {
    Succeeded,
    RequiresCapture,
    Other,
}

#[derive(Debug, Clone)]
pub struct Charge {
    pub id: String,
    pub status: ChargeStatus,
    pub amount: i64,
    pub amount_captured: i64,
}

/// Outcomes of a PSP call that the gateway acts on differently.
#[derive(Debug, thiserror::Error)]
pub enum PspError {
    /// The PSP refused the charge for good: safe to try another PSP.
    #[error("declined: {code}")]
    Declined { code: String, message: String },
    /// The same key is still being processed at the PSP.
    #[error("request in flight at the PSP")]
    InFlight,
    /// Timeout, reset or 5xx: the charge may or may not exist. Only the same PSP with the same
    /// key may resolve it.
    #[error("unknown outcome: {0}")]
    Unknown(String),
    /// The PSP refused the request itself (400/401): retrying cannot help.
    #[error("rejected by the PSP: {0}")]
    Rejected(String),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// A payment service provider, one adapter per PSP.
#[async_trait]
pub trait Psp: Send + Sync {
    fn name(&self) -> &str;

    /// Creates the charge, or returns the one already made under `idempotency_key`.
    async fn create_charge(
        &self,
        request: &ChargeRequest,
        idempotency_key: &str,
    ) -> Result<Charge, PspError>;

    /// The charges the PSP holds for a payment (status inquiry after an unknown outcome).
    async fn charges_for(&self, payment_id: PaymentId) -> Result<Vec<Charge>, PspError>;
}
