//! Kafka pieces both modes share: the input records, sending with back-pressure, and the watch
//! on an output topic that tells when the N-th record has been published.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use paystream_domain::{
    Amount, CaptureMode, Currency, CustomerId, MerchantId, PaymentId, PaymentMethod,
    PaymentRequested,
};
use paystream_messaging::OutboxRecord;
use paystream_messaging::kafka::{consumer_config, producer_config};
use paystream_messaging::trace::new_traceparent;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use tokio::task::JoinHandle;
use tokio_util::sync::DropGuard;

use crate::Ctx;
use crate::progress::Progress;

/// One valid `payment.requested` envelope with the contract key and headers, as api-ingress
/// would write it.
pub fn input_record(i: u64) -> anyhow::Result<OutboxRecord> {
    let parse = |e: paystream_domain::ParseError| anyhow::anyhow!("{e}");
    let payment_id = PaymentId::new();
    let data = PaymentRequested {
        merchant_id: MerchantId::parse(&format!("merchant_{}", i % 50)).map_err(parse)?,
        amount: Amount::new(1_000 + (i % 9_000) as i64).map_err(parse)?,
        currency: Currency::parse("EUR").map_err(parse)?,
        customer_id: CustomerId::parse(&format!("cust_{}", i % 5_000)).map_err(parse)?,
        payment_method: PaymentMethod::parse("pm_card_visa").map_err(parse)?,
        capture: CaptureMode::Automatic,
        description: Some("runtime-bench".to_owned()),
        metadata: Default::default(),
    };
    let correlation = format!("bench-{i}");
    OutboxRecord::event(payment_id, data, &new_traceparent(), &correlation)
}

pub fn owned_headers(headers: &[(String, Vec<u8>)]) -> OwnedHeaders {
    let mut owned = OwnedHeaders::new_with_capacity(headers.len());
    for (name, v) in headers {
        owned = owned.insert(Header {
            key: name,
            value: Some(v.as_slice()),
        });
    }
    owned
}

pub fn producer(ctx: &Ctx) -> anyhow::Result<FutureProducer> {
    producer_config(&ctx.bootstrap)
        .create()
        .context("creating the Kafka producer")
}

/// Hands a record to librdkafka, waiting while its local queue is full.
pub async fn enqueue(
    producer: &FutureProducer,
    topic: &str,
    key: Option<&[u8]>,
    value: &[u8],
    headers: OwnedHeaders,
) -> anyhow::Result<DeliveryFuture> {
    let mut record = FutureRecord::<[u8], [u8]>::to(topic)
        .payload(value)
        .headers(headers);
    if let Some(k) = key {
        record = record.key(k);
    }
    loop {
        match producer.send_result(record) {
            Ok(delivery) => return Ok(delivery),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err((e, _)) => return Err(anyhow::anyhow!("producing to {topic}: {e}")),
        }
    }
}

pub async fn delivered(delivery: DeliveryFuture, topic: &str) -> anyhow::Result<()> {
    delivery
        .await
        .with_context(|| format!("delivery to {topic} was cancelled"))?
        .map_err(|(e, _)| anyhow::anyhow!("delivering to {topic}: {e}"))?;
    Ok(())
}

/// Writes the input records with the shared producer settings and waits for every delivery.
pub async fn pre_produce(ctx: &Ctx) -> anyhow::Result<()> {
    let n = ctx.args.records;
    let topic = ctx.input_topic.as_str();
    let producer = producer(ctx)?;
    let progress = Progress::start("produce input", n);
    let started = Instant::now();
    let mut in_flight: VecDeque<DeliveryFuture> = VecDeque::new();
    for i in 0..n {
        if ctx.stop.is_cancelled() {
            anyhow::bail!("interrupted");
        }
        let r = input_record(i)?;
        let d = enqueue(
            &producer,
            topic,
            r.key.as_deref(),
            &r.value,
            owned_headers(&r.headers),
        )
        .await?;
        in_flight.push_back(d);
        while in_flight.len() > 20_000 {
            if let Some(d) = in_flight.pop_front() {
                delivered(d, topic).await?;
                progress.add(1);
            }
        }
    }
    while let Some(d) = in_flight.pop_front() {
        delivered(d, topic).await?;
        progress.add(1);
    }
    producer
        .flush(Timeout::After(Duration::from_secs(30)))
        .context("flushing the input producer")?;
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "input: {n} records on {topic} in {secs:.2}s ({:.0} records/s)",
        n as f64 / secs
    );
    Ok(())
}

/// Counts the records of an output topic from its beginning, by assignment (no group join), and
/// notes when the expected number has been seen.
pub struct OutputWatch {
    task: JoinHandle<anyhow::Result<Instant>>,
    /// Stops the watch when it is dropped, finished or not.
    guard: DropGuard,
    topic: String,
}

impl OutputWatch {
    pub fn start(ctx: &Ctx, topic: &str, label: &str) -> anyhow::Result<Self> {
        let consumer: StreamConsumer =
            consumer_config(&ctx.bootstrap, &format!("bench-{}-watch", ctx.suffix))
                .create()
                .context("creating the output watch consumer")?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..ctx.args.partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .context("building the watch assignment")?;
        }
        consumer
            .assign(&tpl)
            .with_context(|| format!("assigning {topic}"))?;
        let expected = ctx.args.records;
        let progress = Progress::start(label, expected);
        let stop = ctx.stop.child_token();
        let s = stop.clone();
        let task = tokio::spawn(async move {
            let count: Arc<AtomicU64> = progress.counter();
            loop {
                let received = tokio::select! {
                    _ = s.cancelled() => anyhow::bail!("stopped before the output was complete"),
                    m = consumer.recv() => m.map(|_| ()),
                };
                match received {
                    Ok(()) => {
                        let seen = count.fetch_add(1, Ordering::Relaxed) + 1;
                        if seen >= expected {
                            return Ok(Instant::now());
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "output watch"),
                }
            }
        });
        Ok(Self {
            task,
            guard: stop.drop_guard(),
            topic: topic.to_owned(),
        })
    }

    /// The instant the last expected record was seen on the topic.
    pub async fn finished(self, timeout: Duration) -> anyhow::Result<Instant> {
        let Self { task, guard, topic } = self;
        let joined = tokio::time::timeout(timeout, task).await;
        drop(guard);
        match joined {
            Ok(joined) => joined.context("output watch task")?,
            Err(_) => anyhow::bail!(
                "{topic} did not receive every record within {}s",
                timeout.as_secs()
            ),
        }
    }
}

/// Records on a topic: the sum of its partitions' high watermarks (the topics start empty).
pub async fn topic_total(ctx: &Ctx, topic: &str) -> anyhow::Result<i64> {
    let consumer: StreamConsumer =
        consumer_config(&ctx.bootstrap, &format!("bench-{}-watch", ctx.suffix))
            .create()
            .context("creating the watermark consumer")?;
    let topic = topic.to_owned();
    let partitions = ctx.args.partitions;
    tokio::task::spawn_blocking(move || {
        let mut total = 0;
        for p in 0..partitions {
            let (low, high) = consumer
                .fetch_watermarks(&topic, p, Duration::from_secs(10))
                .with_context(|| format!("watermarks of {topic}/{p}"))?;
            total += high - low;
        }
        Ok(total)
    })
    .await
    .context("watermark task")?
}
