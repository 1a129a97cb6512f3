use async_trait::async_trait;
use paystream_domain::{
    Discrepancy, Event, LedgerPosting, PaymentRequested, PspOutcome, PspResult, RiskDecided,
    RiskDecision,
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
}

#[async_trait]
impl Handler for ValidatorHandler {
    fn handles(&self, event_type: &str) -> bool {
        [
            PaymentRequested::EVENT_TYPE,
            RiskDecided::EVENT_TYPE,
            PspResult::EVENT_TYPE,
            LedgerPosting::EVENT_TYPE,
        ]
        .contains(&event_type)
    }

    async fn handle(
        &self,
        tx: &mut PgConnection,
        event: &InboundEvent,
        _out: &mut Emitter,
    ) -> Result<(), HandlerError> {
        let id = event.payment_id;
        match event.event_type.as_str() {
            t if t == PaymentRequested::EVENT_TYPE => {
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
            t if t == RiskDecided::EVENT_TYPE => {
                let r: RiskDecided = event.data().map_err(HandlerError::Permanent)?;
                if r.decision == RiskDecision::Declined {
                    let outcome = Outcome {
                        merchant: r.request.merchant_id.as_str(),
                        amount: r.request.amount.minor(),
                        currency: r.request.currency.as_str(),
                        expected_status: "declined",
                        psp: None,
                        charge_id: None,
                        amount_captured: 0,
                    };
                    postgres::record_outcome(tx, id, outcome, self.timing.settle_delay).await?;
                }
            }
            t if t == PspResult::EVENT_TYPE => {
                let r: PspResult = event.data().map_err(HandlerError::Permanent)?;
                let status = match r.outcome {
                    PspOutcome::Succeeded => "succeeded",
                    PspOutcome::RequiresCapture => "requires_capture",
                    PspOutcome::Declined => "declined",
                    PspOutcome::Failed => "failed",
                };
                let outcome = Outcome {
                    merchant: r.merchant_id.as_str(),
                    amount: r.amount.minor(),
                    currency: r.currency.as_str(),
                    expected_status: status,
                    psp: Some(r.psp.as_str()),
                    charge_id: r.charge_id.as_deref(),
                    amount_captured: r.amount_captured,
                };
                postgres::record_outcome(tx, id, outcome, self.timing.settle_delay).await?;
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
