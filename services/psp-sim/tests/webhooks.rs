//! Webhooks reach a real HTTP receiver, signed the way the gateway verifies them.

mod common;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use common::{charge_body, spawn};
use psp_sim::SimConfig;
use psp_sim::signature::{self, SignatureError};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;
use tokio::sync::mpsc;

const SECRET: &str = "whsec_test_secret";

struct Delivery {
    signature: String,
    body: Bytes,
}

impl Delivery {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// A stand-in for the gateway's `POST /webhooks/alpha`, recording what arrives.
async fn receiver() -> (String, mpsc::UnboundedReceiver<Delivery>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = Router::new()
        .route(
            "/webhooks/alpha",
            post(
                |State(tx): State<mpsc::UnboundedSender<Delivery>>,
                 headers: HeaderMap,
                 body: Bytes| async move {
                    let signature = headers
                        .get("PSP-Signature")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    let _ = tx.send(Delivery { signature, body });
                    StatusCode::OK
                },
            ),
        )
        .with_state(tx);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/webhooks/alpha", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, rx)
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Delivery>) -> Delivery {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("no webhook within 5 s")
        .expect("receiver closed")
}

fn config(url: String) -> SimConfig {
    SimConfig {
        webhook_secret: SECRET.to_owned(),
        webhook_url: Some(url),
        ..SimConfig::default()
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

#[tokio::test]
async fn charge_decline_and_refund_webhooks_are_signed() {
    let (url, mut rx) = receiver().await;
    let sim = spawn(config(url)).await;

    let charge = sim.post("/v1/charges", "w1", &charge_body("pay_wh")).await;
    assert_eq!(charge.status, StatusCode::OK);
    let delivery = next(&mut rx).await;
    assert_eq!(
        signature::verify(SECRET, &delivery.signature, &delivery.body, now(), 300),
        Ok(())
    );
    assert_eq!(
        signature::verify(
            "whsec_other",
            &delivery.signature,
            &delivery.body,
            now(),
            300
        ),
        Err(SignatureError::Mismatch)
    );
    let event = delivery.json();
    assert!(event["id"].as_str().unwrap().starts_with("evt_"));
    assert_eq!(event["type"], "charge.succeeded");
    assert!(event["created"].is_i64());
    assert_eq!(event["data"], charge.json);

    let mut declined = charge_body("pay_wh_declined");
    declined["payment_method"] = json!("pm_card_declined");
    let refused = sim.post("/v1/charges", "w2", &declined).await;
    assert_eq!(refused.status, StatusCode::PAYMENT_REQUIRED);
    let delivery = next(&mut rx).await;
    assert_eq!(
        signature::verify(SECRET, &delivery.signature, &delivery.body, now(), 300),
        Ok(())
    );
    let event = delivery.json();
    assert_eq!(event["type"], "charge.failed");
    assert_eq!(event["data"]["status"], "failed");
    assert_eq!(event["data"]["reference"], "pay_wh_declined");
    assert_eq!(event["data"]["failure_code"], "card_declined");

    let refund = sim
        .post(
            "/v1/refunds",
            "w3",
            &json!({"charge": charge.json["id"], "amount": 50}),
        )
        .await;
    assert_eq!(refund.status, StatusCode::OK);
    let delivery = next(&mut rx).await;
    assert_eq!(
        signature::verify(SECRET, &delivery.signature, &delivery.body, now(), 300),
        Ok(())
    );
    let event = delivery.json();
    assert_eq!(event["type"], "charge.refunded");
    assert_eq!(event["data"]["id"], charge.json["id"]);
    assert_eq!(event["data"]["amount_refunded"], 50);

    // A replay answers from the idempotency record and sends nothing new.
    sim.post("/v1/charges", "w1", &charge_body("pay_wh")).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(rx.try_recv().is_err());
    sim.stop().await;
}

#[tokio::test]
async fn capture_sends_charge_succeeded_with_the_captured_amount() {
    let (url, mut rx) = receiver().await;
    let sim = spawn(config(url)).await;
    let mut body = charge_body("pay_wh_manual");
    body["capture"] = json!(false);
    let auth = sim.post("/v1/charges", "m1", &body).await;
    let authorized = next(&mut rx).await.json();
    assert_eq!(authorized["type"], "charge.succeeded");
    assert_eq!(authorized["data"]["status"], "requires_capture");

    let id = auth.json["id"].as_str().unwrap();
    sim.post(
        &format!("/v1/charges/{id}/capture"),
        "m2",
        &json!({"amount": 1000}),
    )
    .await;
    let captured = next(&mut rx).await.json();
    assert_eq!(captured["type"], "charge.succeeded");
    assert_eq!(captured["data"]["status"], "succeeded");
    assert_eq!(captured["data"]["amount_captured"], 1000);
    sim.stop().await;
}

#[tokio::test]
async fn an_unreachable_receiver_does_not_affect_the_api() {
    // Bind then drop a listener to get a port nobody listens on.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let sim = spawn(config(format!("http://127.0.0.1:{port}/webhooks/alpha"))).await;
    let charge = sim.post("/v1/charges", "x", &charge_body("pay_dead")).await;
    assert_eq!(charge.status, StatusCode::OK);
    sim.stop().await;
}
