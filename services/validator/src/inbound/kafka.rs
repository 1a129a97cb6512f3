use async_trait::async_trait;
use paystream_domain::{
    Discrepancy, Event, LedgerPosting, PaymentCanceled, PaymentCaptured, PaymentRefunded,
    PaymentRequested, PaymentStatus, PspOutcome, PspResult, RiskDecided, RiskDecision,
};
use paystream_messaging::{Emitter, Handler, HandlerError, InboundEvent};
use sqlx::PgConnection;

use crate::config::Timing;
use crate::outbound::postgres::{self, Outcome};

/// Learns, from each event, what must be true of the payment once it settles.
pub struct ValidatorHandler {
    timing: Timing,
}

impl ValidatorHandler {
    pub fn new(timing: Timing) -> Self {
        Self { timing }
    }

    async fn outcome(
        &self,
        tx: &mut PgConnection,
        event: &InboundEvent,
        outcome: Outcome<'_>,
    ) -> Result<(), HandlerError> {
        postgres::record_outcome(
            tx,
            event.payment_id,
            outcome,
            self.timing.settle_delay,
            self.timing.deadline,
        )
        .await?;
        Ok(())
    }
}

const HANDLED: &[&str] = &[
    PaymentRequested::EVENT_TYPE,
    RiskDecided::EVENT_TYPE,
    PspResult::EVENT_TYPE,
    PaymentCaptured::EVENT_TYPE,
    PaymentCanceled::EVENT_TYPE,
    PaymentRefunded::EVENT_TYPE,
    LedgerPosting::EVENT_TYPE,
];

#[async_trait]
impl Handler for ValidatorHandler {
    /// `payment.command_failed` is not among them: a refused command changes nothing that must
    /// exist, and the ingress releases what it reserved.
    fn handles(&self, event_type: &str) -> bool {
        HANDLED.contains(&event_type)
    }

    /// Every effect is in the batch's transaction,
    /// so the runtime may run a batch without per-record savepoints.
    fn effects_are_transactional(&self) -> bool {
        true
    }

    async fn handle(
        &self,
        tx: &mut PgConnection,
        event: &InboundEvent,
        _out: &mut Emitter,
    ) -> Result<(), HandlerError> {
        let id = event.payment_id;
        match event.event_type.as_str() {
            PaymentRequested::EVENT_TYPE => {
                let r: PaymentRequested = event.data().map_err(HandlerError::Permanent)?;
                postgres::record_requested(
                    tx,
                    id,
                    r.merchant_id.as_str(),
                    r.amount.minor(),
                    r.currency.as_str(),
                    self.timing.deadline,
                )
                .await?;
            }
            RiskDecided::EVENT_TYPE => {
                let r: RiskDecided = event.data().map_err(HandlerError::Permanent)?;
                if r.decision == RiskDecision::Declined {
                    let outcome = Outcome {
                        merchant: r.request.merchant_id.as_str(),
                        amount: Some(r.request.amount.minor()),
                        currency: Some(r.request.currency.as_str()),
                        status: PaymentStatus::Declined,
                        psp: None,
                        charge_id: None,
                        amount_captured: None,
                    };
                    self.outcome(tx, event, outcome).await?;
                }
            }
            PspResult::EVENT_TYPE => {
                let r: PspResult = event.data().map_err(HandlerError::Permanent)?;
                let status = match r.outcome {
                    PspOutcome::Succeeded => PaymentStatus::Succeeded,
                    PspOutcome::RequiresCapture => PaymentStatus::RequiresCapture,
                    PspOutcome::Declined => PaymentStatus::Declined,
                    PspOutcome::Failed => PaymentStatus::Failed,
                };
                let outcome = Outcome {
                    merchant: r.merchant_id.as_str(),
                    amount: Some(r.amount.minor()),
                    currency: Some(r.currency.as_str()),
                    status,
                    psp: Some(r.psp.as_str()),
                    charge_id: r.charge_id.as_deref(),
                    amount_captured: Some(r.amount_captured),
                };
                self.outcome(tx, event, outcome).await?;
            }
            PaymentCaptured::EVENT_TYPE => {
                let c: PaymentCaptured = event.data().map_err(HandlerError::Permanent)?;
                let outcome = Outcome {
                    merchant: c.merchant_id.as_str(),
                    amount: None,
                    currency: Some(c.currency.as_str()),
                    status: PaymentStatus::Succeeded,
                    psp: Some(c.psp.as_str()),
                    charge_id: Some(c.charge_id.as_str()),
                    amount_captured: Some(c.amount_captured),
                };
                self.outcome(tx, event, outcome).await?;
            }
            PaymentCanceled::EVENT_TYPE => {
                let c: PaymentCanceled = event.data().map_err(HandlerError::Permanent)?;
                let outcome = Outcome {
                    merchant: c.merchant_id.as_str(),
                    amount: None,
                    currency: None,
                    status: PaymentStatus::Canceled,
                    psp: Some(c.psp.as_str()),
                    charge_id: Some(c.charge_id.as_str()),
                    amount_captured: None,
                };
                self.outcome(tx, event, outcome).await?;
            }
            PaymentRefunded::EVENT_TYPE => {
                let r: PaymentRefunded = event.data().map_err(HandlerError::Permanent)?;
                postgres::record_refund(
                    tx,
                    id,
                    postgres::RefundSeen {
                        merchant: r.merchant_id.as_str(),
                        refund_id: &r.refund_id,
                        amount: r.amount.minor(),
                        psp: &r.psp,
                    },
                    &self.timing,
                )
                .await?;
            }
            _ => {
                let posting: LedgerPosting = event.data().map_err(HandlerError::Permanent)?;
                if !posting.is_balanced() {
                    let d = Discrepancy {
                        kind: "unbalanced_posting".to_owned(),
                        message: format!(
                            "ledger.postings record {} does not balance",
                            posting.transfer_id
                        ),
                    };
                    tracing::warn!(transfer_id = %posting.transfer_id, "unbalanced posting published");
                    postgres::record_discrepancies(tx, Some(id), &[d]).await?;
                }
            }
        }
        Ok(())
    }
}
