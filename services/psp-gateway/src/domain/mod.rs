//! Pure gateway rules: the PSP port, routing, circuit breakers, webhook signatures.

pub mod breaker;
pub mod ports;
pub mod routing;
pub mod webhook;
