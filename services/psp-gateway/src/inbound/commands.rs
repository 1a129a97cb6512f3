//! Captures, cancels and refunds from `payments.commands`, each made at the PSP that holds the
//! charge under a key derived from the command's own id, so that a redelivered command is the
//! same PSP operation. Unknown outcomes are retried with that key; definitive refusals become
//! `payment.command_failed`.

use paystream_domain::{
    Amount, CommandFailed, CommandKind, Currency, MerchantId, PaymentCanceled, PaymentCaptured,
    PaymentId, PaymentRefunded,
};
use paystream_messaging::{Emitter, HandlerError};
use sqlx::PgConnection;

use super::gateway::{Gateway, command_key};
use crate::domain::ports::PspError;
use crate::outbound::postgres::{self, Attempt, AttemptState, Finish, NewCommand, Operation};

pub enum Command {
    Capture {
        merchant_id: MerchantId,
        command_id: String,
        amount: Option<Amount>,
    },
    Cancel {
        merchant_id: MerchantId,
        command_id: String,
    },
    Refund {
        merchant_id: MerchantId,
        refund_id: String,
        amount: Amount,
        currency: Currency,
    },
}

impl Command {
    fn operation(&self) -> Operation {
        match self {
            Self::Capture { .. } => Operation::Capture,
            Self::Cancel { .. } => Operation::Cancel,
            Self::Refund { .. } => Operation::Refund,
        }
    }

    fn kind(&self) -> CommandKind {
        match self {
            Self::Capture { .. } => CommandKind::Capture,
            Self::Cancel { .. } => CommandKind::Cancel,
            Self::Refund { .. } => CommandKind::Refund,
        }
    }

    fn id(&self) -> &str {
        match self {
            Self::Capture { command_id, .. } | Self::Cancel { command_id, .. } => command_id,
            Self::Refund { refund_id, .. } => refund_id,
        }
    }

    fn merchant(&self) -> &MerchantId {
        match self {
            Self::Capture { merchant_id, .. }
            | Self::Cancel { merchant_id, .. }
            | Self::Refund { merchant_id, .. } => merchant_id,
        }
    }

    fn amount(&self) -> Option<i64> {
        match self {
            Self::Capture { amount, .. } => amount.map(|a| a.minor()),
            Self::Cancel { .. } => None,
            Self::Refund { amount, .. } => Some(amount.minor()),
        }
    }
}

/// The outcome of one PSP call for a command.
enum Done {
    Captured {
        charge_id: String,
        amount: i64,
    },
    Canceled {
        charge_id: String,
    },
    Refunded {
        charge_id: String,
        psp_refund_id: String,
    },
}

impl Gateway {
    pub async fn command(
        &self,
        tx: &mut PgConnection,
        payment_id: PaymentId,
        cmd: Command,
        out: &mut Emitter,
    ) -> Result<(), HandlerError> {
        let op = cmd.operation();
        let label = op.as_str();
        if let Some(done) = postgres::command_attempt(tx, op, cmd.id()).await?
            && !done.state.in_doubt()
        {
            // Settled and published before (a redelivery): nothing to do.
            return Ok(());
        }
        let charges = postgres::charge_attempts(tx, payment_id).await?;
        let Some(charge) = charges.iter().find(|a| a.state.charged()) else {
            if charges.iter().any(|a| a.state.in_doubt()) {
                return Err(HandlerError::Transient(anyhow::anyhow!(
                    "the payment's charge is still in doubt; the {label} waits for it"
                )));
            }
            if charges.is_empty() {
                // Commands and charges travel on different topics: the charge may simply not
                // have been handled yet.
                return Err(HandlerError::Transient(anyhow::anyhow!(
                    "no charge known yet for this payment; the {label} waits for it"
                )));
            }
            return self
                .refuse_without_call(
                    tx,
                    payment_id,
                    &cmd,
                    "payment_not_charged",
                    "the payment was never charged",
                    out,
                )
                .await;
        };
        let Some(charge_id) = charge.charge_id.clone() else {
            return Err(HandlerError::Permanent(anyhow::anyhow!(
                "charged attempt {} has no charge id",
                charge.psp_key
            )));
        };
        if let Command::Refund { currency, .. } = &cmd
            && charge
                .currency
                .as_deref()
                .is_some_and(|c| c != currency.as_str())
        {
            let msg = format!(
                "the refund is in {currency} but the charge is in {}",
                charge.currency.as_deref().unwrap_or("?")
            );
            return self
                .refuse_without_call(tx, payment_id, &cmd, "currency_mismatch", &msg, out)
                .await;
        }

        let key = command_key(payment_id, label, cmd.id());
        let new = NewCommand {
            payment_id,
            operation: op,
            command_id: cmd.id(),
            psp: &charge.psp,
            psp_key: &key,
            charge_id: Some(&charge_id),
            merchant_id: cmd.merchant(),
            amount: cmd.amount(),
            currency: charge.currency.as_deref(),
            state: AttemptState::Pending,
        };
        let Some(attempt) = postgres::insert_command_attempt(&self.pool, &new).await? else {
            return Err(HandlerError::Transient(anyhow::anyhow!(
                "another {label} of this payment was stored at the same moment; retrying"
            )));
        };
        if !attempt.state.in_doubt() {
            return Ok(());
        }
        self.call_command(tx, payment_id, &cmd, charge, &attempt, &charge_id, out)
            .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn call_command(
        &self,
        tx: &mut PgConnection,
        payment_id: PaymentId,
        cmd: &Command,
        charge: &Attempt,
        attempt: &Attempt,
        charge_id: &str,
        out: &mut Emitter,
    ) -> Result<(), HandlerError> {
        let label = cmd.operation().as_str();
        let psp_name = attempt.psp.as_str();
        let Some(psp) = self.psp(psp_name) else {
            return Err(HandlerError::Transient(anyhow::anyhow!(
                "the charge is at PSP {psp_name}, which is not configured"
            )));
        };
        let key = attempt.psp_key.as_str();
        let mut last = String::new();
        for i in 0..self.resolve_attempts.max(1) {
            if i > 0 {
                self.pause(i - 1).await;
            }
            let result = match cmd {
                Command::Capture { amount, .. } => psp
                    .capture(charge_id, amount.map(|a| a.minor()), key)
                    .await
                    .map(|c| Done::Captured {
                        charge_id: c.id,
                        amount: c.amount_captured,
                    }),
                Command::Cancel { .. } => psp
                    .cancel(charge_id, key)
                    .await
                    .map(|c| Done::Canceled { charge_id: c.id }),
                Command::Refund { amount, .. } => psp
                    .refund(charge_id, amount.minor(), key)
                    .await
                    .map(|r| Done::Refunded {
                        charge_id: r.charge,
                        psp_refund_id: r.id,
                    }),
            };
            match result {
                Ok(done) => {
                    return self
                        .succeed(tx, payment_id, cmd, charge, attempt, done, out)
                        .await;
                }
                Err(
                    PspError::Rejected { code, message } | PspError::Declined { code, message },
                ) => {
                    let detail = Finish {
                        error_code: Some(&code),
                        error_message: Some(&message),
                        ..Finish::default()
                    };
                    if postgres::finish(tx, key, AttemptState::Failed, detail).await? {
                        tracing::info!(psp = %psp_name, code = %code, "{label} refused by the PSP");
                        self.fail(payment_id, cmd, code, message, out)?;
                    }
                    return Ok(());
                }
                Err(e) => {
                    last = e.to_string();
                    tracing::debug!(psp = %psp_name, call = i + 1, outcome = %last, "{label} outcome unknown; asking again with the same key");
                }
            }
        }
        postgres::mark_unknown(&self.pool, key).await?;
        self.metrics
            .unknown_outcomes
            .with_label_values(&[psp_name, label])
            .inc();
        tracing::warn!(psp = %psp_name, outcome = %last, "{label} outcome unknown; will retry with the same key");
        Err(HandlerError::Transient(anyhow::anyhow!(
            "{label} at {psp_name} unknown ({last}); will retry with the same key"
        )))
    }

    #[allow(clippy::too_many_arguments)]
    async fn succeed(
        &self,
        tx: &mut PgConnection,
        payment_id: PaymentId,
        cmd: &Command,
        charge: &Attempt,
        attempt: &Attempt,
        done: Done,
        out: &mut Emitter,
    ) -> Result<(), HandlerError> {
        let psp_refund_id = match &done {
            Done::Refunded { psp_refund_id, .. } => Some(psp_refund_id.as_str()),
            _ => None,
        };
        let detail = Finish {
            psp_object_id: psp_refund_id,
            ..Finish::default()
        };
        if !postgres::finish(tx, &attempt.psp_key, AttemptState::Succeeded, detail).await? {
            // A webhook settled it and published the outcome.
            return Ok(());
        }
        let psp = attempt.psp.clone();
        let merchant_id = cmd.merchant().clone();
        self.metrics
            .commands
            .with_label_values(&[cmd.operation().as_str(), "succeeded"])
            .inc();
        tracing::info!(psp = %psp, command = cmd.operation().as_str(), "command done at the PSP");
        match (cmd, done) {
            (Command::Capture { command_id, .. }, Done::Captured { charge_id, amount }) => {
                let currency = charge
                    .currency
                    .as_deref()
                    .and_then(|c| Currency::parse(c).ok())
                    .ok_or_else(|| {
                        HandlerError::Permanent(anyhow::anyhow!("the charge's currency is unknown"))
                    })?;
                out.emit(
                    payment_id,
                    PaymentCaptured {
                        merchant_id,
                        command_id: command_id.clone(),
                        psp,
                        charge_id,
                        currency,
                        amount_captured: amount,
                    },
                )?;
            }
            (Command::Cancel { command_id, .. }, Done::Canceled { charge_id }) => {
                out.emit(
                    payment_id,
                    PaymentCanceled {
                        merchant_id,
                        command_id: command_id.clone(),
                        psp,
                        charge_id,
                    },
                )?;
            }
            (
                Command::Refund {
                    refund_id,
                    amount,
                    currency,
                    ..
                },
                Done::Refunded {
                    charge_id,
                    psp_refund_id,
                },
            ) => {
                out.emit(
                    payment_id,
                    PaymentRefunded {
                        merchant_id,
                        refund_id: refund_id.clone(),
                        psp,
                        charge_id,
                        psp_refund_id,
                        amount: *amount,
                        currency: *currency,
                    },
                )?;
            }
            _ => {
                return Err(HandlerError::Permanent(anyhow::anyhow!(
                    "command and PSP answer do not match"
                )));
            }
        }
        Ok(())
    }

    /// Stores a refusal decided without a PSP call, in the batch transaction so that it and its
    /// event commit together, and publishes it unless it was stored before.
    async fn refuse_without_call(
        &self,
        tx: &mut PgConnection,
        payment_id: PaymentId,
        cmd: &Command,
        code: &str,
        message: &str,
        out: &mut Emitter,
    ) -> Result<(), HandlerError> {
        let label = cmd.operation().as_str();
        let key = command_key(payment_id, label, cmd.id());
        let new = NewCommand {
            payment_id,
            operation: cmd.operation(),
            command_id: cmd.id(),
            psp: "none",
            psp_key: &key,
            charge_id: None,
            merchant_id: cmd.merchant(),
            amount: cmd.amount(),
            currency: None,
            state: AttemptState::Failed,
        };
        if postgres::insert_refused_command(tx, &new).await? {
            tracing::info!(code, "{label} refused without a PSP call");
            self.fail(payment_id, cmd, code.to_owned(), message.to_owned(), out)?;
        } else if postgres::command_attempt(tx, cmd.operation(), cmd.id())
            .await?
            .is_none()
        {
            return Err(HandlerError::Transient(anyhow::anyhow!(
                "another {label} of this payment was stored at the same moment; retrying"
            )));
        }
        Ok(())
    }

    fn fail(
        &self,
        payment_id: PaymentId,
        cmd: &Command,
        code: String,
        message: String,
        out: &mut Emitter,
    ) -> Result<(), HandlerError> {
        self.metrics
            .commands
            .with_label_values(&[cmd.operation().as_str(), "failed"])
            .inc();
        out.emit(
            payment_id,
            CommandFailed {
                merchant_id: cmd.merchant().clone(),
                command: cmd.kind(),
                command_id: cmd.id().to_owned(),
                code,
                message,
            },
        )?;
        Ok(())
    }
}
