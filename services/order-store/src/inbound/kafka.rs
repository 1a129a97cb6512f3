use std::sync::Arc;

use async_trait::async_trait;
use paystream_domain::{Event, PaymentId, PaymentRequested, PspResult, RiskDecided};
use paystream_messaging::{Emitter, Handler, HandlerError, InboundEvent};
use sqlx::PgConnection;

use crate::domain::ports::OrderCache;
use crate::domain::{self, OrderEvent, Write};
use crate::outbound::postgres::{self, HistoryRow};

pub struct OrderHandler {
    cache: Arc<dyn OrderCache>,
}

impl OrderHandler {
    pub fn new(cache: Arc<dyn OrderCache>) -> Self {
        Self { cache }
    }
}

enum Typed {
    Requested(PaymentRequested),
    RiskDecided(RiskDecided),
    PspResult(PspResult),
}

impl Typed {
    /// The schema was checked before the handler ran: data that does not fit its Rust type will
    /// not fit on a retry either, hence permanent.
    fn parse(event: &InboundEvent) -> anyhow::Result<Self> {
        let typed = match event.event_type.as_str() {
            PaymentRequested::EVENT_TYPE => Self::Requested(event.data()?),
            RiskDecided::EVENT_TYPE => Self::RiskDecided(event.data()?),
            PspResult::EVENT_TYPE => Self::PspResult(event.data()?),
            other => anyhow::bail!("order-store does not handle {other}"),
        };
        Ok(typed)
    }

    fn as_event(&self) -> OrderEvent<'_> {
        match self {
            Self::Requested(r) => OrderEvent::Requested(r),
            Self::RiskDecided(d) => OrderEvent::RiskDecided(d),
            Self::PspResult(p) => OrderEvent::PspResult(p),
        }
    }
}

#[async_trait]
impl Handler for OrderHandler {
    fn handles(&self, event_type: &str) -> bool {
        matches!(
            event_type,
            PaymentRequested::EVENT_TYPE | RiskDecided::EVENT_TYPE | PspResult::EVENT_TYPE
        )
    }

    async fn handle(
        &self,
        tx: &mut PgConnection,
        event: &InboundEvent,
        _out: &mut Emitter,
    ) -> Result<(), HandlerError> {
        let typed = Typed::parse(event).map_err(HandlerError::Permanent)?;
        if postgres::already_recorded(tx, event.event_id).await? {
            tracing::info!("event already in the order history; skipped");
            return Ok(());
        }
        let current = postgres::load(tx, event.payment_id).await?;
        let change = domain::apply(current, event.payment_id, typed.as_event());
        match change.write {
            Write::None => {}
            Write::Insert => {
                if !postgres::insert(tx, &change.order).await? {
                    return Err(HandlerError::Transient(anyhow::anyhow!(
                        "the order was created concurrently; reading it again"
                    )));
                }
            }
            Write::Update { expected_version } => {
                if !postgres::update(tx, &change.order, expected_version).await? {
                    return Err(HandlerError::Transient(anyhow::anyhow!(
                        "the order changed since version {expected_version}; reading it again"
                    )));
                }
            }
        }
        postgres::record_history(
            tx,
            &HistoryRow {
                payment_id: event.payment_id,
                event_id: event.event_id,
                event_type: &event.event_type,
                occurred_at: event.occurred_at,
                history: &change.history,
            },
        )
        .await?;
        let h = &change.history;
        let from = h.from.map(|s| s.as_str()).unwrap_or("none");
        let to = h.to.map(|s| s.as_str()).unwrap_or("none");
        if h.applied {
            tracing::info!(from, to, version = change.order.version, note = %h.note, "order updated");
        } else {
            tracing::warn!(from, to, version = change.order.version, note = %h.note, "transition refused");
        }
        Ok(())
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
