//! The consumer loop every service runs (DESIGN.md §5).
//!
//! A batch of records is handled in one Postgres transaction: each record's `event_id` is
//! claimed in `<schema>.inbox` (a redelivered record finds its claim and is skipped), the handler
//! applies its effect inside a savepoint, and what it emits goes to `<schema>.outbox`. Offsets are
//! committed only after that transaction commits, so a crash anywhere re-delivers records whose
//! effects either did not happen (they happen now) or are already claimed (skipped).
//!
//! A second consumer in the same group reads `<group>.retry`, where records wait out a backoff
//! without holding up their main partition.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use backoff::ExponentialBackoffBuilder;
use backoff::backoff::Backoff;
use chrono::{DateTime, Utc};
use paystream_domain::{PaymentId, topics};
use rdkafka::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::{Message, Offset, TopicPartitionList};
use sqlx::{AssertSqlSafe, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::dlt::{self, ErrorKind, Failure, RawRecord};
use crate::envelope::{Envelope, InboundEvent};
use crate::kafka::consumer_config;
use crate::metrics::MessagingMetrics;
use crate::outbox::{self, Emitter, OutboxRecord};
use crate::schemas::SchemaRegistry;

/// What the runtime does with a failed record.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Worth retrying: a database or a PSP is down, a lock timed out.
    #[error("transient: {0:#}")]
    Transient(anyhow::Error),
    /// Retrying cannot help: the record breaks a rule of the domain.
    #[error("permanent: {0:#}")]
    Permanent(anyhow::Error),
}

impl HandlerError {
    pub fn permanent(msg: impl std::fmt::Display) -> Self {
        Self::Permanent(anyhow::anyhow!("{msg}"))
    }
}

/// Unclassified errors are retried: a retry that was not needed costs a little time, a record
/// dead-lettered by mistake costs an operator's replay.
impl From<anyhow::Error> for HandlerError {
    fn from(e: anyhow::Error) -> Self {
        Self::Transient(e)
    }
}

impl From<sqlx::Error> for HandlerError {
    fn from(e: sqlx::Error) -> Self {
        Self::Transient(e.into())
    }
}

/// A service's part of consuming: the effect of one event, on the runtime's transaction.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Event types this handler acts on. Other known types on its topics are acknowledged and
    /// skipped; unknown types are poison.
    fn handles(&self, event_type: &str) -> bool;

    async fn handle(
        &self,
        tx: &mut PgConnection,
        event: &InboundEvent,
        out: &mut Emitter,
    ) -> Result<(), HandlerError>;

    /// Runs once the batch's transaction has committed, with the payments whose events were
    /// applied: the place for effects outside Postgres that must follow the commit, such as
    /// invalidating a cache. Best effort; a failure here must not undo anything.
    async fn after_commit(&self, _payments: &[PaymentId]) {}

    /// True when every effect of `handle` is in the transaction it is given, so running it again
    /// after a rollback is harmless. The runtime then handles a batch without per-record
    /// savepoints and redoes it with savepoints only if a record fails. Handlers that call
    /// outside services (a PSP) keep the default.
    fn effects_are_transactional(&self) -> bool {
        false
    }
}

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts within one pass over the record, with exponential backoff and jitter between.
    pub in_place_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Attempts over all passes before the record goes to the dead letter topic as `exhausted`.
    pub max_attempts: u32,
    /// Wait on the retry topic before the first retry pass; doubles with each pass.
    pub retry_topic_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            in_place_attempts: 3,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
            max_attempts: 9,
            retry_topic_delay: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// `PAYSTREAM_RETRY_*` variables over the defaults.
    pub fn from_env() -> Self {
        let d = Self::default();
        let num = |name: &str, default: u64| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(default)
        };
        Self {
            in_place_attempts: num(
                "PAYSTREAM_RETRY_IN_PLACE_ATTEMPTS",
                d.in_place_attempts.into(),
            )
            .clamp(1, 100) as u32,
            initial_backoff: Duration::from_millis(num(
                "PAYSTREAM_RETRY_INITIAL_BACKOFF_MS",
                d.initial_backoff.as_millis() as u64,
            )),
            max_backoff: Duration::from_millis(num(
                "PAYSTREAM_RETRY_MAX_BACKOFF_MS",
                d.max_backoff.as_millis() as u64,
            )),
            max_attempts: num("PAYSTREAM_RETRY_MAX_ATTEMPTS", d.max_attempts.into()).clamp(1, 1000)
                as u32,
            retry_topic_delay: Duration::from_millis(num(
                "PAYSTREAM_RETRY_TOPIC_DELAY_MS",
                d.retry_topic_delay.as_millis() as u64,
            )),
        }
    }

    fn in_place_backoff(&self) -> backoff::ExponentialBackoff {
        ExponentialBackoffBuilder::new()
            .with_initial_interval(self.initial_backoff)
            .with_max_interval(self.max_backoff)
            .with_randomization_factor(0.5)
            .with_multiplier(2.0)
            .with_max_elapsed_time(None)
            .build()
    }

    /// Capped at two minutes: the retry consumer waits for a due time without polling Kafka, and
    /// a wait near `max.poll.interval.ms` (five minutes) would get it fenced out of the group.
    fn retry_delay(&self, pass: u32) -> Duration {
        let factor = 2u32.saturating_pow(pass.saturating_sub(1).min(10));
        let base = self
            .retry_topic_delay
            .saturating_mul(factor)
            .min(Duration::from_secs(120));
        let jitter = rand::random::<f64>() * 0.25;
        base.mul_f64(1.0 + jitter)
    }
}

#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Service name, for `dlt.service` and metric names.
    pub service: String,
    pub group_id: String,
    /// Postgres schema holding this service's `inbox` and `outbox`.
    pub db_schema: String,
    pub bootstrap: String,
    pub topics: Vec<String>,
    pub max_batch: usize,
    /// How long to wait for more records once the first of a batch arrived.
    pub batch_linger: Duration,
    pub retry: RetryPolicy,
}

impl RuntimeConfig {
    pub fn new(service: &str, bootstrap: &str, db_schema: &str, topics: &[&str]) -> Self {
        Self {
            service: service.to_owned(),
            group_id: service.to_owned(),
            db_schema: db_schema.to_owned(),
            bootstrap: bootstrap.to_owned(),
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            max_batch: 500,
            batch_linger: Duration::from_millis(5),
            retry: RetryPolicy::from_env(),
        }
    }

    pub fn retry_topic(&self) -> String {
        topics::retry_topic(&self.group_id)
    }
}

/// Tracks which partitions this consumer holds. A batch collected just before a rebalance can
/// hold records of partitions that now belong to another instance: they are dropped before
/// processing (their new owner reads them from the committed offset), so the two instances do not
/// race on the same records and the commit does not touch partitions it no longer owns.
pub struct RebalanceContext {
    group: String,
    revoked: Mutex<HashSet<(String, i32)>>,
    rebalances: prometheus::IntCounterVec,
}

impl RebalanceContext {
    fn is_revoked(&self, topic: &str, partition: i32) -> bool {
        self.revoked
            .lock()
            .map(|r| r.contains(&(topic.to_owned(), partition)))
            .unwrap_or(false)
    }
}

impl ClientContext for RebalanceContext {}

impl ConsumerContext for RebalanceContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                if let Ok(mut revoked) = self.revoked.lock() {
                    for e in tpl.elements() {
                        revoked.insert((e.topic().to_owned(), e.partition()));
                    }
                }
                self.rebalances.with_label_values(&["revoke"]).inc();
                tracing::info!(group = %self.group, partitions = tpl.count(), "partitions revoked");
            }
            Rebalance::Assign(_) => {}
            Rebalance::Error(e) => {
                tracing::warn!(group = %self.group, error = %e, "rebalance error")
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            if let Ok(mut revoked) = self.revoked.lock() {
                for e in tpl.elements() {
                    revoked.remove(&(e.topic().to_owned(), e.partition()));
                }
            }
            self.rebalances.with_label_values(&["assign"]).inc();
            tracing::info!(group = %self.group, partitions = tpl.count(), "partitions assigned");
        }
    }
}

type RuntimeConsumer = StreamConsumer<RebalanceContext>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    Main,
    Retry,
}

pub struct ConsumerRuntime<H: Handler> {
    config: Arc<RuntimeConfig>,
    pool: PgPool,
    handler: Arc<H>,
    metrics: MessagingMetrics,
}

impl<H: Handler> Clone for ConsumerRuntime<H> {
    fn clone(&self) -> Self {
        Self {
            config: self.config.clone(),
            pool: self.pool.clone(),
            handler: self.handler.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Default)]
struct BatchOutcome {
    dead_lettered: Vec<ErrorKind>,
    sent_to_retry: u32,
    retried_in_place: u32,
    duplicates: Vec<String>,
    applied: Vec<PaymentId>,
}

impl<H: Handler> ConsumerRuntime<H> {
    pub fn new(config: RuntimeConfig, pool: PgPool, handler: H, metrics: MessagingMetrics) -> Self {
        Self {
            config: Arc::new(config),
            pool,
            handler: Arc::new(handler),
            metrics,
        }
    }

    /// Consumes until `shutdown` is cancelled, then finishes the batch in hand, commits it and
    /// returns.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let main_consumer = self.subscribe(&self.config.topics)?;
        let retry_consumer = self.subscribe(&[self.config.retry_topic()])?;
        let main = self
            .clone()
            .consume(main_consumer, Source::Main, shutdown.clone());
        let retry = self
            .clone()
            .consume(retry_consumer, Source::Retry, shutdown.clone());
        let (a, b) = tokio::join!(main, retry);
        a.and(b)
    }

    fn subscribe(&self, topics: &[String]) -> anyhow::Result<Arc<RuntimeConsumer>> {
        let context = RebalanceContext {
            group: self.config.group_id.clone(),
            revoked: Mutex::new(HashSet::new()),
            rebalances: self.metrics.rebalances.clone(),
        };
        let consumer: RuntimeConsumer =
            consumer_config(&self.config.bootstrap, &self.config.group_id)
                .create_with_context(context)
                .context("creating the Kafka consumer")?;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&names)
            .with_context(|| format!("subscribing to {names:?}"))?;
        Ok(Arc::new(consumer))
    }

    async fn consume(
        self,
        consumer: Arc<RuntimeConsumer>,
        source: Source,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let lag = tokio::spawn(report_lag(
            consumer.clone(),
            self.metrics.clone(),
            shutdown.clone(),
        ));
        loop {
            let mut batch = tokio::select! {
                _ = shutdown.cancelled() => break,
                batch = self.next_batch(&consumer) => batch,
            };
            let context = consumer.context();
            batch.retain(|r| !context.is_revoked(&r.topic, r.partition));
            if batch.is_empty() {
                continue;
            }
            if source == Source::Retry {
                if !self.wait_until_due(&batch, &shutdown).await {
                    break;
                }
                // The wait may have outlasted the assignment.
                batch.retain(|r| !context.is_revoked(&r.topic, r.partition));
                if batch.is_empty() {
                    continue;
                }
            }
            let started = Instant::now();
            if !self.process_until_durable(&batch, source, &shutdown).await {
                break;
            }
            self.metrics
                .batch_seconds
                .observe(started.elapsed().as_secs_f64());
            commit(&consumer, &batch);
        }
        lag.abort();
        tracing::info!(group = %self.config.group_id, ?source, "consumer stopped");
        Ok(())
    }

    async fn next_batch(&self, consumer: &RuntimeConsumer) -> Vec<RawRecord> {
        let mut batch = Vec::new();
        match consumer.recv().await {
            Ok(m) => batch.push(to_raw(&m)),
            Err(e) => {
                tracing::warn!(error = %e, "kafka consumer error");
                tokio::time::sleep(Duration::from_millis(200)).await;
                return batch;
            }
        }
        let deadline = tokio::time::Instant::now() + self.config.batch_linger;
        while batch.len() < self.config.max_batch {
            match tokio::time::timeout_at(deadline, consumer.recv()).await {
                Ok(Ok(m)) => batch.push(to_raw(&m)),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "kafka consumer error");
                    break;
                }
                Err(_) => break,
            }
        }
        batch
    }

    /// Retry copies carry their due time; the retry consumer sleeps until the latest one of the
    /// batch. Returns false when shutdown came first (nothing is committed then).
    async fn wait_until_due(&self, batch: &[RawRecord], shutdown: &CancellationToken) -> bool {
        let due_ms = batch.iter().filter_map(RawRecord::retry_due_at_ms).max();
        let Some(due_ms) = due_ms else { return true };
        let wait_ms = due_ms - Utc::now().timestamp_millis();
        if wait_ms <= 0 {
            return true;
        }
        tokio::select! {
            _ = shutdown.cancelled() => false,
            _ = tokio::time::sleep(Duration::from_millis(wait_ms as u64)) => true,
        }
    }

    /// Retries the whole batch while the database is unreachable; offsets wait meanwhile.
    /// Returns false if shutdown interrupted the retries, in which case nothing was committed.
    async fn process_until_durable(
        &self,
        batch: &[RawRecord],
        source: Source,
        shutdown: &CancellationToken,
    ) -> bool {
        let mut backoff = self.config.retry.in_place_backoff();
        loop {
            match self.process_batch(batch, source).await {
                Ok(outcome) => {
                    self.record_metrics(batch, &outcome);
                    if !outcome.applied.is_empty() {
                        self.handler.after_commit(&outcome.applied).await;
                    }
                    return true;
                }
                Err(e) => {
                    let pause = backoff.next_backoff().unwrap_or(Duration::from_secs(1));
                    self.metrics.retried.with_label_values(&["batch"]).inc();
                    tracing::warn!(group = %self.config.group_id, records = batch.len(), error = format!("{e:#}"), retry_in_ms = pause.as_millis() as u64, "batch failed before commit; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return false,
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
            }
        }
    }

    fn record_metrics(&self, batch: &[RawRecord], outcome: &BatchOutcome) {
        for r in batch {
            self.metrics
                .consumed
                .with_label_values(&[r.topic.as_str()])
                .inc();
        }
        for kind in &outcome.dead_lettered {
            self.metrics
                .dead_lettered
                .with_label_values(&[kind.as_str()])
                .inc();
        }
        for topic in &outcome.duplicates {
            self.metrics
                .duplicates
                .with_label_values(&[topic.as_str()])
                .inc();
        }
        if outcome.sent_to_retry > 0 {
            self.metrics
                .retried
                .with_label_values(&["retry_topic"])
                .inc_by(outcome.sent_to_retry.into());
        }
        if outcome.retried_in_place > 0 {
            self.metrics
                .retried
                .with_label_values(&["in_place"])
                .inc_by(outcome.retried_in_place.into());
        }
    }

    /// Handles a batch in one transaction. Handlers whose effects live only in the transaction
    /// run without savepoints (one round trip less per record); if one of them fails, the
    /// transaction is rolled back and the batch is redone record by record with savepoints, where
    /// retries and dead letters apply.
    async fn process_batch(
        &self,
        batch: &[RawRecord],
        source: Source,
    ) -> anyhow::Result<BatchOutcome> {
        let parsed: Vec<Parsed> = batch
            .iter()
            .map(|raw| match parse(raw) {
                Err(reason) => Parsed::Poison(reason),
                Ok(event) if self.handler.handles(&event.event_type) => {
                    Parsed::Event(Box::new(event))
                }
                Ok(_) => Parsed::NotOurs,
            })
            .collect();
        if self.handler.effects_are_transactional() {
            match self.try_batch(batch, &parsed, source, Mode::Fast).await? {
                Some(outcome) => return Ok(outcome),
                None => self
                    .metrics
                    .retried
                    .with_label_values(&["batch_redo"])
                    .inc(),
            }
        }
        self.try_batch(batch, &parsed, source, Mode::Safe)
            .await?
            .context("a safe-mode batch always completes")
    }

    /// `Ok(None)`: a handler failed in fast mode and the transaction was rolled back.
    async fn try_batch(
        &self,
        batch: &[RawRecord],
        parsed: &[Parsed],
        source: Source,
        mode: Mode,
    ) -> anyhow::Result<Option<BatchOutcome>> {
        let schema = &self.config.db_schema;
        let mut outcome = BatchOutcome::default();
        let mut out = Vec::new();
        let mut tx = self
            .pool
            .begin()
            .await
            .context("beginning batch transaction")?;
        let mut claims = claim_all(&mut tx, schema, batch, parsed).await?;
        for (raw, parsed) in batch.iter().zip(parsed) {
            match parsed {
                Parsed::NotOurs => {}
                Parsed::Poison(reason) => {
                    // Keyed by position: re-reading the topic must not dead-letter it twice.
                    if claims.remove(&position_id(raw)) == Some(Existing::None) {
                        let now = Utc::now();
                        out.push(self.dead_letter(raw, ErrorKind::Poison, reason.clone(), 0, now));
                        tracing::warn!(topic = %raw.topic, partition = raw.partition, offset = raw.offset, reason = %reason, "poison record dead-lettered");
                        outcome.dead_lettered.push(ErrorKind::Poison);
                    }
                }
                Parsed::Event(event) => {
                    // A second copy of an event in the same batch finds its claim taken.
                    let existing = claims.remove(&event.event_id).unwrap_or(Existing::Done);
                    let run = matches!(
                        (source, existing),
                        (_, Existing::None) | (Source::Retry, Existing::Retrying)
                    ) || (source == Source::Retry
                        && existing == Existing::Dead
                        && raw.header("replay.count").is_some());
                    if !run {
                        outcome.duplicates.push(raw.topic.clone());
                        continue;
                    }
                    let retrying = matches!(existing, Existing::Retrying | Existing::Dead);
                    let span = tracing::info_span!("handle", payment_id = %event.payment_id, event_type = %event.event_type, event_id = %event.event_id);
                    match mode {
                        Mode::Fast => {
                            let done = self
                                .run_fast(&mut tx, event, retrying, &mut out)
                                .instrument(span)
                                .await?;
                            if !done {
                                tx.rollback().await.context("rolling back a fast batch")?;
                                return Ok(None);
                            }
                            outcome.applied.push(event.payment_id);
                        }
                        Mode::Safe => {
                            self.run_handler(&mut tx, raw, event, retrying, &mut outcome, &mut out)
                                .instrument(span)
                                .await?;
                        }
                    }
                }
            }
        }
        outbox::enqueue(&mut tx, schema, &out).await?;
        tx.commit().await.context("committing batch transaction")?;
        Ok(Some(outcome))
    }

    /// One attempt without a savepoint; `false` when the handler failed (the caller rolls back).
    async fn run_fast(
        &self,
        tx: &mut PgConnection,
        event: &InboundEvent,
        retrying: bool,
        out: &mut Vec<OutboxRecord>,
    ) -> anyhow::Result<bool> {
        let mut emitter = Emitter::new(event.traceparent.clone(), event.correlation_id.clone());
        let timer = Instant::now();
        let result = self.handler.handle(tx, event, &mut emitter).await;
        self.metrics
            .handler_seconds
            .observe(timer.elapsed().as_secs_f64());
        if result.is_err() {
            return Ok(false);
        }
        out.extend(emitter.take());
        if retrying {
            mark(tx, &self.config.db_schema, event.event_id, Claim::Done).await?;
        }
        Ok(true)
    }

    async fn run_handler(
        &self,
        tx: &mut PgConnection,
        raw: &RawRecord,
        event: &InboundEvent,
        claimed_as_retrying: bool,
        outcome: &mut BatchOutcome,
        out: &mut Vec<OutboxRecord>,
    ) -> anyhow::Result<()> {
        let schema = &self.config.db_schema;
        let policy = &self.config.retry;
        // The claim inserted a `done` row already; only a record coming back from the retry
        // topic has a `retrying` row to close.
        let close_claim = if claimed_as_retrying {
            Some(event.event_id)
        } else {
            None
        };
        let earlier_attempts = raw.retry_attempts();
        let mut first_failure = raw.first_failure();
        let mut backoff = policy.in_place_backoff();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let mut sp = sqlx::Connection::begin(&mut *tx)
                .await
                .context("opening a savepoint")?;
            let mut emitter = Emitter::new(event.traceparent.clone(), event.correlation_id.clone());
            let timer = Instant::now();
            let result = self.handler.handle(&mut sp, event, &mut emitter).await;
            self.metrics
                .handler_seconds
                .observe(timer.elapsed().as_secs_f64());
            let err = match result {
                Ok(()) => {
                    sp.commit().await.context("releasing a savepoint")?;
                    out.extend(emitter.take());
                    if let Some(id) = close_claim {
                        mark(tx, schema, id, Claim::Done).await?;
                    }
                    outcome.applied.push(event.payment_id);
                    return Ok(());
                }
                Err(err) => err,
            };
            sp.rollback().await.context("rolling back a savepoint")?;
            let total = earlier_attempts + attempt;
            let first = *first_failure.get_or_insert_with(Utc::now);
            let dead = match err {
                HandlerError::Permanent(e) => {
                    let msg = format!("{e:#}");
                    tracing::warn!(error = %msg, "permanent failure; dead-lettering");
                    Some((ErrorKind::Permanent, msg))
                }
                HandlerError::Transient(e) => {
                    let msg = format!("{e:#}");
                    if total >= policy.max_attempts {
                        tracing::error!(attempts = total, error = %msg, "retries exhausted; dead-lettering");
                        Some((ErrorKind::Exhausted, msg))
                    } else if attempt >= policy.in_place_attempts {
                        let pass = total.div_ceil(policy.in_place_attempts.max(1));
                        let due = Utc::now()
                            + chrono::Duration::from_std(policy.retry_delay(pass))
                                .unwrap_or_else(|_| chrono::Duration::seconds(1));
                        tracing::warn!(attempts = total, error = %msg, due = %due, "moving record to the retry topic");
                        out.push(dlt::retry_record(
                            raw,
                            &self.config.group_id,
                            total,
                            first,
                            &msg,
                            due,
                        ));
                        outcome.sent_to_retry += 1;
                        return mark(tx, schema, event.event_id, Claim::Retrying).await;
                    } else {
                        outcome.retried_in_place += 1;
                        let pause = backoff.next_backoff().unwrap_or(policy.max_backoff);
                        tracing::debug!(attempt, error = %msg, "transient failure; retrying in place");
                        tokio::time::sleep(pause).await;
                        None
                    }
                }
            };
            if let Some((kind, msg)) = dead {
                out.push(self.dead_letter(raw, kind, msg, total, first));
                outcome.dead_lettered.push(kind);
                return mark(tx, schema, event.event_id, Claim::Dead).await;
            }
        }
    }

    fn dead_letter(
        &self,
        raw: &RawRecord,
        kind: ErrorKind,
        message: String,
        attempts: u32,
        first_failure: DateTime<Utc>,
    ) -> OutboxRecord {
        let failure = Failure {
            kind,
            message,
            attempts,
            first_failure,
            last_failure: Utc::now(),
        };
        dlt::dead_letter(raw, &self.config.group_id, &self.config.service, &failure)
    }
}

enum Parsed {
    Poison(String),
    Event(Box<InboundEvent>),
    /// A known event type this handler does not act on.
    NotOurs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Fast,
    Safe,
}

/// Claims the inbox rows of a whole batch in two statements. Ids are inserted in sorted order,
/// so that two instances claiming overlapping batches during a rebalance take the row locks in
/// the same order and wait for each other instead of deadlocking.
async fn claim_all(
    tx: &mut PgConnection,
    schema: &str,
    batch: &[RawRecord],
    parsed: &[Parsed],
) -> anyhow::Result<std::collections::HashMap<Uuid, Existing>> {
    let mut rows: BTreeMap<Uuid, &RawRecord> = BTreeMap::new();
    for (raw, p) in batch.iter().zip(parsed) {
        match p {
            Parsed::Poison(_) => {
                rows.entry(position_id(raw)).or_insert(raw);
            }
            Parsed::Event(e) => {
                rows.entry(e.event_id).or_insert(raw);
            }
            Parsed::NotOurs => {}
        }
    }
    let mut claims = std::collections::HashMap::with_capacity(rows.len());
    if rows.is_empty() {
        return Ok(claims);
    }
    let ids: Vec<Uuid> = rows.keys().copied().collect();
    let topics: Vec<&str> = rows.values().map(|r| r.topic.as_str()).collect();
    let partitions: Vec<i32> = rows.values().map(|r| r.partition).collect();
    let offsets: Vec<i64> = rows.values().map(|r| r.offset).collect();
    let sql = format!(
        "INSERT INTO {schema}.inbox (event_id, topic, partition, \"offset\", status)
         SELECT id, t, p, o, 'done' FROM UNNEST($1::uuid[], $2::text[], $3::int[], $4::bigint[])
           AS u(id, t, p, o) ORDER BY id
         ON CONFLICT (event_id) DO NOTHING RETURNING event_id"
    );
    let inserted: Vec<Uuid> = sqlx::query_scalar(AssertSqlSafe(sql))
        .bind(&ids)
        .bind(&topics)
        .bind(&partitions)
        .bind(&offsets)
        .fetch_all(&mut *tx)
        .await
        .context("claiming inbox rows")?;
    for id in &inserted {
        claims.insert(*id, Existing::None);
    }
    if inserted.len() < ids.len() {
        let rest: Vec<Uuid> = ids
            .into_iter()
            .filter(|id| !claims.contains_key(id))
            .collect();
        // Locked, in id order: a `retrying` row is claimed by whoever locks it first, and a second
        // consumer holding the same retry copy (after a fenced-out member's partition moved)
        // waits, then sees it `done`.
        let sql = format!(
            "SELECT event_id, status FROM {schema}.inbox WHERE event_id = ANY($1)
             ORDER BY event_id FOR UPDATE"
        );
        let existing: Vec<(Uuid, String)> = sqlx::query_as(AssertSqlSafe(sql))
            .bind(&rest)
            .fetch_all(&mut *tx)
            .await
            .context("reading inbox rows")?;
        for (id, status) in existing {
            let e = match status.as_str() {
                "retrying" => Existing::Retrying,
                "dead" => Existing::Dead,
                _ => Existing::Done,
            };
            claims.insert(id, e);
        }
    }
    Ok(claims)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Claim {
    Done,
    Retrying,
    /// Dead-lettered: skipped on redelivery, but run again when an operator replays it.
    Dead,
}

impl Claim {
    fn as_str(&self) -> &'static str {
        match self {
            Claim::Done => "done",
            Claim::Dead => "dead",
            Claim::Retrying => "retrying",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Existing {
    None,
    Done,
    Retrying,
    Dead,
}

async fn mark(tx: &mut PgConnection, schema: &str, id: Uuid, status: Claim) -> anyhow::Result<()> {
    let sql =
        format!("UPDATE {schema}.inbox SET status = $2, processed_at = now() WHERE event_id = $1");
    sqlx::query(AssertSqlSafe(sql))
        .bind(id)
        .bind(status.as_str())
        .execute(&mut *tx)
        .await
        .context("updating the inbox row")?;
    Ok(())
}

fn position_id(raw: &RawRecord) -> Uuid {
    let origin = raw.origin();
    let name = format!("{}/{}/{}", origin.topic, origin.partition, origin.offset);
    Uuid::new_v5(&Uuid::NAMESPACE_URL, name.as_bytes())
}

/// Envelope, schema and type checks. The error text is the dead letter reason.
pub fn parse(raw: &RawRecord) -> Result<InboundEvent, String> {
    let bytes = raw
        .value
        .as_deref()
        .ok_or_else(|| "record has no value".to_owned())?;
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("value is not JSON: {e}"))?;
    let registry = SchemaRegistry::global();
    registry
        .validate_envelope(&value)
        .map_err(|e| e.to_string())?;
    let envelope: Envelope<serde_json::Value> =
        serde_json::from_value(value).map_err(|e| format!("invalid envelope: {e}"))?;
    registry
        .validate_data(
            &envelope.event_type,
            envelope.schema_version,
            &envelope.data,
        )
        .map_err(|e| e.to_string())?;
    Ok(InboundEvent {
        event_id: envelope.event_id,
        event_type: envelope.event_type,
        schema_version: envelope.schema_version,
        payment_id: envelope.payment_id,
        occurred_at: envelope.occurred_at,
        data: envelope.data,
        topic: raw.topic.clone(),
        partition: raw.partition,
        offset: raw.offset,
        traceparent: raw.header_str("traceparent").map(str::to_owned),
        correlation_id: raw.header_str("correlation_id").map(str::to_owned),
    })
}

fn to_raw(m: &BorrowedMessage<'_>) -> RawRecord {
    let headers = m
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
    RawRecord {
        topic: m.topic().to_owned(),
        partition: m.partition(),
        offset: m.offset(),
        timestamp_ms: m.timestamp().to_millis(),
        key: m.key().map(<[u8]>::to_vec),
        value: m.payload().map(<[u8]>::to_vec),
        headers,
    }
}

/// Commits the position after the last record of each partition in the batch. A failure is only
/// logged: the records come again and the inbox skips them.
fn commit(consumer: &RuntimeConsumer, batch: &[RawRecord]) {
    let mut next: BTreeMap<(&str, i32), i64> = BTreeMap::new();
    for r in batch {
        let e = next.entry((r.topic.as_str(), r.partition)).or_insert(0);
        *e = (*e).max(r.offset + 1);
    }
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), offset) in next {
        if let Err(e) = tpl.add_partition_offset(topic, partition, Offset::Offset(offset)) {
            tracing::warn!(error = %e, "building the offset list");
        }
    }
    if let Err(e) = consumer.commit(&tpl, CommitMode::Sync) {
        tracing::warn!(error = %e, "offset commit failed; the records will be redelivered and skipped by the inbox");
    }
}

/// Every 10 s, the records between each partition's committed offset and its high watermark,
/// summed per topic. Runs on a blocking thread: librdkafka's queries are synchronous.
async fn report_lag(
    consumer: Arc<RuntimeConsumer>,
    metrics: MessagingMetrics,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
        }
        let c = consumer.clone();
        let lag = tokio::task::spawn_blocking(move || -> Option<BTreeMap<String, i64>> {
            let committed = c.committed(Duration::from_secs(5)).ok()?;
            let mut per_topic = BTreeMap::new();
            for e in committed.elements() {
                let (low, high) = c
                    .fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(5))
                    .ok()?;
                let position = match e.offset() {
                    Offset::Offset(o) => o,
                    _ => low,
                };
                *per_topic.entry(e.topic().to_owned()).or_insert(0) += (high - position).max(0);
            }
            Some(per_topic)
        })
        .await;
        if let Ok(Some(per_topic)) = lag {
            for (topic, lag) in per_topic {
                metrics
                    .consumer_lag
                    .with_label_values(&[topic.as_str()])
                    .set(lag);
            }
        }
    }
}
