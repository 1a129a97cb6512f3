//! The baseline: a plain consume-and-produce copy with the shared client settings and the
//! runtime's batching, no Postgres. Per batch: produce every record, await every delivery, then
//! commit the offsets synchronously.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use paystream_messaging::kafka::consumer_config;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Headers, OwnedMessage};
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::util::Timeout;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::kafka::{self, OutputWatch};
use crate::report::{BatchTimes, RunResult};
use crate::{Ctx, setup};

pub async fn run(ctx: &Ctx, round: usize) -> anyhow::Result<RunResult> {
    let group = format!("bench-{}-baseline-r{round}", ctx.suffix);
    let output = format!("bench.{}.baseline-out.r{round}", ctx.suffix);
    setup::create_topics(ctx, std::slice::from_ref(&output)).await?;
    ctx.resources.add_group(&group);

    let consumer: StreamConsumer = consumer_config(&ctx.bootstrap, &group)
        .create()
        .context("creating the baseline consumer")?;
    consumer
        .subscribe(&[ctx.input_topic.as_str()])
        .context("subscribing the baseline consumer")?;
    let producer = kafka::producer(ctx)?;
    let watch = OutputWatch::start(ctx, &output, &format!("baseline r{round} output"))?;

    let stop = ctx.stop.child_token();
    let started = Instant::now();
    let copy = Copier {
        consumer,
        producer,
        output: output.clone(),
        max_batch: ctx.args.batch,
        linger: Duration::from_millis(ctx.args.linger_ms),
    };
    let mut task = tokio::spawn(copy.run(stop.clone()));
    // The copier only ends on its own by failing: no need to wait for the timeout then.
    let (finished, ended_early) = tokio::select! {
        r = watch.finished(ctx.timeout()) => (r, None),
        j = &mut task => (
            Err(anyhow::anyhow!("the baseline copier stopped before the output was complete")),
            Some(j),
        ),
    };
    stop.cancel();
    let joined = match ended_early {
        Some(j) => j,
        None => tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .context("the baseline did not stop within 60s")?,
    };
    let copied = joined.context("baseline task")?;
    // When both failed, the copier's error is the cause.
    let (last_out, (first_in, batches)) = match (finished, copied) {
        (Ok(last_out), Ok(copied)) => (last_out, copied),
        (Err(watch), Err(copier)) => return Err(copier.context(format!("{watch:#}"))),
        (Err(e), Ok(_)) | (Ok(_), Err(e)) => return Err(e),
    };
    let first_in = first_in.context("the baseline never received a record")?;

    let published = kafka::topic_total(ctx, &output).await?;
    let n = ctx.args.records as i64;
    let notes = if published == n {
        format!("ok: published={published}")
    } else {
        format!("MISMATCH: published={published} expected={n}")
    };
    Ok(RunResult::new(
        "baseline",
        round,
        ctx.args.records,
        started,
        first_in,
        last_out,
        &batches,
        notes,
    ))
}

struct Copier {
    consumer: StreamConsumer,
    producer: FutureProducer,
    output: String,
    max_batch: usize,
    linger: Duration,
}

impl Copier {
    async fn run(self, stop: CancellationToken) -> anyhow::Result<(Option<Instant>, BatchTimes)> {
        let mut first_in = None;
        let mut times = BatchTimes::default();
        loop {
            let batch = tokio::select! {
                _ = stop.cancelled() => break,
                b = self.next_batch() => b,
            };
            if batch.is_empty() {
                continue;
            }
            let in_hand = Instant::now();
            first_in.get_or_insert(in_hand);
            self.copy(&batch).await?;
            times.push(in_hand.elapsed(), batch.len());
            self.commit(&batch)?;
        }
        self.producer
            .flush(Timeout::After(Duration::from_secs(10)))
            .context("flushing the baseline producer")?;
        Ok((first_in, times))
    }

    /// The runtime's batching: the first record, then whatever else arrives within `linger`.
    async fn next_batch(&self) -> Vec<OwnedMessage> {
        let mut batch = Vec::new();
        match self.consumer.recv().await {
            Ok(m) => batch.push(m.detach()),
            Err(e) => {
                tracing::warn!(error = %e, "baseline consumer error");
                tokio::time::sleep(Duration::from_millis(200)).await;
                return batch;
            }
        }
        let deadline = tokio::time::Instant::now() + self.linger;
        while batch.len() < self.max_batch {
            match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                Ok(Ok(m)) => batch.push(m.detach()),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "baseline consumer error");
                    break;
                }
                Err(_) => break,
            }
        }
        batch
    }

    async fn copy(&self, batch: &[OwnedMessage]) -> anyhow::Result<()> {
        let mut deliveries = Vec::with_capacity(batch.len());
        for m in batch {
            let headers: Vec<(String, Vec<u8>)> = m
                .headers()
                .map(|hs| {
                    hs.iter()
                        .map(|h| {
                            (
                                h.key.to_owned(),
                                h.value.map(<[u8]>::to_vec).unwrap_or_default(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            let d = kafka::enqueue(
                &self.producer,
                &self.output,
                m.key(),
                m.payload().unwrap_or_default(),
                kafka::owned_headers(&headers),
            )
            .await?;
            deliveries.push(d);
        }
        for d in deliveries {
            kafka::delivered(d, &self.output).await?;
        }
        Ok(())
    }

    fn commit(&self, batch: &[OwnedMessage]) -> anyhow::Result<()> {
        let mut next: BTreeMap<(&str, i32), i64> = BTreeMap::new();
        for m in batch {
            let e = next.entry((m.topic(), m.partition())).or_insert(0);
            *e = (*e).max(m.offset() + 1);
        }
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), offset) in next {
            tpl.add_partition_offset(topic, partition, Offset::Offset(offset))
                .context("building the offset list")?;
        }
        self.consumer
            .commit(&tpl, CommitMode::Sync)
            .context("committing offsets")
    }
}
