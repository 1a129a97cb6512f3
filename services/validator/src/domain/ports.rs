use async_trait::async_trait;
use paystream_domain::PaymentId;

use crate::domain::PspCharge;

#[derive(Debug, thiserror::Error)]
pub enum PspLedgerError {
    /// The PSP could not be asked now; the check is tried again later.
    #[error("PSP unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// Read access to what a PSP actually charged: the third source of truth beside the order
/// store and the ledger.
#[async_trait]
pub trait PspLedger: Send + Sync {
    fn name(&self) -> &str;
    async fn charges_for(&self, payment_id: PaymentId) -> Result<Vec<PspCharge>, PspLedgerError>;
}
