//! Charging an approved payment exactly once.
//!
//! 1. Every attempt still in doubt (pending, unknown) is settled first, at its own PSP with its
//!    own key — never skipped, whatever that PSP's breaker says.
//! 2. Then new attempts walk the route, one per PSP, each committed to request storage before
//!    the call; an open breaker may skip a PSP here, because nothing was sent there yet.
//! 3. Only a definitive decline moves on to the next PSP. An unknown outcome stays unknown until
//!    the same PSP settles it (same-key retry, status inquiry, or its webhook).

use std::collections::BTreeSet;

use paystream_domain::{CaptureMode, PaymentId, PspOutcome, RiskDecided, RiskDecision};
use paystream_messaging::{Emitter, HandlerError};
use sqlx::PgConnection;

use super::gateway::{Gateway, outcome_label, result_for};
use crate::domain::ports::{Charge, ChargeRequest, ChargeStatus, Psp, PspError};
use crate::outbound::postgres::{self, Attempt, AttemptState, Finish};

enum Resolution {
    Charged(Charge),
    Declined { code: String, message: String },
    Rejected { code: String, message: String },
    Unknown(String),
}

/// Where one attempt ended.
enum Settled {
    /// Charged; the result is published (by us or by whoever settled it first).
    Charged,
    Declined {
        code: String,
        message: String,
    },
    /// Refused without a charge (bad request); the result is published.
    Failed,
}

impl Gateway {
    pub async fn charge(
        &self,
        tx: &mut PgConnection,
        payment_id: PaymentId,
        decided: &RiskDecided,
        out: &mut Emitter,
    ) -> Result<(), HandlerError> {
        if decided.decision == RiskDecision::Declined {
            return Ok(());
        }
        let request = ChargeRequest {
            payment_id,
            amount: decided.request.amount,
            currency: decided.request.currency,
            payment_method: decided.request.payment_method.clone(),
            capture: decided.request.capture == CaptureMode::Automatic,
        };
        let known = postgres::charge_attempts(tx, payment_id).await?;
        if known
            .iter()
            .any(|a| a.state.charged() || a.state == AttemptState::Failed)
        {
            // Settled and published in a committed transaction before: nothing left to do.
            return Ok(());
        }
        let mut last_decline: Option<(String, String, String)> = known
            .iter()
            .rev()
            .find(|a| a.state == AttemptState::Declined)
            .map(|a| {
                (
                    a.psp.clone(),
                    a.decline_code.clone().unwrap_or_default(),
                    a.error_message.clone().unwrap_or_default(),
                )
            });

        for attempt in known.iter().filter(|a| a.state.in_doubt()) {
            match self.settle(tx, decided, &request, attempt, out).await? {
                Settled::Charged | Settled::Failed => return Ok(()),
                Settled::Declined { code, message } => {
                    last_decline = Some((attempt.psp.clone(), code, message));
                }
            }
        }

        let (rule, route) = self.routing.route(
            &decided.request.merchant_id,
            &decided.request.currency,
            decided.request.amount.minor(),
        );
        let tried: BTreeSet<&str> = known.iter().map(|a| a.psp.as_str()).collect();
        let mut next_number = known.iter().map(|a| a.attempt).max().unwrap_or(0) + 1;
        let mut skipped = Vec::new();
        for psp_name in route {
            if tried.contains(psp_name.as_str()) || self.psp(psp_name).is_none() {
                continue;
            }
            if !self.breakers.allow_new_attempt(psp_name) {
                self.metrics
                    .breaker_skips
                    .with_label_values(&[psp_name])
                    .inc();
                tracing::info!(psp = %psp_name, "circuit breaker open; not starting a new attempt there");
                skipped.push(psp_name.as_str());
                continue;
            }
            if let Some((from, _, _)) = &last_decline {
                self.metrics.failovers.with_label_values(&[from]).inc();
            }
            let attempt = postgres::insert_charge_attempt(
                &self.pool,
                payment_id,
                &decided.request.merchant_id,
                &request,
                psp_name,
                next_number,
            )
            .await?;
            next_number += 1;
            if attempt.psp != *psp_name {
                // Another instance started this payment's attempt under the same number (a
                // rebalance): re-read and settle what it stored rather than guess.
                return Err(HandlerError::Transient(anyhow::anyhow!(
                    "attempt {} of this payment was started concurrently at {}; re-evaluating",
                    attempt.attempt,
                    attempt.psp
                )));
            }
            tracing::info!(psp = %psp_name, route = rule, attempt = attempt.attempt, "charging");
            match self.settle(tx, decided, &request, &attempt, out).await? {
                Settled::Charged | Settled::Failed => return Ok(()),
                Settled::Declined { code, message } => {
                    tracing::info!(psp = %psp_name, decline_code = %code, "declined by PSP; trying the next one");
                    last_decline = Some((psp_name.clone(), code, message));
                }
            }
        }

        if !skipped.is_empty() {
            // Declining for a PSP outage would turn a short incident into lost sales; the retry
            // topic brings the payment back after the breaker's cool-down.
            return Err(HandlerError::Transient(anyhow::anyhow!(
                "no PSP available for a new attempt: circuit breaker open for {}",
                skipped.join(", ")
            )));
        }
        let emitted = match &last_decline {
            Some((psp, code, message)) => result_for(
                decided,
                PspOutcome::Declined,
                psp,
                None,
                Some((code, message)),
            ),
            None => result_for(
                decided,
                PspOutcome::Failed,
                "none",
                None,
                Some(("no_psp_available", "no PSP is configured for this payment")),
            ),
        };
        self.metrics
            .charge_results
            .with_label_values(&[outcome_label(emitted.outcome)])
            .inc();
        out.emit(payment_id, emitted)?;
        Ok(())
    }

    /// Settles one attempt at its own PSP with its own key and publishes the outcome, unless
    /// someone (a webhook, another instance) settled it first.
    async fn settle(
        &self,
        tx: &mut PgConnection,
        decided: &RiskDecided,
        request: &ChargeRequest,
        attempt: &Attempt,
        out: &mut Emitter,
    ) -> Result<Settled, HandlerError> {
        let psp_name = attempt.psp.as_str();
        let Some(psp) = self.psp(psp_name) else {
            return Err(HandlerError::Transient(anyhow::anyhow!(
                "attempt {} is in doubt at PSP {psp_name}, which is not configured; it can only be settled there",
                attempt.psp_key
            )));
        };
        match self.resolve(psp.as_ref(), request, &attempt.psp_key).await {
            Resolution::Charged(charge) => {
                let (state, outcome) = if charge.status == ChargeStatus::RequiresCapture {
                    (AttemptState::RequiresCapture, PspOutcome::RequiresCapture)
                } else {
                    (AttemptState::Succeeded, PspOutcome::Succeeded)
                };
                let detail = Finish {
                    charge_id: Some(&charge.id),
                    ..Finish::default()
                };
                if !postgres::finish(tx, &attempt.psp_key, state, detail).await? {
                    return self.settled_elsewhere(tx, &attempt.psp_key).await;
                }
                tracing::info!(psp = %psp_name, charge_id = %charge.id, ?outcome, "charged");
                self.metrics
                    .charge_results
                    .with_label_values(&[outcome_label(outcome)])
                    .inc();
                out.emit(
                    request.payment_id,
                    result_for(decided, outcome, psp_name, Some(&charge), None),
                )?;
                Ok(Settled::Charged)
            }
            Resolution::Declined { code, message } => {
                let detail = Finish {
                    error_code: Some(&code),
                    error_message: Some(&message),
                    ..Finish::default()
                };
                if !postgres::finish(tx, &attempt.psp_key, AttemptState::Declined, detail).await? {
                    return self.settled_elsewhere(tx, &attempt.psp_key).await;
                }
                Ok(Settled::Declined { code, message })
            }
            Resolution::Rejected { code, message } => {
                let detail = Finish {
                    error_code: Some(&code),
                    error_message: Some(&message),
                    ..Finish::default()
                };
                if !postgres::finish(tx, &attempt.psp_key, AttemptState::Failed, detail).await? {
                    return self.settled_elsewhere(tx, &attempt.psp_key).await;
                }
                tracing::warn!(psp = %psp_name, code = %code, "PSP rejected the charge request");
                self.metrics
                    .charge_results
                    .with_label_values(&["failed"])
                    .inc();
                out.emit(
                    request.payment_id,
                    result_for(
                        decided,
                        PspOutcome::Failed,
                        psp_name,
                        None,
                        Some((&code, &message)),
                    ),
                )?;
                Ok(Settled::Failed)
            }
            Resolution::Unknown(msg) => {
                postgres::mark_unknown(&self.pool, &attempt.psp_key).await?;
                self.metrics
                    .unknown_outcomes
                    .with_label_values(&[psp_name, "charge"])
                    .inc();
                tracing::warn!(psp = %psp_name, outcome = %msg, "charge outcome unknown; will ask the same PSP again with the same key");
                Err(HandlerError::Transient(anyhow::anyhow!(
                    "outcome at {psp_name} unknown ({msg}); will ask {psp_name} again with the same key"
                )))
            }
        }
    }

    /// The attempt was final before our update: read what it became. Its outcome was published
    /// by whoever settled it.
    async fn settled_elsewhere(
        &self,
        tx: &mut PgConnection,
        psp_key: &str,
    ) -> Result<Settled, HandlerError> {
        let now = postgres::attempt_by_key(tx, psp_key).await?;
        tracing::info!(psp = %now.psp, state = now.state.as_str(), "attempt settled concurrently (webhook or another instance)");
        Ok(match now.state {
            AttemptState::Declined => Settled::Declined {
                code: now.decline_code.unwrap_or_default(),
                message: now.error_message.unwrap_or_default(),
            },
            AttemptState::Failed => Settled::Failed,
            _ => Settled::Charged,
        })
    }

    /// Calls the PSP with the attempt's key until it answers definitively, then, before giving
    /// up, asks the same PSP which charges it holds for the payment. One attempt per PSP per
    /// payment means a live charge found there is this attempt's.
    async fn resolve(&self, psp: &dyn Psp, request: &ChargeRequest, key: &str) -> Resolution {
        let mut last = String::new();
        for i in 0..self.resolve_attempts.max(1) {
            if i > 0 {
                self.pause(i - 1).await;
            }
            match psp.create_charge(request, key).await {
                Ok(charge) => return Resolution::Charged(charge),
                Err(PspError::Declined { code, message }) => {
                    return Resolution::Declined { code, message };
                }
                Err(PspError::Rejected { code, message }) => {
                    return Resolution::Rejected { code, message };
                }
                Err(e) => {
                    last = e.to_string();
                    tracing::debug!(psp = psp.name(), call = i + 1, outcome = %last, "PSP outcome unknown; asking again with the same key");
                }
            }
        }
        match psp.charges_for(request.payment_id).await {
            Ok(charges) => {
                if let Some(charge) = charges.into_iter().find(|c| c.status.is_live()) {
                    return Resolution::Charged(charge);
                }
            }
            Err(e) => last = format!("{last}; status inquiry: {e}"),
        }
        Resolution::Unknown(last)
    }
}
