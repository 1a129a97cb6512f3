//! Risk rules: pure types and evaluation (`rules`), the ports they need (`ports`), and the
//! engine that gathers facts through the ports before applying the rules (`engine`).

pub mod engine;
pub mod ports;
pub mod rules;

pub use engine::{DecideError, Decided, RiskEngine, RulesHandle};
pub use rules::{Facts, Rules, Verdict, evaluate};
