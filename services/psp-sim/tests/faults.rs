//! Injected faults: whatever the client hears, one idempotency key is at most one charge.

mod common;

use common::{charge_body, spawn};
use psp_sim::{Faults, SimConfig};
use reqwest::StatusCode;
use serde_json::json;
use std::time::{Duration, Instant};

fn with_faults(faults: Faults) -> SimConfig {
    SimConfig {
        faults,
        ..SimConfig::default()
    }
}

#[tokio::test]
async fn ambiguous_failure_then_retry_returns_the_stored_charge() {
    let sim = spawn(with_faults(Faults {
        ambiguous_rate: 1.0,
        ..Faults::default()
    }))
    .await;
    let first = sim
        .post("/v1/charges", "amb-1", &charge_body("pay_amb"))
        .await;
    assert_eq!(first.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(first.json["error"]["type"], "api_error");
    // The response was lost, but the charge exists.
    assert_eq!(sim.handle.charge_count_for_reference("pay_amb"), 1);

    sim.handle.set_faults(Faults::default());
    let retry = sim
        .post("/v1/charges", "amb-1", &charge_body("pay_amb"))
        .await;
    assert_eq!(retry.status, StatusCode::OK, "{}", retry.text);
    assert_eq!(retry.json["status"], "succeeded");
    let charges = sim.handle.charges();
    assert_eq!(charges.len(), 1);
    assert_eq!(retry.json["id"], charges[0].id.as_str());
    assert_eq!(sim.handle.charge_count_for_reference("pay_amb"), 1);

    let stats = sim.send(sim.client.get(sim.url("/sim/stats"))).await;
    assert_eq!(stats.json["faults"]["injected"]["ambiguous"], 1);
    sim.stop().await;
}

#[tokio::test]
async fn ambiguous_refund_is_applied_once() {
    let sim = spawn(SimConfig::default()).await;
    let charge = sim.post("/v1/charges", "c", &charge_body("pay_r")).await;
    let refund = json!({"charge": charge.json["id"], "amount": 100});
    sim.handle.set_faults(Faults {
        ambiguous_rate: 1.0,
        ..Faults::default()
    });
    let first = sim.post("/v1/refunds", "r", &refund).await;
    assert_eq!(first.status, StatusCode::INTERNAL_SERVER_ERROR);
    sim.handle.set_faults(Faults::default());
    let retry = sim.post("/v1/refunds", "r", &refund).await;
    assert_eq!(retry.status, StatusCode::OK);
    assert_eq!(sim.handle.refunds().len(), 1);
    assert_eq!(sim.handle.charges()[0].amount_refunded, 100);
    sim.stop().await;
}

#[tokio::test]
async fn timeouts_hang_then_504_and_a_retry_charges_exactly_once() {
    let sim = spawn(with_faults(Faults {
        timeout_rate: 1.0,
        hang_ms: 200,
        ..Faults::default()
    }))
    .await;
    // Each timeout either made the charge or not; enough of them see both cases in practice,
    // and the assertions hold for each.
    for i in 0..8 {
        let reference = format!("pay_to_{i}");
        let key = format!("to-{i}");
        sim.handle.set_faults(Faults {
            timeout_rate: 1.0,
            hang_ms: 200,
            ..Faults::default()
        });
        let started = Instant::now();
        let first = sim
            .post("/v1/charges", &key, &charge_body(&reference))
            .await;
        assert_eq!(first.status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(first.json["error"]["type"], "api_error");
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert!(sim.handle.charge_count_for_reference(&reference) <= 1);

        sim.handle.set_faults(Faults::default());
        let retry = sim
            .post("/v1/charges", &key, &charge_body(&reference))
            .await;
        assert_eq!(retry.status, StatusCode::OK, "{}", retry.text);
        assert_eq!(sim.handle.charge_count_for_reference(&reference), 1);
    }
    let stats = sim.send(sim.client.get(sim.url("/sim/stats"))).await;
    let injected = &stats.json["faults"]["injected"];
    assert_eq!(
        injected["timeouts_lost"].as_u64().unwrap()
            + injected["timeouts_committed"].as_u64().unwrap(),
        8
    );
    sim.stop().await;
}

#[tokio::test]
async fn random_declines_follow_the_decline_rate() {
    let sim = spawn(with_faults(Faults {
        decline_rate: 1.0,
        ..Faults::default()
    }))
    .await;
    let declined = sim
        .post("/v1/charges", "d1", &charge_body("pay_rand"))
        .await;
    assert_eq!(declined.status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(declined.error_code(), "card_declined");
    // A stored decline stays a decline even once the PSP stops declining.
    sim.handle.set_faults(Faults::default());
    let replay = sim
        .post("/v1/charges", "d1", &charge_body("pay_rand"))
        .await;
    assert_eq!(replay.status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(replay.text, declined.text);
    sim.stop().await;
}

#[tokio::test]
async fn same_key_in_flight_is_409_and_still_one_charge() {
    let sim = spawn(with_faults(Faults {
        latency_ms: 400,
        ..Faults::default()
    }))
    .await;
    let body = charge_body("pay_race");
    let (a, b) = tokio::join!(sim.post("/v1/charges", "race", &body), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        sim.post("/v1/charges", "race", &body).await
    });
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(b.status, StatusCode::CONFLICT, "{}", b.text);
    assert_eq!(b.json["error"]["type"], "idempotency_error");
    assert_eq!(b.error_code(), "request_in_flight");
    assert_eq!(sim.handle.charge_count_for_reference("pay_race"), 1);
    sim.stop().await;
}

#[tokio::test]
async fn latency_is_added_to_reads_too() {
    let sim = spawn(with_faults(Faults {
        latency_ms: 150,
        ..Faults::default()
    }))
    .await;
    let started = Instant::now();
    let list = sim.get("/v1/charges?reference=none").await;
    assert_eq!(list.status, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(150));
    sim.stop().await;
}

#[tokio::test]
async fn shutdown_is_not_held_up_by_a_simulated_hang() {
    let sim = spawn(with_faults(Faults {
        timeout_rate: 1.0,
        hang_ms: 60_000,
        ..Faults::default()
    }))
    .await;
    let client = sim.client.clone();
    let url = sim.url("/v1/charges");
    let hanging = tokio::spawn(async move {
        client
            .post(url)
            .bearer_auth(common::API_KEY)
            .header("Idempotency-Key", "hang")
            .json(&charge_body("pay_hang"))
            .send()
            .await
            .map(|r| r.status())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), sim.stop())
        .await
        .expect("shutdown waited for the simulated hang");
    assert!(started.elapsed() < Duration::from_secs(5));
    let status = hanging.await.unwrap().unwrap();
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
}

#[test]
fn build_refuses_rates_outside_zero_to_one() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let result = runtime.block_on(psp_sim::build(
        with_faults(Faults {
            decline_rate: 1.5,
            ..Faults::default()
        }),
        "127.0.0.1:0",
    ));
    assert!(result.is_err());
}
