//! What the risk rules need from the outside world. Adapters live in `outbound/`; every error
//! here means "could not find out", which the engine turns into a retry, never an approval.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use paystream_domain::{Amount, Currency, CustomerId, MerchantId, PaymentId, PaymentMethod};

use super::rules::{Rules, WindowStats};

#[derive(Debug, thiserror::Error)]
pub enum VelocityError {
    /// Redis is down or too slow: the counts are unknown, so the request cannot be decided yet.
    #[error("velocity store unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// One payment as the velocity store sees it.
#[derive(Debug, Clone)]
pub struct VelocityEntry<'a> {
    pub merchant_id: &'a MerchantId,
    pub customer_id: &'a CustomerId,
    pub payment_id: PaymentId,
    pub amount: Amount,
    pub currency: Currency,
    /// When the payment was requested: windows end here, so a redelivery or a late retry counts
    /// the same payments as the first delivery did.
    pub at: DateTime<Utc>,
}

/// Per-customer sliding windows.
#[async_trait]
pub trait VelocityStore: Send + Sync {
    /// Records the payment, once per payment id (recording it again changes nothing), and
    /// returns the customer's count and sum (in the payment's currency) within each window,
    /// this payment included. `retain_secs` is how long entries must be kept.
    async fn record_and_count(
        &self,
        entry: &VelocityEntry<'_>,
        windows_secs: &[u64],
        retain_secs: u64,
    ) -> Result<Vec<WindowStats>, VelocityError>;
}

#[derive(Debug, thiserror::Error)]
pub enum BlocklistError {
    #[error("blocklist unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// Blocked customers and payment methods. `Some(reason)` when blocked.
#[async_trait]
pub trait Blocklist: Send + Sync {
    async fn customer(
        &self,
        merchant: &MerchantId,
        customer: &CustomerId,
    ) -> Result<Option<String>, BlocklistError>;

    async fn payment_method(
        &self,
        merchant: &MerchantId,
        method: &PaymentMethod,
    ) -> Result<Option<String>, BlocklistError>;
}

#[derive(Debug, thiserror::Error)]
pub enum RulesSourceError {
    /// The source answered with rules that do not parse or validate: keep the current ones.
    #[error(transparent)]
    Invalid(#[from] super::rules::InvalidRules),
    #[error("rules source unavailable: {0:#}")]
    Unavailable(anyhow::Error),
}

/// Where the rules come from (a file, a table). Polled by the reloader.
#[async_trait]
pub trait RulesSource: Send + Sync {
    /// A short description for logs (`file /etc/paystream/risk.toml`, `table risk.rule_sets`).
    fn describe(&self) -> String;

    /// The rules in force at the source, or `None` when it has none (an empty table: the
    /// configured defaults apply).
    async fn load(&self) -> Result<Option<Rules>, RulesSourceError>;
}
