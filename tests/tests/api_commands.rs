//! Merchant API: capture, cancel and refunds on payments that went through the real fleet, the
//! state rules of each, refunds never exceeding the capture (concurrently either), and a
//! `payment.command_failed` from Kafka releasing a refund's reservation.

mod api_support;

use std::time::Duration;

use api_support::*;
use paystream_domain::{CommandFailed, CommandKind, MerchantId, PaymentId};
use paystream_messaging::{OutboxRecord, outbox};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refunds_partial_then_the_rest_and_never_above_the_capture() {
    let merchant = new_merchant();
    let token = merchant_token(&merchant);
    let id = succeeded_payment(&token, 1000).await;
    let refunds = format!("/v1/payments/{id}/refunds");

    let above = post(&refunds, &token, &key(), json!({"amount": 1001})).await;
    above.assert_error(400, "amount_exceeds_refundable");
    assert_eq!(above.param(), "amount");

    let part = post(&refunds, &token, &key(), json!({"amount": 300})).await;
    assert_eq!(part.status, 202, "{}", part.body);
    assert!(
        part.body["id"]
            .as_str()
            .unwrap_or_default()
            .starts_with("re_")
    );
    assert_eq!(part.body["object"], "refund");
    assert_eq!(part.body["payment"], id.as_str());
    assert_eq!(part.body["amount"], 300);
    assert_eq!(part.body["currency"], "EUR");
    assert_eq!(part.body["status"], "pending");

    // 700 left: 701 is refused even though the first refund is still in flight.
    post(&refunds, &token, &key(), json!({"amount": 701}))
        .await
        .assert_error(400, "amount_exceeds_refundable");
    // No amount: the rest.
    let rest = post(&refunds, &token, &key(), json!({})).await;
    assert_eq!(rest.status, 202, "{}", rest.body);
    assert_eq!(rest.body["amount"], 700);
    // Nothing left.
    post(&refunds, &token, &key(), json!({}))
        .await
        .assert_error(400, "amount_exceeds_refundable");
    post(&refunds, &token, &key(), json!({"amount": 1}))
        .await
        .assert_error(400, "amount_exceeds_refundable");

    let listed = get(&refunds, &token).await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    assert_eq!(listed.body["object"], "list");
    let data = listed.body["data"].as_array().expect("data");
    assert_eq!(data.len(), 2);
    let total: i64 = data.iter().filter_map(|r| r["amount"].as_i64()).sum();
    assert_eq!(total, 1000);
    for r in data {
        assert!(
            ["pending", "succeeded"].contains(&r["status"].as_str().unwrap_or_default()),
            "{r}"
        );
    }

    // Bad refund bodies name their field.
    let r = post(&refunds, &token, &key(), json!({"amount": "10"})).await;
    r.assert_error(400, "parameter_invalid");
    assert_eq!(r.param(), "amount");
    let r = post(&refunds, &token, &key(), json!({"reason": "x"})).await;
    r.assert_error(400, "parameter_unknown");
    assert_eq!(r.param(), "reason");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_refunds_cannot_exceed_the_capture() {
    let merchant = new_merchant();
    let token = merchant_token(&merchant);
    let id = succeeded_payment(&token, 1000).await;
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let (token, path) = (token.clone(), format!("/v1/payments/{id}/refunds"));
        tasks.push(tokio::spawn(async move {
            post(&path, &token, &key(), json!({"amount": 300})).await
        }));
    }
    let mut accepted = 0i64;
    for t in tasks {
        let r = t.await.expect("task");
        match r.status {
            202 => accepted += 1,
            400 => assert_eq!(r.code(), "amount_exceeds_refundable", "{}", r.body),
            409 => assert_eq!(r.code(), "lock_timeout", "{}", r.body),
            other => panic!("{other}: {}", r.body),
        }
    }
    // What is reserved or refunded never exceeds the capture. A refund the PSP refused (none
    // should be) would release its share, so it is subtracted.
    let pool = pool().await;
    let (live, failed): (i64, i64) = sqlx::query_as(
        "SELECT COALESCE(SUM(amount) FILTER (WHERE status <> 'failed'), 0)::bigint,
                COALESCE(SUM(amount) FILTER (WHERE status = 'failed'), 0)::bigint
         FROM ingress.refunds WHERE payment_id = $1",
    )
    .bind(uuid_of(&id))
    .fetch_one(&pool)
    .await
    .expect("refund totals");
    assert!(live <= 1000, "reserved {live} of 1000");
    assert_eq!(accepted * 300, live + failed);
    assert!(
        accepted >= 3 || failed > 0,
        "three refunds of 300 fit in 1000"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_and_cancel_only_from_requires_capture() {
    let merchant = new_merchant();
    let token = merchant_token(&merchant);

    // A captured payment takes neither.
    let done = succeeded_payment(&token, 800).await;
    for action in ["capture", "cancel"] {
        let r = post(
            &format!("/v1/payments/{done}/{action}"),
            &token,
            &key(),
            json!({}),
        )
        .await;
        r.assert_error(409, "payment_unexpected_state");
        assert!(
            r.body["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains("succeeded")
        );
    }
    // Refunds only of succeeded payments: one that only the ingress knows is processing.
    let pool = pool().await;
    let processing = pay(plant_accepted(&pool, &merchant, 500).await);
    for action in ["capture", "cancel", "refunds"] {
        post(
            &format!("/v1/payments/{processing}/{action}"),
            &token,
            &key(),
            json!({}),
        )
        .await
        .assert_error(409, "payment_unexpected_state");
    }

    // A manual-capture payment waits for its capture.
    let manual = create(&token, manual_card(900)).await;
    let view = wait_status(&token, &manual, &["requires_capture", "declined", "failed"]).await;
    assert_eq!(view["status"], "requires_capture", "{view}");
    post(
        &format!("/v1/payments/{manual}/refunds"),
        &token,
        &key(),
        json!({}),
    )
    .await
    .assert_error(409, "payment_unexpected_state");
    let too_much = post(
        &format!("/v1/payments/{manual}/capture"),
        &token,
        &key(),
        json!({"amount": 901}),
    )
    .await;
    too_much.assert_error(400, "amount_too_large");
    assert_eq!(too_much.param(), "amount");
    let captured = post(
        &format!("/v1/payments/{manual}/capture"),
        &token,
        &key(),
        json!({"amount": 600}),
    )
    .await;
    assert_eq!(captured.status, 202, "{}", captured.body);
    assert_eq!(captured.body["id"], manual.as_str());
    assert_eq!(captured.body["status"], "requires_capture");
    // While the capture is pending (or once it is done) neither another capture nor a cancel.
    for action in ["capture", "cancel"] {
        let r = post(
            &format!("/v1/payments/{manual}/{action}"),
            &token,
            &key(),
            json!({}),
        )
        .await;
        assert_eq!(r.status, 409, "{}", r.body);
        assert!(
            ["payment_command_in_progress", "payment_unexpected_state"].contains(&r.code()),
            "{}",
            r.body
        );
    }
    let pool = api_support::pool().await;
    let commands: Vec<(String, Option<i64>)> =
        sqlx::query_as("SELECT kind, amount FROM ingress.commands WHERE payment_id = $1")
            .bind(uuid_of(&manual))
            .fetch_all(&pool)
            .await
            .expect("commands");
    assert_eq!(commands, vec![("capture".to_owned(), Some(600))]);

    // Another one is canceled.
    let to_cancel = create(&token, manual_card(400)).await;
    wait_status(&token, &to_cancel, &["requires_capture"]).await;
    let canceled = post(
        &format!("/v1/payments/{to_cancel}/cancel"),
        &token,
        &key(),
        json!({}),
    )
    .await;
    assert_eq!(canceled.status, 202, "{}", canceled.body);
    let r = post(
        &format!("/v1/payments/{to_cancel}/cancel"),
        &token,
        &key(),
        json!({}),
    )
    .await;
    assert_eq!(r.status, 409, "{}", r.body);
    let r = post(
        &format!("/v1/payments/{to_cancel}/cancel"),
        &token,
        &key(),
        json!({"reason": "x"}),
    )
    .await;
    r.assert_error(400, "parameter_unknown");

    // The commands went out on payments.commands through the outbox (the relay drained it).
    eventually("the outbox to drain", Duration::from_secs(30), || {
        let pool = pool.clone();
        async move {
            let left: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM ingress.outbox WHERE topic = 'payments.commands'",
            )
            .fetch_one(&pool)
            .await
            .unwrap_or(1);
            left == 0
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_refund_releases_its_reservation() {
    let merchant = new_merchant();
    let token = merchant_token(&merchant);
    let id = succeeded_payment(&token, 600).await;
    let pool = pool().await;
    // A refund of everything, accepted earlier (planted: no command goes to the PSP for it).
    let refund = uuid::Uuid::now_v7();
    sqlx::query(
        "INSERT INTO ingress.refunds (id, payment_id, merchant_id, amount, currency)
         VALUES ($1, $2, $3, 600, 'EUR')",
    )
    .bind(refund)
    .bind(uuid_of(&id))
    .bind(&merchant)
    .execute(&pool)
    .await
    .expect("planting a refund");
    let refunds = format!("/v1/payments/{id}/refunds");
    post(&refunds, &token, &key(), json!({"amount": 1}))
        .await
        .assert_error(400, "amount_exceeds_refundable");

    // The PSP refuses it: payment.command_failed on payments.psp-results, through Kafka.
    let failed = CommandFailed {
        merchant_id: MerchantId::parse(&merchant).expect("merchant"),
        command: CommandKind::Refund,
        command_id: format!("re_{refund}"),
        code: "charge_disputed".to_owned(),
        message: "the PSP refused the refund".to_owned(),
    };
    let payment = PaymentId::parse(&id).expect("id");
    let record = OutboxRecord::event(
        payment,
        failed,
        &paystream_messaging::trace::new_traceparent(),
        &id,
    )
    .expect("record");
    let mut tx = pool.begin().await.expect("tx");
    outbox::enqueue(&mut tx, "ingress", &[record])
        .await
        .expect("enqueue");
    tx.commit().await.expect("commit");

    eventually(
        "the refund to be marked failed",
        Duration::from_secs(60),
        || {
            let pool = pool.clone();
            async move {
                let status: String =
                    sqlx::query_scalar("SELECT status FROM ingress.refunds WHERE id = $1")
                        .bind(refund)
                        .fetch_one(&pool)
                        .await
                        .unwrap_or_default();
                status == "failed"
            }
        },
    )
    .await;
    let listed = get(&refunds, &token).await;
    assert_eq!(
        listed.body["data"][0]["status"], "failed",
        "{}",
        listed.body
    );
    assert_eq!(listed.body["data"][0]["failure_code"], "charge_disputed");
    // Released: the whole amount can be refunded again.
    let again = post(&refunds, &token, &key(), json!({})).await;
    assert_eq!(again.status, 202, "{}", again.body);
    assert_eq!(again.body["amount"], 600);
}
