//! The results handler against the real Postgres (`DATABASE_URL`, the dev default otherwise):
//! events built by hand, run through `Handler::handle` on a transaction of their own.

use api_ingress::ResultsHandler;
use chrono::Utc;
use paystream_domain::{
    CommandFailed, CommandKind, Event, MerchantId, PaymentCaptured, PaymentId, PaymentRefunded,
};
use paystream_kit::CommonConfig;
use paystream_messaging::{Emitter, Handler, InboundEvent};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

async fn pool() -> PgPool {
    let common = CommonConfig::for_tests();
    let pool = paystream_kit::db::connect(&common.database_url, 3)
        .await
        .expect("database");
    paystream_kit::db::migrate(&pool).await.expect("migrations");
    pool
}

fn event<E: Event>(payment: PaymentId, data: E) -> InboundEvent {
    InboundEvent {
        event_id: Uuid::now_v7(),
        event_type: E::EVENT_TYPE.to_owned(),
        schema_version: E::SCHEMA_VERSION,
        payment_id: payment,
        occurred_at: Utc::now(),
        data: serde_json::to_value(data).expect("data"),
        topic: E::TOPIC.to_owned(),
        partition: 0,
        offset: 0,
        traceparent: None,
        correlation_id: None,
    }
}

async fn apply(pool: &PgPool, e: &InboundEvent) {
    let mut tx = pool.begin().await.expect("tx");
    ResultsHandler
        .handle(&mut tx, e, &mut Emitter::default())
        .await
        .expect("handled");
    tx.commit().await.expect("commit");
}

async fn plant_refund(pool: &PgPool, payment: PaymentId) -> Uuid {
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO ingress.refunds (id, payment_id, merchant_id, amount, currency)
         VALUES ($1, $2, 'm_results', 100, 'EUR')",
    )
    .bind(id)
    .bind(payment.as_uuid())
    .execute(pool)
    .await
    .expect("refund");
    id
}

async fn refund_status(pool: &PgPool, id: Uuid) -> String {
    sqlx::query_scalar("SELECT status FROM ingress.refunds WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .expect("status")
}

fn merchant() -> MerchantId {
    MerchantId::parse("m_results").expect("merchant")
}

fn refunded(refund: Uuid) -> PaymentRefunded {
    serde_json::from_value(json!({
        "merchant_id": "m_results", "refund_id": format!("re_{refund}"), "psp": "alpha",
        "charge_id": "ch_1", "psp_refund_id": "re_psp_1", "amount": 100, "currency": "EUR"
    }))
    .expect("event")
}

fn refund_failed(refund: Uuid) -> CommandFailed {
    CommandFailed {
        merchant_id: merchant(),
        command: CommandKind::Refund,
        command_id: format!("re_{refund}"),
        code: "declined".to_owned(),
        message: "no".to_owned(),
    }
}

#[tokio::test]
async fn refunds_move_forward_and_failures_release_them() {
    let pool = pool().await;
    let payment = PaymentId::new();
    let ok = plant_refund(&pool, payment).await;
    let bad = plant_refund(&pool, payment).await;
    apply(&pool, &event(payment, refunded(ok))).await;
    apply(&pool, &event(payment, refund_failed(bad))).await;
    assert_eq!(refund_status(&pool, ok).await, "succeeded");
    assert_eq!(refund_status(&pool, bad).await, "failed");
    // A late failure does not undo a success; a late success after a failure counts again.
    apply(&pool, &event(payment, refund_failed(ok))).await;
    assert_eq!(refund_status(&pool, ok).await, "succeeded");
    apply(&pool, &event(payment, refunded(bad))).await;
    assert_eq!(refund_status(&pool, bad).await, "succeeded");
}

#[tokio::test]
async fn commands_end_with_their_outcome_and_unknown_ids_change_nothing() {
    let pool = pool().await;
    let payment = PaymentId::new();
    let (captured, failed) = (Uuid::now_v7(), Uuid::now_v7());
    for id in [captured, failed] {
        sqlx::query(
            "INSERT INTO ingress.commands (id, payment_id, merchant_id, kind)
             VALUES ($1, $2, 'm_results', 'capture')",
        )
        .bind(id)
        .bind(payment.as_uuid())
        .execute(&pool)
        .await
        .expect("command");
    }
    let done = PaymentCaptured {
        merchant_id: merchant(),
        command_id: format!("cmd_{captured}"),
        psp: "alpha".to_owned(),
        charge_id: "ch_1".to_owned(),
        currency: paystream_domain::Currency::parse("EUR").expect("currency"),
        amount_captured: 100,
    };
    apply(&pool, &event(payment, done)).await;
    let refused = CommandFailed {
        merchant_id: merchant(),
        command: CommandKind::Capture,
        command_id: format!("cmd_{failed}"),
        code: "charge_expired".to_owned(),
        message: "too late".to_owned(),
    };
    apply(&pool, &event(payment, refused)).await;
    let rows: Vec<(Uuid, String, Option<String>)> = sqlx::query_as(
        "SELECT id, status, failure_code FROM ingress.commands WHERE payment_id = $1 ORDER BY id",
    )
    .bind(payment.as_uuid())
    .fetch_all(&pool)
    .await
    .expect("commands");
    assert_eq!(
        rows,
        vec![
            (captured, "succeeded".to_owned(), None),
            (
                failed,
                "failed".to_owned(),
                Some("charge_expired".to_owned())
            ),
        ]
    );
    // Outcomes of commands this ingress never sent, or with ids of another format.
    apply(&pool, &event(payment, refund_failed(Uuid::now_v7()))).await;
    let mut foreign = refund_failed(Uuid::now_v7());
    foreign.command_id = "re_not_ours".to_owned();
    apply(&pool, &event(payment, foreign)).await;
}
