//! Merchant API: who may call what (401 and 403), merchants seeing only their own payments (404),
//! validation naming the field, the body limit, the contract error shape, and `/openapi.json`.

mod api_support;

use api_support::*;
use paystream_e2e::fleet;
use paystream_kit::auth::{self, Role};
use serde_json::json;

fn url(path: &str) -> String {
    format!("{}{path}", fleet().api_url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_that_are_missing_malformed_forged_or_expired_are_refused() {
    let fleet = fleet();
    let merchant = new_merchant();
    let c = client();
    let no_header = send(c.get(url("/v1/payments"))).await;
    no_header.assert_error(401, "missing_token");
    assert_eq!(no_header.body["error"]["type"], "authentication_error");
    assert_eq!(
        no_header
            .headers
            .get("www-authenticate")
            .map(|v| v.as_bytes()),
        Some(&b"Bearer"[..])
    );
    for (header, code) in [
        ("Basic bWU6cGFzcw==".to_owned(), "malformed_token"),
        ("Bearer ".to_owned(), "malformed_token"),
        ("Token abc".to_owned(), "malformed_token"),
        ("bearer abc".to_owned(), "invalid_token"),
        ("Bearer not.a.jwt".to_owned(), "invalid_token"),
    ] {
        let r = send(
            c.get(url("/v1/payments"))
                .header("authorization", header.as_str()),
        )
        .await;
        r.assert_error(401, code);
    }
    // Signed with another secret.
    let forged = auth::mint("not-the-secret", &merchant, Role::Merchant, 600).expect("mint");
    send(c.get(url("/v1/payments")).bearer_auth(&forged))
        .await
        .assert_error(401, "invalid_token");
    // Unsigned (`alg: none`), claiming to be an operator.
    let b64 = |v: serde_json::Value| {
        let s = v.to_string();
        base64url(s.as_bytes())
    };
    let none = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "typ": "JWT"})),
        b64(json!({"sub": "ops", "role": "operator", "exp": 4_000_000_000i64}))
    );
    send(c.get(url("/v1/payments")).bearer_auth(&none))
        .await
        .assert_error(401, "invalid_token");
    // Expired a minute ago.
    let expired = auth::mint(&fleet.jwt_secret, &merchant, Role::Merchant, -60).expect("mint");
    send(c.get(url("/v1/payments")).bearer_auth(&expired))
        .await
        .assert_error(401, "expired_token");
    let r = post("/v1/payments", &expired, &key(), card(100)).await;
    r.assert_error(401, "expired_token");
    // The same request with a valid token works.
    let ok = get("/v1/payments", &merchant_token(&merchant)).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
}

/// RFC 4648 base64url without padding (for hand-made tokens).
fn base64url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_gets_only_its_endpoints() {
    let fleet = fleet();
    let merchant = new_merchant();
    let token = merchant_token(&merchant);
    let id = create(&token, card(1234)).await;
    let analyst = fleet.token("ana_1", Role::Analyst);
    let operator = fleet.token("ops_1", Role::Operator);

    // Analysts have no API endpoint.
    for path in [
        "/v1/payments".to_owned(),
        format!("/v1/payments/{id}"),
        format!("/v1/payments/{id}/refunds"),
        "/v1/balance".to_owned(),
    ] {
        get(&path, &analyst)
            .await
            .assert_error(403, "role_not_allowed");
    }
    for path in [
        "/v1/payments".to_owned(),
        format!("/v1/payments/{id}/capture"),
        format!("/v1/payments/{id}/cancel"),
        format!("/v1/payments/{id}/refunds"),
    ] {
        post(&path, &analyst, &key(), card(1))
            .await
            .assert_error(403, "role_not_allowed");
        // Operators read; they do not move money.
        let r = post(&path, &operator, &key(), card(1)).await;
        r.assert_error(403, "role_not_allowed");
        assert_eq!(r.body["error"]["type"], "permission_error");
    }

    // Operators read any merchant's payment, and list one merchant's.
    let seen = get(&format!("/v1/payments/{id}"), &operator).await;
    assert_eq!(seen.status, 200, "{}", seen.body);
    assert_eq!(seen.body["merchant_id"], merchant.as_str());
    let listed = get(&format!("/v1/payments?merchant_id={merchant}"), &operator).await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    let data = listed.body["data"].as_array().expect("data");
    assert_eq!(data.len(), 1);
    assert_eq!(data[0]["id"], id.as_str());
    let balance = get(&format!("/v1/balance?merchant_id={merchant}"), &operator).await;
    assert_eq!(balance.status, 200, "{}", balance.body);
    get("/v1/balance", &operator)
        .await
        .assert_error(400, "parameter_missing");

    // Merchants may not pick another merchant.
    let r = get("/v1/payments?merchant_id=m_other", &token).await;
    r.assert_error(400, "parameter_not_allowed");
    assert_eq!(r.param(), "merchant_id");

    // A merchant token whose subject cannot be a merchant id.
    let odd = fleet.token("not a merchant!", Role::Merchant);
    get("/v1/payments", &odd)
        .await
        .assert_error(403, "invalid_subject");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_merchants_payment_does_not_exist() {
    let owner = merchant_token(&new_merchant());
    let other_merchant = new_merchant();
    let other = merchant_token(&other_merchant);
    let id = create(&owner, card(2500)).await;

    get(&format!("/v1/payments/{id}"), &other)
        .await
        .assert_error(404, "resource_missing");
    get(&format!("/v1/payments/{id}/refunds"), &other)
        .await
        .assert_error(404, "resource_missing");
    for action in ["capture", "cancel", "refunds"] {
        let r = post(
            &format!("/v1/payments/{id}/{action}"),
            &other,
            &key(),
            json!({}),
        )
        .await;
        r.assert_error(404, "resource_missing");
        assert_eq!(r.param(), "id");
    }
    let listed = get("/v1/payments", &other).await;
    assert_eq!(listed.body["data"], json!([]), "{}", listed.body);
    // Once the order store has it (and it is cached), still 404 for the other merchant.
    wait_status(&owner, &id, &["succeeded"]).await;
    get(&format!("/v1/payments/{id}"), &owner).await;
    get(&format!("/v1/payments/{id}"), &other)
        .await
        .assert_error(404, "resource_missing");
    // Ids that are not payment ids are payments that do not exist.
    for bad in [
        "pay_nope",
        "ch_1",
        "%ZZ",
        "pay_00000000-0000-0000-0000-000000000000",
    ] {
        get(&format!("/v1/payments/{bad}"), &owner)
            .await
            .assert_error(404, "resource_missing");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_name_their_field_and_use_the_contract_shape() {
    let token = merchant_token(&new_merchant());
    let c = client();
    // No Idempotency-Key, a key too long, a key with a space.
    let r = send(
        c.post(url("/v1/payments"))
            .bearer_auth(&token)
            .json(&card(100)),
    )
    .await;
    r.assert_error(400, "idempotency_key_missing");
    assert_eq!(r.param(), "Idempotency-Key");
    for k in ["k".repeat(256), "has space".to_owned()] {
        let r = post("/v1/payments", &token, &k, card(100)).await;
        r.assert_error(400, "idempotency_key_invalid");
    }
    // Fields.
    for (body, param, code) in [
        (
            json!({"amount": 0, "currency": "EUR", "customer_id": "c", "payment_method": "pm_x"}),
            "amount",
            "parameter_invalid",
        ),
        (
            json!({"amount": 100_000_000_000i64, "currency": "EUR", "customer_id": "c", "payment_method": "pm_x"}),
            "amount",
            "amount_too_large",
        ),
        (
            json!({"amount": 1, "currency": "eur", "customer_id": "c", "payment_method": "pm_x"}),
            "currency",
            "parameter_invalid",
        ),
        (
            json!({"amount": 1, "currency": "EUR", "payment_method": "pm_x"}),
            "customer_id",
            "parameter_missing",
        ),
        (
            json!({"amount": 1, "currency": "EUR", "customer_id": "c", "payment_method": "4242424242424242"}),
            "payment_method",
            "raw_card_data_refused",
        ),
        (
            json!({"amount": 1, "currency": "EUR", "customer_id": "c", "payment_method": "pm_x", "capture": "later"}),
            "capture",
            "parameter_invalid",
        ),
        (
            json!({"amount": 1, "currency": "EUR", "customer_id": "c", "payment_method": "pm_x", "tip": 5}),
            "tip",
            "parameter_unknown",
        ),
    ] {
        let r = post("/v1/payments", &token, &key(), body).await;
        r.assert_error(400, code);
        assert_eq!(r.param(), param, "{}", r.body);
        assert!(
            !r.body.to_string().contains("4242"),
            "card data echoed: {}",
            r.body
        );
    }
    // Bodies that are not a JSON object.
    for raw in ["", "not json", "[1,2]", "{\"amount\":", "null"] {
        let r = send(
            c.post(url("/v1/payments"))
                .bearer_auth(&token)
                .header("Idempotency-Key", key())
                .body(raw),
        )
        .await;
        r.assert_error(400, "body_invalid");
    }
    // Larger than the limit (64 KiB by default): 413 in the contract shape.
    let big = json!({"amount": 1, "currency": "EUR", "customer_id": "c", "payment_method": "pm_x", "description": "x".repeat(70 * 1024)});
    let r = post("/v1/payments", &token, &key(), big).await;
    r.assert_error(413, "body_too_large");
    // Routes and methods.
    get("/v1/nothing", &token)
        .await
        .assert_error(404, "route_not_found");
    send(c.delete(url("/v1/payments")).bearer_auth(&token))
        .await
        .assert_error(405, "method_not_allowed");
    // List parameters.
    for (query, param) in [
        ("limit=0", "limit"),
        ("limit=abc", "limit"),
        ("status=done", "status"),
        ("starting_after=ch_1", "starting_after"),
        ("colour=red", "colour"),
    ] {
        let r = get(&format!("/v1/payments?{query}"), &token).await;
        assert_eq!(r.status, 400, "{query}: {}", r.body);
        assert_eq!(r.param(), param, "{}", r.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_is_served_and_lists_error_codes() {
    let r = send(client().get(url("/openapi.json"))).await;
    assert_eq!(r.status, 200);
    let doc = r.body;
    assert!(
        doc["openapi"]
            .as_str()
            .unwrap_or_default()
            .starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    for path in [
        "/v1/payments",
        "/v1/payments/{id}",
        "/v1/payments/{id}/capture",
        "/v1/payments/{id}/cancel",
        "/v1/payments/{id}/refunds",
        "/v1/balance",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} missing");
    }
    let codes: Vec<&str> = doc["x-error-codes"]
        .as_array()
        .expect("x-error-codes")
        .iter()
        .filter_map(|c| c["code"].as_str())
        .collect();
    for code in [
        "idempotency_key_reused",
        "request_in_flight",
        "rate_limited",
        "amount_exceeds_refundable",
        "payment_unexpected_state",
        "expired_token",
        "body_too_large",
    ] {
        assert!(codes.contains(&code), "{code} not documented");
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
}
