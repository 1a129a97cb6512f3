pub mod checker;
pub mod kafka;
pub mod reconciler;
