mod charges;
mod commands;
pub mod gateway;
pub mod http;
pub mod kafka;
mod webhooks;
