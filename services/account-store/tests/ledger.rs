//! The ledger handler against the real Postgres (DATABASE_URL or the dev default), without
//! Kafka: events are built by hand and handled on transactions the tests open themselves.

use account_store::LedgerHandler;
use account_store::domain::FeeSchedule;
use paystream_domain::{Currency, MerchantId, PaymentId};
use paystream_kit::CommonConfig;
use paystream_messaging::schemas::SchemaRegistry;
use paystream_messaging::{Emitter, Handler, HandlerError, InboundEvent, OutboxRecord};
use serde_json::{Value, json};
use sqlx::{PgPool, Row};
use uuid::Uuid;

async fn pool() -> PgPool {
    let common = CommonConfig::for_tests();
    let pool = paystream_kit::db::connect(&common.database_url, 20)
        .await
        .unwrap();
    paystream_kit::db::migrate(&pool).await.unwrap();
    pool
}

fn handler() -> LedgerHandler {
    LedgerHandler::new(FeeSchedule::default())
}

fn merchant() -> MerchantId {
    MerchantId::parse(&format!("m_{}", Uuid::new_v4().simple())).unwrap()
}

fn psp_result(
    id: PaymentId,
    merchant: &MerchantId,
    outcome: &str,
    amount: i64,
    currency: &str,
) -> InboundEvent {
    let captured = if outcome == "succeeded" { amount } else { 0 };
    InboundEvent {
        event_id: Uuid::now_v7(),
        event_type: "payment.psp_result".into(),
        schema_version: 1,
        payment_id: id,
        occurred_at: chrono::Utc::now(),
        data: json!({
            "merchant_id": merchant.as_str(),
            "outcome": outcome,
            "psp": "alpha",
            "charge_id": "ch_test",
            "amount": amount,
            "currency": currency,
            "amount_captured": captured,
        }),
        topic: "payments.psp-results".into(),
        partition: 0,
        offset: 0,
        traceparent: None,
        correlation_id: None,
    }
}

async fn handle(pool: &PgPool, handler: &LedgerHandler, event: &InboundEvent) -> Vec<OutboxRecord> {
    let mut tx = pool.begin().await.unwrap();
    let mut out = Emitter::new(None, None);
    handler.handle(&mut tx, event, &mut out).await.unwrap();
    tx.commit().await.unwrap();
    out.take()
}

fn transfer_id(id: PaymentId) -> String {
    format!("tr_{}_capture", id.as_uuid().simple())
}

/// (account, side, amount) of a transfer, in posting order.
async fn entries(pool: &PgPool, transfer_id: &str) -> Vec<(String, String, i64)> {
    sqlx::query("SELECT account, side, amount FROM account_store.entries WHERE transfer_id = $1 ORDER BY id")
        .bind(transfer_id)
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

/// Accounts whose running totals differ from the sum of their entries, read in one snapshot so
/// that other tests posting meanwhile cannot make it flicker.
async fn accounts_out_of_step(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT a.account || ' ' || a.currency FROM account_store.accounts a
         LEFT JOIN (
             SELECT account, currency,
                    COALESCE(SUM(amount) FILTER (WHERE side = 'debit'), 0) AS debits,
                    COALESCE(SUM(amount) FILTER (WHERE side = 'credit'), 0) AS credits
             FROM account_store.entries GROUP BY account, currency
         ) e USING (account, currency)
         WHERE a.debits <> COALESCE(e.debits, 0) OR a.credits <> COALESCE(e.credits, 0)",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

fn s(v: &str) -> String {
    v.to_owned()
}

#[tokio::test]
async fn a_capture_posts_three_balanced_entries_and_publishes_them() {
    let pool = pool().await;
    let m = merchant();
    let id = PaymentId::new();
    let records = handle(
        &pool,
        &handler(),
        &psp_result(id, &m, "succeeded", 10_000, "EUR"),
    )
    .await;

    let payable = format!("merchant:{m}:payable");
    assert_eq!(
        entries(&pool, &transfer_id(id)).await,
        vec![
            (s("psp:alpha:clearing"), s("debit"), 10_000),
            (payable.clone(), s("credit"), 9_710),
            (s("platform:fees"), s("credit"), 290),
        ]
    );
    let (step, kind): (String, String) =
        sqlx::query_as("SELECT step, kind FROM account_store.transfers WHERE payment_id = $1")
            .bind(id.as_uuid())
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((step.as_str(), kind.as_str()), ("capture", "capture"));

    assert_eq!(records.len(), 1);
    let record = &records[0];
    assert_eq!(record.topic, "ledger.postings");
    assert_eq!(record.key.as_deref(), Some(id.to_string().as_bytes()));
    let envelope: Value = serde_json::from_slice(&record.value).unwrap();
    assert_eq!(envelope["event_type"], "ledger.posting");
    let data = &envelope["data"];
    SchemaRegistry::global()
        .validate_data("ledger.posting", 1, data)
        .unwrap();
    assert_eq!(
        data,
        &json!({
            "transfer_id": transfer_id(id),
            "payment_id": id.to_string(),
            "kind": "capture",
            "currency": "EUR",
            "entries": [
                {"account": "psp:alpha:clearing", "side": "debit", "amount": 10_000},
                {"account": payable, "side": "credit", "amount": 9_710},
                {"account": "platform:fees", "side": "credit", "amount": 290},
            ],
        })
    );
    assert_eq!(accounts_out_of_step(&pool).await, Vec::<String>::new());
}

#[tokio::test]
async fn a_result_handled_twice_posts_once() {
    let pool = pool().await;
    let h = handler();
    let m = merchant();
    let id = PaymentId::new();
    let event = psp_result(id, &m, "succeeded", 1_250, "EUR");
    assert_eq!(handle(&pool, &h, &event).await.len(), 1);
    // The same record again, and the same result under a new event id (a producer retry).
    assert!(handle(&pool, &h, &event).await.is_empty());
    let again = psp_result(id, &m, "succeeded", 1_250, "EUR");
    assert!(handle(&pool, &h, &again).await.is_empty());

    let transfers: i64 =
        sqlx::query_scalar("SELECT count(*) FROM account_store.transfers WHERE payment_id = $1")
            .bind(id.as_uuid())
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(transfers, 1);
    assert_eq!(entries(&pool, &transfer_id(id)).await.len(), 3);
    let eur = Currency::parse("EUR").unwrap();
    assert_eq!(
        account_store::balances(&pool, &m).await.unwrap(),
        vec![(eur, 1_250 - 36)]
    );
}

#[tokio::test]
async fn results_without_captured_money_post_nothing() {
    let pool = pool().await;
    let h = handler();
    let m = merchant();
    for outcome in ["requires_capture", "declined", "failed"] {
        let id = PaymentId::new();
        assert!(
            handle(&pool, &h, &psp_result(id, &m, outcome, 500, "EUR"))
                .await
                .is_empty()
        );
        assert!(
            entries(&pool, &transfer_id(id)).await.is_empty(),
            "{outcome}"
        );
    }
    assert!(account_store::balances(&pool, &m).await.unwrap().is_empty());
}

#[tokio::test]
async fn an_over_capture_is_a_permanent_error() {
    let pool = pool().await;
    let m = merchant();
    let id = PaymentId::new();
    let mut event = psp_result(id, &m, "succeeded", 500, "EUR");
    event.data["amount_captured"] = json!(501);
    let mut tx = pool.begin().await.unwrap();
    let mut out = Emitter::new(None, None);
    let result = handler().handle(&mut tx, &event, &mut out).await;
    assert!(
        matches!(result, Err(HandlerError::Permanent(_))),
        "{result:?}"
    );
    assert!(out.is_empty());
}

#[tokio::test]
async fn concurrent_captures_for_one_merchant_keep_totals_equal_to_entries() {
    let pool = pool().await;
    let m = merchant();
    let amounts: Vec<i64> = (1..=40).map(|i| 1_000 + i * 37).collect();
    let tasks: Vec<_> = amounts
        .iter()
        .map(|&amount| {
            let pool = pool.clone();
            let event = psp_result(PaymentId::new(), &m, "succeeded", amount, "EUR");
            tokio::spawn(async move { handle(&pool, &handler(), &event).await.len() })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), 1);
    }

    let payable = format!("merchant:{m}:payable");
    let (count, credits): (i64, i64) = sqlx::query_as(
        "SELECT count(*), COALESCE(SUM(amount), 0)::bigint FROM account_store.entries
         WHERE account = $1 AND side = 'credit'",
    )
    .bind(&payable)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(count, amounts.len() as i64);
    let fees = FeeSchedule::default();
    let expected: i64 = amounts.iter().map(|a| a - fees.fee(*a)).sum();
    assert_eq!(credits, expected);
    let eur = Currency::parse("EUR").unwrap();
    assert_eq!(
        account_store::balances(&pool, &m).await.unwrap(),
        vec![(eur, expected)]
    );
    assert_eq!(accounts_out_of_step(&pool).await, Vec::<String>::new());
}

#[tokio::test]
async fn concurrent_copies_of_one_result_post_one_transfer() {
    let pool = pool().await;
    let m = merchant();
    let id = PaymentId::new();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let pool = pool.clone();
            let event = psp_result(id, &m, "succeeded", 2_000, "EUR");
            tokio::spawn(async move { handle(&pool, &handler(), &event).await.len() })
        })
        .collect();
    let mut published = 0;
    for task in tasks {
        published += task.await.unwrap();
    }
    assert_eq!(published, 1);
    assert_eq!(entries(&pool, &transfer_id(id)).await.len(), 3);
    assert_eq!(accounts_out_of_step(&pool).await, Vec::<String>::new());
}

#[tokio::test]
async fn balances_are_per_currency() {
    let pool = pool().await;
    let h = handler();
    let m = merchant();
    handle(
        &pool,
        &h,
        &psp_result(PaymentId::new(), &m, "succeeded", 10_000, "USD"),
    )
    .await;
    handle(
        &pool,
        &h,
        &psp_result(PaymentId::new(), &m, "succeeded", 10_000, "EUR"),
    )
    .await;
    handle(
        &pool,
        &h,
        &psp_result(PaymentId::new(), &m, "succeeded", 1_000, "EUR"),
    )
    .await;
    let eur = Currency::parse("EUR").unwrap();
    let usd = Currency::parse("USD").unwrap();
    assert_eq!(
        account_store::balances(&pool, &m).await.unwrap(),
        vec![(eur, 9_710 + 971), (usd, 9_710)]
    );
    assert!(
        account_store::balances(&pool, &merchant())
            .await
            .unwrap()
            .is_empty()
    );
}
