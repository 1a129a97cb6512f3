//! The service kit: what every paystream binary does the same way (configuration, logs, the
//! admin listener with health and metrics, the database pool and migrations, shutdown, tokens).

pub mod admin;
pub mod auth;
pub mod config;
pub mod db;
pub mod order_cache;
pub mod shutdown;
pub mod telemetry;

pub use admin::AdminServer;
pub use config::CommonConfig;
pub mod service;

pub use service::{ConsumerService, ServiceBase};
