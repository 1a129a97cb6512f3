//! The risk engine's own metrics (the runtime's are in `paystream_messaging::MessagingMetrics`).

use prometheus::{IntCounterVec, Opts, Registry};

#[derive(Clone)]
pub struct RiskMetrics {
    /// `risk_engine_decisions_total{decision}`
    pub decisions: IntCounterVec,
    /// `risk_engine_rules_fired_total{rule}`: rule kinds, not configured names, so the label set
    /// stays small whatever operators configure.
    pub rules_fired: IntCounterVec,
    /// `risk_engine_rules_reloads_total{result}`: applied | invalid | unavailable
    pub reloads: IntCounterVec,
    /// `risk_engine_dependency_errors_total{dependency}`
    pub dependency_errors: IntCounterVec,
}

impl RiskMetrics {
    pub fn new(registry: &Registry) -> anyhow::Result<Self> {
        let counter = |name: &str, help: &str, label: &str| -> anyhow::Result<IntCounterVec> {
            let c = IntCounterVec::new(Opts::new(format!("risk_engine_{name}"), help), &[label])?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        Ok(Self {
            decisions: counter("decisions_total", "Risk decisions made", "decision")?,
            rules_fired: counter(
                "rules_fired_total",
                "Rules that declined a payment, by kind",
                "rule",
            )?,
            reloads: counter(
                "rules_reloads_total",
                "Rule reloads by result (applied, invalid, unavailable)",
                "result",
            )?,
            dependency_errors: counter(
                "dependency_errors_total",
                "Failed calls to Redis or Postgres while gathering facts",
                "dependency",
            )?,
        })
    }
}
