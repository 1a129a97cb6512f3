use std::sync::Arc;

use anyhow::Context;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use paystream_domain::{
    CommandFailed, Event, PaymentCanceled, PaymentCaptured, PaymentId, PaymentRefunded,
    PaymentRequested, PspResult, RiskDecided,
};
use paystream_messaging::{Emitter, Handler, HandlerError, InboundEvent};
use prometheus::{IntCounterVec, Opts, Registry};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::outcomes::{self, Decision, OutcomeEvent};
use crate::domain::ports::OrderCache;
use crate::domain::{self, History, OrderEvent, Write};
use crate::outbound::postgres::{self, HistoryRow};

/// Counters of what the store did with the events it handled.
#[derive(Clone)]
struct OrderMetrics {
    /// `result`: applied, refused (a history row only), parked, unparked. `None` when the
    /// handler was built without a registry (crate tests).
    events: Option<IntCounterVec>,
}

impl OrderMetrics {
    fn counter() -> prometheus::Result<IntCounterVec> {
        IntCounterVec::new(
            Opts::new(
                "order_store_events_total",
                "Events handled by the order store, by what became of them",
            ),
            &["result"],
        )
    }

    fn registered(registry: &Registry) -> anyhow::Result<Self> {
        let events = Self::counter()?;
        registry.register(Box::new(events.clone()))?;
        Ok(Self {
            events: Some(events),
        })
    }

    fn inc(&self, result: &str) {
        if let Some(events) = &self.events {
            events.with_label_values(&[result]).inc();
        }
    }
}

pub struct OrderHandler {
    cache: Arc<dyn OrderCache>,
    metrics: OrderMetrics,
}

impl OrderHandler {
    /// A handler whose counters are not exported (crate tests).
    pub fn new(cache: Arc<dyn OrderCache>) -> Self {
        Self {
            cache,
            metrics: OrderMetrics { events: None },
        }
    }

    /// A handler whose counters are served on the service's `/metrics`.
    pub fn with_registry(cache: Arc<dyn OrderCache>, registry: &Registry) -> anyhow::Result<Self> {
        Ok(Self {
            cache,
            metrics: OrderMetrics::registered(registry)?,
        })
    }
}

enum Typed {
    Requested(PaymentRequested),
    RiskDecided(RiskDecided),
    PspResult(PspResult),
    Captured(PaymentCaptured),
    Canceled(PaymentCanceled),
    Refunded(PaymentRefunded),
    CommandFailed(CommandFailed),
}

const HANDLED: &[&str] = &[
    PaymentRequested::EVENT_TYPE,
    RiskDecided::EVENT_TYPE,
    PspResult::EVENT_TYPE,
    PaymentCaptured::EVENT_TYPE,
    PaymentCanceled::EVENT_TYPE,
    PaymentRefunded::EVENT_TYPE,
    CommandFailed::EVENT_TYPE,
];

impl Typed {
    /// The schema was checked before the handler ran (or before the event was parked): data
    /// that does not fit its Rust type will not fit on a retry either, hence permanent.
    fn parse(event_type: &str, data: &serde_json::Value) -> anyhow::Result<Self> {
        fn de<E: Event>(data: &serde_json::Value) -> anyhow::Result<E> {
            serde_json::from_value(data.clone())
                .map_err(|e| anyhow::anyhow!("{} data does not fit its type: {e}", E::EVENT_TYPE))
        }
        let typed = match event_type {
            PaymentRequested::EVENT_TYPE => Self::Requested(de(data)?),
            RiskDecided::EVENT_TYPE => Self::RiskDecided(de(data)?),
            PspResult::EVENT_TYPE => Self::PspResult(de(data)?),
            PaymentCaptured::EVENT_TYPE => Self::Captured(de(data)?),
            PaymentCanceled::EVENT_TYPE => Self::Canceled(de(data)?),
            PaymentRefunded::EVENT_TYPE => Self::Refunded(de(data)?),
            CommandFailed::EVENT_TYPE => Self::CommandFailed(de(data)?),
            other => anyhow::bail!("order-store does not handle {other}"),
        };
        Ok(typed)
    }
}

/// One event on its way into the store: from the topic, or back from the parking table.
struct Incoming<'a> {
    payment_id: PaymentId,
    event_id: Uuid,
    event_type: &'a str,
    occurred_at: DateTime<Utc>,
    typed: Typed,
    /// Set when the event comes back from parking: why and since when it waited.
    parked: Option<(String, DateTime<Utc>)>,
}

enum Handled {
    /// The order row changed: parked events may now apply.
    Changed,
    /// Only history (or nothing new).
    Unchanged,
    /// The event waits; the text says for what.
    Parked(String),
}

impl OrderHandler {
    async fn apply(
        &self,
        tx: &mut PgConnection,
        incoming: &Incoming<'_>,
    ) -> Result<Handled, HandlerError> {
        let id = incoming.payment_id;
        let classic = match &incoming.typed {
            Typed::Requested(r) => Some(OrderEvent::Requested(r)),
            Typed::RiskDecided(d) => Some(OrderEvent::RiskDecided(d)),
            Typed::PspResult(p) => Some(OrderEvent::PspResult(p)),
            _ => None,
        };
        let current = postgres::load(tx, id).await?;
        if let Some(event) = classic {
            let change = domain::apply(current, id, event);
            let changed = match change.write {
                Write::None => false,
                Write::Insert => {
                    if !postgres::insert(tx, &change.order).await? {
                        return Err(HandlerError::Transient(anyhow::anyhow!(
                            "the order was created concurrently; reading it again"
                        )));
                    }
                    true
                }
                Write::Update { expected_version } => {
                    self.update(tx, &change.order, expected_version).await?;
                    true
                }
            };
            self.record(tx, incoming, &change.history, change.order.version)
                .await?;
            return Ok(if changed {
                Handled::Changed
            } else {
                Handled::Unchanged
            });
        }

        let already_applied = match &incoming.typed {
            Typed::Refunded(r) => postgres::refund_applied(tx, &r.refund_id).await?,
            _ => false,
        };
        let event = match &incoming.typed {
            Typed::Captured(c) => OutcomeEvent::Captured(c),
            Typed::Canceled(c) => OutcomeEvent::Canceled(c),
            Typed::Refunded(r) => OutcomeEvent::Refunded {
                refund: r,
                already_applied,
            },
            Typed::CommandFailed(f) => OutcomeEvent::CommandFailed(f),
            Typed::Requested(_) | Typed::RiskDecided(_) | Typed::PspResult(_) => {
                return Err(HandlerError::Permanent(anyhow::anyhow!(
                    "{} is not a command outcome",
                    incoming.event_type
                )));
            }
        };
        let version = current.as_ref().map(|o| o.version).unwrap_or(0);
        match outcomes::decide(current.as_ref(), event) {
            Decision::Park(reason) => Ok(Handled::Parked(reason)),
            Decision::Record(history) => {
                self.record(tx, incoming, &history, version).await?;
                Ok(Handled::Unchanged)
            }
            Decision::Apply {
                order,
                expected_version,
                history,
                refund,
            } => {
                self.update(tx, &order, expected_version).await?;
                if let Some(refund) = &refund
                    && !postgres::insert_refund(tx, id, incoming.event_id, refund).await?
                {
                    return Err(HandlerError::Transient(anyhow::anyhow!(
                        "refund {} was applied concurrently; reading the order again",
                        refund.refund_id
                    )));
                }
                self.record(tx, incoming, &history, order.version).await?;
                Ok(Handled::Changed)
            }
        }
    }

    async fn update(
        &self,
        tx: &mut PgConnection,
        order: &domain::Order,
        expected_version: i32,
    ) -> Result<(), HandlerError> {
        if postgres::update(tx, order, expected_version).await? {
            Ok(())
        } else {
            Err(HandlerError::Transient(anyhow::anyhow!(
                "the order changed since version {expected_version}; reading it again"
            )))
        }
    }

    async fn record(
        &self,
        tx: &mut PgConnection,
        incoming: &Incoming<'_>,
        history: &History,
        version: i32,
    ) -> Result<(), HandlerError> {
        let mut history = history.clone();
        if let Some((reason, since)) = &incoming.parked {
            history.note = format!(
                "{} (parked at {} because {reason})",
                history.note,
                since.to_rfc3339()
            );
        }
        postgres::record_history(
            tx,
            &HistoryRow {
                payment_id: incoming.payment_id,
                event_id: incoming.event_id,
                event_type: incoming.event_type,
                occurred_at: incoming.occurred_at,
                history: &history,
            },
        )
        .await?;
        let from = history.from.map(|s| s.as_str()).unwrap_or("none");
        let to = history.to.map(|s| s.as_str()).unwrap_or("none");
        let unparked = incoming.parked.is_some();
        if history.applied {
            self.metrics.inc("applied");
            tracing::info!(event_type = incoming.event_type, from, to, version, unparked, note = %history.note, "order updated");
        } else {
            self.metrics.inc("refused");
            tracing::warn!(event_type = incoming.event_type, from, to, version, unparked, note = %history.note, "event refused");
        }
        if unparked {
            self.metrics.inc("unparked");
        }
        Ok(())
    }

    /// Applies the payment's parked events that the order's new state allows, in the order they
    /// arrived, until a pass changes nothing: a refund parked before a capture parked before the
    /// authorisation all land once the authorisation does.
    async fn unpark(
        &self,
        tx: &mut PgConnection,
        payment_id: PaymentId,
    ) -> Result<(), HandlerError> {
        loop {
            let waiting = postgres::waiting(tx, payment_id).await?;
            let mut progressed = false;
            for parked in waiting {
                let typed = match Typed::parse(&parked.event_type, &parked.data) {
                    Ok(typed) => typed,
                    Err(e) => {
                        // Checked against its schema before it was parked; a row that no longer
                        // parses was edited by hand and is left for whoever did that.
                        tracing::error!(event_id = %parked.event_id, error = %e, "a parked event does not parse; left parked");
                        continue;
                    }
                };
                let incoming = Incoming {
                    payment_id,
                    event_id: parked.event_id,
                    event_type: &parked.event_type,
                    occurred_at: parked.occurred_at,
                    typed,
                    parked: Some((parked.reason.clone(), parked.parked_at)),
                };
                match self.apply(tx, &incoming).await? {
                    Handled::Parked(_) => {}
                    Handled::Changed => {
                        postgres::resolve(tx, parked.seq, true).await?;
                        progressed = true;
                    }
                    Handled::Unchanged => {
                        postgres::resolve(tx, parked.seq, false).await?;
                        progressed = true;
                    }
                }
            }
            if !progressed {
                return Ok(());
            }
        }
    }
}

#[async_trait]
impl Handler for OrderHandler {
    fn handles(&self, event_type: &str) -> bool {
        HANDLED.contains(&event_type)
    }

    async fn handle(
        &self,
        tx: &mut PgConnection,
        event: &InboundEvent,
        _out: &mut Emitter,
    ) -> Result<(), HandlerError> {
        let typed =
            Typed::parse(&event.event_type, &event.data).map_err(HandlerError::Permanent)?;
        postgres::lock_payment(tx, event.payment_id).await?;
        if postgres::already_recorded(tx, event.event_id).await?
            || postgres::already_parked(tx, event.event_id).await?
        {
            tracing::info!("event already in the order history; skipped");
            return Ok(());
        }
        let incoming = Incoming {
            payment_id: event.payment_id,
            event_id: event.event_id,
            event_type: &event.event_type,
            occurred_at: event.occurred_at,
            typed,
            parked: None,
        };
        match self.apply(tx, &incoming).await? {
            Handled::Parked(reason) => {
                postgres::park(
                    tx,
                    event.payment_id,
                    event.event_id,
                    &event.event_type,
                    &event.data,
                    event.occurred_at,
                    &reason,
                )
                .await
                .context("parking")?;
                self.metrics.inc("parked");
                tracing::info!(event_type = %event.event_type, reason = %reason, "event parked until the order reaches the state it needs");
            }
            Handled::Changed => self.unpark(tx, event.payment_id).await?,
            Handled::Unchanged => {}
        }
        Ok(())
    }

    /// Every effect is in the batch's transaction (the cache is only touched after the commit),
    /// so the runtime may run a batch without per-record savepoints.
    fn effects_are_transactional(&self) -> bool {
        true
    }

    async fn after_commit(&self, payments: &[PaymentId]) {
        let mut ids = payments.to_vec();
        ids.sort_unstable();
        ids.dedup();
        if let Err(e) = self.cache.invalidate(&ids).await {
            // Entries expire on their own; a stale read until then beats stalling the stream.
            tracing::warn!(payments = ids.len(), error = %e, "order cache invalidation failed");
        }
    }
}
