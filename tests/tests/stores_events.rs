//! The order store and the account store against the real Kafka and Postgres: events produced
//! straight onto the contract topics (no ingress, risk engine or gateway), in orders and with
//! repeats the real fleet can produce, consumed by the real services running in-process (one
//! order store, three account-store instances in one consumer group). Results are counted in
//! the run's own database. The analyst role is checked against the same database.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use account_store::domain::FeeSchedule;
use anyhow::Context;
use paystream_domain::{
    Amount, CaptureMode, CommandFailed, CommandKind, Currency, CustomerId, Event, MerchantId,
    PaymentCanceled, PaymentCaptured, PaymentId, PaymentMethod, PaymentRefunded, PaymentRequested,
    PspOutcome, PspResult, topics,
};
use paystream_kit::CommonConfig;
use paystream_messaging::Envelope;
use paystream_messaging::kafka::{base_config, producer_config};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgPool, Row};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const ACCOUNT_INSTANCES: usize = 3;

struct Stores {
    run_id: String,
    bootstrap: String,
    database_url: String,
    account_group: String,
    account_admin_ports: Vec<u16>,
    /// End of `payments.dlt` per partition when the stores started.
    dlt_start: Vec<(i32, i64)>,
    _shutdown: CancellationToken,
}

fn stores() -> &'static Stores {
    static CELL: OnceLock<Stores> = OnceLock::new();
    paystream_e2e::start_once(&CELL, "the stores", start)
}

async fn start() -> anyhow::Result<Stores> {
    paystream_e2e::init_test_logs();
    let base = CommonConfig::for_tests();
    let iso = paystream_e2e::isolate().await?;
    let groups: Vec<String> = [order_store::SERVICE, account_store::SERVICE]
        .iter()
        .map(|s| iso.group(s))
        .collect();
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
    let dlt_start = topic_end(&base.kafka_bootstrap, topics::PAYMENTS_DLT).await?;

    let shutdown = CancellationToken::new();
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
    let mut account_admin_ports = Vec::new();
    for _ in 0..ACCOUNT_INSTANCES {
        let mut accounts = account_store::Config::from_env()?;
        accounts.common = common(account_store::SERVICE);
        accounts.topic_namespace = Some(namespace.clone());
        accounts.topic_namespace = Some(namespace.clone());
        let app = account_store::build(accounts).await?;
        account_admin_ports.push(app.admin_port());
        spawn(app.run_until_stopped(shutdown.clone()));
    }
    Ok(Stores {
        run_id: iso.run_id.clone(),
        bootstrap: base.kafka_bootstrap,
        database_url: iso.database_url.clone(),
        account_group: iso.group(account_store::SERVICE),
        account_admin_ports,
        dlt_start,
        _shutdown: shutdown,
    })
}

fn spawn(fut: impl std::future::Future<Output = anyhow::Result<()>> + Send + 'static) {
    tokio::spawn(async move {
        if let Err(e) = fut.await {
            eprintln!("store task failed: {e:#}");
        }
    });
}

// ---- producing -----------------------------------------------------------------------------

/// One record as a producer of the fleet would write it.
#[derive(Clone)]
struct Rec {
    topic: String,
    event_type: &'static str,
    key: String,
    value: Vec<u8>,
}

fn rec<E: Event>(id: PaymentId, data: E) -> Rec {
    let envelope = Envelope::new(id, data);
    Rec {
        topic: format!("{}.{}", namespace(), E::TOPIC),
        event_type: E::EVENT_TYPE,
        key: id.to_string(),
        value: serde_json::to_vec(&envelope).expect("envelope JSON"),
    }
}

fn producer() -> FutureProducer {
    producer_config(&stores().bootstrap)
        .create()
        .expect("producer")
}

/// Enqueues every record in the given order (one payment's records stay in order on their
/// partition), then waits for all acknowledgements.
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

// ---- events --------------------------------------------------------------------------------

fn merchant(label: &str) -> MerchantId {
    MerchantId::parse(&format!("m_{}_{label}", stores().run_id)).expect("merchant id")
}

fn cur(code: &str) -> Currency {
    Currency::parse(code).expect("currency")
}

fn requested(
    m: &MerchantId,
    amount: i64,
    currency: &str,
    capture: CaptureMode,
) -> PaymentRequested {
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

fn psp_result(
    m: &MerchantId,
    outcome: PspOutcome,
    amount: i64,
    currency: &str,
    charge: &str,
) -> PspResult {
    PspResult {
        merchant_id: m.clone(),
        outcome,
        psp: "alpha".into(),
        charge_id: Some(charge.into()),
        amount: Amount::new(amount).expect("amount"),
        currency: cur(currency),
        amount_captured: if outcome == PspOutcome::Succeeded {
            amount
        } else {
            0
        },
        decline_code: None,
        message: None,
    }
}

fn captured(m: &MerchantId, amount: i64, currency: &str, charge: &str) -> PaymentCaptured {
    PaymentCaptured {
        merchant_id: m.clone(),
        command_id: format!("cmd_{}", Uuid::new_v4().simple()),
        psp: "alpha".into(),
        charge_id: charge.into(),
        currency: cur(currency),
        amount_captured: amount,
    }
}

fn refunded(
    m: &MerchantId,
    refund_id: &str,
    amount: i64,
    currency: &str,
    charge: &str,
) -> PaymentRefunded {
    PaymentRefunded {
        merchant_id: m.clone(),
        refund_id: refund_id.into(),
        psp: "alpha".into(),
        charge_id: charge.into(),
        psp_refund_id: format!("psp_{refund_id}"),
        amount: Amount::new(amount).expect("amount"),
        currency: cur(currency),
    }
}

/// The same record under a new event id: what a producer that crashed after publishing and
/// before marking its outbox row does.
fn republished<E: Event + Clone>(id: PaymentId, data: &E) -> Rec {
    rec(id, data.clone())
}

// ---- reading -------------------------------------------------------------------------------

async fn pool() -> PgPool {
    paystream_kit::db::connect(&stores().database_url, 5)
        .await
        .expect("test database")
}

struct OrderRow {
    status: String,
    amount_captured: i64,
    amount_refunded: i64,
    customer_id: Option<String>,
}

async fn order(pool: &PgPool, id: PaymentId) -> Option<OrderRow> {
    sqlx::query(
        "SELECT status, amount_captured, amount_refunded, customer_id
         FROM order_store.orders WHERE payment_id = $1",
    )
    .bind(id.as_uuid())
    .fetch_optional(pool)
    .await
    .expect("order query")
    .map(|r| OrderRow {
        status: r.get("status"),
        amount_captured: r.get("amount_captured"),
        amount_refunded: r.get("amount_refunded"),
        customer_id: r.get("customer_id"),
    })
}

/// (event_type, applied, note) in the order the store recorded them.
async fn history(pool: &PgPool, id: PaymentId) -> Vec<(String, bool, String)> {
    sqlx::query(
        "SELECT event_type, applied, note FROM order_store.order_events
         WHERE payment_id = $1 ORDER BY id",
    )
    .bind(id.as_uuid())
    .fetch_all(pool)
    .await
    .expect("history query")
    .into_iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

async fn count(pool: &PgPool, sql: &str, id: PaymentId) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .bind(id.as_uuid())
        .fetch_one(pool)
        .await
        .expect("count query")
}

/// (kind, debits, credits) of each transfer of the payment.
async fn transfers(pool: &PgPool, id: PaymentId) -> Vec<(String, i64, i64)> {
    sqlx::query(
        "SELECT t.kind,
                COALESCE(SUM(e.amount) FILTER (WHERE e.side = 'debit'), 0)::bigint,
                COALESCE(SUM(e.amount) FILTER (WHERE e.side = 'credit'), 0)::bigint
         FROM account_store.transfers t JOIN account_store.entries e USING (transfer_id)
         WHERE t.payment_id = $1 GROUP BY t.transfer_id, t.kind ORDER BY t.kind, t.transfer_id",
    )
    .bind(id.as_uuid())
    .fetch_all(pool)
    .await
    .expect("transfers query")
    .into_iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

/// Polls `check` until it holds or `limit` passes; the last answer explains a failure.
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
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Accounts whose running totals differ from their entries, and currencies whose debits differ
/// from their credits, read in one snapshot.
async fn ledger_faults(pool: &PgPool) -> Vec<String> {
    let mut conn = pool.acquire().await.expect("connection");
    let mut tx = conn.begin().await.expect("transaction");
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut *tx)
        .await
        .expect("isolation");
    let mut faults: Vec<String> = sqlx::query_scalar(
        "SELECT a.account || ' ' || a.currency FROM account_store.accounts a
         LEFT JOIN (
             SELECT account, currency,
                    COALESCE(SUM(amount) FILTER (WHERE side = 'debit'), 0) AS debits,
                    COALESCE(SUM(amount) FILTER (WHERE side = 'credit'), 0) AS credits
             FROM account_store.entries GROUP BY account, currency
         ) e USING (account, currency)
         WHERE a.debits <> COALESCE(e.debits, 0) OR a.credits <> COALESCE(e.credits, 0)",
    )
    .fetch_all(&mut *tx)
    .await
    .expect("account check");
    let unbalanced: Vec<String> = sqlx::query_scalar(
        "SELECT currency FROM account_store.entries GROUP BY currency
         HAVING SUM(amount) FILTER (WHERE side = 'debit') <> SUM(amount) FILTER (WHERE side = 'credit')",
    )
    .fetch_all(&mut *tx)
    .await
    .expect("currency check");
    faults.extend(unbalanced.into_iter().map(|c| format!("{c} unbalanced")));
    faults
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
    .await
    .context("topic_end task")?
}

/// Dead letters this run's account store wrote, as (key, headers).
async fn dead_letters(limit: Duration) -> Vec<(String, HashMap<String, String>)> {
    let s = stores();
    let (bootstrap, group, start) = (
        s.bootstrap.clone(),
        s.account_group.clone(),
        s.dlt_start.clone(),
    );
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = base_config(&bootstrap)
            .set("group.id", format!("{group}-reader"))
            .set("enable.auto.commit", "false")
            .create()
            .expect("DLT reader");
        let mut tpl = TopicPartitionList::new();
        for (partition, offset) in &start {
            tpl.add_partition_offset(topics::PAYMENTS_DLT, *partition, Offset::Offset(*offset))
                .expect("offset");
        }
        consumer.assign(&tpl).expect("assign");
        let deadline = Instant::now() + limit;
        let mut found = Vec::new();
        while Instant::now() < deadline {
            let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let headers: HashMap<String, String> = m
                .headers()
                .map(|hs| {
                    hs.iter()
                        .map(|h| {
                            (
                                h.key.to_owned(),
                                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            if headers.get("dlt.consumer.group") == Some(&group) {
                let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
                found.push((key, headers));
            }
        }
        found
    })
    .await
    .expect("DLT reader task")
}

// ---- tests ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_and_repeated_outcomes_leave_each_order_in_the_right_state() {
    let p = producer();
    let pool = pool().await;
    let m = merchant("order");

    // 1. A manual capture seen backwards: refund, capture, then the authorisation, with a
    //    redelivered capture, the first refund republished, a second refund and a failed command.
    let s1 = PaymentId::new();
    let re_a = refunded(&m, "re_s1a", 300, "EUR", "ch_s1");
    let cap = captured(&m, 1_000, "EUR", "ch_s1");
    let cap_rec = rec(s1, cap.clone());
    let failed = CommandFailed {
        merchant_id: m.clone(),
        command: CommandKind::Refund,
        command_id: "re_s1c".into(),
        code: "amount_too_large".into(),
        message: "nothing left to refund".into(),
    };
    let s1_recs = vec![
        rec(s1, re_a.clone()),
        cap_rec.clone(),
        cap_rec.clone(),
        rec(
            s1,
            psp_result(&m, PspOutcome::RequiresCapture, 1_000, "EUR", "ch_s1"),
        ),
        republished(s1, &re_a),
        rec(s1, refunded(&m, "re_s1b", 700, "EUR", "ch_s1")),
        rec(s1, failed),
        rec(s1, requested(&m, 1_000, "EUR", CaptureMode::Manual)),
    ];

    // 2. An automatic capture whose refund comes first, and whose request comes last.
    let s2 = PaymentId::new();
    let s2_recs = vec![
        rec(s2, refunded(&m, "re_s2", 400, "EUR", "ch_s2")),
        rec(
            s2,
            psp_result(&m, PspOutcome::Succeeded, 1_000, "EUR", "ch_s2"),
        ),
        rec(s2, requested(&m, 1_000, "EUR", CaptureMode::Automatic)),
    ];

    // 3. A cancel before the authorisation, then the same cancel again.
    let s3 = PaymentId::new();
    let cancel = PaymentCanceled {
        merchant_id: m.clone(),
        command_id: "cmd_s3".into(),
        psp: "alpha".into(),
        charge_id: "ch_s3".into(),
    };
    let s3_recs = vec![
        rec(s3, cancel.clone()),
        rec(
            s3,
            psp_result(&m, PspOutcome::RequiresCapture, 500, "EUR", "ch_s3"),
        ),
        republished(s3, &cancel),
    ];

    // 4. Refunds that would exceed the capture: the second is refused.
    let s4 = PaymentId::new();
    let s4_recs = vec![
        rec(
            s4,
            psp_result(&m, PspOutcome::Succeeded, 1_000, "EUR", "ch_s4"),
        ),
        rec(s4, refunded(&m, "re_s4a", 600, "EUR", "ch_s4")),
        rec(s4, refunded(&m, "re_s4b", 500, "EUR", "ch_s4")),
    ];

    let all: Vec<Rec> = [s1_recs, s2_recs, s3_recs, s4_recs].concat();
    produce(&p, &all).await;

    eventually("every scenario settles", Duration::from_secs(60), || {
        let pool = pool.clone();
        async move {
            let h1 = history(&pool, s1).await.len();
            let h2 = history(&pool, s2).await.len();
            let h3 = history(&pool, s3).await.len();
            let h4 = history(&pool, s4).await.len();
            let t1 = transfers(&pool, s1).await.len();
            let t2 = transfers(&pool, s2).await.len();
            let t4 = transfers(&pool, s4).await.len();
            if (h1, h2, h3, h4, t1, t2, t4) == (7, 3, 3, 3, 3, 2, 2) {
                Ok(())
            } else {
                Err(format!(
                    "history rows {h1}/7 {h2}/3 {h3}/3 {h4}/3, transfers {t1}/3 {t2}/2 {t4}/2"
                ))
            }
        }
    })
    .await;

    // 1: succeeded, captured and refunded in full, each refund once, every parked event applied.
    let o1 = order(&pool, s1).await.expect("order 1");
    assert_eq!(
        (o1.status.as_str(), o1.amount_captured, o1.amount_refunded),
        ("succeeded", 1_000, 1_000)
    );
    assert_eq!(o1.customer_id.as_deref(), Some("cus_1"));
    let h1 = history(&pool, s1).await;
    let applied: Vec<(&str, bool)> = h1.iter().map(|(t, a, _)| (t.as_str(), *a)).collect();
    assert_eq!(
        applied.iter().filter(|(_, a)| !a).count(),
        1,
        "only the republished refund is refused: {h1:#?}"
    );
    assert!(
        h1.iter()
            .any(|(t, a, n)| t == "payment.refunded" && !a && n.contains("already applied")),
        "{h1:#?}"
    );
    assert!(
        h1.iter().any(|(t, a, n)| t == "payment.command_failed"
            && *a
            && n.contains("failed at the PSP")),
        "{h1:#?}"
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM order_store.refunds WHERE payment_id = $1",
            s1
        )
        .await,
        2
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM order_store.parked_events WHERE payment_id = $1 AND resolution = 'applied'",
            s1
        )
        .await,
        2,
        "the early refund and the early capture were parked, then applied"
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM order_store.parked_events WHERE payment_id = $1 AND resolved_at IS NULL",
            s1
        )
        .await,
        0
    );
    // The ledger: one capture of 1000, refunds of 300 and 700, the early refund posted right
    // after the capture.
    let t1 = transfers(&pool, s1).await;
    assert_eq!(
        t1,
        vec![
            ("capture".to_owned(), 1_000, 1_000),
            ("refund".to_owned(), 300, 300),
            ("refund".to_owned(), 700, 700),
        ]
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM account_store.parked_refunds WHERE payment_id = $1 AND resolution = 'posted'",
            s1
        )
        .await,
        1
    );

    // 2: the refund waited for the automatic capture.
    let o2 = order(&pool, s2).await.expect("order 2");
    assert_eq!(
        (o2.status.as_str(), o2.amount_captured, o2.amount_refunded),
        ("succeeded", 1_000, 400)
    );
    assert_eq!(transfers(&pool, s2).await.len(), 2);

    // 3: canceled once; the repeat is history.
    let o3 = order(&pool, s3).await.expect("order 3");
    assert_eq!((o3.status.as_str(), o3.amount_captured), ("canceled", 0));
    let h3 = history(&pool, s3).await;
    let h3: Vec<(&str, bool)> = h3.iter().map(|(t, a, _)| (t.as_str(), *a)).collect();
    assert_eq!(
        h3,
        [
            ("payment.psp_result", true),
            ("payment.canceled", true),
            ("payment.canceled", false)
        ],
        "the early cancel applies after the authorisation; its repeat is refused"
    );
    assert!(transfers(&pool, s3).await.is_empty());

    // 4: the refund above the capture is refused by both stores; the ledger's refusal is a
    //    permanent error on the dead letter topic.
    let o4 = order(&pool, s4).await.expect("order 4");
    assert_eq!(
        (o4.status.as_str(), o4.amount_captured, o4.amount_refunded),
        ("succeeded", 1_000, 600)
    );
    assert!(
        history(&pool, s4)
            .await
            .iter()
            .any(|(t, a, n)| t == "payment.refunded" && !a && n.contains("above the captured")),
    );
    assert_eq!(
        transfers(&pool, s4).await,
        vec![
            ("capture".to_owned(), 1_000, 1_000),
            ("refund".to_owned(), 600, 600)
        ]
    );
    let dlt = dead_letters(Duration::from_secs(8)).await;
    let s4_key = s4.to_string();
    let refused: Vec<&HashMap<String, String>> = dlt
        .iter()
        .filter(|(key, _)| *key == s4_key)
        .map(|(_, h)| h)
        .collect();
    assert_eq!(
        refused.len(),
        1,
        "one dead letter for the refused refund: {dlt:?}"
    );
    assert_eq!(
        refused[0].get("dlt.error.kind").map(String::as_str),
        Some("permanent")
    );
    assert!(
        refused[0]
            .get("dlt.error.message")
            .is_some_and(|m| m.contains("above the captured 1000")),
        "{:?}",
        refused[0]
    );

    assert_eq!(ledger_faults(&pool).await, Vec::<String>::new());
}

/// What the merchant's payable must hold after a capture of `captured` and refunds adding up to
/// `refunded`: the capture's net, less the net share of the refunds.
fn expected_payable(fees: &FeeSchedule, captured: i64, refunded: i64) -> i64 {
    let fee = fees.fee(captured);
    let fee_share =
        (i128::from(fee) * i128::from(refunded) + i128::from(captured) / 2) / i128::from(captured);
    (captured - fee) - (refunded - i64::try_from(fee_share).unwrap_or(0))
}

async fn metric_sum(port: u16, name: &str) -> f64 {
    let body = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body");
    body.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_captures_and_refunds_on_one_merchant_keep_the_ledger_balanced() {
    let p = producer();
    let pool = pool().await;
    let m = merchant("busy");
    let fees = FeeSchedule::default();
    const PAYMENTS: i64 = 900;

    let mut recs = Vec::new();
    let mut expected: HashMap<&str, i64> = HashMap::new();
    let (mut captures, mut refunds) = (0i64, 0i64);
    let mut ids = Vec::new();
    for i in 0..PAYMENTS {
        let id = PaymentId::new();
        ids.push(id.as_uuid());
        let currency = if i % 4 == 3 { "USD" } else { "EUR" };
        let amount = 1_000 + i * 13;
        let charge = format!("ch_busy_{i}");
        let manual = i % 3 == 0;
        let captured_amount = if manual {
            amount - (i % 5) * 10
        } else {
            amount
        };
        let mut capture_recs = Vec::new();
        if manual {
            capture_recs.push(rec(
                id,
                psp_result(&m, PspOutcome::RequiresCapture, amount, currency, &charge),
            ));
            capture_recs.push(rec(id, captured(&m, captured_amount, currency, &charge)));
        } else {
            capture_recs.push(rec(
                id,
                psp_result(&m, PspOutcome::Succeeded, amount, currency, &charge),
            ));
        }
        let mut refund_recs = Vec::new();
        let mut refunded_total = 0;
        if i % 2 == 0 {
            let first = (captured_amount / 3).max(1);
            refund_recs.push(rec(
                id,
                refunded(&m, &format!("re_busy_{i}_a"), first, currency, &charge),
            ));
            refunded_total += first;
            if i % 4 == 0 {
                let rest = captured_amount - first;
                refund_recs.push(rec(
                    id,
                    refunded(&m, &format!("re_busy_{i}_b"), rest, currency, &charge),
                ));
                refunded_total += rest;
            }
        }
        captures += 1;
        refunds += refund_recs.len() as i64;
        *expected.entry(currency).or_default() +=
            expected_payable(&fees, captured_amount, refunded_total);
        // Every tenth payment's refunds come before its capture and must wait for it.
        if i % 10 == 0 {
            recs.extend(refund_recs);
            recs.extend(capture_recs);
        } else {
            recs.extend(capture_recs);
            recs.extend(refund_recs);
        }
    }

    let started = Instant::now();
    produce(&p, &recs).await;
    let produced = started.elapsed();
    eventually(
        "every capture and refund is posted",
        Duration::from_secs(120),
        || {
            let (pool, ids) = (pool.clone(), ids.clone());
            async move {
                let (c, r): (i64, i64) = sqlx::query_as(
                    "SELECT count(*) FILTER (WHERE kind = 'capture'), count(*) FILTER (WHERE kind = 'refund')
                     FROM account_store.transfers WHERE payment_id = ANY($1)",
                )
                .bind(&ids)
                .fetch_one(&pool)
                .await
                .map_err(|e| e.to_string())?;
                if (c, r) == (captures, refunds) {
                    Ok(())
                } else {
                    Err(format!("captures {c}/{captures}, refunds {r}/{refunds}"))
                }
            }
        },
    )
    .await;
    let posted = started.elapsed();

    // Every transfer of the merchant balances, and its entries are what was captured/refunded.
    let unbalanced: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (
             SELECT t.transfer_id FROM account_store.transfers t
             JOIN account_store.entries e USING (transfer_id)
             WHERE t.payment_id = ANY($1) GROUP BY t.transfer_id
             HAVING SUM(e.amount) FILTER (WHERE e.side = 'debit')
                 <> SUM(e.amount) FILTER (WHERE e.side = 'credit')) u",
    )
    .bind(&ids)
    .fetch_one(&pool)
    .await
    .expect("unbalanced transfers");
    assert_eq!(unbalanced, 0);

    // The payable holds exactly the expected net per currency, equal to the sum of its entries.
    let account = format!("merchant:{m}:payable");
    for (currency, want) in &expected {
        let (total, from_entries, entries): (i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT credits - debits FROM account_store.accounts WHERE account = $1 AND currency = $2),
                    (SELECT COALESCE(SUM(CASE side WHEN 'credit' THEN amount ELSE -amount END), 0)::bigint
                     FROM account_store.entries WHERE account = $1 AND currency = $2),
                    (SELECT count(*) FROM account_store.entries WHERE account = $1 AND currency = $2)",
        )
        .bind(&account)
        .bind(currency)
        .fetch_one(&pool)
        .await
        .expect("balance");
        assert_eq!(total, from_entries, "{currency}: balance = entries");
        assert_eq!(total, *want, "{currency}: captured net less refunded net");
        assert!(entries > 0);
    }
    // A fully refunded payment leaves nothing on the payable nor in the fees.
    let leftover: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (
             SELECT t.payment_id FROM account_store.transfers t JOIN account_store.entries e USING (transfer_id)
             WHERE t.payment_id = ANY($1) AND e.account IN ($2, 'platform:fees')
             GROUP BY t.payment_id
             HAVING count(DISTINCT t.transfer_id) = 3
                AND SUM(CASE e.side WHEN 'credit' THEN e.amount ELSE -e.amount END) <> 0) x",
    )
    .bind(&ids)
    .bind(&account)
    .fetch_one(&pool)
    .await
    .expect("full refunds");
    assert_eq!(leftover, 0, "full refunds reverse the split exactly");
    assert_eq!(ledger_faults(&pool).await, Vec::<String>::new());

    let s = stores();
    let mut lock_wait = 0.0;
    let mut lock_count = 0.0;
    let mut batch_retries = 0.0;
    let mut dead = 0.0;
    for port in &s.account_admin_ports {
        lock_wait += metric_sum(*port, "account_store_ledger_lock_wait_seconds_sum").await;
        lock_count += metric_sum(*port, "account_store_ledger_lock_wait_seconds_count").await;
        batch_retries += metric_sum(
            *port,
            "account_store_records_retried_total{stage=\"batch\"}",
        )
        .await;
        dead += metric_sum(*port, "account_store_records_dead_lettered_total").await;
    }
    eprintln!(
        "ledger concurrency: {} records ({captures} captures, {refunds} refunds) over {ACCOUNT_INSTANCES} account-store instances; produced in {:.2?}, all posted after {:.2?}; ledger lock taken {lock_count} times, {lock_wait:.3} s waited in total; failed batches retried: {batch_retries}; dead letters (whole binary): {dead}",
        recs.len(),
        produced,
        posted
    );
    assert_eq!(
        batch_retries, 0.0,
        "no batch failed (no deadlock, no lock timeout)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_analyst_reads_the_reporting_views_and_nothing_else() {
    let p = producer();
    let pool = pool().await;
    let m = merchant("report");
    let id = PaymentId::new();
    produce(
        &p,
        &[
            rec(id, requested(&m, 2_500, "GBP", CaptureMode::Automatic)),
            rec(
                id,
                psp_result(&m, PspOutcome::Succeeded, 2_500, "GBP", "ch_report"),
            ),
            rec(id, refunded(&m, "re_report", 500, "GBP", "ch_report")),
        ],
    )
    .await;
    eventually("the payment is stored", Duration::from_secs(60), || {
        let pool = pool.clone();
        async move {
            match (order(&pool, id).await, transfers(&pool, id).await.len()) {
                (Some(o), 2) if o.amount_refunded == 500 => Ok(()),
                (o, t) => Err(format!("order {:?}, transfers {t}", o.map(|o| o.status))),
            }
        }
    })
    .await;

    let options = PgConnectOptions::from_str(&stores().database_url)
        .expect("DATABASE_URL")
        .username("analyst")
        .password("analyst");
    let mut analyst = options.connect().await.expect("the analyst logs in");

    let row = sqlx::query(
        "SELECT payment_id, status, amount, amount_captured, amount_refunded
         FROM reporting.orders WHERE merchant_id = $1",
    )
    .bind(m.as_str())
    .fetch_one(&mut analyst)
    .await
    .expect("reporting.orders");
    assert_eq!(row.get::<String, _>("payment_id"), id.to_string());
    assert_eq!(row.get::<String, _>("status"), "succeeded");
    assert_eq!(
        (
            row.get::<i64, _>("amount_captured"),
            row.get::<i64, _>("amount_refunded")
        ),
        (2_500, 500)
    );

    let fees = FeeSchedule::default();
    let (balance, kind, owner): (i64, String, String) = sqlx::query_as(
        "SELECT balance, account_type, owner FROM reporting.balances
         WHERE account = $1 AND currency = 'GBP'",
    )
    .bind(format!("merchant:{m}:payable"))
    .fetch_one(&mut analyst)
    .await
    .expect("reporting.balances");
    assert_eq!(balance, expected_payable(&fees, 2_500, 500));
    assert_eq!(
        (kind.as_str(), owner.as_str()),
        ("merchant_payable", m.as_str())
    );

    let (payments, succeeded, captured, refunded, net): (i64, i64, i64, i64, i64) = sqlx::query_as(
        "SELECT payments, succeeded, captured_amount, refunded_amount, net_amount
             FROM reporting.daily_volume WHERE merchant_id = $1 AND currency = 'GBP'",
    )
    .bind(m.as_str())
    .fetch_one(&mut analyst)
    .await
    .expect("reporting.daily_volume");
    assert_eq!(
        (payments, succeeded, captured, refunded, net),
        (1, 1, 2_500, 500, 2_000)
    );

    // No writes through the views, nothing outside them, no objects of its own.
    let refused = [
        "INSERT INTO reporting.balances (account, currency) VALUES ('platform:fees', 'XXX')",
        "UPDATE reporting.balances SET debits = 0",
        "DELETE FROM reporting.orders",
        "SELECT count(*) FROM order_store.orders",
        "SELECT count(*) FROM order_store.order_events",
        "SELECT count(*) FROM account_store.entries",
        "SELECT count(*) FROM account_store.accounts",
        "SELECT count(*) FROM validator.discrepancies",
        "SELECT count(*) FROM ingress.payments",
        "SELECT count(*) FROM public._sqlx_migrations",
        "SELECT public.paystream_messaging_tables('analyst_was_here')",
        "CREATE TABLE public.analyst_table (x int)",
        "CREATE TABLE reporting.analyst_table (x int)",
        "CREATE VIEW reporting.analyst_view AS SELECT 1",
        "CREATE TEMP TABLE analyst_temp (x int)",
        "CREATE SCHEMA analyst_schema",
    ];
    for sql in refused {
        let result = sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut analyst)
            .await;
        let error = result.expect_err(sql);
        let message = error.to_string();
        assert!(
            message.contains("permission denied"),
            "{sql}: expected a permission error, got {message}"
        );
    }
    // The data is untouched.
    let o = order(&pool, id).await.expect("order");
    assert_eq!(o.amount_refunded, 500);
}

/// The prefix of this run's copies of the contract topics.
fn namespace() -> String {
    format!("e2e-{}", stores().run_id)
}
