//! The PSP port: what the gateway needs from any payment service provider. One adapter per PSP
//! (`outbound/wire_psp.rs` speaks the PSP wire protocol of DESIGN.md §4).

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
    Canceled,
    Failed,
    Other,
}

impl ChargeStatus {
    /// The charge reached the card: money is (or may become) taken.
    pub fn is_live(&self) -> bool {
        matches!(self, Self::Succeeded | Self::RequiresCapture)
    }
}

#[derive(Debug, Clone)]
pub struct Charge {
    pub id: String,
    pub status: ChargeStatus,
    pub amount: i64,
    pub amount_captured: i64,
}

#[derive(Debug, Clone)]
pub struct Refund {
    pub id: String,
    pub charge: String,
    pub amount: i64,
}

/// Outcomes of a PSP call that the gateway acts on differently.
#[derive(Debug, thiserror::Error)]
pub enum PspError {
    /// The PSP refused the charge for good (402): safe to try another PSP.
    #[error("declined: {code}")]
    Declined { code: String, message: String },
    /// The same key is still being processed at the PSP (409): ask again later, same key.
    #[error("request in flight at the PSP")]
    InFlight,
    /// Timeout, reset, 5xx, unreadable answer: the operation may or may not have happened. Only
    /// the same PSP with the same key may resolve it.
    #[error("unknown outcome: {0}")]
    Unknown(String),
    /// The PSP refused the request itself (400, 404): nothing happened and retrying cannot help
    /// (a capture of a canceled charge, a refund above what is left).
    #[error("rejected by the PSP: {code}")]
    Rejected { code: String, message: String },
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl PspError {
    /// Whether the PSP looked unhealthy on this call (circuit breaker input). Declines and
    /// rejections are healthy answers.
    pub fn is_failure(&self) -> bool {
        matches!(self, Self::Unknown(_) | Self::Other(_))
    }

    /// A small fixed label for metrics.
    pub fn outcome_label(&self) -> &'static str {
        match self {
            Self::Declined { .. } => "declined",
            Self::InFlight => "in_flight",
            Self::Unknown(_) => "unknown",
            Self::Rejected { .. } => "rejected",
            Self::Other(_) => "error",
        }
    }
}

/// A payment service provider. Every mutating call carries the gateway's PSP idempotency key:
/// the same key always means the same operation, and the PSP answers a repeat with the first
/// result.
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

    /// Captures an authorised charge, `amount` or all of it.
    async fn capture(
        &self,
        charge_id: &str,
        amount: Option<i64>,
        idempotency_key: &str,
    ) -> Result<Charge, PspError>;

    /// Releases an authorised charge.
    async fn cancel(&self, charge_id: &str, idempotency_key: &str) -> Result<Charge, PspError>;

    async fn refund(
        &self,
        charge_id: &str,
        amount: i64,
        idempotency_key: &str,
    ) -> Result<Refund, PspError>;
}
