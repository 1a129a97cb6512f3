pub mod payment;
pub mod ports;
