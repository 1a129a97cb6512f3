pub mod postgres;
pub mod psp;
