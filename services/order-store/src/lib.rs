//! order-store: the payment as merchants see it. One row per payment in `order_store.orders`,
//! moved only along the status state machine, with every event seen kept in
//! `order_store.order_events`. Consumes `payments.requested`, `payments.risk-decided` and
//! `payments.psp-results` (first results and the outcomes of capture, cancel and refund
//! commands); after each committed batch it drops the ingress's cached copies.
//!
//! An outcome that arrives before the state it needs (a refund before its capture) is parked in
//! `order_store.parked_events` and applied after the order's next change; refunds are kept in
//! `order_store.refunds`, once per `refund_id`.

pub mod config;
pub mod domain;
mod inbound;
mod outbound;

use std::sync::Arc;

use paystream_domain::topics;
use paystream_kit::{ConsumerService, ServiceBase};

pub use config::Config;
pub use inbound::kafka::OrderHandler;
pub use outbound::redis_cache::{RedisOrderCache, cache_key};

pub const SERVICE: &str = "order-store";
pub const DB_SCHEMA: &str = "order_store";

pub type Application = ConsumerService<OrderHandler>;

pub async fn build(config: Config) -> anyhow::Result<Application> {
    let base = ServiceBase::connect(SERVICE, config.common.clone(), 10).await?;
    let cache =
        RedisOrderCache::connect(&config.common.redis_url)?.with_versions_from(base.pool.clone());
    let consumed = config.consumed_topics(&[
        topics::PAYMENTS_REQUESTED,
        topics::PAYMENTS_RISK_DECIDED,
        topics::PAYMENTS_PSP_RESULTS,
    ]);
    let consumed: Vec<&str> = consumed.iter().map(String::as_str).collect();
    let runtime = base.runtime_config(DB_SCHEMA, &consumed);
    let handler = OrderHandler::with_registry(Arc::new(cache), &base.registry)?;
    base.consumer_service(runtime, handler).await
}
