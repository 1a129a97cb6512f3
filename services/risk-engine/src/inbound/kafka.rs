use async_trait::async_trait;
use paystream_domain::{Event, PaymentRequested, RiskDecided, RiskDecision};
use paystream_messaging::{Emitter, Handler, HandlerError, InboundEvent};
use sqlx::PgConnection;

use crate::domain::{DecideError, RiskEngine, Verdict};
use crate::metrics::RiskMetrics;
use crate::outbound::postgres;

pub struct RiskHandler {
    engine: RiskEngine,
    metrics: RiskMetrics,
}

impl RiskHandler {
    pub(crate) fn new(engine: RiskEngine, metrics: RiskMetrics) -> Self {
        Self { engine, metrics }
    }
}

fn emit(
    out: &mut Emitter,
    event: &InboundEvent,
    verdict: Verdict,
    request: PaymentRequested,
) -> Result<(), HandlerError> {
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

#[async_trait]
impl Handler for RiskHandler {
    fn handles(&self, event_type: &str) -> bool {
        event_type == PaymentRequested::EVENT_TYPE
    }

    /// The decision row is in the transaction and the velocity counters are idempotent per
    /// payment id, so a redone batch changes nothing twice.
    fn effects_are_transactional(&self) -> bool {
        true
    }

    async fn handle(
        &self,
        tx: &mut PgConnection,
        event: &InboundEvent,
        out: &mut Emitter,
    ) -> Result<(), HandlerError> {
        let request: PaymentRequested = event.data().map_err(HandlerError::Permanent)?;
        // A payment gets one decision: if one exists (the request was sent twice under two
        // event ids), it is published again rather than decided anew, and the velocity windows
        // are not touched.
        if let Some(stored) = postgres::decision(tx, event.payment_id).await? {
            tracing::info!(decision = ?stored.decision, "payment decided before; publishing that decision again");
            return emit(out, event, stored, request);
        }
        let decided = self
            .engine
            .decide(event.payment_id, event.occurred_at, &request)
            .await
            .map_err(|e: DecideError| {
                tracing::warn!(error = %e, "cannot decide yet; will retry");
                HandlerError::Transient(e.into())
            })?;
        let verdict = postgres::save_decision(
            tx,
            event.payment_id,
            &request.merchant_id,
            decided.verdict,
            &decided.rules_version,
        )
        .await?;
        let label = match verdict.decision {
            RiskDecision::Approved => "approved",
            RiskDecision::Declined => "declined",
        };
        self.metrics.decisions.with_label_values(&[label]).inc();
        for kind in &verdict.fired {
            self.metrics
                .rules_fired
                .with_label_values(&[kind.as_str()])
                .inc();
        }
        tracing::info!(decision = label, score = verdict.score, rules_version = %decided.rules_version, reasons = ?verdict.reasons, "risk decided");
        emit(out, event, verdict, request)
    }
}
