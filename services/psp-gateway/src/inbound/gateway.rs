//! What the Kafka handler and the webhook endpoint share: PSP adapters, routing, breakers,
//! request storage.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use paystream_domain::{PaymentId, PspOutcome, PspResult, RiskDecided};
use sqlx::PgPool;

use crate::domain::breaker::BreakerBoard;
use crate::domain::ports::{Charge, Psp};
use crate::domain::routing::RoutingRules;
use crate::metrics::GatewayMetrics;

pub struct Gateway {
    pub pool: PgPool,
    pub psps: BTreeMap<String, Arc<dyn Psp>>,
    pub routing: RoutingRules,
    pub breakers: Arc<BreakerBoard>,
    /// Same-key calls per handling before an unknown outcome goes back to the runtime's retry.
    pub resolve_attempts: u32,
    pub resolve_backoff: Duration,
    pub metrics: GatewayMetrics,
}

impl Gateway {
    pub fn psp(&self, name: &str) -> Option<&Arc<dyn Psp>> {
        self.psps.get(name)
    }

    /// Pause before the `i`-th (0-based) repeat of a same-key call.
    pub async fn pause(&self, i: u32) {
        tokio::time::sleep(self.resolve_backoff.saturating_mul(i + 1)).await;
    }
}

/// The PSP idempotency key of a command: derived from the command's own id, so a redelivered
/// command (or one replayed from the dead letter topic) reaches the PSP under the same key.
/// Hashed when it would exceed the wire protocol's 255 characters.
pub fn command_key(payment_id: PaymentId, operation: &str, command_id: &str) -> String {
    let key = format!("{payment_id}:{operation}:{command_id}");
    if key.len() <= 255 {
        key
    } else {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(command_id.as_bytes());
        format!("{payment_id}:{operation}:sha256:{}", hex::encode(digest))
    }
}

/// A `payment.psp_result` for a charge outcome.
pub fn psp_result(
    decided_merchant: &paystream_domain::MerchantId,
    amount: paystream_domain::Amount,
    currency: paystream_domain::Currency,
    outcome: PspOutcome,
    psp: &str,
    charge: Option<&Charge>,
    decline: Option<(&str, &str)>,
) -> PspResult {
    PspResult {
        merchant_id: decided_merchant.clone(),
        outcome,
        psp: psp.to_owned(),
        charge_id: charge.map(|c| c.id.clone()),
        amount,
        currency,
        amount_captured: charge.map(|c| c.amount_captured).unwrap_or(0),
        decline_code: decline.map(|(c, _)| c.to_owned()),
        message: decline.map(|(_, m)| m.to_owned()).filter(|m| !m.is_empty()),
    }
}

pub fn result_for(
    decided: &RiskDecided,
    outcome: PspOutcome,
    psp: &str,
    charge: Option<&Charge>,
    decline: Option<(&str, &str)>,
) -> PspResult {
    psp_result(
        &decided.request.merchant_id,
        decided.request.amount,
        decided.request.currency,
        outcome,
        psp,
        charge,
        decline,
    )
}

pub fn outcome_label(outcome: PspOutcome) -> &'static str {
    match outcome {
        PspOutcome::Succeeded => "succeeded",
        PspOutcome::RequiresCapture => "requires_capture",
        PspOutcome::Declined => "declined",
        PspOutcome::Failed => "failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_keys_are_stable_and_bounded() {
        let p = PaymentId::new();
        assert_eq!(
            command_key(p, "capture", "c1"),
            command_key(p, "capture", "c1")
        );
        assert_ne!(
            command_key(p, "capture", "c1"),
            command_key(p, "cancel", "c1")
        );
        let long = "x".repeat(400);
        assert!(command_key(p, "refund", &long).len() <= 255);
    }
}
