//! Helpers of the merchant API tests (`api_*.rs`): HTTP calls against the in-process fleet, and
//! rows planted directly in the fleet's own database (each fleet has a database of its own, so a
//! test may set up any state there without touching another run).

#![allow(dead_code)]

use std::time::{Duration, Instant};

use paystream_e2e::fleet;
use paystream_kit::auth::Role;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub headers: reqwest::header::HeaderMap,
}

impl Reply {
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or_default()
    }

    pub fn param(&self) -> &str {
        self.body["error"]["param"].as_str().unwrap_or_default()
    }

    pub fn replayed(&self) -> bool {
        self.headers
            .get("idempotent-replayed")
            .is_some_and(|v| v == "true")
    }

    /// The contract error shape, with the given status and code.
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "{}", self.body);
        assert_eq!(self.code(), code, "{}", self.body);
        let e = &self.body["error"];
        assert!(
            e["type"].is_string() && e["message"].is_string(),
            "{}",
            self.body
        );
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client")
}

pub async fn send(req: reqwest::RequestBuilder) -> Reply {
    let r = req.send().await.expect("HTTP request");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let bytes = r.bytes().await.expect("body");
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| panic!("not JSON ({status}): {}", String::from_utf8_lossy(&bytes)))
    };
    Reply {
        status,
        body,
        headers,
    }
}

pub async fn post_to(base: &str, path: &str, token: &str, key: &str, body: Value) -> Reply {
    send(
        client()
            .post(format!("{base}{path}"))
            .bearer_auth(token)
            .header("Idempotency-Key", key)
            .json(&body),
    )
    .await
}

pub async fn post(path: &str, token: &str, key: &str, body: Value) -> Reply {
    post_to(&fleet().api_url, path, token, key, body).await
}

pub async fn get_from(base: &str, path: &str, token: &str) -> Reply {
    send(client().get(format!("{base}{path}")).bearer_auth(token)).await
}

pub async fn get(path: &str, token: &str) -> Reply {
    get_from(&fleet().api_url, path, token).await
}

pub fn new_merchant() -> String {
    format!("m_{}", Uuid::new_v4().simple())
}

pub fn merchant_token(merchant: &str) -> String {
    fleet().token(merchant, Role::Merchant)
}

pub fn key() -> String {
    format!("k-{}", Uuid::new_v4().simple())
}

pub fn card(amount: i64) -> Value {
    json!({"amount": amount, "currency": "EUR", "customer_id": "cus_api", "payment_method": "pm_card_visa"})
}

pub fn manual_card(amount: i64) -> Value {
    json!({"amount": amount, "currency": "EUR", "customer_id": "cus_api", "payment_method": "pm_card_visa", "capture": "manual"})
}

/// Creates a payment through the API and returns its id.
pub async fn create(token: &str, body: Value) -> String {
    let r = post("/v1/payments", token, &key(), body).await;
    assert_eq!(r.status, 202, "{}", r.body);
    r.body["id"].as_str().expect("id").to_owned()
}

/// Polls `GET /v1/payments/{id}` until its status is one of `want`.
pub async fn wait_status(token: &str, id: &str, want: &[&str]) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let r = get(&format!("/v1/payments/{id}"), token).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let status = r.body["status"].as_str().unwrap_or_default().to_owned();
        if want.contains(&status.as_str()) {
            return r.body;
        }
        assert!(
            Instant::now() < deadline,
            "payment {id} is {status}, waited for {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

/// A payment that went through the fleet and was charged and captured.
pub async fn succeeded_payment(token: &str, amount: i64) -> String {
    let id = create(token, card(amount)).await;
    let view = wait_status(token, &id, &["succeeded", "declined", "failed"]).await;
    assert_eq!(view["status"], "succeeded", "{view}");
    assert_eq!(view["amount_captured"], amount, "{view}");
    id
}

pub fn uuid_of(id: &str) -> Uuid {
    Uuid::parse_str(id.trim_start_matches("pay_")).expect("payment id")
}

pub async fn pool() -> PgPool {
    fleet().pool().await
}

/// A payment as the ingress accepted it, with no outbox record: the fleet never hears of it,
/// so it stays exactly as planted.
pub async fn plant_accepted(pool: &PgPool, merchant: &str, amount: i64) -> Uuid {
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO ingress.payments (id, merchant_id, amount, currency, customer_id, payment_method, capture)
         VALUES ($1, $2, $3, 'EUR', 'cus_planted', 'pm_card_visa', 'manual')",
    )
    .bind(id)
    .bind(merchant)
    .bind(amount)
    .execute(pool)
    .await
    .expect("planting an accepted payment");
    id
}

/// An accepted payment and its order in `status` at `version`.
pub async fn plant_order(
    pool: &PgPool,
    merchant: &str,
    amount: i64,
    status: &str,
    captured: i64,
    version: i32,
) -> Uuid {
    let id = plant_accepted(pool, merchant, amount).await;
    sqlx::query(
        "INSERT INTO order_store.orders (payment_id, merchant_id, amount, currency, customer_id, capture,
                                         status, amount_captured, version)
         VALUES ($1, $2, $3, 'EUR', 'cus_planted', 'manual', $4, $5, $6)",
    )
    .bind(id)
    .bind(merchant)
    .bind(amount)
    .bind(status)
    .bind(captured)
    .bind(version)
    .execute(pool)
    .await
    .expect("planting an order");
    id
}

pub fn pay(id: Uuid) -> String {
    format!("pay_{id}")
}

/// The value of a counter (summed over its labels) on an instance's `/metrics`.
pub async fn metric(base: &str, name: &str) -> f64 {
    let text = client()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
