pub mod commands;
pub mod error;
pub mod listing;
pub mod payment;
pub mod ports;
