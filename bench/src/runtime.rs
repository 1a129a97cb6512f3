//! The runtime mode: one service on `ConsumerRuntime` + `OutboxRelay`, with a handler whose
//! effect is small and realistic (one row in its own table, one event out).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use paystream_domain::{Event, PaymentId, PaymentRequested, RiskDecided, RiskDecision};
use paystream_messaging::trace::child_traceparent;
use paystream_messaging::{
    ConsumerRuntime, Emitter, Handler, HandlerError, InboundEvent, MessagingMetrics, OutboxRecord,
    OutboxRelay, RuntimeConfig,
};
use prometheus::Registry;
use sqlx::{AssertSqlSafe, PgConnection};
use tokio::task::JoinSet;

use crate::kafka::{self, OutputWatch};
use crate::report::{BatchTimes, RunResult};
use crate::{Ctx, setup};

/// Batch boundaries as the handler sees them: the first `handle` of a batch opens it,
/// `after_commit` (once per committed batch) closes it.
#[derive(Default)]
struct Probe {
    first_record: Option<Instant>,
    open_batch: Option<(Instant, usize)>,
    last_commit: Option<Instant>,
    batches: BatchTimes,
}

struct BenchHandler {
    schema: String,
    output_topic: String,
    probe: Arc<Mutex<Probe>>,
}

impl BenchHandler {
    fn probe(&self) -> std::sync::MutexGuard<'_, Probe> {
        self.probe.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl Handler for BenchHandler {
    fn handles(&self, event_type: &str) -> bool {
        event_type == PaymentRequested::EVENT_TYPE
    }

    /// Its one effect is a row in the batch's transaction, like the stores' handlers.
    fn effects_are_transactional(&self) -> bool {
        true
    }

    async fn handle(
        &self,
        tx: &mut PgConnection,
        event: &InboundEvent,
        out: &mut Emitter,
    ) -> Result<(), HandlerError> {
        {
            let now = Instant::now();
            let mut probe = self.probe();
            probe.first_record.get_or_insert(now);
            let open = probe.open_batch.get_or_insert((now, 0));
            open.1 += 1;
        }
        let request: PaymentRequested = event.data().map_err(HandlerError::Permanent)?;
        let sql = format!(
            "INSERT INTO {}.effects (payment_id, event_id, merchant_id, amount, currency)
             VALUES ($1, $2, $3, $4, $5)",
            self.schema
        );
        sqlx::query(AssertSqlSafe(sql))
            .bind(event.payment_id.to_string())
            .bind(event.event_id)
            .bind(request.merchant_id.as_str())
            .bind(request.amount.minor())
            .bind(request.currency.as_str())
            .execute(&mut *tx)
            .await?;
        let traceparent = child_traceparent(event.traceparent.as_deref());
        let correlation = event
            .correlation_id
            .clone()
            .unwrap_or_else(|| event.payment_id.to_string());
        let decided = RiskDecided {
            decision: RiskDecision::Approved,
            score: 10,
            reasons: Vec::new(),
            request,
        };
        let mut record =
            OutboxRecord::event(event.payment_id, decided, &traceparent, &correlation)?;
        record.topic.clone_from(&self.output_topic);
        out.push(record);
        Ok(())
    }

    async fn after_commit(&self, payments: &[PaymentId]) {
        let mut probe = self.probe();
        probe.last_commit = Some(Instant::now());
        if let Some((started, records)) = probe.open_batch.take() {
            probe
                .batches
                .push(started.elapsed(), records.max(payments.len()));
        }
    }
}

pub async fn run(ctx: &Ctx, round: usize) -> anyhow::Result<RunResult> {
    let schema = format!("bench_{}_r{round}", ctx.suffix);
    let group = format!("bench-{}-runtime-r{round}", ctx.suffix);
    let output = format!("bench.{}.runtime-out.r{round}", ctx.suffix);
    let mut config = RuntimeConfig::new(
        "bench-runtime",
        &ctx.bootstrap,
        &schema,
        &[ctx.input_topic.as_str()],
    );
    config.group_id.clone_from(&group);
    config.max_batch = ctx.args.batch;
    config.batch_linger = Duration::from_millis(ctx.args.linger_ms);
    setup::create_topics(ctx, &[output.clone(), config.retry_topic()]).await?;
    ctx.resources.add_group(&group);
    setup::create_schema(ctx, &schema).await?;

    let registry = Registry::new();
    let metrics = MessagingMetrics::new("bench_runtime", &registry)?;
    let watch = OutputWatch::start(ctx, &output, &format!("runtime r{round} output"))?;
    let stop = ctx.stop.child_token();
    let mut probes = Vec::new();
    let mut tasks = JoinSet::new();
    let started = Instant::now();
    for _ in 0..ctx.args.instances {
        let probe = Arc::new(Mutex::new(Probe::default()));
        probes.push(probe.clone());
        let handler = BenchHandler {
            schema: schema.clone(),
            output_topic: output.clone(),
            probe,
        };
        let relay = OutboxRelay::new(
            ctx.pool.clone(),
            &schema,
            kafka::producer(ctx)?,
            metrics.clone(),
        );
        let runtime =
            ConsumerRuntime::new(config.clone(), ctx.pool.clone(), handler, metrics.clone());
        tasks.spawn(relay.run_until_stopped(stop.clone()));
        tasks.spawn(runtime.run_until_stopped(stop.clone()));
    }
    // A runtime or relay that ends before the output is complete has failed: no need to wait
    // for the timeout then.
    let finished = tokio::select! {
        r = watch.finished(ctx.timeout()) => r,
        Some(early) = tasks.join_next() => Err(match early {
            Ok(Ok(())) => anyhow::anyhow!("a runtime or relay stopped before the output was complete"),
            Ok(Err(e)) => e.context("a runtime or relay failed"),
            Err(e) => anyhow::Error::new(e).context("a runtime or relay task panicked"),
        }),
    };
    stop.cancel();
    let stopped = async {
        while let Some(task) = tasks.join_next().await {
            task.context("runtime or relay task")??;
        }
        anyhow::Ok(())
    };
    let stopped = tokio::time::timeout(Duration::from_secs(60), stopped)
        .await
        .context("the runtime did not stop within 60s")?;
    let last_out = finished?;
    stopped?;

    let mut first_in: Option<Instant> = None;
    let mut last_commit: Option<Instant> = None;
    let mut batches = BatchTimes::default();
    for probe in &probes {
        let mut p = probe.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = p.first_record {
            first_in = Some(first_in.map_or(t, |f| f.min(t)));
        }
        if let Some(t) = p.last_commit {
            last_commit = Some(last_commit.map_or(t, |l| l.max(t)));
        }
        batches.append(&mut p.batches);
    }
    let first_in = first_in.context("the handler never ran")?;
    let check = verify(ctx, &schema, &output).await?;
    let tx_seconds = metrics.batch_seconds.get_sample_sum();
    let handler_seconds = metrics.handler_seconds.get_sample_sum();
    let span = last_out.duration_since(first_in).as_secs_f64();
    // How long the relay trailed the consumer: last batch commit to last record on the topic.
    let relay_tail_ms = last_commit.map_or(f64::NAN, |c| {
        last_out.saturating_duration_since(c).as_secs_f64() * 1e3
    });
    let notes = format!(
        "{check}; in batch transactions {tx_seconds:.2}s ({:.0}% of the span, summed over instances), in handlers {handler_seconds:.2}s; relay tail {relay_tail_ms:.0} ms after the last commit",
        100.0 * tx_seconds / span.max(1e-9)
    );
    Ok(RunResult::new(
        "runtime",
        round,
        ctx.args.records,
        started,
        first_in,
        last_out,
        &batches,
        notes,
    ))
}

/// Exactly-once check: every record claimed once, applied once, published once, outbox drained.
async fn verify(ctx: &Ctx, schema: &str, output: &str) -> anyhow::Result<String> {
    let count = |table: &str| {
        let sql = format!("SELECT count(*) FROM {schema}.{table}");
        let pool = ctx.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(AssertSqlSafe(sql))
                .fetch_one(&pool)
                .await
                .context("counting rows")
        }
    };
    let inbox = count("inbox").await?;
    let effects = count("effects").await?;
    let outbox = count("outbox").await?;
    let published = kafka::topic_total(ctx, output).await?;
    let n = ctx.args.records as i64;
    Ok(
        if inbox == n && effects == n && outbox == 0 && published == n {
            format!("ok: inbox={inbox} effects={effects} outbox=0 published={published}")
        } else {
            format!(
                "MISMATCH: inbox={inbox} effects={effects} outbox={outbox} published={published} expected={n}"
            )
        },
    )
}
