//! The ingress consumes `payments.psp-results` to learn what became of the commands it sent:
//! a refund that succeeded keeps its reservation, one that failed releases it, and a capture or
//! cancel that ended lets the payment take commands again.

use async_trait::async_trait;
use paystream_domain::{
    CommandFailed, CommandKind, Event, PaymentCanceled, PaymentCaptured, PaymentRefunded,
};
use paystream_messaging::{Emitter, Handler, HandlerError, InboundEvent};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::outbound::postgres::results;

pub struct ResultsHandler;

/// `re_<uuid>` or `cmd_<uuid>` back to the row id. Another producer's ids may not parse: such
/// records are not about anything this ingress sent.
fn row_id(public: &str, prefix: &str) -> Option<Uuid> {
    public
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('_'))
        .and_then(|rest| Uuid::parse_str(rest).ok())
}

#[async_trait]
impl Handler for ResultsHandler {
    fn handles(&self, event_type: &str) -> bool {
        matches!(
            event_type,
            PaymentRefunded::EVENT_TYPE
                | CommandFailed::EVENT_TYPE
                | PaymentCaptured::EVENT_TYPE
                | PaymentCanceled::EVENT_TYPE
        )
    }

    async fn handle(
        &self,
        tx: &mut PgConnection,
        event: &InboundEvent,
        _out: &mut Emitter,
    ) -> Result<(), HandlerError> {
        // The schema was checked before the handler ran: data that does not fit its type will
        // not fit on a retry either.
        let changed = match event.event_type.as_str() {
            PaymentRefunded::EVENT_TYPE => {
                let e: PaymentRefunded = event.data().map_err(HandlerError::Permanent)?;
                match row_id(&e.refund_id, "re") {
                    Some(id) => results::refund_succeeded(tx, id, &e.psp_refund_id).await?,
                    None => false,
                }
            }
            CommandFailed::EVENT_TYPE => {
                let e: CommandFailed = event.data().map_err(HandlerError::Permanent)?;
                match e.command {
                    CommandKind::Refund => match row_id(&e.command_id, "re") {
                        Some(id) => results::refund_failed(tx, id, &e.code, &e.message).await?,
                        None => false,
                    },
                    CommandKind::Capture | CommandKind::Cancel => {
                        match row_id(&e.command_id, "cmd") {
                            Some(id) => results::command_finished(tx, id, Some(&e.code)).await?,
                            None => false,
                        }
                    }
                }
            }
            PaymentCaptured::EVENT_TYPE => {
                let e: PaymentCaptured = event.data().map_err(HandlerError::Permanent)?;
                match row_id(&e.command_id, "cmd") {
                    Some(id) => results::command_finished(tx, id, None).await?,
                    None => false,
                }
            }
            PaymentCanceled::EVENT_TYPE => {
                let e: PaymentCanceled = event.data().map_err(HandlerError::Permanent)?;
                match row_id(&e.command_id, "cmd") {
                    Some(id) => results::command_finished(tx, id, None).await?,
                    None => false,
                }
            }
            _ => false,
        };
        if changed {
            tracing::info!(event_type = %event.event_type, "command outcome recorded");
        } else {
            tracing::debug!(event_type = %event.event_type, "outcome of no pending command of this ingress");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_ids_map_back_to_rows() {
        let id = Uuid::now_v7();
        assert_eq!(row_id(&format!("re_{id}"), "re"), Some(id));
        assert_eq!(row_id(&format!("cmd_{id}"), "cmd"), Some(id));
        assert_eq!(row_id(&format!("cmd_{id}"), "re"), None);
        assert_eq!(row_id("re_nope", "re"), None);
    }
}
