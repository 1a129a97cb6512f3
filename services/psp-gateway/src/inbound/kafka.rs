use std::sync::Arc;

use async_trait::async_trait;
use paystream_domain::{CancelRequested, CaptureRequested, Event, RefundRequested, RiskDecided};
use paystream_messaging::{Emitter, Handler, HandlerError, InboundEvent};
use sqlx::PgConnection;

use super::commands::Command;
use super::gateway::Gateway;

/// Charges from `payments.risk-decided`; captures, cancels and refunds from `payments.commands`.
pub struct GatewayHandler {
    gateway: Arc<Gateway>,
}

impl GatewayHandler {
    pub(crate) fn new(gateway: Arc<Gateway>) -> Self {
        Self { gateway }
    }
}

#[async_trait]
impl Handler for GatewayHandler {
    fn handles(&self, event_type: &str) -> bool {
        [
            RiskDecided::EVENT_TYPE,
            CaptureRequested::EVENT_TYPE,
            CancelRequested::EVENT_TYPE,
            RefundRequested::EVENT_TYPE,
        ]
        .contains(&event_type)
    }

    async fn handle(
        &self,
        tx: &mut PgConnection,
        event: &InboundEvent,
        out: &mut Emitter,
    ) -> Result<(), HandlerError> {
        let payment_id = event.payment_id;
        let command = match event.event_type.as_str() {
            t if t == RiskDecided::EVENT_TYPE => {
                let decided: RiskDecided = event.data().map_err(HandlerError::Permanent)?;
                return self.gateway.charge(tx, payment_id, &decided, out).await;
            }
            t if t == CaptureRequested::EVENT_TYPE => {
                let c: CaptureRequested = event.data().map_err(HandlerError::Permanent)?;
                Command::Capture {
                    merchant_id: c.merchant_id,
                    command_id: c.command_id,
                    amount: c.amount,
                }
            }
            t if t == CancelRequested::EVENT_TYPE => {
                let c: CancelRequested = event.data().map_err(HandlerError::Permanent)?;
                Command::Cancel {
                    merchant_id: c.merchant_id,
                    command_id: c.command_id,
                }
            }
            t if t == RefundRequested::EVENT_TYPE => {
                let r: RefundRequested = event.data().map_err(HandlerError::Permanent)?;
                Command::Refund {
                    merchant_id: r.merchant_id,
                    refund_id: r.refund_id,
                    amount: r.amount,
                    currency: r.currency,
                }
            }
            other => {
                return Err(HandlerError::permanent(format!(
                    "psp-gateway does not handle {other}"
                )));
            }
        };
        self.gateway.command(tx, payment_id, command, out).await
    }
}
