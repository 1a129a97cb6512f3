use async_trait::async_trait;
use paystream_domain::{Event, PspResult};
use paystream_messaging::{Emitter, Handler, HandlerError, InboundEvent};
use sqlx::PgConnection;

use crate::domain::{self, CAPTURE_STEP, FeeSchedule};
use crate::outbound::postgres::{self, PostOutcome};

pub struct LedgerHandler {
    fees: FeeSchedule,
}

impl LedgerHandler {
    pub fn new(fees: FeeSchedule) -> Self {
        Self { fees }
    }
}

#[async_trait]
impl Handler for LedgerHandler {
    fn handles(&self, event_type: &str) -> bool {
        event_type == PspResult::EVENT_TYPE
    }

    async fn handle(
        &self,
        tx: &mut PgConnection,
        event: &InboundEvent,
        out: &mut Emitter,
    ) -> Result<(), HandlerError> {
        let result: PspResult = event.data().map_err(HandlerError::Permanent)?;
        // A result that breaks a ledger rule breaks it on every retry: it goes to the dead
        // letter topic for a person to look at.
        let posting = match domain::capture_posting(event.payment_id, &result, &self.fees) {
            Ok(Some(posting)) => posting,
            Ok(None) => return Ok(()),
            Err(rule) => return Err(HandlerError::permanent(rule)),
        };
        match postgres::post_transfer(tx, event.payment_id, CAPTURE_STEP, &posting).await? {
            PostOutcome::Posted => {
                tracing::info!(transfer_id = %posting.transfer_id, amount = result.amount_captured, currency = %posting.currency, entries = posting.entries.len(), "capture posted");
                out.emit(event.payment_id, posting)?;
            }
            PostOutcome::AlreadyPosted => {
                tracing::info!(transfer_id = %posting.transfer_id, "capture already posted; skipped");
            }
            PostOutcome::Refused(rule) => return Err(HandlerError::permanent(rule)),
        }
        Ok(())
    }
}
