use std::time::Instant;

use async_trait::async_trait;
use paystream_domain::{
    Event, LedgerPosting, PaymentCaptured, PaymentId, PaymentRefunded, PspResult,
};
use paystream_messaging::{Emitter, Handler, HandlerError, InboundEvent};
use prometheus::{Histogram, HistogramOpts, IntCounterVec, Opts, Registry};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::{self, CAPTURE_STEP, FeeSchedule, LedgerError, Policy};
use crate::outbound::postgres::{self, PostOutcome};

/// Counters of the ledger, served on `/metrics` when the handler has a registry.
#[derive(Clone)]
struct LedgerMetrics {
    /// `kind`: capture, refund.
    posted: IntCounterVec,
    /// `reason`: the broken rule ([`LedgerError::kind`]).
    refused: IntCounterVec,
    /// `result`: parked, posted, duplicate, refused.
    parked: IntCounterVec,
    /// How long a batch waited for the ledger lock: the price of serialising ledger batches.
    lock_wait: Histogram,
}

impl LedgerMetrics {
    fn new(registry: Option<&Registry>) -> prometheus::Result<Self> {
        let posted = IntCounterVec::new(
            Opts::new(
                "account_store_transfers_posted_total",
                "Ledger transfers posted, by kind",
            ),
            &["kind"],
        )?;
        let refused = IntCounterVec::new(
            Opts::new(
                "account_store_postings_refused_total",
                "Postings refused because they would break a ledger rule, by rule",
            ),
            &["reason"],
        )?;
        let parked = IntCounterVec::new(
            Opts::new(
                "account_store_parked_refunds_total",
                "Refunds that arrived before their capture, by what became of them",
            ),
            &["result"],
        )?;
        let lock_wait = Histogram::with_opts(
            HistogramOpts::new(
                "account_store_ledger_lock_wait_seconds",
                "Time spent waiting for the ledger lock per posting",
            )
            .buckets(vec![
                0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0,
            ]),
        )?;
        if let Some(registry) = registry {
            registry.register(Box::new(posted.clone()))?;
            registry.register(Box::new(refused.clone()))?;
            registry.register(Box::new(parked.clone()))?;
            registry.register(Box::new(lock_wait.clone()))?;
        }
        Ok(Self {
            posted,
            refused,
            parked,
            lock_wait,
        })
    }
}

pub struct LedgerHandler {
    fees: FeeSchedule,
    policy: Policy,
    metrics: Option<LedgerMetrics>,
}

impl LedgerHandler {
    /// The default policy and no exported counters (crate tests).
    pub fn new(fees: FeeSchedule) -> Self {
        Self {
            fees,
            policy: Policy::default(),
            metrics: LedgerMetrics::new(None).ok(),
        }
    }

    pub fn with_policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// Serves the ledger's counters on the service's `/metrics`.
    pub fn with_registry(mut self, registry: &Registry) -> anyhow::Result<Self> {
        self.metrics = Some(LedgerMetrics::new(Some(registry))?);
        Ok(self)
    }

    fn count(&self, f: impl FnOnce(&LedgerMetrics)) {
        if let Some(m) = &self.metrics {
            f(m);
        }
    }

    async fn lock(&self, tx: &mut PgConnection) -> Result<(), HandlerError> {
        let started = Instant::now();
        postgres::lock_ledger(tx).await?;
        let waited = started.elapsed().as_secs_f64();
        self.count(|m| m.lock_wait.observe(waited));
        Ok(())
    }

    /// Posts a capture, then whatever refunds of the payment were waiting for it.
    async fn capture(
        &self,
        tx: &mut PgConnection,
        payment_id: PaymentId,
        posting: LedgerPosting,
        out: &mut Emitter,
    ) -> Result<(), HandlerError> {
        self.lock(tx).await?;
        match postgres::post_transfer(tx, payment_id, CAPTURE_STEP, &posting, &self.policy).await? {
            PostOutcome::Posted => {
                let amount: i64 = posting
                    .entries
                    .iter()
                    .filter(|e| e.side == paystream_domain::Side::Debit)
                    .map(|e| e.amount)
                    .sum();
                tracing::info!(transfer_id = %posting.transfer_id, amount, currency = %posting.currency, entries = posting.entries.len(), "capture posted");
                self.count(|m| m.posted.with_label_values(&["capture"]).inc());
                out.emit(payment_id, posting)?;
                self.post_parked_refunds(tx, payment_id, out).await
            }
            PostOutcome::AlreadyPosted => {
                tracing::info!(transfer_id = %posting.transfer_id, "capture already posted; skipped");
                Ok(())
            }
            PostOutcome::Refused(rule) => Err(self.refused(rule)),
        }
    }

    /// A record that breaks a ledger rule breaks it on every retry: it goes to the dead letter
    /// topic for a person to look at.
    fn refused(&self, rule: LedgerError) -> HandlerError {
        self.count(|m| m.refused.with_label_values(&[rule.kind()]).inc());
        HandlerError::permanent(rule)
    }

    /// The refund's transfer, or why it cannot be posted now (`Ok(None)`: no capture yet).
    async fn post_refund(
        &self,
        tx: &mut PgConnection,
        payment_id: PaymentId,
        refund: &PaymentRefunded,
    ) -> anyhow::Result<RefundOutcome> {
        let step = domain::refund_step(&refund.refund_id);
        if postgres::transfer_exists(tx, payment_id, &step).await? {
            return Ok(RefundOutcome::AlreadyPosted);
        }
        let split = match postgres::capture_split(tx, payment_id).await? {
            None => return Ok(RefundOutcome::NoCapture),
            Some(Err(rule)) => return Ok(RefundOutcome::Refused(rule)),
            Some(Ok(split)) => split,
        };
        let before = postgres::refunded_so_far(tx, payment_id).await?;
        let posting = match domain::refund_posting(payment_id, refund, &split, before) {
            Ok(posting) => posting,
            Err(rule) => return Ok(RefundOutcome::Refused(rule)),
        };
        Ok(
            match postgres::post_transfer(tx, payment_id, &step, &posting, &self.policy).await? {
                PostOutcome::Posted => RefundOutcome::Posted(posting),
                PostOutcome::AlreadyPosted => RefundOutcome::AlreadyPosted,
                PostOutcome::Refused(rule) => RefundOutcome::Refused(rule),
            },
        )
    }

    fn posted_refund(
        &self,
        payment_id: PaymentId,
        posting: LedgerPosting,
        out: &mut Emitter,
    ) -> anyhow::Result<()> {
        let amount: i64 = posting
            .entries
            .iter()
            .filter(|e| e.side == paystream_domain::Side::Credit)
            .map(|e| e.amount)
            .sum();
        tracing::info!(transfer_id = %posting.transfer_id, amount, currency = %posting.currency, "refund posted");
        self.count(|m| m.posted.with_label_values(&["refund"]).inc());
        out.emit(payment_id, posting)
    }

    async fn refund(
        &self,
        tx: &mut PgConnection,
        event: &InboundEvent,
        refund: &PaymentRefunded,
        out: &mut Emitter,
    ) -> Result<(), HandlerError> {
        self.lock(tx).await?;
        match self.post_refund(tx, event.payment_id, refund).await? {
            RefundOutcome::Posted(posting) => self.posted_refund(event.payment_id, posting, out)?,
            RefundOutcome::AlreadyPosted => {
                tracing::info!(refund_id = %refund.refund_id, "refund already posted; skipped");
            }
            RefundOutcome::NoCapture => {
                park(tx, event.payment_id, event.event_id, refund, &event.data).await?;
                self.count(|m| m.parked.with_label_values(&["parked"]).inc());
                tracing::info!(refund_id = %refund.refund_id, "refund parked until its capture is posted");
            }
            RefundOutcome::Refused(rule) => return Err(self.refused(rule)),
        }
        Ok(())
    }

    /// Refunds that came before the capture, in arrival order. One that breaks a rule now cannot
    /// fail the capture's record (that would dead-letter the capture), so it is marked refused
    /// with its reason, counted and logged as an error; the validator reports the payment.
    async fn post_parked_refunds(
        &self,
        tx: &mut PgConnection,
        payment_id: PaymentId,
        out: &mut Emitter,
    ) -> Result<(), HandlerError> {
        for parked in postgres::parked_refunds(tx, payment_id).await? {
            let refund: PaymentRefunded = match serde_json::from_value(parked.data.clone()) {
                Ok(refund) => refund,
                Err(e) => {
                    let note = format!("the parked refund does not parse: {e}");
                    postgres::resolve_parked(tx, parked.seq, "refused", Some(&note)).await?;
                    tracing::error!(event_id = %parked.event_id, error = %note, "parked refund refused");
                    continue;
                }
            };
            let (resolution, note) = match self.post_refund(tx, payment_id, &refund).await? {
                RefundOutcome::Posted(posting) => {
                    self.posted_refund(payment_id, posting, out)?;
                    ("posted", None)
                }
                RefundOutcome::AlreadyPosted => ("duplicate", None),
                RefundOutcome::NoCapture => {
                    return Err(HandlerError::Transient(anyhow::anyhow!(
                        "the capture just posted is not visible; retrying"
                    )));
                }
                RefundOutcome::Refused(rule) => {
                    self.count(|m| m.refused.with_label_values(&[rule.kind()]).inc());
                    tracing::error!(refund_id = %refund.refund_id, event_id = %parked.event_id, rule = %rule, "parked refund refused by a ledger rule");
                    ("refused", Some(rule.to_string()))
                }
            };
            postgres::resolve_parked(tx, parked.seq, resolution, note.as_deref()).await?;
            self.count(|m| m.parked.with_label_values(&[resolution]).inc());
        }
        Ok(())
    }
}

enum RefundOutcome {
    Posted(LedgerPosting),
    AlreadyPosted,
    NoCapture,
    Refused(LedgerError),
}

async fn park(
    tx: &mut PgConnection,
    payment_id: PaymentId,
    event_id: Uuid,
    refund: &PaymentRefunded,
    data: &serde_json::Value,
) -> anyhow::Result<()> {
    postgres::park_refund(tx, payment_id, event_id, &refund.refund_id, data).await
}

#[async_trait]
impl Handler for LedgerHandler {
    fn handles(&self, event_type: &str) -> bool {
        [
            PspResult::EVENT_TYPE,
            PaymentCaptured::EVENT_TYPE,
            PaymentRefunded::EVENT_TYPE,
        ]
        .contains(&event_type)
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
        out: &mut Emitter,
    ) -> Result<(), HandlerError> {
        let id = event.payment_id;
        match event.event_type.as_str() {
            PspResult::EVENT_TYPE => {
                let result: PspResult = event.data().map_err(HandlerError::Permanent)?;
                match domain::capture_posting(id, &result, &self.fees) {
                    Ok(Some(posting)) => self.capture(tx, id, posting, out).await,
                    Ok(None) => Ok(()),
                    Err(rule) => Err(self.refused(rule)),
                }
            }
            PaymentCaptured::EVENT_TYPE => {
                let captured: PaymentCaptured = event.data().map_err(HandlerError::Permanent)?;
                match domain::manual_capture_posting(id, &captured, &self.fees) {
                    Ok(posting) => self.capture(tx, id, posting, out).await,
                    Err(rule) => Err(self.refused(rule)),
                }
            }
            _ => {
                let refund: PaymentRefunded = event.data().map_err(HandlerError::Permanent)?;
                self.refund(tx, event, &refund, out).await
            }
        }
    }
}
