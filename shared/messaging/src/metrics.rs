use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGaugeVec, Opts, Registry};

/// Counters of the messaging runtime, registered in the service's registry under the service's
/// prefix (`<service>_records_consumed_total`, ...). Labels come from a small fixed set.
#[derive(Clone)]
pub struct MessagingMetrics {
    pub consumed: IntCounterVec,
    pub produced: IntCounterVec,
    pub retried: IntCounterVec,
    pub dead_lettered: IntCounterVec,
    pub duplicates: IntCounterVec,
    pub handler_seconds: Histogram,
    pub batch_seconds: Histogram,
    pub consumer_lag: IntGaugeVec,
    pub outbox_pending: IntGaugeVec,
    pub rebalances: IntCounterVec,
}

impl MessagingMetrics {
    pub fn new(service: &str, registry: &Registry) -> anyhow::Result<Self> {
        let prefix = service.replace('-', "_");
        let counter = |name: &str, help: &str, labels: &[&str]| -> anyhow::Result<IntCounterVec> {
            let c = IntCounterVec::new(Opts::new(format!("{prefix}_{name}"), help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let histogram = |name: &str, help: &str| -> anyhow::Result<Histogram> {
            let h = Histogram::with_opts(
                HistogramOpts::new(format!("{prefix}_{name}"), help).buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ]),
            )?;
            registry.register(Box::new(h.clone()))?;
            Ok(h)
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| -> anyhow::Result<IntGaugeVec> {
            let g = IntGaugeVec::new(Opts::new(format!("{prefix}_{name}"), help), labels)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        Ok(Self {
            consumed: counter(
                "records_consumed_total",
                "Records taken from Kafka",
                &["topic"],
            )?,
            produced: counter(
                "records_produced_total",
                "Records published from the outbox",
                &["topic"],
            )?,
            retried: counter(
                "records_retried_total",
                "Transient failures retried in place or via the retry topic",
                &["stage"],
            )?,
            dead_lettered: counter(
                "records_dead_lettered_total",
                "Records sent to payments.dlt",
                &["kind"],
            )?,
            duplicates: counter(
                "records_duplicate_total",
                "Redelivered records skipped by the inbox",
                &["topic"],
            )?,
            handler_seconds: histogram(
                "handler_duration_seconds",
                "Time spent in the handler per record",
            )?,
            batch_seconds: histogram(
                "batch_duration_seconds",
                "Time from first record of a batch to its durable commit",
            )?,
            consumer_lag: gauge(
                "consumer_lag_records",
                "High watermark minus committed position, per topic",
                &["topic"],
            )?,
            rebalances: counter(
                "consumer_rebalances_total",
                "Partition assignments and revocations",
                &["event"],
            )?,
            outbox_pending: gauge(
                "outbox_pending_records",
                "Records written to the outbox and not yet published",
                &["schema"],
            )?,
        })
    }
}
