//! The risk engine against real Kafka, Postgres and Redis: each rule declines with its reason,
//! velocity counts ignore redelivered records, rule changes apply without a restart, and Redis
//! being down delays decisions instead of approving them.

#[path = "psp_support/mod.rs"]
mod psp_support;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use paystream_domain::{CaptureMode, PaymentId, PaymentRequested, topics};
use paystream_kit::CommonConfig;
use psp_support::*;
use sqlx::{PgPool, Row};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

struct RiskRig {
    pool: PgPool,
    shutdown: CancellationToken,
    producer: rdkafka::producer::FutureProducer,
    admin_port: u16,
}

async fn start_risk(tune: impl FnOnce(&mut risk_engine::Config)) -> RiskRig {
    let iso = paystream_e2e::isolate().await.expect("isolated database");
    let group = iso.group(risk_engine::SERVICE);
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
    skip_history(&group, &[topics::PAYMENTS_REQUESTED]);
    let mut config = risk_engine::Config::from_env().expect("risk config");
    config.common = CommonConfig::for_tests();
    config.common.database_url = iso.database_url.clone();
    // Every rig reads every test's requests (the topic is shared) into its own database; its
    // own Redis namespace keeps one rig's blocklist cache and windows out of another's.
    config.redis_prefix = format!("test:{group}");
    config.common.group_id = Some(group);
    config.rules_reload = Duration::from_millis(200);
    tune(&mut config);
    let app = risk_engine::build(config).await.expect("risk-engine");
    let admin_port = app.admin_port();
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        if let Err(e) = app.run_until_stopped(stop).await {
            eprintln!("risk-engine stopped with an error: {e:#}");
        }
    });
    RiskRig {
        pool: paystream_kit::db::connect(&iso.database_url, 4)
            .await
            .expect("rig database"),
        shutdown,
        producer: producer(),
        admin_port,
    }
}

struct Decision {
    decision: String,
    reasons: Vec<String>,
    rules_version: String,
}

impl RiskRig {
    async fn request(&self, req: PaymentRequested) -> PaymentId {
        let id = PaymentId::new();
        send(&self.producer, &record(id, req)).await;
        id
    }

    async fn decision(&self, id: PaymentId, timeout: Duration) -> Option<Decision> {
        let until = Instant::now() + timeout;
        loop {
            let row = sqlx::query(
                "SELECT decision, reasons, COALESCE(rules_version, '') AS v FROM risk.decisions WHERE payment_id = $1",
            )
            .bind(id.as_uuid())
            .fetch_optional(&self.pool)
            .await
            .expect("reading decisions");
            if let Some(row) = row {
                let reasons: serde_json::Value = row.get("reasons");
                return Some(Decision {
                    decision: row.get("decision"),
                    reasons: serde_json::from_value(reasons).unwrap_or_default(),
                    rules_version: row.get("v"),
                });
            }
            if Instant::now() > until {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn decided(&self, req: PaymentRequested) -> Decision {
        let id = self.request(req).await;
        self.decision(id, Duration::from_secs(30))
            .await
            .unwrap_or_else(|| panic!("no decision for {id}"))
    }
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

fn rules_file(text: &str) -> PathBuf {
    let path =
        std::env::temp_dir().join(format!("risk-rules-{}.toml", uuid::Uuid::new_v4().simple()));
    std::fs::write(&path, text).expect("writing the rules file");
    path
}

const RULES: &str = r#"
version = "test-v1"
max_amount = 1000000
[max_amount_per_currency]
JPY = 50000
[merchants.m_small]
max_amount = 5000
[[velocity]]
name = "per_hour"
window_secs = 3600
max_count = 2
[[velocity]]
name = "gbp_per_day"
window_secs = 86400
max_amount = { GBP = 1000 }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rule_declines_with_its_reason_and_rule_changes_apply_without_restart() {
    let path = rules_file(RULES);
    let p = path.clone();
    let rig = start_risk(move |c| c.rules_file = Some(p)).await;
    let auto = CaptureMode::Automatic;
    let visa = "pm_card_visa";

    // Amount limit per currency.
    let d = rig
        .decided(requested("m_1", &unique("c"), 60_000, "JPY", visa, auto))
        .await;
    assert_eq!(d.decision, "declined");
    assert!(d.reasons[0].starts_with("amount_limit:"), "{:?}", d.reasons);
    assert_eq!(d.rules_version, "test-v1");
    let d = rig
        .decided(requested("m_1", &unique("c"), 60_000, "EUR", visa, auto))
        .await;
    assert_eq!(d.decision, "approved", "{:?}", d.reasons);

    // Amount limit per merchant.
    let d = rig
        .decided(requested("m_small", &unique("c"), 6_000, "EUR", visa, auto))
        .await;
    assert_eq!(d.decision, "declined");
    assert!(
        d.reasons[0].starts_with("merchant_amount_limit:"),
        "{:?}",
        d.reasons
    );

    // Blocklists (Postgres, looked up through the Redis cache).
    let bad_customer = unique("cus_fraud");
    let bad_method = unique("pm_stolen").replace('-', "_");
    sqlx::query("INSERT INTO risk.blocklist (kind, value, reason) VALUES ('customer', $1, 'chargebacks'), ('payment_method', $2, 'reported stolen')")
        .bind(&bad_customer)
        .bind(&bad_method)
        .execute(&rig.pool)
        .await
        .expect("blocklist rows");
    let d = rig
        .decided(requested("m_1", &bad_customer, 100, "EUR", visa, auto))
        .await;
    assert_eq!(d.decision, "declined", "{:?}", d.reasons);
    assert!(
        d.reasons[0].starts_with("blocklist_customer:") && d.reasons[0].contains("chargebacks"),
        "{:?}",
        d.reasons
    );
    let d = rig
        .decided(requested(
            "m_1",
            &unique("c"),
            100,
            "EUR",
            &bad_method,
            auto,
        ))
        .await;
    assert!(
        d.reasons[0].starts_with("blocklist_payment_method:"),
        "{:?}",
        d.reasons
    );

    // Velocity: count per customer. The first payment's record is delivered twice, and the same
    // payment is requested again under a new event id: it still counts once.
    let customer = unique("cus_v");
    let first = PaymentId::new();
    let req = requested("m_1", &customer, 100, "EUR", visa, auto);
    let r = record(first, req.clone());
    send(&rig.producer, &r).await;
    send(&rig.producer, &r).await;
    send(&rig.producer, &record(first, req.clone())).await;
    let d = rig
        .decision(first, Duration::from_secs(30))
        .await
        .expect("first decision");
    assert_eq!(d.decision, "approved");
    assert!(
        d.reasons
            .iter()
            .any(|r| r == "velocity_count:per_hour: 1 of 2 payments in 3600 s"),
        "{:?}",
        d.reasons
    );
    tokio::time::sleep(Duration::from_millis(500)).await; // let the copies pass through
    let d = rig.decided(req.clone()).await;
    assert_eq!(
        d.decision, "approved",
        "the redelivered record must not count: {:?}",
        d.reasons
    );
    assert!(
        d.reasons
            .iter()
            .any(|r| r == "velocity_count:per_hour: 2 of 2 payments in 3600 s"),
        "{:?}",
        d.reasons
    );
    let d = rig.decided(req.clone()).await;
    assert_eq!(d.decision, "declined");
    assert!(
        d.reasons[0].starts_with("velocity_count:per_hour: 3 payments"),
        "{:?}",
        d.reasons
    );

    // Velocity: sum per customer and currency.
    let spender = unique("cus_s");
    let d = rig
        .decided(requested("m_1", &spender, 600, "GBP", visa, auto))
        .await;
    assert_eq!(d.decision, "approved");
    let d = rig
        .decided(requested("m_1", &spender, 600, "GBP", visa, auto))
        .await;
    assert_eq!(d.decision, "declined");
    assert!(
        d.reasons[0].starts_with("velocity_amount:gbp_per_day: 1200 GBP"),
        "{:?}",
        d.reasons
    );

    // A rule change, without a restart.
    let d = rig
        .decided(requested("m_1", &unique("c"), 20_000, "EUR", visa, auto))
        .await;
    assert_eq!(d.decision, "approved");
    std::fs::write(
        &path,
        RULES
            .replace("test-v1", "test-v2")
            .replace("max_amount = 1000000", "max_amount = 10000"),
    )
    .expect("rewriting the rules file");
    let until = Instant::now() + Duration::from_secs(10);
    let d = loop {
        let d = rig
            .decided(requested("m_1", &unique("c"), 20_000, "EUR", visa, auto))
            .await;
        if d.rules_version == "test-v2" || Instant::now() > until {
            break d;
        }
    };
    assert_eq!(d.rules_version, "test-v2");
    assert_eq!(d.decision, "declined");
    assert!(
        d.reasons[0].starts_with("amount_limit: 20000 EUR is above the limit of 10000"),
        "{:?}",
        d.reasons
    );

    // A broken file keeps the last good rules.
    std::fs::write(&path, "max_amount = \"lots\"").expect("breaking the rules file");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let d = rig
        .decided(requested("m_1", &unique("c"), 20_000, "EUR", visa, auto))
        .await;
    assert_eq!(d.rules_version, "test-v2");
    let metrics = reqwest::get(format!("http://127.0.0.1:{}/metrics", rig.admin_port))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    assert!(
        metric_value(
            &metrics,
            "risk_engine_rules_reloads_total{result=\"invalid\"}"
        ) >= 1.0
    );
    assert!(
        metric_value(
            &metrics,
            "risk_engine_rules_fired_total{rule=\"velocity_count\"}"
        ) >= 1.0
    );
    rig.shutdown.cancel();
    let _ = std::fs::remove_file(path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_in_the_table_apply_without_restart() {
    let rig = start_risk(|c| c.rules_file = None).await;
    let auto = CaptureMode::Automatic;
    let d = rig
        .decided(requested(
            "m_1",
            &unique("c"),
            50_000,
            "EUR",
            "pm_card_visa",
            auto,
        ))
        .await;
    assert_eq!(d.decision, "approved");
    assert_eq!(d.rules_version, "env");
    sqlx::query("INSERT INTO risk.rule_sets (rules, note) VALUES ($1, 'lower the limit')")
        .bind(serde_json::json!({"max_amount": 40000}))
        .execute(&rig.pool)
        .await
        .expect("rule set row");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let d = rig
        .decided(requested(
            "m_1",
            &unique("c"),
            50_000,
            "EUR",
            "pm_card_visa",
            auto,
        ))
        .await;
    assert_eq!(d.decision, "declined", "{:?}", d.reasons);
    assert!(
        d.rules_version.starts_with("rule_sets:"),
        "{}",
        d.rules_version
    );
    rig.shutdown.cancel();
}

/// A TCP proxy to Redis that can be cut: while off it refuses new connections and drops open
/// ones, as a Redis outage does.
async fn redis_proxy(on: Arc<AtomicBool>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy");
    let port = listener.local_addr().expect("addr").port();
    let target = CommonConfig::for_tests()
        .redis_url
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .to_owned();
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                continue;
            };
            if !on.load(Ordering::SeqCst) {
                drop(client);
                continue;
            }
            let target = target.clone();
            let on = on.clone();
            tokio::spawn(async move {
                let Ok(mut server) = TcpStream::connect(&target).await else {
                    return;
                };
                let copy = tokio::io::copy_bidirectional(&mut client, &mut server);
                let cut = async {
                    while on.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                };
                tokio::select! {
                    _ = copy => {}
                    _ = cut => {}
                }
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_delays_the_decision_and_never_approves_silently() {
    let on = Arc::new(AtomicBool::new(true));
    let port = redis_proxy(on.clone()).await;
    let path = rules_file(RULES);
    let p = path.clone();
    let rig = start_risk(move |c| {
        c.rules_file = Some(p);
        c.common.redis_url = format!("redis://127.0.0.1:{port}");
    })
    .await;
    let auto = CaptureMode::Automatic;
    let d = rig
        .decided(requested(
            "m_1",
            &unique("c"),
            100,
            "EUR",
            "pm_card_visa",
            auto,
        ))
        .await;
    assert_eq!(d.decision, "approved", "works while Redis is up");

    on.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let id = rig
        .request(requested(
            "m_1",
            &unique("c"),
            100,
            "EUR",
            "pm_card_visa",
            auto,
        ))
        .await;
    assert!(
        rig.decision(id, Duration::from_millis(1500))
            .await
            .is_none(),
        "decided although Redis is down"
    );
    on.store(true, Ordering::SeqCst);
    let d = rig
        .decision(id, Duration::from_secs(20))
        .await
        .expect("decided once Redis is back");
    assert_eq!(d.decision, "approved");
    let metrics = reqwest::get(format!("http://127.0.0.1:{}/metrics", rig.admin_port))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    assert!(
        metric_value(
            &metrics,
            "risk_engine_dependency_errors_total{dependency=\"redis_velocity\"}"
        ) >= 1.0
    );
    rig.shutdown.cancel();
    let _ = std::fs::remove_file(path);
}
