//! Support for the tests of the shared consumer runtime (`tests/tests/runtime_*.rs`,
//! `tests/tests/exactly_once.rs`) and for the `runtime-worker` binary they start.
//!
//! Every test gets a [`Case`]: its own topics (`rt-<label>-<hex>`, its retry topic and an output
//! topic), its own consumer group and its own Postgres schema, made by
//! `public.paystream_messaging_tables` plus an `effects` table WITHOUT a unique constraint, so a
//! record applied twice shows up as two rows. Everything runs against the real broker and
//! database named by `KAFKA_BOOTSTRAP_SERVERS` / `DATABASE_URL` (or the dev defaults).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::future::join_all;
use paystream_domain::{
    Amount, CaptureMode, Currency, CustomerId, MerchantId, PaymentId, PaymentMethod,
    PaymentRequested, topics,
};
use paystream_kit::CommonConfig;
use paystream_messaging::kafka::{base_config, producer_config};
use paystream_messaging::{
    ConsumerRuntime, Emitter, Handler, HandlerError, InboundEvent, MessagingMetrics, OutboxRecord,
    OutboxRelay, RetryPolicy, RuntimeConfig,
};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{Message, Offset, TopicPartitionList};
use sqlx::{AssertSqlSafe, PgConnection, PgPool};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// `dlt.service` of every runtime these tests start.
pub const SERVICE: &str = "rt-e2e";
/// The event type the test handler acts on.
pub const HANDLED_TYPE: &str = "payment.requested";
/// Metadata key of an emitted event naming the event that caused it.
pub const SOURCE_EVENT_ID: &str = "source_event_id";

/// Every header the dead letter contract (DESIGN.md §5) adds.
pub const DLT_CONTRACT_HEADERS: &[&str] = &[
    "dlt.original.topic",
    "dlt.original.partition",
    "dlt.original.offset",
    "dlt.original.timestamp",
    "dlt.consumer.group",
    "dlt.service",
    "dlt.error.kind",
    "dlt.error.message",
    "dlt.attempts",
    "dlt.first.failure",
    "dlt.last.failure",
];

pub fn init_tracing() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn,rdkafka=error".to_owned()),
            )
            .with_test_writer()
            .try_init();
    });
}

/// The broker and database of the test run.
#[derive(Clone)]
pub struct Env {
    pub common: CommonConfig,
    pub pool: PgPool,
}

impl Env {
    pub async fn connect(max_connections: u32) -> anyhow::Result<Self> {
        init_tracing();
        let common = CommonConfig::for_tests();
        let pool = paystream_kit::db::connect(&common.database_url, max_connections).await?;
        ensure_messaging_function(&pool).await?;
        Ok(Self { common, pool })
    }

    pub fn bootstrap(&self) -> &str {
        &self.common.kafka_bootstrap
    }
}

/// `public.paystream_messaging_tables` comes with the migrations, which are applied first.
async fn ensure_messaging_function(pool: &PgPool) -> anyhow::Result<()> {
    paystream_kit::db::migrate(pool).await
}

/// A short retry policy: 2 attempts in place (10–50 ms apart), then the retry topic after
/// 200 ms (doubling per pass), dead letter after 5 attempts in all.
pub fn short_retry() -> RetryPolicy {
    RetryPolicy {
        in_place_attempts: 2,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        max_attempts: 5,
        retry_topic_delay: Duration::from_millis(200),
    }
}

fn short_hex() -> String {
    Uuid::new_v4().simple().to_string()[..10].to_owned()
}

/// One test's private world: topics, consumer group, Postgres schema.
pub struct Case {
    pub env: Env,
    /// Name of the input topic, also the prefix of everything else of the case.
    pub topic: String,
    /// Where the test handler emits its events.
    pub out_topic: String,
    /// The consumer group of the case's first runtime (`<group>.retry` exists).
    pub group: String,
    pub schema: String,
    pub partitions: i32,
    dlt_start: HashMap<i32, i64>,
}

impl Case {
    pub async fn new(env: &Env, label: &str, partitions: i32) -> anyhow::Result<Self> {
        let hex = short_hex();
        let topic = format!("rt-{label}-{hex}");
        let case = Self {
            env: env.clone(),
            out_topic: format!("{topic}.out"),
            group: format!("{topic}-g1"),
            schema: format!("rt_{}_{hex}", label.replace('-', "_")),
            partitions,
            dlt_start: HashMap::new(),
            topic,
        };
        paystream_messaging::admin::ensure_topics(
            env.bootstrap(),
            &[
                case.topic.clone(),
                case.out_topic.clone(),
                topics::retry_topic(&case.group),
            ],
            partitions,
            1,
        )
        .await?;
        // Shared with the fleet, which creates it with 12 partitions; left as it is if present.
        paystream_messaging::admin::ensure_topics(
            env.bootstrap(),
            &[topics::PAYMENTS_DLT.to_owned()],
            12,
            1,
        )
        .await?;
        sqlx::query("SELECT public.paystream_messaging_tables($1)")
            .bind(&case.schema)
            .execute(&env.pool)
            .await
            .context("creating the test schema")?;
        let sql = format!(
            "CREATE TABLE {}.effects (
               event_id   uuid NOT NULL,
               payment_id text NOT NULL,
               n          int NOT NULL,
               applied_at timestamptz NOT NULL DEFAULT clock_timestamp()
             )",
            case.schema
        );
        sqlx::query(AssertSqlSafe(sql))
            .execute(&env.pool)
            .await
            .context("creating the effects table")?;
        // Only what arrives on the DLT from now on can be this case's.
        let start = watermarks(env.bootstrap(), topics::PAYMENTS_DLT).await?;
        Ok(Self {
            dlt_start: start.into_iter().map(|(p, (_, high))| (p, high)).collect(),
            ..case
        })
    }

    /// Creates `<group>.retry` for an additional consumer group of this case.
    pub async fn ensure_group(&self, group: &str) -> anyhow::Result<()> {
        paystream_messaging::admin::ensure_topics(
            self.env.bootstrap(),
            &[topics::retry_topic(group)],
            self.partitions,
            1,
        )
        .await?;
        Ok(())
    }

    pub fn retry_topic(&self) -> String {
        topics::retry_topic(&self.group)
    }

    /// A runtime configuration for this case's input topic.
    pub fn config(&self, group: &str, retry: RetryPolicy) -> RuntimeConfig {
        let mut cfg =
            RuntimeConfig::new(SERVICE, self.env.bootstrap(), &self.schema, &[&self.topic]);
        cfg.group_id = group.to_owned();
        cfg.max_batch = 100;
        cfg.batch_linger = Duration::from_millis(5);
        cfg.retry = retry;
        cfg
    }

    pub fn handler(&self) -> EffectHandler {
        EffectHandler::new(&self.schema)
    }

    /// Effect rows per event id.
    pub async fn effects(&self) -> anyhow::Result<HashMap<Uuid, i64>> {
        let sql = format!(
            "SELECT event_id, count(*) FROM {}.effects GROUP BY event_id",
            self.schema
        );
        let rows: Vec<(Uuid, i64)> = sqlx::query_as(AssertSqlSafe(sql))
            .fetch_all(&self.env.pool)
            .await?;
        Ok(rows.into_iter().collect())
    }

    /// `(count(*), count(DISTINCT event_id))` of the effects table.
    pub async fn effect_counts(&self) -> anyhow::Result<(i64, i64)> {
        let sql = format!(
            "SELECT count(*), count(DISTINCT event_id) FROM {}.effects",
            self.schema
        );
        Ok(sqlx::query_as(AssertSqlSafe(sql))
            .fetch_one(&self.env.pool)
            .await?)
    }

    pub async fn effect_rows_of(
        &self,
        event_id: Uuid,
    ) -> anyhow::Result<Vec<(i32, DateTime<Utc>)>> {
        let sql = format!(
            "SELECT n, applied_at FROM {}.effects WHERE event_id = $1 ORDER BY applied_at",
            self.schema
        );
        Ok(sqlx::query_as(AssertSqlSafe(sql))
            .bind(event_id)
            .fetch_all(&self.env.pool)
            .await?)
    }

    pub async fn inbox_count(&self) -> anyhow::Result<i64> {
        self.scalar(&format!("SELECT count(*) FROM {}.inbox", self.schema))
            .await
    }

    /// Inbox rows whose status is not `done`.
    pub async fn inbox_not_done(&self) -> anyhow::Result<i64> {
        self.scalar(&format!(
            "SELECT count(*) FROM {}.inbox WHERE status <> 'done'",
            self.schema
        ))
        .await
    }

    pub async fn inbox_status(&self, event_id: Uuid) -> anyhow::Result<Option<String>> {
        let sql = format!(
            "SELECT status FROM {}.inbox WHERE event_id = $1",
            self.schema
        );
        Ok(sqlx::query_scalar(AssertSqlSafe(sql))
            .bind(event_id)
            .fetch_optional(&self.env.pool)
            .await?)
    }

    pub async fn outbox_count(&self) -> anyhow::Result<i64> {
        self.scalar(&format!("SELECT count(*) FROM {}.outbox", self.schema))
            .await
    }

    async fn scalar(&self, sql: &str) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar(AssertSqlSafe(sql.to_owned()))
            .fetch_one(&self.env.pool)
            .await?)
    }

    /// The records on `payments.dlt` that came from this case's input topic, read from the
    /// position the topic had when the case was created.
    pub async fn dlt_records(&self) -> anyhow::Result<Vec<Rec>> {
        let all = read_from(self.env.bootstrap(), topics::PAYMENTS_DLT, &self.dlt_start).await?;
        Ok(all
            .into_iter()
            .filter(|r| r.header_str("dlt.original.topic") == Some(self.topic.as_str()))
            .collect())
    }

    /// Waits until at least `n` of this case's records are on `payments.dlt`.
    pub async fn wait_dlt(&self, n: usize, timeout: Duration) -> anyhow::Result<Vec<Rec>> {
        let deadline = Instant::now() + timeout;
        loop {
            let found = self.dlt_records().await?;
            if found.len() >= n {
                return Ok(found);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{} of {n} dead letters of {} after {timeout:?}",
                found.len(),
                self.topic
            );
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }

    /// Whole input/output topic, from the beginning to the current end.
    pub async fn read_topic(&self, topic: &str) -> anyhow::Result<Vec<Rec>> {
        read_from(self.env.bootstrap(), topic, &HashMap::new()).await
    }

    /// True once `group` has committed the end of every partition of the input topic.
    pub async fn group_caught_up(&self, group: &str) -> anyhow::Result<bool> {
        let ends = watermarks(self.env.bootstrap(), &self.topic).await?;
        let committed = committed_offsets(self.env.bootstrap(), group, &self.topic).await?;
        Ok(ends
            .iter()
            .all(|(p, (_, high))| committed.get(p).copied().unwrap_or(0) >= *high))
    }

    /// Drops the schema and deletes the topics (called when a test passed; a failed test leaves
    /// everything in place for a look).
    pub async fn cleanup(&self, extra_groups: &[&str]) {
        let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema);
        if let Err(e) = sqlx::query(AssertSqlSafe(sql))
            .execute(&self.env.pool)
            .await
        {
            eprintln!("dropping {}: {e}", self.schema);
        }
        let mut names = vec![
            self.topic.clone(),
            self.out_topic.clone(),
            self.retry_topic(),
        ];
        names.extend(extra_groups.iter().map(|g| topics::retry_topic(g)));
        if let Err(e) = delete_topics(self.env.bootstrap(), &names).await {
            eprintln!("deleting {names:?}: {e:#}");
        }
    }
}

// ----------------------------------------------------------------------------- the handler

/// Decides, per call, whether the handler fails: `(event, call number for this event id)`.
pub type FaultPlan = Arc<dyn Fn(&InboundEvent, u32) -> Option<HandlerError> + Send + Sync>;
type EventHook = Arc<dyn Fn(&InboundEvent) + Send + Sync>;
type CommitHook = Arc<dyn Fn(usize) + Send + Sync>;

/// One call of the handler, as the handler saw it.
#[derive(Debug, Clone)]
pub struct Call {
    pub started: DateTime<Utc>,
    pub failed: Option<DateTime<Utc>>,
}

/// Every call the handler received, per event id.
#[derive(Clone, Default)]
pub struct CallLog(Arc<Mutex<HashMap<Uuid, Vec<Call>>>>);

impl CallLog {
    pub fn of(&self, event_id: Uuid) -> Vec<Call> {
        self.lock().get(&event_id).cloned().unwrap_or_default()
    }

    /// Calls over all event ids.
    pub fn total(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Vec<Call>>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The test handler: inserts one `effects` row per call (inside the runtime's savepoint, BEFORE
/// deciding whether to fail, so that a rolled-back attempt that leaked would show up), then
/// optionally fails as the [`FaultPlan`] says, then optionally emits one event naming its cause.
#[derive(Clone)]
pub struct EffectHandler {
    schema: String,
    transactional: bool,
    emit_to: Option<String>,
    delay: Duration,
    fault: Option<FaultPlan>,
    on_handle: Option<EventHook>,
    on_commit: Option<CommitHook>,
    calls: CallLog,
}

impl EffectHandler {
    pub fn new(schema: &str) -> Self {
        Self {
            schema: schema.to_owned(),
            transactional: false,
            emit_to: None,
            delay: Duration::ZERO,
            fault: None,
            on_handle: None,
            on_commit: None,
            calls: CallLog::default(),
        }
    }

    /// Declare the effects transactional ([`Handler::effects_are_transactional`]): the runtime
    /// then handles batches without savepoints and redoes a failed batch with them.
    pub fn transactional(mut self, yes: bool) -> Self {
        self.transactional = yes;
        self
    }

    /// Emit one `payment.requested` event per applied record to `topic`, with the cause's
    /// event id in `metadata.source_event_id`.
    pub fn emitting_to(mut self, topic: &str) -> Self {
        self.emit_to = Some(topic.to_owned());
        self
    }

    /// Sleep this long in every call, holding the batch's transaction.
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    pub fn failing(mut self, plan: FaultPlan) -> Self {
        self.fault = Some(plan);
        self
    }

    pub fn on_handle(mut self, hook: impl Fn(&InboundEvent) + Send + Sync + 'static) -> Self {
        self.on_handle = Some(Arc::new(hook));
        self
    }

    pub fn on_commit(mut self, hook: impl Fn(usize) + Send + Sync + 'static) -> Self {
        self.on_commit = Some(Arc::new(hook));
        self
    }

    pub fn calls(&self) -> CallLog {
        self.calls.clone()
    }
}

#[async_trait]
impl Handler for EffectHandler {
    fn handles(&self, event_type: &str) -> bool {
        event_type == HANDLED_TYPE
    }

    fn effects_are_transactional(&self) -> bool {
        self.transactional
    }

    async fn handle(
        &self,
        tx: &mut PgConnection,
        event: &InboundEvent,
        out: &mut Emitter,
    ) -> Result<(), HandlerError> {
        let started = Utc::now();
        let call_no = {
            let mut calls = self.calls.lock();
            let list = calls.entry(event.event_id).or_default();
            list.push(Call {
                started,
                failed: None,
            });
            list.len() as u32
        };
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let sql = format!(
            "INSERT INTO {}.effects (event_id, payment_id, n) VALUES ($1, $2, $3)",
            self.schema
        );
        sqlx::query(AssertSqlSafe(sql))
            .bind(event.event_id)
            .bind(event.payment_id.to_string())
            .bind(call_no as i32)
            .execute(&mut *tx)
            .await?;
        if let Some(err) = self.fault.as_ref().and_then(|plan| plan(event, call_no)) {
            let mut calls = self.calls.lock();
            if let Some(call) = calls
                .get_mut(&event.event_id)
                .and_then(|l| l.get_mut(call_no as usize - 1))
            {
                call.failed = Some(Utc::now());
            }
            return Err(err);
        }
        if let Some(topic) = &self.emit_to {
            let mut data: PaymentRequested = event.data().map_err(HandlerError::Permanent)?;
            data.metadata
                .insert(SOURCE_EVENT_ID.to_owned(), event.event_id.to_string());
            let traceparent =
                paystream_messaging::trace::child_traceparent(event.traceparent.as_deref());
            let correlation = event
                .correlation_id
                .clone()
                .unwrap_or_else(|| event.payment_id.to_string());
            let mut record =
                OutboxRecord::event(event.payment_id, data, &traceparent, &correlation)?;
            record.topic = topic.clone();
            out.push(record);
        }
        if let Some(hook) = &self.on_handle {
            hook(event);
        }
        Ok(())
    }

    async fn after_commit(&self, payments: &[PaymentId]) {
        if let Some(hook) = &self.on_commit {
            hook(payments.len());
        }
    }
}

// ----------------------------------------------------------------------------- running it

/// A consumer runtime and the outbox relay of its schema, running on the current tokio runtime.
pub struct Running {
    stop: CancellationToken,
    relay_stop: CancellationToken,
    runtime: JoinHandle<anyhow::Result<()>>,
    relay: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    pub fn start<H: Handler>(env: &Env, config: RuntimeConfig, handler: H) -> anyhow::Result<Self> {
        Self::start_with(env, config, handler, CancellationToken::new())
    }

    /// Like [`Running::start`], stopped by `stop` (a signal token in the worker).
    pub fn start_with<H: Handler>(
        env: &Env,
        config: RuntimeConfig,
        handler: H,
        stop: CancellationToken,
    ) -> anyhow::Result<Self> {
        let registry = prometheus::Registry::new();
        let metrics = MessagingMetrics::new(&config.service, &registry)?;
        let producer: FutureProducer = producer_config(env.bootstrap())
            .create()
            .context("creating the relay producer")?;
        let relay = OutboxRelay::new(
            env.pool.clone(),
            &config.db_schema,
            producer,
            metrics.clone(),
        );
        let runtime = ConsumerRuntime::new(config, env.pool.clone(), handler, metrics);
        let relay_stop = CancellationToken::new();
        Ok(Self {
            runtime: tokio::spawn(runtime.run_until_stopped(stop.clone())),
            relay: tokio::spawn(relay.run_until_stopped(relay_stop.clone())),
            stop,
            relay_stop,
        })
    }

    /// Graceful stop in the order of a service: consumers finish and commit, then the relay
    /// publishes what they wrote.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.finish().await
    }

    /// Waits for the consumers to stop (their token was cancelled elsewhere), then the relay.
    pub async fn finish(self) -> anyhow::Result<()> {
        let consumed = self.runtime.await.context("runtime task")?;
        self.relay_stop.cancel();
        let relayed = self.relay.await.context("relay task")?;
        consumed.and(relayed)
    }
}

// ----------------------------------------------------------------------------- records

/// A Kafka record as produced or consumed; header values keep the null/empty distinction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rec {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl Rec {
    pub fn new(topic: &str, key: Option<&[u8]>, value: Option<&[u8]>) -> Self {
        Self {
            topic: topic.to_owned(),
            partition: -1,
            offset: -1,
            timestamp_ms: None,
            key: key.map(<[u8]>::to_vec),
            value: value.map(<[u8]>::to_vec),
            headers: Vec::new(),
        }
    }

    /// The record of an event as a producer of the fleet writes it, on `topic`.
    pub fn from_outbox(topic: &str, record: &OutboxRecord) -> Self {
        Self {
            headers: record
                .headers
                .iter()
                .map(|(n, v)| (n.clone(), Some(v.clone())))
                .collect(),
            ..Self::new(topic, record.key.as_deref(), Some(&record.value))
        }
    }

    pub fn with_header(mut self, name: &str, value: Option<&[u8]>) -> Self {
        self.headers
            .push((name.to_owned(), value.map(<[u8]>::to_vec)));
        self
    }

    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_deref())
    }

    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The headers not added by the runtime (`dlt.*`).
    pub fn non_dlt_headers(&self) -> Vec<(String, Option<Vec<u8>>)> {
        self.headers
            .iter()
            .filter(|(n, _)| !n.starts_with("dlt."))
            .cloned()
            .collect()
    }

    /// The envelope's `event_id`, if the value is an envelope.
    pub fn event_id(&self) -> Option<Uuid> {
        let v: serde_json::Value = serde_json::from_slice(self.value.as_deref()?).ok()?;
        Uuid::parse_str(v.get("event_id")?.as_str()?).ok()
    }

    /// `data.metadata.source_event_id` of an event the test handler emitted.
    pub fn source_event_id(&self) -> Option<Uuid> {
        let v: serde_json::Value = serde_json::from_slice(self.value.as_deref()?).ok()?;
        Uuid::parse_str(v.pointer("/data/metadata/source_event_id")?.as_str()?).ok()
    }
}

/// A valid `payment.requested` record for `payment`, on `topic`, keyed by the payment id.
pub fn requested(topic: &str, payment: PaymentId, amount: i64) -> anyhow::Result<Rec> {
    let data = PaymentRequested {
        merchant_id: MerchantId::parse("m_runtime_e2e")?,
        amount: Amount::new(amount)?,
        currency: Currency::parse("EUR")?,
        customer_id: CustomerId::parse("c_runtime_e2e")?,
        payment_method: PaymentMethod::parse("pm_card_visa")?,
        capture: CaptureMode::Automatic,
        description: None,
        metadata: BTreeMap::new(),
    };
    let traceparent = paystream_messaging::trace::new_traceparent();
    let record = OutboxRecord::event(payment, data, &traceparent, &format!("corr-{payment}"))?;
    Ok(Rec::from_outbox(topic, &record))
}

pub fn producer(bootstrap: &str) -> anyhow::Result<FutureProducer> {
    producer_config(bootstrap)
        .create()
        .context("creating the test producer")
}

/// Sends `rec` (to `rec.partition` when it is not -1); returns it with partition, offset and
/// timestamp filled in.
pub async fn send(producer: &FutureProducer, rec: &Rec) -> anyhow::Result<Rec> {
    let mut headers = OwnedHeaders::new_with_capacity(rec.headers.len());
    for (name, value) in &rec.headers {
        headers = headers.insert(Header {
            key: name,
            value: value.as_deref(),
        });
    }
    let mut record = FutureRecord::<[u8], [u8]>::to(&rec.topic).headers(headers);
    if let Some(k) = rec.key.as_deref() {
        record = record.key(k);
    }
    if let Some(v) = rec.value.as_deref() {
        record = record.payload(v);
    }
    if rec.partition >= 0 {
        record = record.partition(rec.partition);
    }
    if let Some(ts) = rec.timestamp_ms {
        record = record.timestamp(ts);
    }
    let delivery = producer
        .send(record, Timeout::After(Duration::from_secs(30)))
        .await
        .map_err(|(e, _)| anyhow::anyhow!("producing to {}: {e}", rec.topic))?;
    Ok(Rec {
        partition: delivery.partition,
        offset: delivery.offset,
        timestamp_ms: delivery.timestamp.to_millis().or(rec.timestamp_ms),
        ..rec.clone()
    })
}

/// Sends many records concurrently (in order of submission per partition).
pub async fn send_all(producer: &FutureProducer, recs: &[Rec]) -> anyhow::Result<Vec<Rec>> {
    let mut sent = Vec::with_capacity(recs.len());
    for chunk in recs.chunks(500) {
        for r in join_all(chunk.iter().map(|r| send(producer, r))).await {
            sent.push(r?);
        }
    }
    Ok(sent)
}

// ----------------------------------------------------------------------------- topics

fn reader_config(bootstrap: &str, group: &str) -> rdkafka::ClientConfig {
    let mut cfg = base_config(bootstrap);
    cfg.set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false");
    cfg
}

/// `partition -> (low, high)` of `topic`.
pub async fn watermarks(bootstrap: &str, topic: &str) -> anyhow::Result<HashMap<i32, (i64, i64)>> {
    let (bootstrap, topic) = (bootstrap.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || watermarks_blocking(&bootstrap, &topic)).await?
}

fn partitions_of(consumer: &BaseConsumer, topic: &str) -> anyhow::Result<Vec<i32>> {
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .with_context(|| format!("metadata of {topic}"))?;
    let t = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .with_context(|| format!("topic {topic} not in metadata"))?;
    anyhow::ensure!(t.error().is_none(), "topic {topic}: {:?}", t.error());
    Ok(t.partitions().iter().map(|p| p.id()).collect())
}

fn watermarks_blocking(bootstrap: &str, topic: &str) -> anyhow::Result<HashMap<i32, (i64, i64)>> {
    let consumer: BaseConsumer = reader_config(bootstrap, &format!("rt-reader-{}", short_hex()))
        .create()
        .context("creating a reader")?;
    let mut marks = HashMap::new();
    for p in partitions_of(&consumer, topic)? {
        let wm = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .with_context(|| format!("watermarks of {topic}/{p}"))?;
        marks.insert(p, wm);
    }
    Ok(marks)
}

/// Reads `topic` from `start` (partition -> offset; the beginning where absent) to the end it
/// has when the call starts, with a fresh consumer.
pub async fn read_from(
    bootstrap: &str,
    topic: &str,
    start: &HashMap<i32, i64>,
) -> anyhow::Result<Vec<Rec>> {
    let (bootstrap, topic, start) = (bootstrap.to_owned(), topic.to_owned(), start.clone());
    tokio::task::spawn_blocking(move || read_blocking(&bootstrap, &topic, &start)).await?
}

fn read_blocking(
    bootstrap: &str,
    topic: &str,
    start: &HashMap<i32, i64>,
) -> anyhow::Result<Vec<Rec>> {
    let consumer: BaseConsumer = reader_config(bootstrap, &format!("rt-reader-{}", short_hex()))
        .create()
        .context("creating a reader")?;
    let mut tpl = TopicPartitionList::new();
    let mut remaining: HashMap<i32, i64> = HashMap::new();
    for p in partitions_of(&consumer, topic)? {
        let (low, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?;
        let from = start.get(&p).copied().unwrap_or(low).max(low);
        if from < high {
            tpl.add_partition_offset(topic, p, Offset::Offset(from))?;
            remaining.insert(p, high);
        }
    }
    let mut out = Vec::new();
    if remaining.is_empty() {
        return Ok(out);
    }
    consumer.assign(&tpl)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !remaining.is_empty() {
        anyhow::ensure!(Instant::now() < deadline, "reading {topic} timed out");
        let Some(m) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = m.with_context(|| format!("reading {topic}"))?;
        if let Some(&end) = remaining.get(&m.partition()) {
            if m.offset() < end {
                out.push(to_rec(&m));
            }
            if m.offset() + 1 >= end {
                remaining.remove(&m.partition());
            }
        }
    }
    Ok(out)
}

fn to_rec(m: &rdkafka::message::BorrowedMessage<'_>) -> Rec {
    Rec {
        topic: m.topic().to_owned(),
        partition: m.partition(),
        offset: m.offset(),
        timestamp_ms: m.timestamp().to_millis(),
        key: m.key().map(<[u8]>::to_vec),
        value: m.payload().map(<[u8]>::to_vec),
        headers: m
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// `partition -> committed offset` of `group` on `topic` (partitions without a commit absent).
pub async fn committed_offsets(
    bootstrap: &str,
    group: &str,
    topic: &str,
) -> anyhow::Result<HashMap<i32, i64>> {
    let (bootstrap, group, topic) = (bootstrap.to_owned(), group.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = reader_config(&bootstrap, &group)
            .create()
            .context("creating an offset reader")?;
        let mut tpl = TopicPartitionList::new();
        for p in partitions_of(&consumer, &topic)? {
            tpl.add_partition(&topic, p);
        }
        let committed = consumer
            .committed_offsets(tpl, Duration::from_secs(10))
            .context("fetching committed offsets")?;
        Ok(committed
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some((e.partition(), o)),
                _ => None,
            })
            .collect())
    })
    .await?
}

pub async fn delete_topics(bootstrap: &str, names: &[String]) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = base_config(bootstrap).create()?;
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    admin
        .delete_topics(&refs, &AdminOptions::new())
        .await
        .context("deleting topics")?;
    Ok(())
}

// ----------------------------------------------------------------------------- waiting

/// Polls `check` every `every` until it returns true; fails with `what` after `timeout`.
pub async fn wait_until<F, Fut>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut check: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await? {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "timed out after {timeout:?}: {what}"
        );
        tokio::time::sleep(every).await;
    }
}
