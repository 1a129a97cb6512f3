//! Merchant API: idempotency keys on every POST (replay, reuse with another body, in flight,
//! per-merchant scope, expiry), over real HTTP and Postgres.

mod api_support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use api_support::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_after_the_payment_completed_answers_the_saved_response() {
    let merchant = new_merchant();
    let token = merchant_token(&merchant);
    let k = key();
    let first = post("/v1/payments", &token, &k, card(4321)).await;
    assert_eq!(first.status, 202, "{}", first.body);
    assert!(!first.replayed());
    let id = first.body["id"].as_str().expect("id").to_owned();
    wait_status(&token, &id, &["succeeded"]).await;

    // Same key, same body (another key order, an explicit default): the saved 202, unchanged.
    let again = post(
        "/v1/payments",
        &token,
        &k,
        json!({"payment_method": "pm_card_visa", "customer_id": "cus_api", "currency": "EUR", "amount": 4321, "capture": "automatic"}),
    )
    .await;
    assert_eq!(again.status, 202);
    assert!(again.replayed(), "Idempotent-Replayed: true");
    assert_eq!(
        again.body, first.body,
        "the saved body, not the current state"
    );

    // Same key, another body: 422 and nothing new.
    let other = post("/v1/payments", &token, &k, card(4322)).await;
    other.assert_error(422, "idempotency_key_reused");
    assert_eq!(other.body["error"]["type"], "idempotency_error");
    assert_eq!(other.param(), "Idempotency-Key");
    // Same key on another endpoint: also another request.
    let capture = post(&format!("/v1/payments/{id}/capture"), &token, &k, json!({})).await;
    capture.assert_error(422, "idempotency_key_reused");

    let pool = pool().await;
    let count: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM ingress.payments WHERE merchant_id = $1")
            .bind(&merchant)
            .fetch_one(&pool)
            .await
            .expect("count");
    assert_eq!(count, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_belong_to_one_merchant() {
    let (a, b) = (new_merchant(), new_merchant());
    let k = key();
    let ra = post("/v1/payments", &merchant_token(&a), &k, card(100)).await;
    let rb = post("/v1/payments", &merchant_token(&b), &k, card(100)).await;
    assert_eq!((ra.status, rb.status), (202, 202));
    assert!(!rb.replayed());
    assert_ne!(ra.body["id"], rb.body["id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_still_in_flight_answers_409() {
    let merchant = new_merchant();
    let token = merchant_token(&merchant);
    let k = key();
    // Another request holds the key: its transaction has claimed it and not committed.
    let pool = pool().await;
    let mut holder = pool.begin().await.expect("tx");
    sqlx::query(
        "INSERT INTO ingress.idempotency_keys (merchant_id, key, operation, request_hash, state)
         VALUES ($1, $2, 'POST /v1/payments', 'h', 'in_flight')",
    )
    .bind(&merchant)
    .bind(&k)
    .execute(&mut *holder)
    .await
    .expect("claim");
    let started = Instant::now();
    let r = post("/v1/payments", &token, &k, card(100)).await;
    r.assert_error(409, "request_in_flight");
    assert_eq!(r.body["error"]["type"], "idempotency_error");
    assert!(started.elapsed() < Duration::from_secs(10));
    holder.rollback().await.expect("rollback");
    // Once the holder is gone the key is free.
    let r = post("/v1/payments", &token, &k, card(100)).await;
    assert_eq!(r.status, 202, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_validation_does_not_use_the_key_and_executed_refusals_replay() {
    let token = merchant_token(&new_merchant());
    let k = key();
    let bad = post(
        "/v1/payments",
        &token,
        &k,
        json!({"amount": -1, "currency": "EUR", "customer_id": "c", "payment_method": "pm_x"}),
    )
    .await;
    bad.assert_error(400, "parameter_invalid");
    let good = post("/v1/payments", &token, &k, card(100)).await;
    assert_eq!(
        good.status, 202,
        "the key was not taken by the invalid request: {}",
        good.body
    );

    // A capture of a payment that is not waiting for one is refused; the refusal is the saved
    // answer of its key, like any executed request.
    let id = good.body["id"].as_str().expect("id").to_owned();
    wait_status(&token, &id, &["succeeded"]).await;
    let ck = key();
    let first = post(
        &format!("/v1/payments/{id}/capture"),
        &token,
        &ck,
        json!({}),
    )
    .await;
    first.assert_error(409, "payment_unexpected_state");
    let again = post(
        &format!("/v1/payments/{id}/capture"),
        &token,
        &ck,
        json!({}),
    )
    .await;
    assert_eq!((again.status, &again.body), (409, &first.body));
    assert!(again.replayed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_key_is_a_new_key() {
    let merchant = new_merchant();
    let token = merchant_token(&merchant);
    let k = key();
    let first = post("/v1/payments", &token, &k, card(100)).await;
    assert_eq!(first.status, 202);
    let pool = pool().await;
    sqlx::query(
        "UPDATE ingress.idempotency_keys SET expires_at = now() - interval '1 second'
         WHERE merchant_id = $1 AND key = $2",
    )
    .bind(&merchant)
    .bind(&k)
    .execute(&pool)
    .await
    .expect("expire");
    // Another body under the expired key: a new payment, not 422.
    let second = post("/v1/payments", &token, &k, card(200)).await;
    assert_eq!(second.status, 202, "{}", second.body);
    assert!(!second.replayed());
    assert_ne!(second.body["id"], first.body["id"]);
    let kept_for: f64 = sqlx::query_scalar(
        "SELECT extract(epoch from expires_at - created_at)::float8 FROM ingress.idempotency_keys
         WHERE merchant_id = $1 AND key = $2",
    )
    .bind(&merchant)
    .bind(&k)
    .fetch_one(&pool)
    .await
    .expect("ttl");
    assert!(
        kept_for >= 24.0 * 3600.0 - 1.0,
        "keys live at least 24 h: {kept_for}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twelve_concurrent_refunds_with_one_key_make_one_refund() {
    let merchant = new_merchant();
    let token = merchant_token(&merchant);
    let id = succeeded_payment(&token, 1500).await;
    let k = key();
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let (token, k, path) = (
            token.clone(),
            k.clone(),
            format!("/v1/payments/{id}/refunds"),
        );
        tasks.push(tokio::spawn(async move {
            post(&path, &token, &k, json!({"amount": 100})).await
        }));
    }
    let mut ids = HashSet::new();
    let mut replays = 0;
    for t in tasks {
        let r = t.await.expect("task");
        assert!(
            r.status == 202 || r.status == 409,
            "{}: {}",
            r.status,
            r.body
        );
        if r.status == 202 {
            ids.insert(r.body["id"].as_str().unwrap_or_default().to_owned());
            replays += usize::from(r.replayed());
        } else {
            assert_eq!(r.code(), "request_in_flight");
        }
    }
    assert_eq!(ids.len(), 1, "one refund for one key: {ids:?}");
    assert!(replays >= 1);
    let pool = pool().await;
    let rows: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM ingress.refunds WHERE payment_id = $1")
            .bind(uuid_of(&id))
            .fetch_one(&pool)
            .await
            .expect("count");
    assert_eq!(rows, 1);
}
