//! The gateway's own metrics (the runtime's are in `paystream_messaging::MessagingMetrics`).
//! Labels come from small fixed sets: configured PSP names, operations, outcomes.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

#[derive(Clone)]
pub struct GatewayMetrics {
    /// `psp_gateway_psp_call_duration_seconds{psp, operation, outcome}`
    pub call_seconds: HistogramVec,
    /// `psp_gateway_breaker_state{psp}`: 0 closed, 1 half-open, 2 open.
    pub breaker_state: IntGaugeVec,
    /// `psp_gateway_breaker_transitions_total{psp, state}`
    pub breaker_transitions: IntCounterVec,
    /// `psp_gateway_breaker_skips_total{psp}`: new charge attempts not made because the PSP's
    /// breaker was open.
    pub breaker_skips: IntCounterVec,
    /// `psp_gateway_charge_results_total{outcome}`
    pub charge_results: IntCounterVec,
    /// `psp_gateway_unknown_outcomes_total{psp, operation}`: calls left in doubt after the
    /// same-key retries, handed back to the runtime's retry.
    pub unknown_outcomes: IntCounterVec,
    /// `psp_gateway_failovers_total{from}`: a decline at `from` moved the payment on.
    pub failovers: IntCounterVec,
    /// `psp_gateway_commands_total{command, outcome}`
    pub commands: IntCounterVec,
    /// `psp_gateway_webhooks_total{psp, result}`
    pub webhooks: IntCounterVec,
}

impl GatewayMetrics {
    pub fn new(registry: &Registry) -> anyhow::Result<Self> {
        let counter = |name: &str, help: &str, labels: &[&str]| -> anyhow::Result<IntCounterVec> {
            let c = IntCounterVec::new(Opts::new(format!("psp_gateway_{name}"), help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let call_seconds = HistogramVec::new(
            HistogramOpts::new(
                "psp_gateway_psp_call_duration_seconds",
                "PSP call latency by PSP, operation and outcome",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["psp", "operation", "outcome"],
        )?;
        registry.register(Box::new(call_seconds.clone()))?;
        let breaker_state = IntGaugeVec::new(
            Opts::new(
                "psp_gateway_breaker_state",
                "Circuit breaker per PSP: 0 closed, 1 half-open, 2 open",
            ),
            &["psp"],
        )?;
        registry.register(Box::new(breaker_state.clone()))?;
        Ok(Self {
            call_seconds,
            breaker_state,
            breaker_transitions: counter(
                "breaker_transitions_total",
                "Circuit breaker state changes",
                &["psp", "state"],
            )?,
            breaker_skips: counter(
                "breaker_skips_total",
                "New charge attempts not sent to a PSP because its breaker was open",
                &["psp"],
            )?,
            charge_results: counter(
                "charge_results_total",
                "Charge outcomes published",
                &["outcome"],
            )?,
            unknown_outcomes: counter(
                "unknown_outcomes_total",
                "PSP calls still in doubt after the same-key retries",
                &["psp", "operation"],
            )?,
            failovers: counter(
                "failovers_total",
                "Payments moved to the next PSP after a definitive decline",
                &["from"],
            )?,
            commands: counter(
                "commands_total",
                "Captures, cancels and refunds by outcome",
                &["command", "outcome"],
            )?,
            webhooks: counter(
                "webhooks_total",
                "PSP webhooks received, by result",
                &["psp", "result"],
            )?,
        })
    }
}
