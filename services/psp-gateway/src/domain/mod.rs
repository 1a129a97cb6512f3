pub mod ports;
pub mod routing;
