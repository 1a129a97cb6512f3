use async_trait::async_trait;
use paystream_domain::{Event, PaymentRequested, RiskDecided};
use paystream_messaging::{Emitter, Handler, HandlerError, InboundEvent};
use sqlx::PgConnection;

use crate::domain::{Rules, evaluate};
use crate::outbound::postgres;

pub struct RiskHandler {
    rules: Rules,
}

impl RiskHandler {
    pub fn new(rules: Rules) -> Self {
        Self { rules }
    }
}

#[async_trait]
impl Handler for RiskHandler {
    fn handles(&self, event_type: &str) -> bool {
        event_type == PaymentRequested::EVENT_TYPE
    }

    async fn handle(
        &self,
        tx: &mut PgConnection,
        event: &InboundEvent,
        out: &mut Emitter,
    ) -> Result<(), HandlerError> {
        let request: PaymentRequested = event.data().map_err(HandlerError::Permanent)?;
        let verdict = evaluate(&self.rules, &request);
        // A payment gets one decision: if one exists (the request was sent twice under two
        // event ids), it is published again rather than decided anew.
        let verdict = postgres::save_decision(tx, event.payment_id, &request, verdict).await?;
        tracing::info!(decision = ?verdict.decision, score = verdict.score, "risk decided");
        out.emit(
            event.payment_id,
            RiskDecided {
                decision: verdict.decision,
                score: verdict.score,
                reasons: verdict.reasons,
                request,
            },
        )?;
        Ok(())
    }
}
