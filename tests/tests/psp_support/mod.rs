//! Shared by the `psp_*` and `risk_*` tests: Kafka helpers (produce events, start a consumer
//! group at the end of the topics, read results) and a rig that runs only psp-gateway and two
//! psp-sims in-process, against the real broker and a database of its own.
//!
//! Driving the gateway with `payment.risk_decided` records directly is much faster than pushing
//! thousands of payments through the whole fleet, and it is the gateway's guarantees these tests
//! are about.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use paystream_domain::{
    Amount, CaptureMode, Currency, CustomerId, Event, MerchantId, PaymentId, PaymentMethod,
    PaymentRequested, RiskDecided, RiskDecision, topics,
};
use paystream_kit::CommonConfig;
use paystream_messaging::OutboxRecord;
use psp_sim::{Faults, SimConfig, SimHandle};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde_json::Value;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub fn bootstrap() -> String {
    CommonConfig::for_tests().kafka_bootstrap
}

pub fn producer() -> FutureProducer {
    paystream_messaging::kafka::producer_config(&bootstrap())
        .create()
        .expect("Kafka producer")
}

/// Sends one record exactly as an outbox relay would.
pub async fn send(producer: &FutureProducer, record: &OutboxRecord) {
    let mut headers = OwnedHeaders::new();
    for (k, v) in &record.headers {
        headers = headers.insert(Header {
            key: k,
            value: Some(v.as_slice()),
        });
    }
    let mut r = FutureRecord::to(&record.topic)
        .payload(&record.value)
        .headers(headers);
    if let Some(k) = &record.key {
        r = r.key(k);
    }
    producer
        .send(r, Duration::from_secs(30))
        .await
        .map_err(|(e, _)| e)
        .expect("producing a record");
}

pub fn record<E: Event>(payment_id: PaymentId, data: E) -> OutboxRecord {
    OutboxRecord::event(
        payment_id,
        data,
        &paystream_messaging::trace::new_traceparent(),
        &payment_id.to_string(),
    )
    .expect("building a record")
}

/// Creates `topics` if needed (12 partitions, as the fleet does).
pub async fn ensure_topics(names: &[String]) {
    paystream_messaging::admin::ensure_topics(&bootstrap(), names, 12, 1)
        .await
        .expect("creating topics");
}

fn partitions(consumer: &BaseConsumer, topic: &str) -> Vec<i32> {
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("topic metadata");
    md.topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect()
}

/// Commits `group`'s offsets at the end of `topics`, so that a service started in that group
/// reads only what is produced from now on (not every record earlier test runs left behind).
pub fn skip_history(group: &str, topic_names: &[&str]) {
    let consumer: BaseConsumer = paystream_messaging::kafka::consumer_config(&bootstrap(), group)
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for topic in topic_names {
        for p in partitions(&consumer, topic) {
            let (_, high) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .expect("watermarks");
            tpl.add_partition_offset(topic, p, Offset::Offset(high))
                .expect("offset");
        }
    }
    consumer
        .commit(&tpl, CommitMode::Sync)
        .expect("committing start offsets");
}

/// One consumed event.
#[derive(Debug, Clone)]
pub struct Seen {
    pub payment_id: String,
    pub event_id: String,
    pub event_type: String,
    pub data: Value,
}

/// Reads a topic from its end at creation time, keeping only the payments a test cares about.
pub struct TopicReader {
    consumer: BaseConsumer,
    pub seen: Vec<Seen>,
}

impl TopicReader {
    pub fn at_end(topic: &str) -> Self {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap())
            .set("group.id", format!("reader-{}", uuid::Uuid::new_v4()))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .create()
            .expect("reader");
        let mut tpl = TopicPartitionList::new();
        for p in partitions(&consumer, topic) {
            let (_, high) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .expect("watermarks");
            tpl.add_partition_offset(topic, p, Offset::Offset(high))
                .expect("offset");
        }
        consumer.assign(&tpl).expect("assigning partitions");
        Self {
            consumer,
            seen: Vec::new(),
        }
    }

    /// Polls for up to `budget`, keeping events whose payment id satisfies `wanted`.
    pub fn poll(&mut self, budget: Duration, wanted: &dyn Fn(&str) -> bool) {
        let until = Instant::now() + budget;
        while Instant::now() < until {
            let Some(msg) = self.consumer.poll(Duration::from_millis(100)) else {
                continue;
            };
            let Ok(msg) = msg else { continue };
            let Some(payload) = msg.payload() else {
                continue;
            };
            let Ok(v) = serde_json::from_slice::<Value>(payload) else {
                continue;
            };
            let pid = v["payment_id"].as_str().unwrap_or_default().to_owned();
            if !wanted(&pid) {
                continue;
            }
            let _ = msg.headers().map(|h| h.count());
            self.seen.push(Seen {
                payment_id: pid,
                event_id: v["event_id"].as_str().unwrap_or_default().to_owned(),
                event_type: v["event_type"].as_str().unwrap_or_default().to_owned(),
                data: v["data"].clone(),
            });
        }
    }

    /// Polls until `done(seen)` holds or `timeout` passes; returns whether it held.
    pub fn wait_until(
        &mut self,
        timeout: Duration,
        wanted: &dyn Fn(&str) -> bool,
        done: &dyn Fn(&[Seen]) -> bool,
    ) -> bool {
        let until = Instant::now() + timeout;
        loop {
            if done(&self.seen) {
                return true;
            }
            if Instant::now() > until {
                return false;
            }
            self.poll(Duration::from_millis(300), wanted);
        }
    }

    /// Distinct events (by event id; a relay may publish a record twice) per payment.
    pub fn by_payment(&self, event_type: &str) -> HashMap<String, Vec<Seen>> {
        self.by_payment_where(event_type, &|_| true)
    }

    /// Like [`Self::by_payment`], for the events `keep` accepts.
    pub fn by_payment_where(
        &self,
        event_type: &str,
        keep: &dyn Fn(&Seen) -> bool,
    ) -> HashMap<String, Vec<Seen>> {
        let mut out: HashMap<String, BTreeMap<String, Seen>> = HashMap::new();
        for s in self
            .seen
            .iter()
            .filter(|s| s.event_type == event_type && keep(s))
        {
            out.entry(s.payment_id.clone())
                .or_default()
                .insert(s.event_id.clone(), s.clone());
        }
        out.into_iter()
            .map(|(k, v)| (k, v.into_values().collect()))
            .collect()
    }
}

pub fn requested(
    merchant: &str,
    customer: &str,
    amount: i64,
    currency: &str,
    pm: &str,
    capture: CaptureMode,
) -> PaymentRequested {
    PaymentRequested {
        merchant_id: MerchantId::parse(merchant).expect("merchant"),
        amount: Amount::new(amount).expect("amount"),
        currency: Currency::parse(currency).expect("currency"),
        customer_id: CustomerId::parse(customer).expect("customer"),
        payment_method: PaymentMethod::parse(pm).expect("payment method"),
        capture,
        description: None,
        metadata: Default::default(),
    }
}

pub fn approved(request: PaymentRequested) -> RiskDecided {
    RiskDecided {
        decision: RiskDecision::Approved,
        score: 10,
        reasons: vec!["amount_limit: test".to_owned()],
        request,
    }
}

/// A port nobody listens on right now (bound then released), so the gateway's address can be
/// handed to the simulators as their webhook target before the gateway starts.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

pub struct RigOptions {
    pub alpha: Faults,
    pub beta: Faults,
    /// Send the simulators' webhooks to the gateway.
    pub webhooks: bool,
    pub webhook_secret_alpha: String,
    /// Put a switchable proxy between the gateway and alpha: while the flag is false, alpha
    /// accepts connections and never answers (a PSP that hangs; nothing reaches its ledger).
    pub alpha_switch: Option<Arc<AtomicBool>>,
    pub tune: Box<dyn FnOnce(&mut psp_gateway::Config) + Send>,
}

impl Default for RigOptions {
    fn default() -> Self {
        Self {
            alpha: Faults::default(),
            beta: Faults::default(),
            webhooks: false,
            webhook_secret_alpha: "whsec_alpha".to_owned(),
            alpha_switch: None,
            tune: Box::new(|_| {}),
        }
    }
}

/// Every rig's gateway reads every record produced on the shared topics while it runs and
/// charges it at its own simulators, publishing results for the same payment ids; the tests of
/// one binary therefore take turns.
static RIG_TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub struct Rig {
    _turn: tokio::sync::MutexGuard<'static, ()>,
    pub alpha: SimHandle,
    pub beta: SimHandle,
    pub alpha_url: String,
    pub beta_url: String,
    pub gateway_url: String,
    pub database_url: String,
    pub group: String,
    pub shutdown: CancellationToken,
}

impl Rig {
    /// Charge ids in this rig's PSP ledgers.
    pub fn charge_ids(&self) -> std::collections::HashSet<String> {
        self.alpha
            .charges()
            .into_iter()
            .chain(self.beta.charges())
            .map(|c| c.id)
            .collect()
    }

    /// Whether an event on `payments.psp-results` can be this rig's: other fleets running on the
    /// same broker at the same time (other test binaries, a developer's fleet) consume the same
    /// shared topics and publish their own results for these payment ids, with charges from
    /// their own simulators. An event naming a charge is ours only if our ledgers hold it.
    pub fn owns(&self, charge_ids: &std::collections::HashSet<String>, s: &Seen) -> bool {
        s.data["charge_id"]
            .as_str()
            .is_none_or(|c| charge_ids.contains(c))
    }

    pub async fn pool(&self) -> PgPool {
        paystream_kit::db::connect(&self.database_url, 4)
            .await
            .expect("rig database")
    }

    /// Live charges (authorised, captured or canceled later) for a payment at both PSPs.
    pub fn live_charges(&self, payment: &str) -> usize {
        self.alpha.charge_count_for_reference(payment)
            + self.beta.charge_count_for_reference(payment)
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.gateway_url))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// A metric's value from the Prometheus text, `0` when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics().await, series)
    }
}

pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// psp-sim alpha and beta, and psp-gateway in its own consumer group and database, reading only
/// what is produced after it starts.
pub async fn start_rig(opts: RigOptions) -> Rig {
    let turn = RIG_TURN.lock().await;
    let iso = paystream_e2e::isolate().await.expect("isolated database");
    let group = iso.group(psp_gateway::SERVICE);
    ensure_topics(
        &topics::ALL
            .iter()
            .map(|t| (*t).to_owned())
            .collect::<Vec<_>>(),
    )
    .await;
    paystream_messaging::admin::ensure_topics(&bootstrap(), &[topics::retry_topic(&group)], 2, 1)
        .await
        .expect("retry topic");
    skip_history(
        &group,
        &[topics::PAYMENTS_RISK_DECIDED, topics::PAYMENTS_COMMANDS],
    );

    let shutdown = CancellationToken::new();
    let gateway_port = free_port();
    let mut sims = Vec::new();
    for (name, faults) in [("alpha", opts.alpha), ("beta", opts.beta)] {
        let webhook_secret = if name == "alpha" {
            opts.webhook_secret_alpha.clone()
        } else {
            "whsec_beta".to_owned()
        };
        let config = SimConfig {
            name: name.to_owned(),
            api_key: format!("sk_test_{name}"),
            webhook_secret,
            webhook_url: opts
                .webhooks
                .then(|| format!("http://127.0.0.1:{gateway_port}/webhooks/{name}")),
            faults,
        };
        let app = psp_sim::build(config, "127.0.0.1:0")
            .await
            .expect("psp-sim");
        let url = app.base_url();
        let handle = app.handle();
        let stop = shutdown.clone();
        tokio::spawn(app.run_until_stopped(async move { stop.cancelled().await }));
        sims.push((url, handle));
    }
    let (alpha_url, alpha) = sims.remove(0);
    let (beta_url, beta) = sims.remove(0);

    let mut config = psp_gateway::Config::from_env().expect("gateway config");
    config.common = CommonConfig::for_tests();
    config.common.database_url = iso.database_url.clone();
    config.common.group_id = Some(group.clone());
    config.common.admin_addr = format!("127.0.0.1:{gateway_port}");
    for psp in &mut config.psps {
        if psp.name == "alpha" {
            psp.url = match &opts.alpha_switch {
                Some(on) => {
                    let target = alpha_url.trim_start_matches("http://").to_owned();
                    format!(
                        "http://127.0.0.1:{}",
                        blackhole_proxy(target, on.clone()).await
                    )
                }
                None => alpha_url.clone(),
            };
            psp.webhook_secret = opts.webhook_secret_alpha.clone();
        } else {
            psp.url = beta_url.clone();
            psp.webhook_secret = "whsec_beta".to_owned();
        }
    }
    (opts.tune)(&mut config);
    let app = psp_gateway::build(config).await.expect("psp-gateway");
    let gateway_url = format!("http://127.0.0.1:{}", app.admin_port());
    let stop = shutdown.clone();
    tokio::spawn(async move {
        if let Err(e) = app.run_until_stopped(stop).await {
            eprintln!("psp-gateway stopped with an error: {e:#}");
        }
    });
    Rig {
        _turn: turn,
        alpha,
        beta,
        alpha_url,
        beta_url,
        gateway_url,
        database_url: iso.database_url,
        group,
        shutdown,
    }
}

/// `GET /sim/stats` of a simulator: how often each injected fault fired.
pub async fn sim_stats(base_url: &str) -> Value {
    reqwest::get(format!("{base_url}/sim/stats"))
        .await
        .expect("GET /sim/stats")
        .json()
        .await
        .expect("stats JSON")
}

impl Drop for Rig {
    /// A failed test stops its services too, before the next test's rig takes its turn.
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A TCP proxy to `target` (host:port). While `on` is false it accepts connections and never
/// answers on them, and cuts the ones it was forwarding: to a client, a PSP that hangs.
pub async fn blackhole_proxy(target: String, on: Arc<AtomicBool>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("proxy listener");
    let port = listener.local_addr().expect("proxy address").port();
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                continue;
            };
            let target = target.clone();
            let on = on.clone();
            tokio::spawn(async move {
                let while_off = async {
                    while !on.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                };
                let while_on = async {
                    while on.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                };
                if !on.load(Ordering::SeqCst) {
                    // Hold the connection silently; drop it once the PSP is "back".
                    while_off.await;
                    return;
                }
                let Ok(mut server) = tokio::net::TcpStream::connect(&target).await else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                    _ = while_on => {}
                }
            });
        }
    });
    port
}
