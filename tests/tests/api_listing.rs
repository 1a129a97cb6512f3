//! Merchant API: listing with cursor pagination across the order store and the payments only
//! the ingress knows yet, the status filter, and `GET /v1/balance`.

mod api_support;

use std::collections::HashSet;
use std::time::Duration;

use api_support::*;
use paystream_e2e::fleet;
use paystream_kit::auth::Role;
use serde_json::{Value, json};

async fn all_pages(token: &str, query: &str, limit: u32) -> (Vec<Value>, usize) {
    let mut out = Vec::new();
    let mut pages = 0;
    let mut after: Option<String> = None;
    loop {
        let mut path = format!("/v1/payments?limit={limit}{query}");
        if let Some(a) = &after {
            path.push_str(&format!("&starting_after={a}"));
        }
        let r = get(&path, token).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["object"], "list");
        let data = r.body["data"].as_array().expect("data").clone();
        assert!(data.len() <= limit as usize);
        pages += 1;
        after = data
            .last()
            .and_then(|v| v["id"].as_str())
            .map(str::to_owned);
        out.extend(data);
        if !r.body["has_more"].as_bool().expect("has_more") {
            return (out, pages);
        }
        assert!(pages < 100, "pagination does not end");
    }
}

fn ids(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|v| v["id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_follow_each_other_newest_first_across_both_sources() {
    let merchant = new_merchant();
    let token = merchant_token(&merchant);
    let pool = pool().await;
    // Oldest first: two orders, a payment only the ingress knows, three more orders, another one
    // only the ingress knows.
    let mut planted = Vec::new();
    planted.push(plant_order(&pool, &merchant, 100, "succeeded", 100, 3).await);
    planted.push(plant_order(&pool, &merchant, 200, "declined", 0, 2).await);
    planted.push(plant_accepted(&pool, &merchant, 300).await);
    planted.push(plant_order(&pool, &merchant, 400, "requires_capture", 0, 2).await);
    planted.push(plant_order(&pool, &merchant, 500, "processing", 0, 1).await);
    planted.push(plant_order(&pool, &merchant, 600, "succeeded", 600, 3).await);
    planted.push(plant_accepted(&pool, &merchant, 700).await);
    let newest_first: Vec<String> = planted.iter().rev().map(|u| pay(*u)).collect();
    // Another merchant's payments never show.
    plant_order(&pool, &new_merchant(), 100, "succeeded", 100, 3).await;

    for limit in [1, 2, 3, 7, 100] {
        let (items, pages) = all_pages(&token, "", limit).await;
        assert_eq!(ids(&items), newest_first, "limit {limit}");
        assert_eq!(pages, 7usize.div_ceil(limit as usize), "limit {limit}");
    }
    let (first, _) = all_pages(&token, "", 100).await;
    assert_eq!(first[0]["status"], "processing");
    assert_eq!(first[0]["amount"], 700);
    assert_eq!(first[0]["version"], 0);
    assert_eq!(first[1]["status"], "succeeded");
    assert_eq!(first[1]["amount_captured"], 600);

    // The status filter applies to both sources.
    let (processing, _) = all_pages(&token, "&status=processing", 2).await;
    assert_eq!(
        ids(&processing),
        vec![pay(planted[6]), pay(planted[4]), pay(planted[2])]
    );
    let (succeeded, _) = all_pages(&token, "&status=succeeded", 1).await;
    assert_eq!(ids(&succeeded), vec![pay(planted[5]), pay(planted[0])]);
    let (none, pages) = all_pages(&token, "&status=canceled", 10).await;
    assert!(none.is_empty() && pages == 1);

    // Operators list one merchant with merchant_id, or everyone.
    let operator = fleet().token("ops_list", Role::Operator);
    let (by_op, _) = all_pages(&operator, &format!("&merchant_id={merchant}"), 3).await;
    assert_eq!(ids(&by_op), newest_first);
    let everyone = get("/v1/payments?limit=100", &operator).await;
    assert_eq!(everyone.status, 200, "{}", everyone.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_moving_to_the_order_store_are_listed_once() {
    let merchant = new_merchant();
    let token = merchant_token(&merchant);
    let mut created = HashSet::new();
    for i in 0..5 {
        created.insert(create(&token, card(100 + i)).await);
    }
    // While the fleet moves them from "accepted" to orders, every listing has each exactly once.
    for _ in 0..20 {
        let (items, _) = all_pages(&token, "", 2).await;
        let listed = ids(&items);
        let unique: HashSet<String> = listed.iter().cloned().collect();
        assert_eq!(listed.len(), unique.len(), "duplicates: {listed:?}");
        assert_eq!(unique, created);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_balance_is_the_payable_account_and_what_awaits_capture() {
    let merchant = new_merchant();
    let token = merchant_token(&merchant);
    let pool = pool().await;
    let empty = get("/v1/balance", &token).await;
    assert_eq!(empty.status, 200, "{}", empty.body);
    assert_eq!(
        empty.body,
        json!({"object": "balance", "available": [], "pending": []})
    );

    let account = format!("merchant:{merchant}:payable");
    sqlx::query(
        "INSERT INTO account_store.accounts (account, currency, debits, credits)
         VALUES ($1, 'EUR', 200, 1200), ($1, 'USD', 0, 500)",
    )
    .bind(&account)
    .execute(&pool)
    .await
    .expect("planting accounts");
    plant_order(&pool, &merchant, 700, "requires_capture", 0, 2).await;
    plant_order(&pool, &merchant, 300, "requires_capture", 0, 2).await;
    plant_order(&pool, &merchant, 999, "succeeded", 999, 3).await;
    let r = get("/v1/balance", &token).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.body,
        json!({
            "object": "balance",
            "available": [{"currency": "EUR", "amount": 1000}, {"currency": "USD", "amount": 500}],
            "pending": [{"currency": "EUR", "amount": 1000}],
        })
    );
    let other = get("/v1/balance", &merchant_token(&new_merchant())).await;
    assert_eq!(other.body["available"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_captured_payment_shows_in_the_balance() {
    let merchant = new_merchant();
    let token = merchant_token(&merchant);
    succeeded_payment(&token, 10_000).await;
    let pool = pool().await;
    let account = format!("merchant:{merchant}:payable");
    eventually("the ledger to post the capture", Duration::from_secs(60), || {
        let (pool, account) = (pool.clone(), account.clone());
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT (credits - debits)::bigint FROM account_store.accounts WHERE account = $1 AND currency = 'EUR'",
            )
            .bind(&account)
            .fetch_optional(&pool)
            .await
            .ok()
            .flatten()
            .is_some_and(|v| v > 0)
        }
    })
    .await;
    let ledger: i64 = sqlx::query_scalar(
        "SELECT (credits - debits)::bigint FROM account_store.accounts WHERE account = $1 AND currency = 'EUR'",
    )
    .bind(&account)
    .fetch_one(&pool)
    .await
    .expect("ledger");
    let r = get("/v1/balance", &token).await;
    assert_eq!(
        r.body["available"],
        json!([{"currency": "EUR", "amount": ledger}]),
        "{}",
        r.body
    );
    assert!(ledger > 0 && ledger <= 10_000, "net of fees: {ledger}");
}
