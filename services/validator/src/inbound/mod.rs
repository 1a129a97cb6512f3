pub mod checker;
pub mod kafka;
