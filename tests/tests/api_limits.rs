//! Merchant API limits, on extra ingress instances started beside the fleet's (same database,
//! same consumer group, their own settings): the per-merchant rate limit in Redis (429 with
//! Retry-After), failing open when Redis is down, the configured maximum amount and body size,
//! and the purge of expired idempotency keys.

mod api_support;

use std::time::Duration;

use api_ingress::config::RateLimit;
use api_support::*;
use paystream_e2e::fleet;
use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

struct Instance {
    base: String,
    stop: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Instance {
    async fn start(configure: impl FnOnce(&mut api_ingress::Config)) -> Self {
        let mut config = fleet().api_config.clone();
        config.api_addr = "127.0.0.1:0".to_owned();
        configure(&mut config);
        let app = api_ingress::build(config).await.expect("another ingress");
        let base = format!("http://127.0.0.1:{}", app.port());
        let stop = CancellationToken::new();
        let task = tokio::spawn(app.run_until_stopped(stop.clone()));
        Self { base, stop, task }
    }

    async fn shutdown(self) {
        self.stop.cancel();
        let stopped = tokio::time::timeout(Duration::from_secs(30), self.task).await;
        assert!(
            matches!(stopped, Ok(Ok(Ok(())))),
            "the instance stops cleanly: {stopped:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_rate_amount_and_body_size() {
    let api = Instance::start(|c| {
        c.rate = RateLimit {
            per_sec: 2.0,
            burst: 3,
        };
        c.max_amount = 10_000;
        c.max_body_bytes = 2048;
    })
    .await;
    let merchant = new_merchant();
    let token = merchant_token(&merchant);

    // A burst of three, then 429 with Retry-After in the contract shape.
    for _ in 0..3 {
        let r = get_from(&api.base, "/v1/payments", &token).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let limited = get_from(&api.base, "/v1/payments", &token).await;
    limited.assert_error(429, "rate_limited");
    assert_eq!(limited.body["error"]["type"], "rate_limit_error");
    let retry_after: u64 = limited
        .headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in seconds");
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    // POSTs count too, and a limited POST creates nothing.
    let k = key();
    let post = post_to(&api.base, "/v1/payments", &token, &k, card(100)).await;
    post.assert_error(429, "rate_limited");
    // Another merchant has a bucket of its own.
    let other = get_from(&api.base, "/v1/payments", &merchant_token(&new_merchant())).await;
    assert_eq!(other.status, 200, "{}", other.body);
    // After the wait it asked for, the merchant is served again.
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    let again = post_to(&api.base, "/v1/payments", &token, &k, card(100)).await;
    assert_eq!(again.status, 202, "{}", again.body);
    assert!(!again.replayed(), "the limited POST did not use the key");
    assert!(metric(&api.base, "api_ingress_rate_limited_requests_total").await >= 2.0);

    // PAYSTREAM_API_MAX_AMOUNT and PAYSTREAM_API_MAX_BODY_BYTES.
    let big_spender = merchant_token(&new_merchant());
    let r = post_to(
        &api.base,
        "/v1/payments",
        &big_spender,
        &key(),
        card(10_001),
    )
    .await;
    r.assert_error(400, "amount_too_large");
    assert_eq!(r.param(), "amount");
    let r = post_to(
        &api.base,
        "/v1/payments",
        &big_spender,
        &key(),
        card(10_000),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let mut body = card(100);
    body["description"] = json!("d".repeat(3000));
    let r = post_to(&api.base, "/v1/payments", &big_spender, &key(), body).await;
    r.assert_error(413, "body_too_large");
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_the_api_fails_open_and_reads_postgres() {
    let api = Instance::start(|c| {
        c.common.redis_url = "redis://127.0.0.1:1".to_owned();
        c.rate = RateLimit {
            per_sec: 1.0,
            burst: 1,
        };
    })
    .await;
    let token = merchant_token(&new_merchant());
    let created = post_to(&api.base, "/v1/payments", &token, &key(), card(555)).await;
    assert_eq!(created.status, 202, "{}", created.body);
    let id = created.body["id"].as_str().expect("id").to_owned();
    // Far above the configured rate: nothing is limited while the limiter cannot answer.
    for _ in 0..5 {
        let r = get_from(&api.base, &format!("/v1/payments/{id}"), &token).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["id"], id.as_str());
    }
    assert!(metric(&api.base, "api_ingress_rate_limiter_failures_total").await >= 6.0);
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_idempotency_keys_are_purged() {
    let api = Instance::start(|c| {
        c.idempotency_purge_interval = Duration::from_millis(300);
    })
    .await;
    let merchant = new_merchant();
    let pool = pool().await;
    for (k, age) in [
        ("old-1", "25 hours"),
        ("old-2", "48 hours"),
        ("old-3", "24 hours 1 second"),
        ("young", "1 hour"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO ingress.idempotency_keys
                 (merchant_id, key, operation, request_hash, state, response_status, response_body, created_at, expires_at)
             VALUES ($1, $2, 'POST /v1/payments', 'h', 'completed', 202, '{{}}',
                     now() - interval '{age}', now() - interval '{age}' + interval '24 hours')"
        )))
        .bind(&merchant)
        .bind(k)
        .execute(&pool)
        .await
        .expect("planting keys");
    }
    eventually("the purge", Duration::from_secs(20), || {
        let (pool, merchant) = (pool.clone(), merchant.clone());
        async move {
            let left: Vec<String> = sqlx::query_scalar(
                "SELECT key FROM ingress.idempotency_keys WHERE merchant_id = $1 ORDER BY key",
            )
            .bind(&merchant)
            .fetch_all(&pool)
            .await
            .unwrap_or_default();
            left == vec!["young".to_owned()]
        }
    })
    .await;
    assert!(metric(&api.base, "api_ingress_idempotency_keys_purged_total").await >= 3.0);
    api.shutdown().await;
}
