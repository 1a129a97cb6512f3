//! Turning a verified PSP webhook into events: a `charge.succeeded` settles an in-doubt charge
//! (or capture) attempt and publishes its outcome; a `charge.failed` settles an in-doubt charge
//! attempt as declined, which lets the next Kafka retry fail over. Everything else is recorded.
//!
//! The webhook and the Kafka path may settle the same attempt at the same moment; request
//! storage's forward-only updates make exactly one of them publish.

use anyhow::Context;
use paystream_domain::{Amount, Currency, MerchantId, PaymentCaptured, PaymentId, PspOutcome};
use paystream_messaging::{Emitter, outbox};
use sqlx::PgConnection;

use super::gateway::{Gateway, outcome_label, psp_result};
use crate::DB_SCHEMA;
use crate::domain::ports::{Charge, ChargeStatus};
use crate::domain::webhook::WebhookEvent;
use crate::outbound::postgres::{self, AttemptState, Finish};

/// What a webhook led to (also stored in `webhook_events.outcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookOutcome {
    /// Seen before: acknowledged, nothing done.
    Duplicate,
    ResolvedCharge,
    ResolvedCapture,
    DeclinedAttempt,
    /// Nothing in doubt matched: recorded only.
    Noted,
}

impl WebhookOutcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Duplicate => "duplicate",
            Self::ResolvedCharge => "resolved_charge",
            Self::ResolvedCapture => "resolved_capture",
            Self::DeclinedAttempt => "declined_attempt",
            Self::Noted => "noted",
        }
    }
}

fn charge_of(event: &WebhookEvent) -> Charge {
    let d = &event.data;
    let status = match d.status.as_str() {
        "succeeded" => ChargeStatus::Succeeded,
        "requires_capture" => ChargeStatus::RequiresCapture,
        "canceled" => ChargeStatus::Canceled,
        "failed" => ChargeStatus::Failed,
        _ => ChargeStatus::Other,
    };
    let amount_captured = if status == ChargeStatus::Succeeded && d.amount_captured == 0 {
        d.amount
    } else {
        d.amount_captured
    };
    Charge {
        id: d.id.clone(),
        status,
        amount: d.amount,
        amount_captured,
    }
}

impl Gateway {
    /// Applies a verified webhook once: its id is claimed in the same transaction as its effect
    /// and the events it causes.
    pub async fn on_webhook(
        &self,
        psp: &str,
        event: &WebhookEvent,
    ) -> anyhow::Result<WebhookOutcome> {
        let mut tx = self
            .pool
            .begin()
            .await
            .context("beginning webhook transaction")?;
        let fresh = postgres::claim_webhook(
            &mut tx,
            psp,
            &event.id,
            &event.kind,
            &event.data.reference,
            &event.data.id,
        )
        .await?;
        if !fresh {
            return Ok(WebhookOutcome::Duplicate);
        }
        let mut emitter = Emitter::new(None, None);
        let outcome = self
            .apply_webhook(&mut tx, psp, event, &mut emitter)
            .await?;
        postgres::set_webhook_outcome(&mut tx, psp, &event.id, outcome.as_str()).await?;
        outbox::enqueue(&mut tx, DB_SCHEMA, &emitter.take()).await?;
        tx.commit()
            .await
            .context("committing webhook transaction")?;
        Ok(outcome)
    }

    async fn apply_webhook(
        &self,
        tx: &mut PgConnection,
        psp: &str,
        event: &WebhookEvent,
        out: &mut Emitter,
    ) -> anyhow::Result<WebhookOutcome> {
        let Ok(payment_id) = PaymentId::parse(&event.data.reference) else {
            return Ok(WebhookOutcome::Noted);
        };
        let charge = charge_of(event);
        match event.kind.as_str() {
            "charge.succeeded" if charge.status.is_live() => {
                if let Some(a) = postgres::lock_in_doubt_charge(tx, payment_id, psp).await? {
                    let parsed = (
                        a.merchant_id
                            .as_deref()
                            .and_then(|m| MerchantId::parse(m).ok()),
                        a.amount.and_then(|m| Amount::new(m).ok()),
                        a.currency.as_deref().and_then(|c| Currency::parse(c).ok()),
                    );
                    let (Some(merchant), Some(amount), Some(currency)) = parsed else {
                        return Ok(WebhookOutcome::Noted);
                    };
                    if amount.minor() != charge.amount {
                        tracing::warn!(psp, charge_id = %charge.id, "webhook charge amount differs from the attempt; not using it");
                        return Ok(WebhookOutcome::Noted);
                    }
                    let (state, outcome) = if charge.status == ChargeStatus::RequiresCapture {
                        (AttemptState::RequiresCapture, PspOutcome::RequiresCapture)
                    } else {
                        (AttemptState::Succeeded, PspOutcome::Succeeded)
                    };
                    let detail = Finish {
                        charge_id: Some(&charge.id),
                        ..Finish::default()
                    };
                    if postgres::finish(tx, &a.psp_key, state, detail).await? {
                        self.metrics
                            .charge_results
                            .with_label_values(&[outcome_label(outcome)])
                            .inc();
                        tracing::info!(psp, charge_id = %charge.id, ?outcome, "in-doubt charge settled by webhook");
                        out.emit(
                            payment_id,
                            psp_result(
                                &merchant,
                                amount,
                                currency,
                                outcome,
                                psp,
                                Some(&charge),
                                None,
                            ),
                        )?;
                        return Ok(WebhookOutcome::ResolvedCharge);
                    }
                }
                if charge.status == ChargeStatus::Succeeded
                    && let Some(a) = postgres::lock_in_doubt_capture(tx, &charge.id, psp).await?
                {
                    let parsed = (
                        a.merchant_id
                            .as_deref()
                            .and_then(|m| MerchantId::parse(m).ok()),
                        a.currency.as_deref().and_then(|c| Currency::parse(c).ok()),
                        a.command_id.clone(),
                    );
                    let (Some(merchant), Some(currency), Some(command_id)) = parsed else {
                        return Ok(WebhookOutcome::Noted);
                    };
                    if charge.amount_captured > 0
                        && postgres::finish(
                            tx,
                            &a.psp_key,
                            AttemptState::Succeeded,
                            Finish::default(),
                        )
                        .await?
                    {
                        self.metrics
                            .commands
                            .with_label_values(&["capture", "succeeded"])
                            .inc();
                        tracing::info!(psp, charge_id = %charge.id, "in-doubt capture settled by webhook");
                        out.emit(
                            payment_id,
                            PaymentCaptured {
                                merchant_id: merchant,
                                command_id,
                                psp: psp.to_owned(),
                                charge_id: charge.id.clone(),
                                currency,
                                amount_captured: charge.amount_captured,
                            },
                        )?;
                        return Ok(WebhookOutcome::ResolvedCapture);
                    }
                }
                Ok(WebhookOutcome::Noted)
            }
            "charge.failed" => {
                if let Some(a) = postgres::lock_in_doubt_charge(tx, payment_id, psp).await? {
                    let code = event
                        .data
                        .failure_code
                        .clone()
                        .unwrap_or_else(|| "card_declined".to_owned());
                    let message = event.data.failure_message.clone().unwrap_or_default();
                    let detail = Finish {
                        error_code: Some(&code),
                        error_message: Some(&message),
                        ..Finish::default()
                    };
                    if postgres::finish(tx, &a.psp_key, AttemptState::Declined, detail).await? {
                        tracing::info!(psp, decline_code = %code, "in-doubt charge settled as declined by webhook");
                        return Ok(WebhookOutcome::DeclinedAttempt);
                    }
                }
                Ok(WebhookOutcome::Noted)
            }
            _ => Ok(WebhookOutcome::Noted),
        }
    }
}
