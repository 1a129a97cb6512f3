pub mod instrumented;
pub mod postgres;
pub mod wire_psp;
