use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use paystream_domain::{
    CaptureMode, Event, PaymentId, PspOutcome, PspResult, RiskDecided, RiskDecision,
};
use paystream_messaging::{Emitter, Handler, HandlerError, InboundEvent};
use sqlx::{PgConnection, PgPool};

use crate::domain::ports::{Charge, ChargeRequest, ChargeStatus, Psp, PspError};
use crate::domain::routing::Router;
use crate::outbound::postgres::{self, Attempt, AttemptState};

pub struct GatewayHandler {
    pool: PgPool,
    psps: Vec<Arc<dyn Psp>>,
    router: Router,
    resolve_attempts: u32,
}

enum Resolution {
    Charged(Charge),
    Declined { code: String, message: String },
    Rejected(String),
    Unknown(String),
}

impl GatewayHandler {
    pub fn new(
        pool: PgPool,
        psps: Vec<Arc<dyn Psp>>,
        router: Router,
        resolve_attempts: u32,
    ) -> Self {
        Self {
            pool,
            psps,
            router,
            resolve_attempts: resolve_attempts.max(1),
        }
    }

    fn psp(&self, name: &str) -> Option<&Arc<dyn Psp>> {
        self.psps.iter().find(|p| p.name() == name)
    }

    /// Calls the PSP with the attempt's key until it answers definitively, then, before giving
    /// up, asks it which charges it holds for the payment.
    async fn resolve(
        &self,
        psp: &dyn Psp,
        request: &ChargeRequest,
        attempt: &Attempt,
    ) -> Resolution {
        let mut last = String::new();
        for i in 0..self.resolve_attempts {
            match psp.create_charge(request, &attempt.psp_key).await {
                Ok(charge) => return Resolution::Charged(charge),
                Err(PspError::Declined { code, message }) => {
                    return Resolution::Declined { code, message };
                }
                Err(PspError::Rejected(msg)) => return Resolution::Rejected(msg),
                Err(e) => {
                    last = e.to_string();
                    tracing::warn!(psp = psp.name(), attempt = i + 1, outcome = %last, "PSP outcome unknown; asking again with the same key");
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(i + 1))).await;
                }
            }
        }
        if let Ok(charges) = psp.charges_for(request.payment_id).await
            && let Some(charge) = charges.into_iter().find(|c| {
                matches!(
                    c.status,
                    ChargeStatus::Succeeded | ChargeStatus::RequiresCapture
                )
            })
        {
            return Resolution::Charged(charge);
        }
        Resolution::Unknown(last)
    }
}

fn result(
    decided: &RiskDecided,
    outcome: PspOutcome,
    psp: &str,
    charge: Option<&Charge>,
    decline: Option<(&str, &str)>,
) -> PspResult {
    PspResult {
        merchant_id: decided.request.merchant_id.clone(),
        outcome,
        psp: psp.to_owned(),
        charge_id: charge.map(|c| c.id.clone()),
        amount: decided.request.amount,
        currency: decided.request.currency,
        amount_captured: charge.map(|c| c.amount_captured).unwrap_or(0),
        decline_code: decline.map(|(c, _)| c.to_owned()),
        message: decline.map(|(_, m)| m.to_owned()).filter(|m| !m.is_empty()),
    }
}

#[async_trait]
impl Handler for GatewayHandler {
    fn handles(&self, event_type: &str) -> bool {
        event_type == RiskDecided::EVENT_TYPE
    }

    async fn handle(
        &self,
        tx: &mut PgConnection,
        event: &InboundEvent,
        out: &mut Emitter,
    ) -> Result<(), HandlerError> {
        let decided: RiskDecided = event.data().map_err(HandlerError::Permanent)?;
        if decided.decision == RiskDecision::Declined {
            return Ok(());
        }
        let payment_id: PaymentId = event.payment_id;
        let request = ChargeRequest {
            payment_id,
            amount: decided.request.amount,
            currency: decided.request.currency,
            payment_method: decided.request.payment_method.clone(),
            capture: decided.request.capture == CaptureMode::Automatic,
        };
        let known = postgres::attempts(tx, payment_id).await?;
        if known.iter().any(|a| {
            matches!(
                a.state,
                AttemptState::Succeeded | AttemptState::RequiresCapture
            )
        }) {
            // Charged and published in a committed transaction before: nothing left to do.
            return Ok(());
        }
        let mut last_decline: Option<(String, String, String)> = None;
        for (position, psp_name) in self.router.candidates().iter().enumerate() {
            let Some(psp) = self.psp(psp_name) else {
                continue;
            };
            let attempt = match known.iter().find(|a| &a.psp == psp_name) {
                Some(a) => a.clone(),
                None => {
                    postgres::insert_attempt(&self.pool, payment_id, psp_name, position as i32 + 1)
                        .await?
                }
            };
            if attempt.state == AttemptState::Declined {
                let code = attempt.decline_code.clone().unwrap_or_default();
                last_decline = Some((psp_name.clone(), code, String::new()));
                continue;
            }
            match self.resolve(psp.as_ref(), &request, &attempt).await {
                Resolution::Charged(charge) => {
                    let (state, outcome) = if charge.status == ChargeStatus::RequiresCapture {
                        (AttemptState::RequiresCapture, PspOutcome::RequiresCapture)
                    } else {
                        (AttemptState::Succeeded, PspOutcome::Succeeded)
                    };
                    postgres::update_attempt(
                        &mut *tx,
                        &attempt.psp_key,
                        state,
                        Some(&charge.id),
                        None,
                    )
                    .await?;
                    tracing::info!(psp = %psp_name, charge_id = %charge.id, ?outcome, "charged");
                    out.emit(
                        payment_id,
                        result(&decided, outcome, psp_name, Some(&charge), None),
                    )?;
                    return Ok(());
                }
                Resolution::Declined { code, message } => {
                    postgres::update_attempt(
                        &mut *tx,
                        &attempt.psp_key,
                        AttemptState::Declined,
                        None,
                        Some(&code),
                    )
                    .await?;
                    tracing::info!(psp = %psp_name, decline_code = %code, "declined by PSP; trying the next one");
                    last_decline = Some((psp_name.clone(), code, message));
                }
                Resolution::Rejected(msg) => {
                    postgres::update_attempt(
                        &mut *tx,
                        &attempt.psp_key,
                        AttemptState::Failed,
                        None,
                        None,
                    )
                    .await?;
                    tracing::warn!(psp = %psp_name, reason = %msg, "PSP rejected the request");
                    out.emit(
                        payment_id,
                        result(
                            &decided,
                            PspOutcome::Failed,
                            psp_name,
                            None,
                            Some(("psp_rejected", &msg)),
                        ),
                    )?;
                    return Ok(());
                }
                Resolution::Unknown(msg) => {
                    // Committed outside the batch so that operators see the payment is in doubt.
                    postgres::update_attempt(
                        &self.pool,
                        &attempt.psp_key,
                        AttemptState::Unknown,
                        None,
                        None,
                    )
                    .await?;
                    return Err(HandlerError::Transient(anyhow::anyhow!(
                        "outcome at {psp_name} unknown ({msg}); will ask {psp_name} again with the same key"
                    )));
                }
            }
        }
        let emitted = match &last_decline {
            Some((psp, code, message)) => result(
                &decided,
                PspOutcome::Declined,
                psp,
                None,
                Some((code, message)),
            ),
            None => result(
                &decided,
                PspOutcome::Failed,
                "none",
                None,
                Some(("no_psp_available", "no PSP is configured for this payment")),
            ),
        };
        out.emit(payment_id, emitted)?;
        Ok(())
    }
}
