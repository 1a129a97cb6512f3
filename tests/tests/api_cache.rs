//! Merchant API: reads go through the versioned Redis cache, and a read after the order store
//! finished an update never returns the old state, including when a reader that read the database
//! before the update tries to fill the cache after it.

mod api_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use api_support::*;
use order_store::RedisOrderCache;
use order_store::domain::ports::OrderCache;
use paystream_domain::PaymentId;
use paystream_e2e::fleet;
use paystream_kit::auth::Role;
use paystream_kit::order_cache::{Fill, Lookup, VersionedOrderCache};
use sqlx::PgPool;
use uuid::Uuid;

fn redis_url() -> String {
    fleet().api_config.common.redis_url.clone()
}

/// The order store's side: commit an update of the row, then invalidate with its real adapter
/// (tombstones carrying the committed version).
struct Writer {
    pool: PgPool,
    cache: RedisOrderCache,
}

impl Writer {
    async fn new() -> Self {
        let pool = pool().await;
        let cache = RedisOrderCache::connect(&redis_url())
            .expect("redis")
            .with_versions_from(pool.clone());
        Self { pool, cache }
    }

    async fn update(&self, id: Uuid, status: &str, refunded: i64) -> i32 {
        let version: i32 = sqlx::query_scalar(
            "UPDATE order_store.orders SET status = $2, amount_refunded = $3, version = version + 1,
                 updated_at = now()
             WHERE payment_id = $1 RETURNING version",
        )
        .bind(id)
        .bind(status)
        .bind(refunded)
        .fetch_one(&self.pool)
        .await
        .expect("update");
        self.cache
            .invalidate(&[PaymentId::from_uuid(id)])
            .await
            .expect("invalidate");
        version
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_after_an_update_sees_the_update() {
    let merchant = new_merchant();
    let token = merchant_token(&merchant);
    let writer = Writer::new().await;
    let cache = VersionedOrderCache::connect(&redis_url()).expect("redis");
    let id = plant_order(&writer.pool, &merchant, 500, "requires_capture", 0, 1).await;
    let path = format!("/v1/payments/{}", pay(id));

    let first = get(&path, &token).await;
    assert_eq!(
        (
            first.body["status"].as_str(),
            first.body["version"].as_i64()
        ),
        (Some("requires_capture"), Some(1))
    );
    assert!(
        matches!(
            cache.get(&pay(id)).await.expect("get"),
            Lookup::Hit { version: 1, .. }
        ),
        "filled on the miss"
    );
    let again = get(&path, &token).await;
    assert_eq!(again.body, first.body, "served from the cache");

    assert_eq!(writer.update(id, "succeeded", 0).await, 2);
    assert_eq!(
        cache.get(&pay(id)).await.expect("get"),
        Lookup::Tombstone { version: 2 }
    );
    let after = get(&path, &token).await;
    assert_eq!(
        (
            after.body["status"].as_str(),
            after.body["version"].as_i64()
        ),
        (Some("succeeded"), Some(2))
    );
    assert!(matches!(
        cache.get(&pay(id)).await.expect("get"),
        Lookup::Hit { version: 2, .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_cannot_put_the_old_state_back() {
    let merchant = new_merchant();
    let token = merchant_token(&merchant);
    let writer = Writer::new().await;
    let cache = VersionedOrderCache::connect(&redis_url()).expect("redis");
    let id = plant_order(&writer.pool, &merchant, 900, "succeeded", 900, 3).await;
    let path = format!("/v1/payments/{}", pay(id));

    // The reader reads the database: version 3 ...
    let read_started = Instant::now();
    let old = get(&path, &token).await;
    assert_eq!(old.body["version"], 3);
    let old_payload = old.body.to_string();
    // ... the writer commits version 4 and tombstones ...
    assert_eq!(writer.update(id, "succeeded", 100).await, 4);
    // ... and the reader's fill with what it read arrives late: refused.
    let filled = cache
        .fill(&pay(id), 3, &old_payload, read_started)
        .await
        .expect("fill");
    assert_eq!(filled, Fill::Refused);
    assert_eq!(
        cache.get(&pay(id)).await.expect("get"),
        Lookup::Tombstone { version: 4 }
    );
    let now = get(&path, &token).await;
    assert_eq!(
        (
            now.body["version"].as_i64(),
            now.body["amount_refunded"].as_i64()
        ),
        (Some(4), Some(100))
    );

    // A tombstone that arrives after a newer fill does not remove it either.
    let newer = get(&path, &token).await;
    assert_eq!(newer.body["version"], 4);
    cache
        .tombstone(&[(pay(id), 3)])
        .await
        .expect("late tombstone");
    assert!(matches!(
        cache.get(&pay(id)).await.expect("get"),
        Lookup::Hit { version: 4, .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_concurrent_updates_no_read_goes_back() {
    let merchant = new_merchant();
    let token = merchant_token(&merchant);
    let writer = Arc::new(Writer::new().await);
    let id = plant_order(&writer.pool, &merchant, 10_000, "succeeded", 10_000, 1).await;
    let path = format!("/v1/payments/{}", pay(id));
    // The version of the last update the writer finished (committed and invalidated).
    let finished = Arc::new(AtomicI64::new(1));
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for i in 0..4 {
        // The merchant and three operators, so that the readers share no rate-limit bucket.
        let token = if i == 0 {
            token.clone()
        } else {
            fleet().token(&format!("ops_reader_{i}"), Role::Operator)
        };
        let (finished, stop, path) = (finished.clone(), stop.clone(), path.clone());
        readers.push(tokio::spawn(async move {
            let mut reads = 0u32;
            while !stop.load(Ordering::SeqCst) {
                let floor = finished.load(Ordering::SeqCst);
                let r = get(&path, &token).await;
                if r.status == 429 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                assert_eq!(r.status, 200, "{}", r.body);
                let seen = r.body["version"].as_i64().expect("version");
                assert!(
                    seen >= floor,
                    "read version {seen} after version {floor} was finished"
                );
                reads += 1;
            }
            reads
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    for i in 1..=60 {
        let v = writer.update(id, "succeeded", i).await;
        finished.store(i64::from(v), Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(10)).await;
        if Instant::now() > deadline {
            break;
        }
    }
    stop.store(true, Ordering::SeqCst);
    let mut total = 0;
    for r in readers {
        total += r.await.expect("reader");
    }
    assert!(total > 50, "readers made {total} reads");
    let last = get(&path, &token).await;
    assert_eq!(
        last.body["version"].as_i64(),
        Some(finished.load(Ordering::SeqCst))
    );
}
