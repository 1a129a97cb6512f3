//! The handler against the real Postgres (DATABASE_URL or the dev default), without Kafka: each
//! test builds events by hand and runs them through `Handler::handle` on its own transaction.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use order_store::domain::ports::{CacheError, OrderCache};
use order_store::{OrderHandler, RedisOrderCache, cache_key};
use paystream_domain::PaymentId;
use paystream_kit::CommonConfig;
use paystream_messaging::{Emitter, Handler, InboundEvent};
use serde_json::{Value, json};
use sqlx::{PgPool, Row};
use uuid::Uuid;

#[derive(Default)]
struct RecordingCache {
    invalidated: Mutex<Vec<PaymentId>>,
    fail: bool,
}

#[async_trait]
impl OrderCache for RecordingCache {
    async fn invalidate(&self, ids: &[PaymentId]) -> Result<(), CacheError> {
        if self.fail {
            return Err(CacheError::Unavailable("down for the test".into()));
        }
        self.invalidated.lock().unwrap().extend_from_slice(ids);
        Ok(())
    }
}

async fn pool() -> PgPool {
    let common = CommonConfig::for_tests();
    let pool = paystream_kit::db::connect(&common.database_url, 5)
        .await
        .unwrap();
    paystream_kit::db::migrate(&pool).await.unwrap();
    pool
}

fn handler() -> OrderHandler {
    OrderHandler::new(Arc::new(RecordingCache::default()))
}

fn event(payment_id: PaymentId, event_type: &str, data: Value) -> InboundEvent {
    InboundEvent {
        event_id: Uuid::now_v7(),
        event_type: event_type.to_owned(),
        schema_version: 1,
        payment_id,
        occurred_at: chrono::Utc::now(),
        data,
        topic: "test".into(),
        partition: 0,
        offset: 0,
        traceparent: None,
        correlation_id: None,
    }
}

fn request_data() -> Value {
    json!({
        "merchant_id": "m_orders",
        "amount": 1250,
        "currency": "EUR",
        "customer_id": "cus_42",
        "payment_method": "pm_card_visa",
        "capture": "automatic",
        "description": "two teas",
        "metadata": {"cart": "c_9"},
    })
}

fn requested(id: PaymentId) -> InboundEvent {
    event(id, "payment.requested", request_data())
}

fn risk(id: PaymentId, decision: &str) -> InboundEvent {
    event(
        id,
        "payment.risk_decided",
        json!({"decision": decision, "score": 7, "reasons": ["amount_limit: ok"], "request": request_data()}),
    )
}

fn psp(id: PaymentId, outcome: &str) -> InboundEvent {
    let captured = if outcome == "succeeded" { 1250 } else { 0 };
    let mut data = json!({
        "merchant_id": "m_orders",
        "outcome": outcome,
        "psp": "alpha",
        "charge_id": "ch_test",
        "amount": 1250,
        "currency": "EUR",
        "amount_captured": captured,
    });
    if outcome == "declined" {
        data["decline_code"] = json!("card_declined");
    }
    event(id, "payment.psp_result", data)
}

async fn handle(pool: &PgPool, handler: &OrderHandler, event: &InboundEvent) {
    let mut tx = pool.begin().await.unwrap();
    let mut out = Emitter::new(None, None);
    handler.handle(&mut tx, event, &mut out).await.unwrap();
    assert!(out.is_empty(), "the order store publishes nothing");
    tx.commit().await.unwrap();
}

struct OrderRow {
    status: String,
    version: i32,
    customer_id: Option<String>,
    description: Option<String>,
    capture: Option<String>,
    amount_captured: i64,
    risk_score: Option<i32>,
    decline_code: Option<String>,
}

async fn order(pool: &PgPool, id: PaymentId) -> OrderRow {
    let r = sqlx::query("SELECT * FROM order_store.orders WHERE payment_id = $1")
        .bind(id.as_uuid())
        .fetch_one(pool)
        .await
        .unwrap();
    OrderRow {
        status: r.get("status"),
        version: r.get("version"),
        customer_id: r.get("customer_id"),
        description: r.get("description"),
        capture: r.get("capture"),
        amount_captured: r.get("amount_captured"),
        risk_score: r.get("risk_score"),
        decline_code: r.get("decline_code"),
    }
}

/// (event_type, from, to, applied) in arrival order.
async fn history(
    pool: &PgPool,
    id: PaymentId,
) -> Vec<(String, Option<String>, Option<String>, bool)> {
    sqlx::query(
        "SELECT event_type, from_status, to_status, applied FROM order_store.order_events
         WHERE payment_id = $1 ORDER BY id",
    )
    .bind(id.as_uuid())
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
    .collect()
}

fn s(v: &str) -> Option<String> {
    Some(v.to_owned())
}

#[tokio::test]
async fn a_result_before_the_request_ends_succeeded_with_the_request_details() {
    let pool = pool().await;
    let h = handler();
    let id = PaymentId::new();

    handle(&pool, &h, &psp(id, "succeeded")).await;
    let o = order(&pool, id).await;
    assert_eq!(
        (o.status.as_str(), o.version, o.amount_captured),
        ("succeeded", 1, 1250)
    );
    assert_eq!(o.customer_id, None);

    handle(&pool, &h, &requested(id)).await;
    let o = order(&pool, id).await;
    assert_eq!(
        o.status, "succeeded",
        "the request does not move the status"
    );
    assert_eq!(o.version, 2);
    assert_eq!(o.customer_id, s("cus_42"));
    assert_eq!(o.description, s("two teas"));
    assert_eq!(o.capture, s("automatic"));

    // The approval adds the score; its copy of the request adds nothing new.
    handle(&pool, &h, &risk(id, "approved")).await;
    let o = order(&pool, id).await;
    assert_eq!(
        (o.status.as_str(), o.version, o.risk_score),
        ("succeeded", 3, Some(7))
    );

    assert_eq!(
        history(&pool, id).await,
        vec![
            ("payment.psp_result".into(), None, s("succeeded"), true),
            (
                "payment.requested".into(),
                s("succeeded"),
                s("succeeded"),
                true
            ),
            (
                "payment.risk_decided".into(),
                s("succeeded"),
                s("succeeded"),
                true
            ),
        ]
    );
}

#[tokio::test]
async fn a_refused_transition_is_recorded_and_leaves_the_order_alone() {
    let pool = pool().await;
    let h = handler();
    let id = PaymentId::new();

    handle(&pool, &h, &requested(id)).await;
    handle(&pool, &h, &risk(id, "approved")).await;
    handle(&pool, &h, &psp(id, "succeeded")).await;
    let before = order(&pool, id).await;
    assert_eq!((before.status.as_str(), before.version), ("succeeded", 3));

    handle(&pool, &h, &psp(id, "declined")).await;
    // The same result again under a new event id (a producer retry): refused, not re-applied.
    handle(&pool, &h, &psp(id, "succeeded")).await;

    let after = order(&pool, id).await;
    assert_eq!((after.status.as_str(), after.version), ("succeeded", 3));
    assert_eq!(after.decline_code, None);
    let rows = history(&pool, id).await;
    assert_eq!(rows.len(), 5);
    assert_eq!(
        rows[3],
        (
            "payment.psp_result".into(),
            s("succeeded"),
            s("declined"),
            false
        )
    );
    assert_eq!(
        rows[4],
        (
            "payment.psp_result".into(),
            s("succeeded"),
            s("succeeded"),
            false
        )
    );
    let note: String = sqlx::query_scalar(
        "SELECT note FROM order_store.order_events WHERE payment_id = $1 ORDER BY id DESC LIMIT 1",
    )
    .bind(id.as_uuid())
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(note.contains("refused"), "{note}");
}

#[tokio::test]
async fn the_same_event_id_twice_is_applied_once() {
    let pool = pool().await;
    let h = handler();
    let id = PaymentId::new();
    let auth = psp(id, "requires_capture");
    handle(&pool, &h, &auth).await;
    handle(&pool, &h, &auth).await;
    let o = order(&pool, id).await;
    assert_eq!((o.status.as_str(), o.version), ("requires_capture", 1));
    assert_eq!(history(&pool, id).await.len(), 1);

    handle(&pool, &h, &psp(id, "succeeded")).await;
    let o = order(&pool, id).await;
    assert_eq!(
        (o.status.as_str(), o.version, o.amount_captured),
        ("succeeded", 2, 1250)
    );
}

#[tokio::test]
async fn a_risk_decline_declines_and_a_late_psp_result_is_refused() {
    let pool = pool().await;
    let h = handler();
    let id = PaymentId::new();
    handle(&pool, &h, &risk(id, "declined")).await;
    handle(&pool, &h, &requested(id)).await;
    handle(&pool, &h, &psp(id, "failed")).await;
    let o = order(&pool, id).await;
    assert_eq!(o.status, "declined");
    assert_eq!(o.customer_id, s("cus_42"));
    let applied: Vec<bool> = history(&pool, id).await.into_iter().map(|r| r.3).collect();
    assert_eq!(applied, vec![true, true, false]);
}

#[tokio::test]
async fn a_stale_version_is_a_transient_error() {
    let pool = pool().await;
    let h = handler();
    let id = PaymentId::new();
    handle(&pool, &h, &requested(id)).await;

    // Another instance bumps the row between this handler's read and write: simulated by holding
    // the row in a second transaction that commits a new version first.
    let mut tx = pool.begin().await.unwrap();
    let mut other = pool.begin().await.unwrap();
    sqlx::query("UPDATE order_store.orders SET version = version + 1 WHERE payment_id = $1")
        .bind(id.as_uuid())
        .execute(&mut *other)
        .await
        .unwrap();
    let ev = psp(id, "succeeded");
    let handled = {
        let h = &h;
        let ev = &ev;
        let tx = &mut tx;
        async move {
            let mut out = Emitter::new(None, None);
            h.handle(tx, ev, &mut out).await
        }
    };
    let commit_other = async {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        other.commit().await.unwrap();
    };
    let (result, ()) = tokio::join!(handled, commit_other);
    assert!(
        matches!(result, Err(paystream_messaging::HandlerError::Transient(_))),
        "{result:?}"
    );
    tx.rollback().await.unwrap();

    // The runtime's retry reads the new version and succeeds.
    handle(&pool, &h, &ev).await;
    let o = order(&pool, id).await;
    assert_eq!((o.status.as_str(), o.version), ("succeeded", 3));
}

#[tokio::test]
async fn after_commit_invalidates_each_payment_once_and_survives_a_cache_failure() {
    let cache = Arc::new(RecordingCache::default());
    let h = OrderHandler::new(cache.clone());
    let (a, b) = (PaymentId::new(), PaymentId::new());
    h.after_commit(&[a, b, a]).await;
    let mut got = cache.invalidated.lock().unwrap().clone();
    got.sort();
    let mut want = vec![a, b];
    want.sort();
    assert_eq!(got, want);

    let failing = OrderHandler::new(Arc::new(RecordingCache {
        fail: true,
        ..Default::default()
    }));
    failing.after_commit(&[a]).await;
}

#[tokio::test]
async fn the_redis_adapter_deletes_the_ingress_keys() {
    let common = CommonConfig::for_tests();
    let cache = RedisOrderCache::connect(&common.redis_url).unwrap();
    let client = redis::Client::open(common.redis_url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let (a, b, kept) = (PaymentId::new(), PaymentId::new(), PaymentId::new());
    for id in [a, b, kept] {
        redis::cmd("SET")
            .arg(cache_key(&id))
            .arg("{}")
            .arg("EX")
            .arg(60)
            .query_async::<()>(&mut conn)
            .await
            .unwrap();
    }
    assert!(cache_key(&a).starts_with("paystream:order:pay_"));
    cache.invalidate(&[a, b]).await.unwrap();
    let exists: i64 = redis::cmd("EXISTS")
        .arg(cache_key(&a))
        .arg(cache_key(&b))
        .arg(cache_key(&kept))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(exists, 1, "only the untouched payment stays cached");
}

#[tokio::test]
async fn an_unreachable_redis_is_an_error_not_a_hang() {
    let cache = RedisOrderCache::connect("redis://127.0.0.1:1").unwrap();
    let started = std::time::Instant::now();
    assert!(cache.invalidate(&[PaymentId::new()]).await.is_err());
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

/// Refund ids are global (`re_<uuid>` from the ingress): each test run makes its own.
fn refund(id: PaymentId, refund_id: &str, amount: i64) -> InboundEvent {
    let refund_id = format!("{refund_id}_{}", id.as_uuid().simple());
    event(
        id,
        "payment.refunded",
        json!({
            "merchant_id": "m_orders", "refund_id": refund_id, "psp": "alpha",
            "charge_id": "ch_test", "psp_refund_id": format!("psp_{refund_id}"),
            "amount": amount, "currency": "EUR",
        }),
    )
}

fn capture(id: PaymentId, amount: i64) -> InboundEvent {
    event(
        id,
        "payment.captured",
        json!({
            "merchant_id": "m_orders", "command_id": "cmd_1", "psp": "alpha",
            "charge_id": "ch_test", "currency": "EUR", "amount_captured": amount,
        }),
    )
}

async fn refunded_amount(pool: &PgPool, id: PaymentId) -> i64 {
    sqlx::query_scalar("SELECT amount_refunded FROM order_store.orders WHERE payment_id = $1")
        .bind(id.as_uuid())
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn outcomes_before_their_state_are_parked_then_applied_in_arrival_order() {
    let pool = pool().await;
    let h = handler();
    let id = PaymentId::new();
    handle(&pool, &h, &refund(id, "re_1", 250)).await;
    handle(&pool, &h, &capture(id, 1_000)).await;
    assert!(history(&pool, id).await.is_empty(), "nothing applied yet");
    let parked: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM order_store.parked_events WHERE payment_id = $1 AND resolved_at IS NULL",
    )
    .bind(id.as_uuid())
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(parked, 2);

    handle(&pool, &h, &psp(id, "requires_capture")).await;
    let o = order(&pool, id).await;
    assert_eq!((o.status.as_str(), o.amount_captured), ("succeeded", 1_000));
    assert_eq!(refunded_amount(&pool, id).await, 250);
    let rows = history(&pool, id).await;
    let types: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(
        types,
        ["payment.psp_result", "payment.captured", "payment.refunded"],
        "the capture lands before the refund that waited for it"
    );
    assert!(rows.iter().all(|r| r.3));
}

/// One transaction parks a refund while another applies the capture it waits for: the
/// per-payment lock makes the second wait for the first, then see and apply the parked refund.
#[tokio::test]
async fn a_refund_parked_while_the_capture_lands_elsewhere_is_not_lost() {
    let pool = pool().await;
    let h = Arc::new(handler());
    let id = PaymentId::new();
    handle(&pool, &h, &psp(id, "requires_capture")).await;

    let mut parking = pool.begin().await.unwrap();
    let mut out = Emitter::new(None, None);
    h.handle(&mut parking, &refund(id, "re_race", 400), &mut out)
        .await
        .unwrap();

    let capturing = {
        let (pool, h) = (pool.clone(), h.clone());
        tokio::spawn(async move { handle(&pool, &h, &capture(id, 1_000)).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !capturing.is_finished(),
        "the capture waits for the parking transaction"
    );
    parking.commit().await.unwrap();
    capturing.await.unwrap();

    let o = order(&pool, id).await;
    assert_eq!(o.status, "succeeded");
    assert_eq!(refunded_amount(&pool, id).await, 400);
}

#[tokio::test]
async fn a_refund_is_applied_once_per_refund_id_and_never_beyond_the_capture() {
    let pool = pool().await;
    let h = handler();
    let id = PaymentId::new();
    handle(&pool, &h, &psp(id, "succeeded")).await;
    handle(&pool, &h, &refund(id, "re_a", 1_000)).await;
    handle(&pool, &h, &refund(id, "re_a", 1_000)).await;
    handle(&pool, &h, &refund(id, "re_b", 251)).await;
    handle(&pool, &h, &refund(id, "re_c", 250)).await;
    assert_eq!(refunded_amount(&pool, id).await, 1_250);
    let applied: Vec<bool> = history(&pool, id).await.into_iter().map(|r| r.3).collect();
    assert_eq!(applied, vec![true, true, false, false, true]);
    let refunds: i64 =
        sqlx::query_scalar("SELECT count(*) FROM order_store.refunds WHERE payment_id = $1")
            .bind(id.as_uuid())
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(refunds, 2);
}
