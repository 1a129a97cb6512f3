//! A payment through the whole fleet: HTTP → Kafka → risk → PSP → stores → validator.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use paystream_e2e::fleet;
use paystream_kit::auth::Role;
use serde_json::{Value, json};
use sqlx::Row;

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

async fn create(token: &str, key: &str, body: Value) -> (u16, Value, bool) {
    let r = client()
        .post(format!("{}/v1/payments", fleet().api_url))
        .bearer_auth(token)
        .header("Idempotency-Key", key)
        .json(&body)
        .send()
        .await
        .expect("POST /v1/payments");
    let status = r.status().as_u16();
    let replayed = r.headers().get("idempotent-replayed").is_some();
    (status, r.json().await.expect("JSON body"), replayed)
}

async fn get(token: &str, id: &str) -> (u16, Value) {
    let r = client()
        .get(format!("{}/v1/payments/{id}", fleet().api_url))
        .bearer_auth(token)
        .send()
        .await
        .expect("GET /v1/payments/{id}");
    (r.status().as_u16(), r.json().await.expect("JSON body"))
}

/// Polls until every payment leaves `processing`, and returns the final views.
async fn wait_terminal(token: &str, ids: &[String]) -> HashMap<String, Value> {
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut done = HashMap::new();
    while done.len() < ids.len() {
        assert!(
            Instant::now() < deadline,
            "payments still processing: {:?}",
            ids.iter()
                .filter(|i| !done.contains_key(*i))
                .collect::<Vec<_>>()
        );
        for id in ids {
            if done.contains_key(id) {
                continue;
            }
            let (status, view) = get(token, id).await;
            assert_eq!(status, 200, "{view}");
            let s = view["status"].as_str().unwrap_or_default();
            if s != "processing" {
                done.insert(id.clone(), view);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    done
}

fn uuid_of(id: &str) -> uuid::Uuid {
    uuid::Uuid::parse_str(id.trim_start_matches("pay_")).expect("payment id")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_succeed_or_decline_and_every_store_agrees() {
    let fleet = fleet();
    let merchant = format!("m_{}", uuid::Uuid::new_v4().simple());
    let token = fleet.token(&merchant, Role::Merchant);

    let mut expected: HashMap<String, &str> = HashMap::new();
    let cases: Vec<(i64, &str, &str)> = (0..8)
        .map(|i| (1_000 + i * 7, "pm_card_visa", "succeeded"))
        .chain([(900_000, "pm_card_visa", "declined")]) // above the risk limit of 500000
        .chain([(2_000, "pm_card_declined", "declined")]) // refused by alpha and beta
        .collect();
    for (i, (amount, pm, want)) in cases.iter().enumerate() {
        let (status, body, replayed) = create(
            &token,
            &format!("key-{i}"),
            json!({"amount": amount, "currency": "EUR", "customer_id": "cus_1", "payment_method": pm}),
        )
        .await;
        assert_eq!(status, 202, "{body}");
        assert!(!replayed);
        assert_eq!(body["status"], "processing");
        let id = body["id"].as_str().expect("id").to_owned();
        assert!(id.starts_with("pay_"));
        expected.insert(id, want);
    }

    let ids: Vec<String> = expected.keys().cloned().collect();
    let finals = wait_terminal(&token, &ids).await;
    for (id, want) in &expected {
        assert_eq!(finals[id]["status"], *want, "payment {id}: {}", finals[id]);
    }

    // The PSPs charged each succeeded payment exactly once, and nothing else.
    for (id, want) in &expected {
        let charges =
            fleet.alpha.charge_count_for_reference(id) + fleet.beta.charge_count_for_reference(id);
        let want_charges = usize::from(*want == "succeeded");
        assert_eq!(charges, want_charges, "live charges for {id}");
    }

    let pool = fleet.pool().await;
    let uuids: Vec<uuid::Uuid> = ids.iter().map(|i| uuid_of(i)).collect();

    // Ledger: one balanced capture transfer per succeeded payment, for the captured amount.
    let rows = sqlx::query(
        "SELECT t.payment_id,
                SUM(e.amount) FILTER (WHERE e.side = 'debit')::bigint AS debits,
                SUM(e.amount) FILTER (WHERE e.side = 'credit')::bigint AS credits,
                COUNT(DISTINCT t.transfer_id) AS transfers
         FROM account_store.transfers t JOIN account_store.entries e USING (transfer_id)
         WHERE t.payment_id = ANY($1) GROUP BY t.payment_id",
    )
    .bind(&uuids)
    .fetch_all(&pool)
    .await
    .expect("ledger query");
    let succeeded: Vec<&String> = expected
        .iter()
        .filter(|(_, w)| **w == "succeeded")
        .map(|(id, _)| id)
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut rows = rows;
    while rows.len() < succeeded.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        rows = sqlx::query(
            "SELECT t.payment_id,
                    SUM(e.amount) FILTER (WHERE e.side = 'debit')::bigint AS debits,
                    SUM(e.amount) FILTER (WHERE e.side = 'credit')::bigint AS credits,
                    COUNT(DISTINCT t.transfer_id) AS transfers
             FROM account_store.transfers t JOIN account_store.entries e USING (transfer_id)
             WHERE t.payment_id = ANY($1) GROUP BY t.payment_id",
        )
        .bind(&uuids)
        .fetch_all(&pool)
        .await
        .expect("ledger query");
    }
    assert_eq!(
        rows.len(),
        succeeded.len(),
        "one transfer per succeeded payment"
    );
    for row in &rows {
        let debits: i64 = row.get("debits");
        let credits: i64 = row.get("credits");
        let transfers: i64 = row.get("transfers");
        assert_eq!(debits, credits, "balanced");
        assert_eq!(transfers, 1);
        let pid: uuid::Uuid = row.get("payment_id");
        let id = format!("pay_{pid}");
        assert_eq!(debits, finals[&id]["amount"].as_i64().unwrap_or_default());
    }

    // The merchant's payable equals the sum of its entries, and is what was captured net of fees.
    let account = format!("merchant:{merchant}:payable");
    let (total, from_entries): (i64, i64) = {
        let row = sqlx::query(
            "SELECT (SELECT credits - debits FROM account_store.accounts WHERE account = $1 AND currency = 'EUR') AS total,
                    (SELECT COALESCE(SUM(CASE side WHEN 'credit' THEN amount ELSE -amount END), 0)::bigint
                     FROM account_store.entries WHERE account = $1 AND currency = 'EUR') AS from_entries",
        )
        .bind(&account)
        .fetch_one(&pool)
        .await
        .expect("balance query");
        (row.get("total"), row.get("from_entries"))
    };
    assert_eq!(total, from_entries);
    assert!(total > 0);

    // The validator checked every payment and found nothing wrong.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let row = sqlx::query(
            "SELECT COUNT(*) FILTER (WHERE result = 'ok') AS ok,
                    COUNT(*) FILTER (WHERE result = 'discrepancy') AS bad
             FROM validator.payments WHERE payment_id = ANY($1)",
        )
        .bind(&uuids)
        .fetch_one(&pool)
        .await
        .expect("validator query");
        let (ok, bad): (i64, i64) = (row.get("ok"), row.get("bad"));
        if bad > 0 || ok as usize == ids.len() {
            let found: Vec<(String, String)> = sqlx::query_as(
                "SELECT kind, message FROM validator.discrepancies WHERE payment_id = ANY($1)",
            )
            .bind(&uuids)
            .fetch_all(&pool)
            .await
            .expect("discrepancies");
            assert!(found.is_empty(), "validator discrepancies: {found:?}");
            assert_eq!(ok as usize, ids.len());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "validator checked {ok} of {} payments",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_request_returns_the_same_payment() {
    let fleet = fleet();
    let merchant = format!("m_{}", uuid::Uuid::new_v4().simple());
    let token = fleet.token(&merchant, Role::Merchant);
    let body = json!({"amount": 4200, "currency": "USD", "customer_id": "cus_2", "payment_method": "pm_card_visa"});
    let (s1, first, r1) = create(&token, "same-key", body.clone()).await;
    let (s2, second, r2) = create(&token, "same-key", body).await;
    assert_eq!((s1, s2), (202, 202));
    assert!(!r1 && r2, "the second answer is marked as replayed");
    assert_eq!(first["id"], second["id"]);

    let (s3, err, _) = create(
        &token,
        "same-key",
        json!({"amount": 4300, "currency": "USD", "customer_id": "cus_2", "payment_method": "pm_card_visa"}),
    )
    .await;
    assert_eq!(s3, 422);
    assert_eq!(err["error"]["type"], "idempotency_error");

    // Another merchant cannot see it.
    let other = fleet.token("m_other", Role::Merchant);
    let (status, err) = get(&other, first["id"].as_str().unwrap_or_default()).await;
    assert_eq!(status, 404, "{err}");

    let id = first["id"].as_str().unwrap_or_default().to_owned();
    let finals = wait_terminal(&token, std::slice::from_ref(&id)).await;
    assert_eq!(finals[&id]["status"], "succeeded");
    assert_eq!(
        finals[&id]["created"], first["created"],
        "the creation time is the acceptance time, whichever store answers"
    );
    assert_eq!(fleet.alpha.charge_count_for_reference(&id), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_name_the_field_and_create_nothing() {
    let fleet = fleet();
    let token = fleet.token("m_bad", Role::Merchant);
    let (status, err, _) = create(
        &token,
        "bad-1",
        json!({"amount": 100, "currency": "EUR", "customer_id": "c", "payment_method": "4242 4242 4242 4242"}),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(err["error"]["param"], "payment_method");
    assert!(
        !err.to_string().contains("4242"),
        "the card number is not echoed: {err}"
    );

    let r = client()
        .post(format!("{}/v1/payments", fleet.api_url))
        .header("Idempotency-Key", "k")
        .json(&json!({}))
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status().as_u16(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twelve_concurrent_requests_with_one_key_make_one_payment() {
    let fleet = fleet();
    let merchant = format!("m_{}", uuid::Uuid::new_v4().simple());
    let token = fleet.token(&merchant, Role::Merchant);
    let body = json!({"amount": 777, "currency": "EUR", "customer_id": "cus_3", "payment_method": "pm_card_visa"});
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let (token, body) = (token.clone(), body.clone());
        tasks.push(tokio::spawn(
            async move { create(&token, "burst", body).await },
        ));
    }
    let mut ids = std::collections::HashSet::new();
    let mut replays = 0;
    for t in tasks {
        let (status, view, replayed) = t.await.expect("task");
        assert!(status == 202 || status == 409, "{status}: {view}");
        if status == 202 {
            ids.insert(view["id"].as_str().unwrap_or_default().to_owned());
            replays += usize::from(replayed);
        }
    }
    assert_eq!(ids.len(), 1, "one payment for one key: {ids:?}");
    assert!(replays >= 1);
    let pool = fleet.pool().await;
    let stored: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM ingress.payments WHERE merchant_id = $1")
            .bind(&merchant)
            .fetch_one(&pool)
            .await
            .expect("count");
    assert_eq!(stored, 1);
    let id = ids.into_iter().next().unwrap_or_default();
    let finals = wait_terminal(&token, std::slice::from_ref(&id)).await;
    assert_eq!(finals[&id]["status"], "succeeded");
    assert_eq!(fleet.alpha.charge_count_for_reference(&id), 1);
}
