//! The PSP wire protocol, happy paths and refusals, over real HTTP.

mod common;

use common::{API_KEY, charge_body, spawn_default};
use psp_sim::ChargeStatus;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn healthz_needs_no_auth() {
    let sim = spawn_default().await;
    let answer = sim.send(sim.client.get(sim.url("/healthz"))).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.text, "ok");
    sim.stop().await;
}

#[tokio::test]
async fn automatic_capture_charge_succeeds_and_can_be_read_back() {
    let sim = spawn_default().await;
    let answer = sim.post("/v1/charges", "k1", &charge_body("pay_1")).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    let charge = &answer.json;
    let id = charge["id"].as_str().unwrap();
    assert!(id.starts_with("ch_") && id.len() == 3 + 32, "{id}");
    assert_eq!(charge["object"], "charge");
    assert_eq!(charge["status"], "succeeded");
    assert_eq!(charge["amount"], 1250);
    assert_eq!(charge["amount_captured"], 1250);
    assert_eq!(charge["amount_refunded"], 0);
    assert_eq!(charge["currency"], "EUR");
    assert_eq!(charge["reference"], "pay_1");
    assert_eq!(charge["payment_method"], "pm_card_visa");
    assert!(charge["created"].as_i64().unwrap() > 1_700_000_000);

    let by_id = sim.get(&format!("/v1/charges/{id}")).await;
    assert_eq!(by_id.status, StatusCode::OK);
    assert_eq!(&by_id.json, charge);

    let list = sim.get("/v1/charges?reference=pay_1").await;
    assert_eq!(list.json["object"], "list");
    assert_eq!(list.json["data"], json!([charge]));
    let other = sim.get("/v1/charges?reference=pay_other").await;
    assert_eq!(other.json["data"], json!([]));

    let missing = sim.get("/v1/charges/ch_nope").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.json["error"]["type"], "invalid_request_error");
    assert_eq!(missing.error_code(), "resource_missing");

    assert_eq!(sim.handle.charge_count_for_reference("pay_1"), 1);
    sim.stop().await;
}

#[tokio::test]
async fn manual_capture_then_partial_capture() {
    let sim = spawn_default().await;
    let mut body = charge_body("pay_manual");
    body["capture"] = json!(false);
    let auth = sim.post("/v1/charges", "auth-1", &body).await;
    assert_eq!(auth.status, StatusCode::OK);
    assert_eq!(auth.json["status"], "requires_capture");
    assert_eq!(auth.json["amount_captured"], 0);
    let id = auth.json["id"].as_str().unwrap().to_owned();

    let too_much = sim
        .post(
            &format!("/v1/charges/{id}/capture"),
            "cap-0",
            &json!({"amount": 1251}),
        )
        .await;
    assert_eq!(too_much.status, StatusCode::BAD_REQUEST);
    assert_eq!(too_much.error_code(), "amount_too_large");

    let captured = sim
        .post(
            &format!("/v1/charges/{id}/capture"),
            "cap-1",
            &json!({"amount": 1000}),
        )
        .await;
    assert_eq!(captured.status, StatusCode::OK, "{}", captured.text);
    assert_eq!(captured.json["status"], "succeeded");
    assert_eq!(captured.json["amount"], 1250);
    assert_eq!(captured.json["amount_captured"], 1000);

    let again = sim
        .post(&format!("/v1/charges/{id}/capture"), "cap-2", &json!({}))
        .await;
    assert_eq!(again.status, StatusCode::BAD_REQUEST);
    assert_eq!(again.error_code(), "charge_already_captured");

    // A capture without any body captures the full authorization.
    let auth2 = sim.post("/v1/charges", "auth-2", &body).await;
    let id2 = auth2.json["id"].as_str().unwrap();
    let full = sim
        .send(
            sim.client
                .post(sim.url(&format!("/v1/charges/{id2}/capture")))
                .bearer_auth(API_KEY)
                .header("Idempotency-Key", "cap-3"),
        )
        .await;
    assert_eq!(full.status, StatusCode::OK, "{}", full.text);
    assert_eq!(full.json["amount_captured"], 1250);
    sim.stop().await;
}

#[tokio::test]
async fn cancel_only_from_requires_capture() {
    let sim = spawn_default().await;
    let mut body = charge_body("pay_cancel");
    body["capture"] = json!(false);
    let auth = sim.post("/v1/charges", "auth", &body).await;
    let id = auth.json["id"].as_str().unwrap().to_owned();

    let canceled = sim
        .post(&format!("/v1/charges/{id}/cancel"), "cancel-1", &json!({}))
        .await;
    assert_eq!(canceled.status, StatusCode::OK);
    assert_eq!(canceled.json["status"], "canceled");

    let capture = sim
        .post(&format!("/v1/charges/{id}/capture"), "cap", &json!({}))
        .await;
    assert_eq!(capture.status, StatusCode::BAD_REQUEST);
    assert_eq!(capture.error_code(), "charge_not_capturable");

    let captured = sim
        .post("/v1/charges", "auto", &charge_body("pay_cancel2"))
        .await;
    let id2 = captured.json["id"].as_str().unwrap();
    let refused = sim
        .post(&format!("/v1/charges/{id2}/cancel"), "cancel-2", &json!({}))
        .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert_eq!(refused.error_code(), "charge_not_cancelable");

    let unknown = sim
        .post("/v1/charges/ch_unknown/cancel", "cancel-3", &json!({}))
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    sim.stop().await;
}

#[tokio::test]
async fn refunds_partial_then_full_and_too_large() {
    let sim = spawn_default().await;
    let charge = sim
        .post("/v1/charges", "charge", &charge_body("pay_refund"))
        .await;
    let id = charge.json["id"].as_str().unwrap().to_owned();

    let partial = sim
        .post("/v1/refunds", "r1", &json!({"charge": id, "amount": 250}))
        .await;
    assert_eq!(partial.status, StatusCode::OK, "{}", partial.text);
    assert!(partial.json["id"].as_str().unwrap().starts_with("re_"));
    assert_eq!(partial.json["object"], "refund");
    assert_eq!(partial.json["charge"], id.as_str());
    assert_eq!(partial.json["amount"], 250);
    assert_eq!(partial.json["status"], "succeeded");

    let too_large = sim
        .post("/v1/refunds", "r2", &json!({"charge": id, "amount": 1001}))
        .await;
    assert_eq!(too_large.status, StatusCode::BAD_REQUEST);
    assert_eq!(too_large.json["error"]["type"], "invalid_request_error");
    assert_eq!(too_large.error_code(), "amount_too_large");

    let rest = sim.post("/v1/refunds", "r3", &json!({"charge": id})).await;
    assert_eq!(rest.status, StatusCode::OK);
    assert_eq!(rest.json["amount"], 1000);

    let after = sim.get(&format!("/v1/charges/{id}")).await;
    assert_eq!(after.json["status"], "succeeded");
    assert_eq!(after.json["amount_refunded"], 1250);

    let nothing_left = sim
        .post("/v1/refunds", "r4", &json!({"charge": id, "amount": 1}))
        .await;
    assert_eq!(nothing_left.error_code(), "amount_too_large");
    let nothing_left = sim.post("/v1/refunds", "r5", &json!({"charge": id})).await;
    assert_eq!(nothing_left.error_code(), "charge_already_refunded");

    // Replaying the first refund's key does not refund again.
    let replay = sim
        .post("/v1/refunds", "r1", &json!({"charge": id, "amount": 250}))
        .await;
    assert_eq!(replay.text, partial.text);
    assert_eq!(sim.handle.refunds().len(), 2);

    let uncaptured_body = json!({
        "amount": 500, "currency": "EUR", "payment_method": "pm_card_visa",
        "capture": false, "reference": "pay_refund2"
    });
    let uncaptured = sim.post("/v1/charges", "charge2", &uncaptured_body).await;
    let refused = sim
        .post(
            "/v1/refunds",
            "r6",
            &json!({"charge": uncaptured.json["id"]}),
        )
        .await;
    assert_eq!(refused.error_code(), "charge_not_refundable");
    sim.stop().await;
}

#[tokio::test]
async fn deterministic_declines_are_definitive_and_replayed() {
    let sim = spawn_default().await;
    for (method, code) in [
        ("pm_card_declined", "card_declined"),
        ("pm_card_insufficient_funds", "insufficient_funds"),
    ] {
        let mut body = charge_body(&format!("pay_{code}"));
        body["payment_method"] = json!(method);
        let first = sim.post("/v1/charges", method, &body).await;
        assert_eq!(first.status, StatusCode::PAYMENT_REQUIRED, "{}", first.text);
        assert_eq!(first.json["error"]["type"], "card_error");
        assert_eq!(first.error_code(), code);
        assert!(first.json["error"]["message"].is_string());

        let replay = sim.post("/v1/charges", method, &body).await;
        assert_eq!(replay.status, StatusCode::PAYMENT_REQUIRED);
        assert_eq!(replay.text, first.text);

        // The declined attempt is on record, but it is not a charge of the card.
        let listed = sim.get(&format!("/v1/charges?reference=pay_{code}")).await;
        assert_eq!(listed.json["data"][0]["status"], "failed");
        assert_eq!(listed.json["data"][0]["failure_code"], code);
        assert_eq!(
            sim.handle
                .charge_count_for_reference(&format!("pay_{code}")),
            0
        );
    }
    let charges = sim.handle.charges();
    assert_eq!(charges.len(), 2);
    assert!(charges.iter().all(|c| c.status == ChargeStatus::Failed));
    sim.stop().await;
}

#[tokio::test]
async fn idempotent_replay_returns_identical_response_and_one_charge() {
    let sim = spawn_default().await;
    let first = sim
        .post("/v1/charges", "same-key", &charge_body("pay_idem"))
        .await;
    assert_eq!(first.status, StatusCode::OK);
    assert!(first.headers.get("Idempotent-Replayed").is_none());

    // Same body with keys in another order is the same request.
    let reordered = json!({
        "reference": "pay_idem", "capture": true, "payment_method": "pm_card_visa",
        "currency": "EUR", "amount": 1250
    });
    for body in [charge_body("pay_idem"), reordered] {
        let again = sim.post("/v1/charges", "same-key", &body).await;
        assert_eq!(again.status, StatusCode::OK);
        assert_eq!(again.text, first.text);
        assert_eq!(again.headers["Idempotent-Replayed"], "true");
    }
    assert_eq!(sim.handle.charge_count_for_reference("pay_idem"), 1);
    assert_eq!(sim.handle.charges().len(), 1);
    sim.stop().await;
}

#[tokio::test]
async fn key_reuse_with_a_different_body_is_refused() {
    let sim = spawn_default().await;
    let first = sim
        .post("/v1/charges", "reused", &charge_body("pay_a"))
        .await;
    assert_eq!(first.status, StatusCode::OK);
    let mut other = charge_body("pay_a");
    other["amount"] = json!(9999);
    let reused = sim.post("/v1/charges", "reused", &other).await;
    assert_eq!(reused.status, StatusCode::BAD_REQUEST);
    assert_eq!(reused.json["error"]["type"], "invalid_request_error");
    assert_eq!(reused.error_code(), "idempotency_key_reused");

    // The same key on another endpoint is a different request too.
    let id = first.json["id"].as_str().unwrap();
    let refund = sim
        .post("/v1/refunds", "reused", &json!({"charge": id}))
        .await;
    assert_eq!(refund.error_code(), "idempotency_key_reused");
    assert_eq!(sim.handle.charges().len(), 1);
    assert!(sim.handle.refunds().is_empty());
    sim.stop().await;
}

#[tokio::test]
async fn missing_idempotency_key_and_bad_bodies_are_400() {
    let sim = spawn_default().await;
    let no_key = sim
        .send(
            sim.client
                .post(sim.url("/v1/charges"))
                .bearer_auth(API_KEY)
                .json(&charge_body("pay_x")),
        )
        .await;
    assert_eq!(no_key.status, StatusCode::BAD_REQUEST);
    assert_eq!(no_key.error_code(), "idempotency_key_missing");

    let cases = [
        (json!({"amount": -5}), "amount"),
        (json!({"amount": "12"}), "amount"),
        (
            json!({"amount": 5, "currency": "EURO", "payment_method": "pm_x", "reference": "r"}),
            "currency",
        ),
        (
            json!({"amount": 5, "currency": "EUR", "payment_method": "4242424242424242", "reference": "r"}),
            "payment_method",
        ),
        (
            json!({"amount": 5, "currency": "EUR", "payment_method": "pm_x"}),
            "reference",
        ),
    ];
    for (i, (body, param)) in cases.into_iter().enumerate() {
        let answer = sim.post("/v1/charges", &format!("bad-{i}"), &body).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(answer.json["error"]["type"], "invalid_request_error");
        assert_eq!(answer.json["error"]["param"], param, "{body}");
    }
    let not_json = sim
        .send(
            sim.client
                .post(sim.url("/v1/charges"))
                .bearer_auth(API_KEY)
                .header("Idempotency-Key", "bad-json")
                .body("{not json"),
        )
        .await;
    assert_eq!(not_json.status, StatusCode::BAD_REQUEST);
    assert_eq!(not_json.json["error"]["type"], "invalid_request_error");

    // A validation failure does not burn the key: the corrected request goes through.
    let fixed = sim
        .post("/v1/charges", "bad-0", &charge_body("pay_fixed"))
        .await;
    assert_eq!(fixed.status, StatusCode::OK);
    assert_eq!(sim.handle.charges().len(), 1);
    sim.stop().await;
}

#[tokio::test]
async fn missing_or_wrong_api_key_is_401() {
    let sim = spawn_default().await;
    let requests = [
        sim.client.get(sim.url("/v1/charges?reference=x")),
        sim.client
            .get(sim.url("/v1/charges?reference=x"))
            .bearer_auth("sk_test_beta"),
        sim.client
            .get(sim.url("/v1/charges?reference=x"))
            .header("Authorization", API_KEY),
        sim.client
            .post(sim.url("/v1/charges"))
            .bearer_auth("sk_test_alph")
            .header("Idempotency-Key", "k")
            .json(&charge_body("pay_401")),
        sim.client
            .get(sim.url("/v1/settlements?date=2025-01-01"))
            .bearer_auth(""),
    ];
    for request in requests {
        let answer = sim.send(request).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{}", answer.text);
        assert_eq!(answer.json["error"]["type"], "authentication_error");
        assert_eq!(answer.error_code(), "invalid_api_key");
        assert!(!answer.text.contains("sk_test"), "{}", answer.text);
    }
    assert!(sim.handle.charges().is_empty());
    sim.stop().await;
}

#[tokio::test]
async fn settlement_report_totals_per_currency() {
    let sim = spawn_default().await;
    let eur = sim.post("/v1/charges", "s1", &charge_body("pay_s1")).await;
    sim.post("/v1/charges", "s2", &charge_body("pay_s2")).await;
    let mut usd = charge_body("pay_s3");
    usd["currency"] = json!("USD");
    usd["amount"] = json!(700);
    sim.post("/v1/charges", "s3", &usd).await;
    let mut uncaptured = charge_body("pay_s4");
    uncaptured["capture"] = json!(false);
    sim.post("/v1/charges", "s4", &uncaptured).await;
    let mut declined = charge_body("pay_s5");
    declined["payment_method"] = json!("pm_card_declined");
    sim.post("/v1/charges", "s5", &declined).await;
    sim.post(
        "/v1/refunds",
        "s6",
        &json!({"charge": eur.json["id"], "amount": 250}),
    )
    .await;

    let today = chrono::Utc::now()
        .date_naive()
        .format("%Y-%m-%d")
        .to_string();
    let report = sim.get(&format!("/v1/settlements?date={today}")).await;
    assert_eq!(report.status, StatusCode::OK, "{}", report.text);
    assert_eq!(report.json["object"], "settlement");
    assert_eq!(report.json["date"], today.as_str());
    assert_eq!(report.json["psp"], "alpha");
    assert_eq!(report.json["lines"].as_array().unwrap().len(), 3);
    let line = &report.json["lines"][0];
    assert_eq!(line["charge"], eur.json["id"]);
    assert_eq!(line["reference"], "pay_s1");
    assert_eq!(line["captured"], 1250);
    assert_eq!(line["refunded"], 250);
    assert_eq!(line["net"], 1000);
    assert_eq!(
        report.json["totals"],
        json!([
            {"currency": "EUR", "captured": 2500, "refunded": 250, "net": 2250},
            {"currency": "USD", "captured": 700, "refunded": 0, "net": 700},
        ])
    );

    let other_day = sim.get("/v1/settlements?date=2001-01-01").await;
    assert_eq!(other_day.json["lines"], json!([]));
    assert_eq!(other_day.json["totals"], json!([]));
    let bad = sim.get("/v1/settlements?date=yesterday").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.json["error"]["param"], "date");
    let missing = sim.get("/v1/settlements").await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    sim.stop().await;
}

#[tokio::test]
async fn stats_count_charges_by_status() {
    let sim = spawn_default().await;
    sim.post("/v1/charges", "a", &charge_body("pay_a")).await;
    let mut declined = charge_body("pay_b");
    declined["payment_method"] = json!("pm_card_declined");
    sim.post("/v1/charges", "b", &declined).await;
    let stats = sim.send(sim.client.get(sim.url("/sim/stats"))).await;
    assert_eq!(stats.status, StatusCode::OK);
    assert_eq!(stats.json["psp"], "alpha");
    assert_eq!(stats.json["charges"]["total"], 2);
    assert_eq!(stats.json["charges"]["by_status"]["succeeded"], 1);
    assert_eq!(stats.json["charges"]["by_status"]["failed"], 1);
    assert_eq!(stats.json["charges"]["by_status"]["requires_capture"], 0);
    assert_eq!(stats.json["faults"]["injected"]["ambiguous"], 0);
    sim.stop().await;
}
