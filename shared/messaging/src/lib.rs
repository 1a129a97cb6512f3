//! The one messaging runtime of the fleet: envelopes and schemas, the transactional outbox and
//! its relay, and the consumer loop with inbox de-duplication, retries and the dead letter topic.
//!
//! A service supplies a [`Handler`]; everything about delivery guarantees lives here, once.

pub mod admin;
pub mod consumer;
pub mod dlt;
pub mod envelope;
pub mod kafka;
pub mod metrics;
pub mod outbox;
pub mod relay;
pub mod schemas;
pub mod trace;

pub use consumer::{ConsumerRuntime, Handler, HandlerError, RetryPolicy, RuntimeConfig};
pub use envelope::{Envelope, InboundEvent};
pub use metrics::MessagingMetrics;
pub use outbox::{Emitter, OutboxRecord};
pub use relay::OutboxRelay;
