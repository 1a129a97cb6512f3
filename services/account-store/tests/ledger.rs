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

/// Batches as the consumer runtime runs them: several records in one transaction, each in its
/// own savepoint. Returns the failures' messages (an empty list: the batch committed).
async fn handle_batch(
    pool: &PgPool,
    handler: &LedgerHandler,
    events: &[InboundEvent],
) -> Option<String> {
    let mut tx = pool.begin().await.unwrap();
    for event in events {
        let mut sp = sqlx::Connection::begin(&mut *tx).await.unwrap();
        let mut out = Emitter::new(None, None);
        if let Err(e) = handler.handle(&mut sp, event, &mut out).await {
            let message = format!("{e:#}");
            drop(sp);
            tx.rollback().await.ok();
            return Some(message);
        }
        sp.commit().await.unwrap();
    }
    tx.commit().await.unwrap();
    None
}

/// Four instances post batches of captures for the same few merchants, each batch in its own
/// order. Row locks taken transfer by transfer pile up within a batch, so without the ledger
/// lock two batches regularly wait on each other's rows (Postgres detects the deadlock after
/// `deadlock_timeout` and the runtime replays the whole batch). With it, none does.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batches_of_several_instances_never_deadlock() {
    const INSTANCES: usize = 4;
    const BATCHES: usize = 12;
    const PER_BATCH: usize = 25;
    let pool = pool().await;
    let merchants: Vec<MerchantId> = (0..5).map(|_| merchant()).collect();
    let started = std::time::Instant::now();
    let tasks: Vec<_> = (0..INSTANCES)
        .map(|w| {
            let (pool, merchants) = (pool.clone(), merchants.clone());
            tokio::spawn(async move {
                let h = handler();
                let (mut deadlocks, mut other) = (0, Vec::new());
                for b in 0..BATCHES {
                    let mut events: Vec<(Uuid, InboundEvent)> = (0..PER_BATCH)
                        .map(|i| {
                            let m = &merchants[(w + b + i * 3) % merchants.len()];
                            let amount = 1_000 + (i as i64) * 11;
                            (
                                Uuid::new_v4(),
                                psp_result(PaymentId::new(), m, "succeeded", amount, "EUR"),
                            )
                        })
                        .collect();
                    events.sort_by_key(|(k, _)| *k);
                    let events: Vec<InboundEvent> = events.into_iter().map(|(_, e)| e).collect();
                    while let Some(failure) = handle_batch(&pool, &h, &events).await {
                        if failure.contains("deadlock detected") {
                            deadlocks += 1;
                        } else {
                            other.push(failure);
                            break;
                        }
                    }
                }
                (deadlocks, other)
            })
        })
        .collect();
    let (mut deadlocks, mut other) = (0, Vec::new());
    for task in tasks {
        let (d, o) = task.await.unwrap();
        deadlocks += d;
        other.extend(o);
    }
    let elapsed = started.elapsed();
    eprintln!(
        "{INSTANCES} instances x {BATCHES} batches x {PER_BATCH} captures over {} merchants: {elapsed:.2?}, {deadlocks} deadlocked batches replayed",
        merchants.len()
    );
    assert!(other.is_empty(), "{other:?}");
    assert_eq!(deadlocks, 0);
    assert_eq!(accounts_out_of_step(&pool).await, Vec::<String>::new());
    let posted: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM account_store.entries WHERE account = ANY($1) AND side = 'credit'",
    )
    .bind(
        merchants
            .iter()
            .map(|m| format!("merchant:{m}:payable"))
            .collect::<Vec<_>>(),
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(posted, (INSTANCES * BATCHES * PER_BATCH) as i64);
}

fn event(id: PaymentId, event_type: &str, data: Value) -> InboundEvent {
    InboundEvent {
        event_id: Uuid::now_v7(),
        event_type: event_type.into(),
        schema_version: 1,
        payment_id: id,
        occurred_at: chrono::Utc::now(),
        data,
        topic: "payments.psp-results".into(),
        partition: 0,
        offset: 0,
        traceparent: None,
        correlation_id: None,
    }
}

fn refund_event(id: PaymentId, m: &MerchantId, refund_id: &str, amount: i64) -> InboundEvent {
    event(
        id,
        "payment.refunded",
        json!({
            "merchant_id": m.as_str(), "refund_id": refund_id, "psp": "alpha",
            "charge_id": "ch_test", "psp_refund_id": format!("psp_{refund_id}"),
            "amount": amount, "currency": "EUR",
        }),
    )
}

fn captured_event(id: PaymentId, m: &MerchantId, amount: i64) -> InboundEvent {
    event(
        id,
        "payment.captured",
        json!({
            "merchant_id": m.as_str(), "command_id": "cmd_1", "psp": "alpha",
            "charge_id": "ch_test", "currency": "EUR", "amount_captured": amount,
        }),
    )
}

async fn try_handle(
    pool: &PgPool,
    handler: &LedgerHandler,
    event: &InboundEvent,
) -> Result<Vec<OutboxRecord>, HandlerError> {
    let mut tx = pool.begin().await.unwrap();
    let mut out = Emitter::new(None, None);
    match handler.handle(&mut tx, event, &mut out).await {
        Ok(()) => {
            tx.commit().await.unwrap();
            Ok(out.take())
        }
        Err(e) => {
            tx.rollback().await.unwrap();
            Err(e)
        }
    }
}

fn posting_data(record: &OutboxRecord) -> Value {
    let envelope: Value = serde_json::from_slice(&record.value).unwrap();
    SchemaRegistry::global()
        .validate_data("ledger.posting", 1, &envelope["data"])
        .unwrap();
    envelope["data"].clone()
}

#[tokio::test]
async fn refunds_reverse_the_capture_in_proportion_once_per_refund_id() {
    let pool = pool().await;
    let h = handler();
    let m = merchant();
    let id = PaymentId::new();
    // A manual capture posts like an automatic one.
    let records = handle(&pool, &h, &captured_event(id, &m, 10_000)).await;
    assert_eq!(posting_data(&records[0])["kind"], "capture");

    // 2.9 % of 2500 is 72.5: the fee share rounds half up, like the fee itself.
    let first = handle(&pool, &h, &refund_event(id, &m, "re_1", 2_500)).await;
    assert_eq!(first.len(), 1);
    let payable = format!("merchant:{m}:payable");
    assert_eq!(
        posting_data(&first[0]),
        json!({
            "transfer_id": format!("tr_{}_refund_re_1", id.as_uuid().simple()),
            "payment_id": id.to_string(),
            "kind": "refund",
            "currency": "EUR",
            "entries": [
                {"account": payable, "side": "debit", "amount": 2_427},
                {"account": "platform:fees", "side": "debit", "amount": 73},
                {"account": "psp:alpha:clearing", "side": "credit", "amount": 2_500},
            ],
        })
    );
    // The same refund under a new event id posts nothing.
    assert!(
        handle(&pool, &h, &refund_event(id, &m, "re_1", 2_500))
            .await
            .is_empty()
    );
    // The rest: the fee and the net are reversed exactly.
    let rest = handle(&pool, &h, &refund_event(id, &m, "re_2", 7_500)).await;
    let entries = &posting_data(&rest[0])["entries"];
    assert_eq!(entries[0]["amount"], 9_710 - 2_427);
    assert_eq!(entries[1]["amount"], 290 - 73);
    let eur = Currency::parse("EUR").unwrap();
    assert_eq!(
        account_store::balances(&pool, &m).await.unwrap(),
        vec![(eur, 0)]
    );
    let transfers: i64 =
        sqlx::query_scalar("SELECT count(*) FROM account_store.transfers WHERE payment_id = $1")
            .bind(id.as_uuid())
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(transfers, 3);

    // Nothing is left to refund: a third refund is a permanent error (dead letter).
    let over = try_handle(&pool, &h, &refund_event(id, &m, "re_3", 1)).await;
    assert!(matches!(over, Err(HandlerError::Permanent(_))), "{over:?}");
    assert_eq!(accounts_out_of_step(&pool).await, Vec::<String>::new());
}

#[tokio::test]
async fn a_refund_before_its_capture_is_posted_right_after_it() {
    let pool = pool().await;
    let h = handler();
    let m = merchant();
    let id = PaymentId::new();
    assert!(
        handle(&pool, &h, &refund_event(id, &m, "re_early", 400))
            .await
            .is_empty()
    );
    let parked: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM account_store.parked_refunds WHERE payment_id = $1 AND resolved_at IS NULL",
    )
    .bind(id.as_uuid())
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(parked, 1);

    let records = handle(&pool, &h, &psp_result(id, &m, "succeeded", 1_000, "EUR")).await;
    let kinds: Vec<Value> = records
        .iter()
        .map(|r| posting_data(r)["kind"].clone())
        .collect();
    assert_eq!(kinds, vec![json!("capture"), json!("refund")]);
    let resolution: String = sqlx::query_scalar(
        "SELECT resolution FROM account_store.parked_refunds WHERE payment_id = $1",
    )
    .bind(id.as_uuid())
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(resolution, "posted");
}

#[tokio::test]
async fn a_refund_that_would_make_the_payable_negative_is_refused_unless_allowed() {
    let pool = pool().await;
    let m = merchant();
    let id = PaymentId::new();
    handle(
        &pool,
        &handler(),
        &psp_result(id, &m, "succeeded", 1_000, "EUR"),
    )
    .await;
    // Money already paid out of the payable (a payout the platform posted by other means): the
    // payable holds less than the refund's net share.
    let payable = format!("merchant:{m}:payable");
    let mut tx = pool.begin().await.unwrap();
    let payout = format!("tr_payout_{}", Uuid::new_v4().simple());
    sqlx::query("INSERT INTO account_store.transfers (transfer_id, payment_id, kind, step, currency) VALUES ($1, $2, 'refund', 'payout', 'EUR')")
        .bind(&payout)
        .bind(id.as_uuid())
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("INSERT INTO account_store.entries (transfer_id, account, currency, side, amount) VALUES ($1, $2, 'EUR', 'debit', 900), ($1, 'psp:alpha:clearing', 'EUR', 'credit', 900)")
        .bind(&payout)
        .bind(&payable)
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("UPDATE account_store.accounts SET debits = debits + 900 WHERE account = $1 AND currency = 'EUR'")
        .bind(&payable)
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("UPDATE account_store.accounts SET credits = credits + 900 WHERE account = 'psp:alpha:clearing' AND currency = 'EUR'")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let refund = refund_event(id, &m, "re_neg", 100);
    let refused = try_handle(&pool, &handler(), &refund).await;
    match refused {
        Err(HandlerError::Permanent(e)) => assert!(format!("{e}").contains("negative"), "{e}"),
        other => panic!("expected a permanent error, got {other:?}"),
    }
    let lenient = handler().with_policy(account_store::domain::Policy {
        allow_negative_payable: true,
    });
    let posted = try_handle(&pool, &lenient, &refund).await.unwrap();
    assert_eq!(posted.len(), 1);
    let eur = Currency::parse("EUR").unwrap();
    assert_eq!(
        account_store::balances(&pool, &m).await.unwrap(),
        vec![(eur, 971 - 900 - 97)]
    );
}

#[tokio::test]
async fn a_parked_refund_that_breaks_a_rule_is_refused_without_failing_its_capture() {
    let pool = pool().await;
    let h = handler();
    let m = merchant();
    let id = PaymentId::new();
    assert!(
        handle(&pool, &h, &refund_event(id, &m, "re_big", 1_500))
            .await
            .is_empty()
    );
    let records = handle(&pool, &h, &psp_result(id, &m, "succeeded", 1_000, "EUR")).await;
    assert_eq!(records.len(), 1, "the capture alone is published");
    let (transfers, entries): (i64, i64) = sqlx::query_as(
        "SELECT count(DISTINCT t.transfer_id), count(e.id) FROM account_store.transfers t
         LEFT JOIN account_store.entries e USING (transfer_id) WHERE t.payment_id = $1",
    )
    .bind(id.as_uuid())
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        (transfers, entries),
        (1, 3),
        "no trace of the refused refund"
    );
    let (resolution, note): (String, Option<String>) = sqlx::query_as(
        "SELECT resolution, note FROM account_store.parked_refunds WHERE payment_id = $1",
    )
    .bind(id.as_uuid())
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(resolution, "refused");
    assert!(note.is_some_and(|n| n.contains("above the captured 1000")));
}
