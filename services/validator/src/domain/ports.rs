use async_trait::async_trait;
use chrono::NaiveDate;
use paystream_domain::PaymentId;

use crate::domain::PspCharge;
use crate::domain::reconcile::SettlementLine;

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
    /// The PSP's settlement report of one UTC day: every charge created that day that moved
    /// money, with what was captured and refunded on it.
    async fn settlement(&self, date: NaiveDate) -> Result<Vec<SettlementLine>, PspLedgerError>;
}
