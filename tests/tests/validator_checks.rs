//! The validator against the real Kafka, Postgres and two psp-sim PSPs: payments are charged at
//! the PSPs directly over the wire protocol and their events produced straight onto the
//! contract topics, then the real order store, account store and validator (in-process) do their
//! work. Faults are planted on purpose (a lost ledger effect, a second charge, a capture the PSP
//! never made, amounts that disagree, a ledger edited behind the store's back); a clean run of
//! thousands of payments must report nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use futures::StreamExt;

use paystream_domain::{
    Amount, CaptureMode, Currency, CustomerId, Event, MerchantId, PaymentCanceled, PaymentCaptured,
    PaymentId, PaymentMethod, PaymentRefunded, PaymentRequested, PspOutcome, PspResult,
    RiskDecided, RiskDecision, topics,
};
use paystream_kit::CommonConfig;
use paystream_messaging::Envelope;
use paystream_messaging::kafka::{base_config, producer_config};
use psp_sim::{SimConfig, SimHandle};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::{Value, json};
use sqlx::{PgPool, Row};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Long enough for the stores to catch up with a burst of thousands of payments on two cores;
/// a planted fault is reported this long after its payment settles.
const GRACE: Duration = Duration::from_secs(20);
const RECONCILE_EVERY: Duration = Duration::from_secs(2);

struct Fleet {
    run_id: String,
    bootstrap: String,
    database_url: String,
    psp_urls: HashMap<&'static str, String>,
    alpha: SimHandle,
    validator_admin_port: u16,
    validation_start: Vec<(i32, i64)>,
    _shutdown: CancellationToken,
}

fn fleet() -> &'static Fleet {
    static CELL: OnceLock<Fleet> = OnceLock::new();
    paystream_e2e::start_once(&CELL, "the validator fleet", start)
}

async fn start() -> anyhow::Result<Fleet> {
    paystream_e2e::init_test_logs();
    let base = CommonConfig::for_tests();
    let iso = paystream_e2e::isolate().await?;
    let services = [
        order_store::SERVICE,
        account_store::SERVICE,
        validator::SERVICE,
    ];
    let groups: Vec<String> = services.iter().map(|s| iso.group(s)).collect();
    paystream_messaging::admin::ensure_topics(
        &base.kafka_bootstrap,
        &payctl::fleet_topics(),
        12,
        1,
    )
    .await?;
    let retry: Vec<String> = groups.iter().map(|g| topics::retry_topic(g)).collect();
    paystream_messaging::admin::ensure_topics(&base.kafka_bootstrap, &retry, 2, 1).await?;
    // The fleet consumes its own copies of the input topics: other fleets and load generators
    // on the shared broker cannot slow it down or reach its database.
    let namespace = format!("e2e-{}", iso.run_id);
    let inputs: Vec<String> = [
        topics::PAYMENTS_REQUESTED,
        topics::PAYMENTS_RISK_DECIDED,
        topics::PAYMENTS_PSP_RESULTS,
        topics::LEDGER_POSTINGS,
    ]
    .iter()
    .map(|t| format!("{namespace}.{t}"))
    .collect();
    // Three partitions: enough for three instances of a group, few enough to leave little
    // behind on the broker.
    paystream_messaging::admin::ensure_topics(&base.kafka_bootstrap, &inputs, 3, 1).await?;
    let validation_start = topic_end(&base.kafka_bootstrap, topics::PAYMENTS_VALIDATION).await?;

    let shutdown = CancellationToken::new();
    let mut psp_urls = HashMap::new();
    let mut handles = Vec::new();
    for name in ["alpha", "beta"] {
        let config = SimConfig {
            name: name.to_owned(),
            api_key: format!("sk_test_{name}"),
            webhook_secret: format!("whsec_{name}"),
            ..SimConfig::default()
        };
        let app = psp_sim::build(config, "127.0.0.1:0").await?;
        psp_urls.insert(name, app.base_url());
        handles.push(app.handle());
        let stop = shutdown.clone();
        tokio::spawn(app.run_until_stopped(async move { stop.cancelled().await }));
    }

    let common = |service: &str| {
        let mut c = CommonConfig::for_tests();
        c.group_id = Some(iso.group(service));
        c.database_url = iso.database_url.clone();
        c
    };
    let mut orders = order_store::Config::from_env()?;
    orders.common = common(order_store::SERVICE);
    orders.topic_namespace = Some(namespace.clone());
    spawn(
        order_store::build(orders)
            .await?
            .run_until_stopped(shutdown.clone()),
    );
    let mut accounts = account_store::Config::from_env()?;
    accounts.common = common(account_store::SERVICE);
    accounts.topic_namespace = Some(namespace.clone());
    spawn(
        account_store::build(accounts)
            .await?
            .run_until_stopped(shutdown.clone()),
    );
    let mut val = validator::Config::from_env()?;
    val.common = common(validator::SERVICE);
    val.topic_namespace = Some(namespace.clone());
    for psp in &mut val.psps {
        psp.url = psp_urls[psp.name.as_str()].clone();
    }
    val.timing.settle_delay = Duration::from_millis(300);
    val.timing.grace = GRACE;
    val.reconcile_interval = RECONCILE_EVERY;
    let app = validator::build(val).await?;
    let validator_admin_port = app.admin_port();
    spawn(app.run_until_stopped(shutdown.clone()));

    Ok(Fleet {
        run_id: iso.run_id.clone(),
        bootstrap: base.kafka_bootstrap,
        database_url: iso.database_url.clone(),
        psp_urls,
        alpha: handles.remove(0),
        validator_admin_port,
        validation_start,
        _shutdown: shutdown,
    })
}

fn spawn(fut: impl std::future::Future<Output = anyhow::Result<()>> + Send + 'static) {
    tokio::spawn(async move {
        if let Err(e) = fut.await {
            eprintln!("fleet task failed: {e:#}");
        }
    });
}

async fn topic_end(bootstrap: &str, topic: &str) -> anyhow::Result<Vec<(i32, i64)>> {
    let bootstrap = bootstrap.to_owned();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let probe: BaseConsumer = base_config(&bootstrap).create()?;
        let timeout = Duration::from_secs(10);
        let metadata = probe.fetch_metadata(Some(&topic), timeout)?;
        let mut ends = Vec::new();
        for t in metadata.topics() {
            for p in t.partitions() {
                let (_, high) = probe.fetch_watermarks(&topic, p.id(), timeout)?;
                ends.push((p.id(), high));
            }
        }
        Ok(ends)
    })
    .await?
}

// ---- the PSPs --------------------------------------------------------------------------------

#[derive(Clone)]
struct Psp {
    name: &'static str,
    url: String,
    http: reqwest::Client,
}

fn psp(name: &'static str) -> Psp {
    Psp {
        name,
        url: fleet().psp_urls[name].clone(),
        http: reqwest::Client::new(),
    }
}

impl Psp {
    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.url))
            .bearer_auth(format!("sk_test_{}", self.name))
            .header("Idempotency-Key", Uuid::new_v4().to_string())
            .json(&body)
            .send()
            .await
            .expect("PSP call");
        let status = r.status().as_u16();
        (status, r.json().await.expect("PSP JSON"))
    }

    /// A charge for `reference`; returns its id (a declined one too).
    async fn charge(
        &self,
        reference: PaymentId,
        amount: i64,
        currency: &str,
        capture: bool,
        pm: &str,
    ) -> String {
        let (status, body) = self
            .post(
                "/v1/charges",
                json!({"amount": amount, "currency": currency, "payment_method": pm,
                       "capture": capture, "reference": reference.to_string()}),
            )
            .await;
        let id = if status == 402 {
            body["error"]["charge"].as_str()
        } else {
            assert_eq!(status, 200, "{body}");
            body["id"].as_str()
        };
        id.expect("charge id").to_owned()
    }

    async fn capture(&self, charge: &str, amount: i64) {
        let (status, body) = self
            .post(
                &format!("/v1/charges/{charge}/capture"),
                json!({"amount": amount}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }

    async fn cancel(&self, charge: &str) {
        let (status, body) = self
            .post(&format!("/v1/charges/{charge}/cancel"), json!({}))
            .await;
        assert_eq!(status, 200, "{body}");
    }

    /// Returns the PSP's refund id.
    async fn refund(&self, charge: &str, amount: i64) -> String {
        let (status, body) = self
            .post("/v1/refunds", json!({"charge": charge, "amount": amount}))
            .await;
        assert_eq!(status, 200, "{body}");
        body["id"].as_str().expect("refund id").to_owned()
    }
}

// ---- events ----------------------------------------------------------------------------------

#[derive(Clone)]
struct Rec {
    topic: String,
    event_type: &'static str,
    key: String,
    value: Vec<u8>,
    event_id: Uuid,
}

fn rec<E: Event>(id: PaymentId, data: E) -> Rec {
    let envelope = Envelope::new(id, data);
    Rec {
        topic: format!("{}.{}", namespace(), E::TOPIC),
        event_type: E::EVENT_TYPE,
        key: id.to_string(),
        value: serde_json::to_vec(&envelope).expect("envelope JSON"),
        event_id: envelope.event_id,
    }
}

async fn produce(producer: &FutureProducer, recs: &[Rec]) {
    let mut pending = Vec::with_capacity(recs.len());
    for r in recs {
        let traceparent = paystream_messaging::trace::new_traceparent();
        let headers = rdkafka::message::OwnedHeaders::new()
            .insert(rdkafka::message::Header {
                key: "event_type",
                value: Some(r.event_type),
            })
            .insert(rdkafka::message::Header {
                key: "traceparent",
                value: Some(traceparent.as_str()),
            })
            .insert(rdkafka::message::Header {
                key: "correlation_id",
                value: Some(r.key.as_str()),
            });
        let mut record = FutureRecord::to(&r.topic)
            .key(r.key.as_str())
            .payload(r.value.as_slice())
            .headers(headers);
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    pending.push(delivery);
                    break;
                }
                Err((_, back)) => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
    }
    for delivery in futures::future::join_all(pending).await {
        let result = delivery.expect("delivery future");
        assert!(result.is_ok(), "produce failed: {:?}", result.err());
    }
}

fn producer() -> FutureProducer {
    producer_config(&fleet().bootstrap)
        .create()
        .expect("producer")
}

fn merchant(label: &str) -> MerchantId {
    MerchantId::parse(&format!("m_{}_{label}", fleet().run_id)).expect("merchant id")
}

fn cur(code: &str) -> Currency {
    Currency::parse(code).expect("currency")
}

fn request(m: &MerchantId, amount: i64, currency: &str, capture: CaptureMode) -> PaymentRequested {
    PaymentRequested {
        merchant_id: m.clone(),
        amount: Amount::new(amount).expect("amount"),
        currency: cur(currency),
        customer_id: CustomerId::parse("cus_1").expect("customer"),
        payment_method: PaymentMethod::parse("pm_card_visa").expect("pm"),
        capture,
        description: None,
        metadata: BTreeMap::new(),
    }
}

fn decided(req: &PaymentRequested, decision: RiskDecision) -> RiskDecided {
    RiskDecided {
        decision,
        score: 10,
        reasons: vec!["test".into()],
        request: req.clone(),
    }
}

struct Outcome {
    outcome: PspOutcome,
    psp: &'static str,
    charge: Option<String>,
    captured: i64,
}

fn psp_result(req: &PaymentRequested, r: Outcome) -> PspResult {
    PspResult {
        merchant_id: req.merchant_id.clone(),
        outcome: r.outcome,
        psp: r.psp.into(),
        charge_id: r.charge,
        amount: req.amount,
        currency: req.currency,
        amount_captured: r.captured,
        decline_code: (r.outcome == PspOutcome::Declined).then(|| "card_declined".into()),
        message: (r.outcome == PspOutcome::Failed).then(|| "every PSP unavailable".into()),
    }
}

fn refunded(
    req: &PaymentRequested,
    psp: &str,
    charge: &str,
    psp_refund: &str,
    amount: i64,
) -> PaymentRefunded {
    PaymentRefunded {
        merchant_id: req.merchant_id.clone(),
        refund_id: format!("re_{}", Uuid::new_v4().simple()),
        psp: psp.into(),
        charge_id: charge.into(),
        psp_refund_id: psp_refund.into(),
        amount: Amount::new(amount).expect("amount"),
        currency: req.currency,
    }
}

/// An automatic capture: charged at `psp`, then requested, approved and succeeded.
async fn automatic(
    m: &MerchantId,
    psp: &Psp,
    amount: i64,
    currency: &str,
) -> (PaymentId, PaymentRequested, String, Vec<Rec>) {
    let id = PaymentId::new();
    let req = request(m, amount, currency, CaptureMode::Automatic);
    let charge = psp.charge(id, amount, currency, true, "pm_card_visa").await;
    let recs = vec![
        rec(id, req.clone()),
        rec(id, decided(&req, RiskDecision::Approved)),
        rec(
            id,
            psp_result(
                &req,
                Outcome {
                    outcome: PspOutcome::Succeeded,
                    psp: psp.name,
                    charge: Some(charge.clone()),
                    captured: amount,
                },
            ),
        ),
    ];
    (id, req, charge, recs)
}

// ---- reading ---------------------------------------------------------------------------------

async fn pool() -> PgPool {
    paystream_kit::db::connect(&fleet().database_url, 5)
        .await
        .expect("test database")
}

/// (payment id, kind, message, source) of the discrepancies about `ids`.
async fn discrepancies(pool: &PgPool, ids: &[Uuid]) -> Vec<(Uuid, String, String, String)> {
    sqlx::query(
        "SELECT payment_id, kind, message, source FROM validator.discrepancies
         WHERE payment_id = ANY($1) ORDER BY id",
    )
    .bind(ids)
    .fetch_all(pool)
    .await
    .expect("discrepancies")
    .into_iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
    .collect()
}

async fn ledger_wide(pool: &PgPool) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT kind, message FROM validator.discrepancies WHERE payment_id IS NULL ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .expect("ledger-wide discrepancies")
}

async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + limit;
    loop {
        match check().await {
            Ok(()) => return,
            Err(why) if Instant::now() > deadline => panic!("{what}: {why}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
}

async fn metrics() -> String {
    reqwest::get(format!(
        "http://127.0.0.1:{}/metrics",
        fleet().validator_admin_port
    ))
    .await
    .expect("metrics")
    .text()
    .await
    .expect("metrics body")
}

/// The discrepancy kinds of the `payment.validated` records published since the fleet started
/// about each of `wanted` (payment id, a kind to wait for), by payment id.
async fn validated_kinds(
    limit: Duration,
    wanted: Vec<(String, String)>,
) -> HashMap<String, BTreeSet<String>> {
    let f = fleet();
    let (bootstrap, start, run) = (
        f.bootstrap.clone(),
        f.validation_start.clone(),
        f.run_id.clone(),
    );
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = base_config(&bootstrap)
            .set("group.id", format!("e2e-{run}-validation-reader"))
            .set("enable.auto.commit", "false")
            .create()
            .expect("reader");
        let mut tpl = TopicPartitionList::new();
        for (partition, offset) in &start {
            tpl.add_partition_offset(
                topics::PAYMENTS_VALIDATION,
                *partition,
                Offset::Offset(*offset),
            )
            .expect("offset");
        }
        consumer.assign(&tpl).expect("assign");
        let deadline = Instant::now() + limit;
        let mut found: HashMap<String, BTreeSet<String>> = HashMap::new();
        let done = |found: &HashMap<String, BTreeSet<String>>| {
            wanted
                .iter()
                .all(|(id, kind)| found.get(id).is_some_and(|k| k.contains(kind)))
        };
        while Instant::now() < deadline && !done(&found) {
            let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let Ok(envelope) = serde_json::from_slice::<Value>(m.payload().unwrap_or_default())
            else {
                continue;
            };
            let Some(id) = envelope["payment_id"].as_str() else {
                continue;
            };
            if !wanted.iter().any(|(w, _)| w == id) {
                continue;
            }
            let kinds = envelope["data"]["discrepancies"]
                .as_array()
                .map(|d| {
                    d.iter()
                        .filter_map(|x| x["kind"].as_str().map(str::to_owned))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default();
            found.entry(id.to_owned()).or_default().extend(kinds);
        }
        found
    })
    .await
    .expect("reader task")
}

// ---- tests -----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_validator_catches_each_planted_fault() {
    let f = fleet();
    let pool = pool().await;
    let p = producer();
    let (alpha, beta) = (psp("alpha"), psp("beta"));
    let m = merchant("faults");
    let mut recs = Vec::new();

    // A clean payment beside the faults.
    let (clean, _, _, more) = automatic(&m, &alpha, 1_000, "EUR").await;
    recs.extend(more);

    // 1. A missing ledger transfer: the account store's inbox already holds the result's event
    //    id, as if the effect had been lost after the claim.
    let (lost, _, _, more) = automatic(&m, &alpha, 1_100, "EUR").await;
    let result_event = more[2].event_id;
    sqlx::query(
        "INSERT INTO account_store.inbox (event_id, topic, partition, \"offset\", status)
         VALUES ($1, 'payments.psp-results', 0, 0, 'done')",
    )
    .bind(result_event)
    .execute(&pool)
    .await
    .expect("planting the lost effect");
    recs.extend(more);

    // 2. A doubled PSP charge: a second charge for the same payment under another key.
    let (doubled, _, _, more) = automatic(&m, &alpha, 1_200, "EUR").await;
    alpha
        .charge(doubled, 1_200, "EUR", true, "pm_card_visa")
        .await;
    recs.extend(more);

    // 3. An order captured without a charge: the events say succeeded, no PSP charged.
    let ghost = PaymentId::new();
    let req = request(&m, 1_300, "EUR", CaptureMode::Automatic);
    recs.push(rec(ghost, req.clone()));
    recs.push(rec(ghost, decided(&req, RiskDecision::Approved)));
    recs.push(rec(
        ghost,
        psp_result(
            &req,
            Outcome {
                outcome: PspOutcome::Succeeded,
                psp: "alpha",
                charge: Some(format!("ch_ghost_{}", Uuid::new_v4().simple())),
                captured: 1_300,
            },
        ),
    ));

    // 4. An amount mismatch: the PSP charged 1000, the events say 1500.
    let short = PaymentId::new();
    let charge = beta.charge(short, 1_000, "EUR", true, "pm_card_visa").await;
    let req = request(&m, 1_500, "EUR", CaptureMode::Automatic);
    recs.push(rec(short, req.clone()));
    recs.push(rec(short, decided(&req, RiskDecision::Approved)));
    recs.push(rec(
        short,
        psp_result(
            &req,
            Outcome {
                outcome: PspOutcome::Succeeded,
                psp: "beta",
                charge: Some(charge),
                captured: 1_500,
            },
        ),
    ));

    // 5. A refund that disagrees: the PSP refunded 500, the event announces 300.
    let (misrefund, req, charge, more) = automatic(&m, &alpha, 2_000, "EUR").await;
    let psp_refund = alpha.refund(&charge, 500).await;
    recs.extend(more);
    recs.push(rec(
        misrefund,
        refunded(&req, "alpha", &charge, &psp_refund, 300),
    ));

    let started = Instant::now();
    produce(&p, &recs).await;

    let want: Vec<(PaymentId, &str, &[&str])> = vec![
        (
            lost,
            "missing_ledger_transfer",
            &["settlement_ledger_mismatch"],
        ),
        (
            doubled,
            "duplicate_psp_charge",
            &["settlement_charge_mismatch"],
        ),
        (ghost, "missing_psp_charge", &["settlement_missing_charge"]),
        (
            short,
            "amount_mismatch",
            &["settlement_amount_mismatch", "settlement_ledger_mismatch"],
        ),
        (
            misrefund,
            "refund_mismatch",
            &["settlement_refund_mismatch", "settlement_ledger_mismatch"],
        ),
    ];
    let ids: Vec<Uuid> = want.iter().map(|(id, _, _)| id.as_uuid()).collect();
    let expected: BTreeSet<(Uuid, String)> = want
        .iter()
        .flat_map(|(id, check, recon)| {
            std::iter::once((id.as_uuid(), (*check).to_owned()))
                .chain(recon.iter().map(move |k| (id.as_uuid(), (*k).to_owned())))
        })
        .collect();
    eventually(
        "every planted fault is reported by the payment check and the reconciliation",
        GRACE + Duration::from_secs(60),
        || {
            let (pool, ids, expected) = (pool.clone(), ids.clone(), expected.clone());
            async move {
                let found: BTreeSet<(Uuid, String)> = discrepancies(&pool, &ids)
                    .await
                    .into_iter()
                    .map(|(id, kind, _, _)| (id, kind))
                    .collect();
                let missing: Vec<_> = expected.difference(&found).collect();
                if missing.is_empty() {
                    Ok(())
                } else {
                    Err(format!(
                        "not reported yet: {missing:?}; reported: {found:?}"
                    ))
                }
            }
        },
    )
    .await;
    let caught_after = started.elapsed();

    let found = discrepancies(&pool, &ids).await;
    for (id, kind, message, source) in &found {
        eprintln!("planted fault on pay_{id}: [{source}] {kind}: {message}");
        assert!(message.len() > 20, "a reason a person can read: {message}");
    }
    // Each payment check names exactly the planted fault.
    for (id, check, _) in &want {
        let checked: Vec<&str> = found
            .iter()
            .filter(|(p, _, _, s)| *p == id.as_uuid() && s == "payment_check")
            .map(|(_, k, _, _)| k.as_str())
            .collect();
        assert!(
            !checked.is_empty() && checked.iter().all(|k| k == check),
            "{id}: {checked:?}"
        );
    }
    let result: Option<String> =
        sqlx::query_scalar("SELECT result FROM validator.payments WHERE payment_id = $1")
            .bind(clean.as_uuid())
            .fetch_one(&pool)
            .await
            .expect("clean payment");
    assert_eq!(result.as_deref(), Some("ok"));
    assert!(discrepancies(&pool, &[clean.as_uuid()]).await.is_empty());
    assert_eq!(
        f.alpha.charge_count_for_reference(&doubled.to_string()),
        2,
        "the PSP really holds two charges"
    );

    // A record on payments.validation and a metric for each.
    let records = validated_kinds(
        Duration::from_secs(20),
        want.iter()
            .map(|(id, check, _)| (id.to_string(), (*check).to_owned()))
            .collect(),
    )
    .await;
    for (id, check, _) in &want {
        let kinds = records.get(&id.to_string());
        assert!(
            kinds.is_some_and(|k| k.contains(*check)),
            "no payment.validated record naming {check} for {id}: {kinds:?}"
        );
    }
    let text = metrics().await;
    for (_, check, recon) in &want {
        for kind in std::iter::once(check).chain(recon.iter()) {
            let line = format!("validator_discrepancies_total{{kind=\"{kind}\"}}");
            assert!(text.contains(&line), "no {line} in the metrics");
        }
    }
    eprintln!("all planted faults caught {caught_after:.2?} after their events were produced");
}

/// One payment of the clean run: its PSP operations are done, its events ready.
struct Planned {
    id: PaymentId,
    recs: Vec<Rec>,
}

async fn plan(i: usize, merchants: &[MerchantId], alpha: &Psp, beta: &Psp) -> Planned {
    let m = &merchants[i % merchants.len()];
    let currency = ["EUR", "USD", "GBP"][i % 3];
    let amount = 500 + (i as i64 % 97) * 113;
    let psp = if i.is_multiple_of(2) { alpha } else { beta };
    let id = PaymentId::new();
    let mut recs = Vec::new();
    match i % 20 {
        // Automatic captures, a third of them refunded in part, a sixth in full.
        0..=11 => {
            let (id, req, charge, more) = automatic(m, psp, amount, currency).await;
            recs.extend(more);
            if i.is_multiple_of(3) {
                let first = amount / 4;
                let re = psp.refund(&charge, first).await;
                recs.push(rec(id, refunded(&req, psp.name, &charge, &re, first)));
                if i.is_multiple_of(6) {
                    let re = psp.refund(&charge, amount - first).await;
                    recs.push(rec(
                        id,
                        refunded(&req, psp.name, &charge, &re, amount - first),
                    ));
                }
            }
            return Planned { id, recs };
        }
        // Declined by the risk engine.
        12 | 13 => {
            let req = request(m, amount, currency, CaptureMode::Automatic);
            recs.push(rec(id, req.clone()));
            recs.push(rec(id, decided(&req, RiskDecision::Declined)));
        }
        // Declined by the PSP (the declined attempt stays in its books as failed).
        14 => {
            let req = request(m, amount, currency, CaptureMode::Automatic);
            let charge = psp
                .charge(id, amount, currency, true, "pm_card_declined")
                .await;
            recs.push(rec(id, req.clone()));
            recs.push(rec(id, decided(&req, RiskDecision::Approved)));
            recs.push(rec(
                id,
                psp_result(
                    &req,
                    Outcome {
                        outcome: PspOutcome::Declined,
                        psp: psp.name,
                        charge: Some(charge),
                        captured: 0,
                    },
                ),
            ));
        }
        // Manual: captured (one in two partially, some refunded), canceled, or left authorised.
        15..=18 => {
            let req = request(m, amount, currency, CaptureMode::Manual);
            let charge = psp
                .charge(id, amount, currency, false, "pm_card_visa")
                .await;
            recs.push(rec(id, req.clone()));
            recs.push(rec(id, decided(&req, RiskDecision::Approved)));
            recs.push(rec(
                id,
                psp_result(
                    &req,
                    Outcome {
                        outcome: PspOutcome::RequiresCapture,
                        psp: psp.name,
                        charge: Some(charge.clone()),
                        captured: 0,
                    },
                ),
            ));
            match i % 20 {
                15 | 16 => {
                    let captured = if i % 20 == 15 { amount - 100 } else { amount };
                    psp.capture(&charge, captured).await;
                    recs.push(rec(
                        id,
                        PaymentCaptured {
                            merchant_id: m.clone(),
                            command_id: format!("cmd_{}", Uuid::new_v4().simple()),
                            psp: psp.name.into(),
                            charge_id: charge.clone(),
                            currency: req.currency,
                            amount_captured: captured,
                        },
                    ));
                    if i % 40 < 20 {
                        let half = captured / 2;
                        let re = psp.refund(&charge, half).await;
                        recs.push(rec(id, refunded(&req, psp.name, &charge, &re, half)));
                    }
                }
                17 => {
                    psp.cancel(&charge).await;
                    recs.push(rec(
                        id,
                        PaymentCanceled {
                            merchant_id: m.clone(),
                            command_id: format!("cmd_{}", Uuid::new_v4().simple()),
                            psp: psp.name.into(),
                            charge_id: charge,
                        },
                    ));
                }
                _ => {}
            }
        }
        // The gateway gave up without a charge.
        _ => {
            let req = request(m, amount, currency, CaptureMode::Automatic);
            recs.push(rec(id, req.clone()));
            recs.push(rec(id, decided(&req, RiskDecision::Approved)));
            recs.push(rec(
                id,
                psp_result(
                    &req,
                    Outcome {
                        outcome: PspOutcome::Failed,
                        psp: psp.name,
                        charge: None,
                        captured: 0,
                    },
                ),
            ));
        }
    }
    Planned { id, recs }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_run_of_thousands_of_payments_reports_nothing() {
    const PAYMENTS: usize = 2_400;
    const WAVE: usize = 400;
    let pool = pool().await;
    let p = producer();
    let (alpha, beta) = (psp("alpha"), psp("beta"));
    let merchants: Vec<MerchantId> = (0..8).map(|i| merchant(&format!("clean{i}"))).collect();

    let started = Instant::now();
    let mut ids = Vec::with_capacity(PAYMENTS);
    let mut records = 0;
    // Waves, as traffic arrives: each wave's PSP work is done concurrently, then its events
    // are produced at once.
    for wave in 0..PAYMENTS / WAVE {
        let planned: Vec<Planned> =
            futures::stream::iter((wave * WAVE..(wave + 1) * WAVE).map(|i| {
                let (merchants, alpha, beta) = (&merchants, &alpha, &beta);
                async move { plan(i, merchants, alpha, beta).await }
            }))
            .buffer_unordered(32)
            .collect()
            .await;
        let recs: Vec<Rec> = planned.iter().flat_map(|p| p.recs.clone()).collect();
        records += recs.len();
        ids.extend(planned.iter().map(|p| p.id.as_uuid()));
        produce(&p, &recs).await;
    }
    let produced = started.elapsed();

    eventually(
        "the validator checked every payment",
        Duration::from_secs(150),
        || {
            let (pool, ids) = (pool.clone(), ids.clone());
            async move {
                let (checked, pending): (i64, i64) = sqlx::query_as(
                    "SELECT count(*) FILTER (WHERE checked_at IS NOT NULL),
                            count(*) FILTER (WHERE checked_at IS NULL)
                     FROM validator.payments WHERE payment_id = ANY($1)",
                )
                .bind(&ids)
                .fetch_one(&pool)
                .await
                .map_err(|e| e.to_string())?;
                if checked as usize == ids.len() && pending == 0 {
                    Ok(())
                } else {
                    Err(format!(
                        "checked {checked} of {}, {pending} pending",
                        ids.len()
                    ))
                }
            }
        },
    )
    .await;
    let checked = started.elapsed();

    // A reconciliation that started a grace period after the last check covers every order.
    let since = chrono::Utc::now();
    eventually(
        "a reconciliation covered the whole run",
        GRACE + Duration::from_secs(30),
        || {
            let pool = pool.clone();
            async move {
                let lines: Option<i32> = sqlx::query_scalar(
                    "SELECT max(settlement_lines) FROM validator.reconciliations
                     WHERE started_at > $1",
                )
                .bind(since + chrono::Duration::from_std(GRACE).unwrap_or_default())
                .fetch_one(&pool)
                .await
                .map_err(|e| e.to_string())?;
                match lines {
                    Some(n) if n > 0 => Ok(()),
                    _ => Err("no reconciliation yet".into()),
                }
            }
        },
    )
    .await;
    let reconciled = started.elapsed();

    let found = discrepancies(&pool, &ids).await;
    let wide = ledger_wide(&pool).await;
    assert!(
        found.is_empty() && wide.is_empty(),
        "a clean run reports nothing, got {} payment discrepancies ({:?}) and ledger-wide {wide:?}",
        found.len(),
        found.iter().take(10).collect::<Vec<_>>()
    );
    let (ok, orders, transfers, lines): (i64, i64, i64, i32) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM validator.payments WHERE payment_id = ANY($1) AND result = 'ok'),
                (SELECT count(*) FROM order_store.orders WHERE payment_id = ANY($1)),
                (SELECT count(*) FROM account_store.transfers WHERE payment_id = ANY($1)),
                (SELECT max(settlement_lines) FROM validator.reconciliations)",
    )
    .bind(&ids)
    .fetch_one(&pool)
    .await
    .expect("counts");
    assert_eq!(ok as usize, PAYMENTS);
    assert_eq!(orders as usize, PAYMENTS);
    eprintln!(
        "clean run: {PAYMENTS} payments, {records} records, {transfers} ledger transfers, {lines} settlement lines; produced after {produced:.2?}, all checked after {checked:.2?}, reconciled after {reconciled:.2?}; 0 discrepancies"
    );

    // Now a ledger edited behind the account store's back: an entry without its other side and
    // without its account total. The reconciliation reports it, once.
    let broken = PaymentId::new();
    let transfer = format!("tr_broken_{}", Uuid::new_v4().simple());
    let mut tx = pool.begin().await.expect("tx");
    sqlx::query(
        "INSERT INTO account_store.transfers (transfer_id, payment_id, kind, step, currency)
         VALUES ($1, $2, 'capture', 'capture', 'EUR')",
    )
    .bind(&transfer)
    .bind(broken.as_uuid())
    .execute(&mut *tx)
    .await
    .expect("planted transfer");
    sqlx::query(
        "INSERT INTO account_store.entries (transfer_id, account, currency, side, amount)
         VALUES ($1, 'platform:fees', 'EUR', 'credit', 77)",
    )
    .bind(&transfer)
    .execute(&mut *tx)
    .await
    .expect("planted entry");
    tx.commit().await.expect("commit");
    eventually(
        "the reconciliation reports the edited ledger",
        Duration::from_secs(30),
        || {
            let pool = pool.clone();
            async move {
                let wide: BTreeSet<String> = ledger_wide(&pool)
                    .await
                    .into_iter()
                    .map(|(k, _)| k)
                    .collect();
                let per_payment: Vec<String> = discrepancies(&pool, &[broken.as_uuid()])
                    .await
                    .into_iter()
                    .map(|(_, k, _, _)| k)
                    .collect();
                let want: BTreeSet<String> = ["ledger_unbalanced", "account_total_mismatch"]
                    .map(String::from)
                    .into();
                if wide == want && per_payment == ["unbalanced_transfer"] {
                    Ok(())
                } else {
                    Err(format!("ledger-wide {wide:?}, per payment {per_payment:?}"))
                }
            }
        },
    )
    .await;
    tokio::time::sleep(RECONCILE_EVERY * 2).await;
    assert_eq!(
        ledger_wide(&pool).await.len(),
        2,
        "a lasting problem is reported once"
    );
}

/// The prefix of this run's copies of the contract topics.
fn namespace() -> String {
    format!("e2e-{}", fleet().run_id)
}
