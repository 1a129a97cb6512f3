//! PSP webhooks at `POST /webhooks/<psp>`: a bad signature, an old timestamp or a replayed event
//! id is refused (the replay is acknowledged and ignored), a good one settles an in-doubt
//! attempt and becomes a `payment.psp_result` — and neither the secret nor a signature reaches
//! the logs.

mod psp_support;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use paystream_domain::{PaymentId, topics};
use psp_gateway::domain::webhook::sign;
use psp_support::*;
use serde_json::json;
use tracing_subscriber::fmt::MakeWriter;

/// Every log line of this test binary, as the subscriber wrote it.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}

fn logs() -> &'static Captured {
    static LOGS: OnceLock<Captured> = OnceLock::new();
    LOGS.get_or_init(|| {
        let captured = Captured::default();
        tracing_subscriber::fmt()
            .with_env_filter("info,psp_gateway=debug,sqlx=warn,rdkafka=warn,hyper=warn")
            .with_writer(captured.clone())
            .with_ansi(false)
            .try_init()
            .expect("installing the capturing subscriber");
        captured
    })
}

async fn post(rig: &Rig, psp: &str, header: Option<&str>, body: &[u8]) -> (u16, serde_json::Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{}/webhooks/{psp}", rig.gateway_url))
        .header("content-type", "application/json")
        .body(body.to_vec());
    if let Some(h) = header {
        req = req.header("PSP-Signature", h);
    }
    let r = req.send().await.expect("POST webhook");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_verified_deduplicated_and_turned_into_events() {
    let logs = logs();
    let secret = format!("whsec_test_{}", uuid::Uuid::new_v4().simple());
    let rig = start_rig(RigOptions {
        webhook_secret_alpha: secret.clone(),
        ..RigOptions::default()
    })
    .await;
    let pool = rig.pool().await;
    let mut results = TopicReader::at_end(topics::PAYMENTS_PSP_RESULTS);

    // A charge attempt left in doubt at alpha (its answer was lost), as request storage keeps it.
    let payment = PaymentId::new();
    let merchant = format!("m_{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    sqlx::query(
        "INSERT INTO psp_gateway.attempts
            (payment_id, psp, psp_key, attempt, operation, state, merchant_id, amount, currency, capture)
         VALUES ($1, 'alpha', $2, 1, 'charge', 'unknown', $3, 4200, 'EUR', true)",
    )
    .bind(payment.as_uuid())
    .bind(format!("{payment}:charge:alpha:1"))
    .bind(&merchant)
    .execute(&pool)
    .await
    .expect("in-doubt attempt");

    let event = |id: &str| {
        serde_json::to_vec(&json!({
            "id": id, "object": "event", "type": "charge.succeeded", "created": 0,
            "data": {"id": "ch_webhook_1", "object": "charge", "status": "succeeded", "amount": 4200,
                     "amount_captured": 4200, "amount_refunded": 0, "currency": "EUR",
                     "reference": payment.to_string(), "payment_method": "pm_card_visa", "created": 0}
        }))
        .expect("body")
    };
    let body = event("evt_good_1");
    let now = chrono::Utc::now().timestamp();
    let good = sign(secret.as_bytes(), now, &body).expect("signing");
    let signature_hex = good
        .split_once("v1=")
        .map(|(_, v)| v.to_owned())
        .unwrap_or_default();

    // Refused: wrong secret, tampered body, old timestamp, no header, unknown PSP.
    let wrong = sign(b"whsec_not_it", now, &body).expect("signing");
    assert_eq!(post(&rig, "alpha", Some(&wrong), &body).await.0, 400);
    let tampered = event("evt_tampered");
    assert_eq!(post(&rig, "alpha", Some(&good), &tampered).await.0, 400);
    let old = sign(secret.as_bytes(), now - 301, &body).expect("signing");
    let (status, answer) = post(&rig, "alpha", Some(&old), &body).await;
    assert_eq!(status, 400);
    assert_eq!(answer["error"]["code"], "signature_stale");
    assert_eq!(post(&rig, "alpha", None, &body).await.0, 400);
    assert_eq!(post(&rig, "gamma", Some(&good), &body).await.0, 404);
    let attempt_state = || async {
        sqlx::query_scalar::<_, String>(
            "SELECT state FROM psp_gateway.attempts WHERE payment_id = $1",
        )
        .bind(payment.as_uuid())
        .fetch_one(&pool)
        .await
        .expect("attempt state")
    };
    assert_eq!(
        attempt_state().await,
        "unknown",
        "refused webhooks change nothing"
    );

    // Accepted: settles the attempt and publishes the outcome.
    let (status, answer) = post(&rig, "alpha", Some(&good), &body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["outcome"], "resolved_charge");
    assert_eq!(attempt_state().await, "succeeded");

    // Replayed (same id, still inside the tolerance): acknowledged, ignored.
    let (status, answer) = post(&rig, "alpha", Some(&good), &body).await;
    assert_eq!(status, 200);
    assert_eq!(answer["duplicate"], true);
    // Same facts under a new id: recorded, but the attempt is settled already.
    let again = event("evt_good_2");
    let h = sign(secret.as_bytes(), now, &again).expect("signing");
    assert_eq!(
        post(&rig, "alpha", Some(&h), &again).await.1["outcome"],
        "noted"
    );

    let pid = payment.to_string();
    let p = pid.clone();
    results.poll(Duration::from_secs(5), &move |x| x == p);
    let published = results.by_payment("payment.psp_result");
    let mine = published.get(&pid).cloned().unwrap_or_default();
    assert_eq!(
        mine.len(),
        1,
        "one result for the settled attempt: {mine:?}"
    );
    assert_eq!(mine[0].data["outcome"], "succeeded");
    assert_eq!(mine[0].data["charge_id"], "ch_webhook_1");
    assert_eq!(mine[0].data["psp"], "alpha");
    let stored: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM psp_gateway.webhook_events WHERE psp = 'alpha'")
            .fetch_one(&pool)
            .await
            .expect("webhook rows");
    assert_eq!(
        stored, 2,
        "evt_good_1 once, evt_good_2 once; refused ones not at all"
    );

    let refused = rig
        .metric("psp_gateway_webhooks_total{psp=\"alpha\",result=\"bad_signature\"}")
        .await;
    assert_eq!(refused, 2.0);
    assert_eq!(
        rig.metric("psp_gateway_webhooks_total{psp=\"alpha\",result=\"stale\"}")
            .await,
        1.0
    );
    assert_eq!(
        rig.metric("psp_gateway_webhooks_total{psp=\"alpha\",result=\"duplicate\"}")
            .await,
        1.0
    );

    // The logs tell what happened, without the secret or any signature.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let text = logs.text();
    assert!(text.contains("webhook refused"), "refusals are logged");
    assert!(
        text.contains("replayed or redelivered"),
        "replays are logged"
    );
    assert!(
        !text.contains(&secret),
        "the webhook secret leaked into the logs"
    );
    assert!(
        !text.contains(&signature_hex),
        "a signature leaked into the logs"
    );
    assert!(
        !text.contains("v1="),
        "a signature header leaked into the logs"
    );
    rig.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psp_sim_webhooks_reach_the_gateway_and_verify() {
    let _ = logs();
    let secret = format!("whsec_sim_{}", uuid::Uuid::new_v4().simple());
    let rig = start_rig(RigOptions {
        webhooks: true,
        webhook_secret_alpha: secret,
        ..RigOptions::default()
    })
    .await;
    let mut results = TopicReader::at_end(topics::PAYMENTS_PSP_RESULTS);
    let producer = producer();
    let id = PaymentId::new();
    let req = requested(
        "m_webhooks",
        "cus_1",
        999,
        "EUR",
        "pm_card_visa",
        paystream_domain::CaptureMode::Automatic,
    );
    send(&producer, &record(id, approved(req))).await;
    let pid = id.to_string();
    let p = pid.clone();
    assert!(
        results.wait_until(Duration::from_secs(30), &move |x| x == p, &|s| !s
            .is_empty())
    );
    // The simulator's signed charge.succeeded arrives and is verified (recorded, not refused).
    let pool = rig.pool().await;
    let mut rows = 0i64;
    for _ in 0..50 {
        rows = sqlx::query_scalar(
            "SELECT COUNT(*) FROM psp_gateway.webhook_events WHERE reference = $1",
        )
        .bind(&pid)
        .fetch_one(&pool)
        .await
        .expect("webhook rows");
        if rows > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(rows, 1);
    let p = pid.clone();
    results.poll(Duration::from_secs(2), &move |x| x == p);
    let ours = rig.charge_ids();
    let mine = results.by_payment_where("payment.psp_result", &|s| rig.owns(&ours, s));
    assert_eq!(mine[&pid].len(), 1);
    rig.shutdown.cancel();
}
