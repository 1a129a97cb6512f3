//! No input makes the API answer 5xx: property tests over methods, paths, query strings, headers
//! and bodies against the real router (in-process, `tower::ServiceExt::oneshot`) on the real
//! Postgres and Redis of `DATABASE_URL` / `REDIS_URL` (the dev defaults otherwise). Every error
//! must also be in the contract shape.

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};

use api_ingress::config::RateLimit;
use axum::body::Body;
use axum::http::{HeaderValue, Method, Request};
use paystream_kit::auth::{self, Role};
use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use serde_json::{Value, json};
use tower::ServiceExt;

struct Target {
    runtime: tokio::runtime::Runtime,
    router: axum::Router,
    secret: String,
}

fn target() -> &'static Target {
    static TARGET: OnceLock<Target> = OnceLock::new();
    TARGET.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let (router, secret) = runtime.block_on(async {
            let mut config = api_ingress::Config::from_env().expect("config");
            config.api_addr = "127.0.0.1:0".to_owned();
            // Limited requests would only ever answer 429; the limiter is tested elsewhere.
            config.rate = RateLimit {
                per_sec: 0.0,
                burst: 0,
            };
            let secret = config.jwt_secret.clone();
            let app = api_ingress::build(config).await.expect("the ingress");
            (app.router(), secret)
        });
        Target {
            runtime,
            router,
            secret,
        }
    })
}

fn tokens(secret: &str) -> Vec<Option<String>> {
    let mint = |sub: &str, role, ttl| auth::mint(secret, sub, role, ttl).ok();
    vec![
        None,
        mint("m_fuzz", Role::Merchant, 600).map(|t| format!("Bearer {t}")),
        mint("m_fuzz_2", Role::Merchant, 600).map(|t| format!("Bearer {t}")),
        mint("ops_fuzz", Role::Operator, 600).map(|t| format!("Bearer {t}")),
        mint("ana_fuzz", Role::Analyst, 600).map(|t| format!("Bearer {t}")),
        mint("m_fuzz", Role::Merchant, -60).map(|t| format!("Bearer {t}")),
        mint("not a merchant", Role::Merchant, 600).map(|t| format!("Bearer {t}")),
        auth::mint("forged", "m_fuzz", Role::Merchant, 600)
            .ok()
            .map(|t| format!("Bearer {t}")),
        Some("Bearer".to_owned()),
        Some("Bearer a.b.c".to_owned()),
        Some("Basic Zm9vOmJhcg==".to_owned()),
    ]
}

fn payment_ids() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("pay_0190b1e2-7c1a-7d4e-9a53-1b2c3d4e5f60".to_owned()),
        Just(format!("pay_{}", uuid::Uuid::now_v7())),
        "[a-zA-Z0-9_%.-]{0,40}",
        "pay_[0-9a-f-]{0,40}",
    ]
}

fn paths() -> impl Strategy<Value = String> {
    let action = prop_oneof![
        Just(""),
        Just("/capture"),
        Just("/cancel"),
        Just("/refunds"),
        Just("/refunds/x"),
    ];
    prop_oneof![
        4 => Just("/v1/payments".to_owned()),
        1 => Just("/v1/balance".to_owned()),
        1 => Just("/openapi.json".to_owned()),
        1 => Just("/healthz".to_owned()),
        4 => (payment_ids(), action).prop_map(|(id, a)| format!("/v1/payments/{id}{a}")),
        1 => "/[a-z0-9/%._-]{0,30}",
    ]
}

fn queries() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("limit".to_owned()),
        Just("status".to_owned()),
        Just("starting_after".to_owned()),
        Just("merchant_id".to_owned()),
        "[a-z_%]{1,10}",
    ];
    let value = prop_oneof![
        Just("10".to_owned()),
        Just("0".to_owned()),
        Just("-1".to_owned()),
        Just("99999999999999999999".to_owned()),
        Just("succeeded".to_owned()),
        Just("pay_0190b1e2-7c1a-7d4e-9a53-1b2c3d4e5f60".to_owned()),
        Just("m_fuzz".to_owned()),
        "[a-zA-Z0-9%+_.-]{0,20}",
    ];
    prop::collection::vec((key, value), 0..4).prop_map(|pairs| {
        if pairs.is_empty() {
            String::new()
        } else {
            let q: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("?{}", q.join("&"))
        }
    })
}

fn json_values() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        (-1e20f64..1e20).prop_map(|f| json!(f)),
        Just(json!(u64::MAX)),
        ".{0,30}".prop_map(Value::String),
        Just(json!("4242 4242 4242 4242")),
        Just(json!("pm_card_visa")),
        Just(json!("EUR")),
        Just(json!("manual")),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(field_names(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn field_names() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("amount".to_owned()),
        Just("currency".to_owned()),
        Just("customer_id".to_owned()),
        Just("payment_method".to_owned()),
        Just("capture".to_owned()),
        Just("description".to_owned()),
        Just("metadata".to_owned()),
        ".{0,12}",
    ]
}

/// Mostly a valid value, sometimes anything.
fn mostly<S>(valid: S) -> impl Strategy<Value = Value>
where
    S: Strategy<Value = Value> + 'static,
{
    prop_oneof![12 => valid, 1 => json_values()]
}

/// Payment bodies near the valid ones: every field valid, or one mutated, plus extras.
fn payment_like() -> impl Strategy<Value = Vec<u8>> {
    let amount = mostly(prop_oneof![
        20 => (1i64..2_000_000).prop_map(|n| json!(n)),
        1 => Just(json!(99_999_999_999i64)),
        1 => Just(json!(100_000_000_000i64)),
        1 => Just(json!(0)),
        1 => Just(json!(-5)),
        1 => Just(json!(1.5)),
    ]);
    let currency = mostly(prop_oneof![
        10 => Just(json!("EUR")),
        5 => Just(json!("USD")),
        2 => Just(json!("JPY")),
        1 => Just(json!("eur")),
        1 => Just(json!("EUD")),
    ]);
    let customer = mostly("[a-zA-Z0-9_.@-]{1,20}".prop_map(Value::String));
    let method = mostly(prop_oneof![
        10 => Just(json!("pm_card_visa")),
        5 => "pm_[a-z0-9_]{1,20}".prop_map(Value::String),
        1 => Just(json!("4242-4242-4242-4242")),
        1 => Just(json!("tok_visa")),
    ]);
    let capture = prop::option::of(mostly(prop_oneof![
        Just(json!("automatic")),
        Just(json!("manual")),
    ]));
    let description = prop::option::of(mostly("[ -~]{0,200}".prop_map(Value::String)));
    let metadata = prop::option::of(mostly(
        prop::collection::btree_map("[a-z0-9]{0,45}", "[ -~]{0,60}", 0..24).prop_map(|m| json!(m)),
    ));
    let extra = prop::option::weighted(
        0.15,
        prop::collection::btree_map(field_names(), json_values(), 1..3),
    );
    (amount, currency, customer, method, capture, description, metadata, extra).prop_map(
        |(amount, currency, customer, method, capture, description, metadata, extra)| {
            let mut body = json!({"amount": amount, "currency": currency, "customer_id": customer, "payment_method": method});
            for (k, v) in [("capture", capture), ("description", description), ("metadata", metadata)] {
                if let Some(v) = v {
                    body[k] = v;
                }
            }
            for (k, v) in extra.unwrap_or_default() {
                body[k] = v;
            }
            serde_json::to_vec(&body).unwrap_or_default()
        },
    )
}

/// Request bodies: payment-like objects, any JSON, any bytes, and bodies above the limit.
fn bodies() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => payment_like(),
        3 => json_values().prop_map(|v| serde_json::to_vec(&v).unwrap_or_default()),
        2 => prop::collection::vec(any::<u8>(), 0..512),
        1 => Just(vec![b'{'; 70 * 1024]),
        1 => Just(Vec::new()),
    ]
}

fn methods() -> impl Strategy<Value = Method> {
    prop_oneof![
        3 => Just(Method::POST),
        3 => Just(Method::GET),
        1 => Just(Method::PUT),
        1 => Just(Method::DELETE),
        1 => Just(Method::PATCH),
        1 => Just(Method::HEAD),
        1 => Just(Method::OPTIONS),
    ]
}

#[derive(Debug, Clone)]
struct Case {
    method: Method,
    uri: String,
    auth: Option<String>,
    key: Option<Vec<u8>>,
    content_type: Option<String>,
    traceparent: Option<String>,
    body: Vec<u8>,
}

fn cases() -> impl Strategy<Value = Case> {
    let n_tokens = tokens(&target().secret).len();
    (
        methods(),
        paths(),
        queries(),
        prop_oneof![3 => Just(1usize), 1 => Just(3usize), 3 => 0..n_tokens],
        prop::option::of(prop_oneof![
            "[ -~]{0,300}".prop_map(String::into_bytes),
            prop::collection::vec(any::<u8>(), 0..40),
        ]),
        prop::option::of(prop_oneof![
            Just("application/json".to_owned()),
            Just("text/plain".to_owned()),
            "[ -~]{0,40}",
        ]),
        prop::option::of("[ -~]{0,80}"),
        bodies(),
    )
        .prop_map(
            |(method, path, query, token, key, content_type, traceparent, body)| Case {
                method,
                uri: format!("{path}{query}"),
                auth: tokens(&target().secret).swap_remove(token),
                key,
                content_type,
                traceparent,
                body,
            },
        )
}

/// Sends the case; `None` when it is not even a valid HTTP request (an URI or header value the
/// HTTP layer would refuse before any handler).
fn run(case: &Case) -> Option<(u16, Vec<u8>)> {
    let mut req = Request::builder()
        .method(case.method.clone())
        .uri(&case.uri);
    let headers = req.headers_mut()?;
    if let Some(a) = &case.auth {
        headers.insert("authorization", HeaderValue::from_str(a).ok()?);
    }
    if let Some(k) = &case.key
        && let Ok(v) = HeaderValue::from_bytes(k)
    {
        headers.insert("idempotency-key", v);
    }
    if let Some(c) = &case.content_type
        && let Ok(v) = HeaderValue::from_str(c)
    {
        headers.insert("content-type", v);
    }
    if let Some(t) = &case.traceparent
        && let Ok(v) = HeaderValue::from_str(t)
    {
        headers.insert("traceparent", v);
    }
    let req = req.body(Body::from(case.body.clone())).ok()?;
    let t = target();
    t.runtime.block_on(async {
        let response = t.router.clone().oneshot(req).await.ok()?;
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .ok()?;
        Some((status, bytes.to_vec()))
    })
}

/// The status, after checking it is not 5xx and that an error is in the contract shape.
fn check(case: &Case) -> Result<Option<u16>, TestCaseError> {
    let Some((status, body)) = run(case) else {
        return Ok(None);
    };
    prop_assert!(
        status < 500,
        "{status} for {case:?}: {}",
        String::from_utf8_lossy(&body)
    );
    if status >= 400 && case.method != Method::HEAD {
        let value: Value = serde_json::from_slice(&body).map_err(|_| {
            TestCaseError::fail(format!(
                "{status} is not JSON for {case:?}: {}",
                String::from_utf8_lossy(&body)
            ))
        })?;
        prop_assert!(value["error"]["type"].is_string(), "{value}");
        prop_assert!(value["error"]["code"].is_string(), "{value}");
        prop_assert!(value["error"]["message"].is_string(), "{value}");
        let text = value.to_string();
        prop_assert!(!text.contains("4242 4242"), "card data echoed: {text}");
    }
    Ok(Some(status))
}

/// Runs `cases` cases and returns how often each status came back, so that a test can also
/// show the inputs reached past authentication and parsing.
fn fuzz(strategy: impl Strategy<Value = Case>, cases: u32) -> BTreeMap<u16, usize> {
    let seen = Mutex::new(BTreeMap::new());
    let mut runner = TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let outcome = runner.run(&strategy, |case| {
        if let Some(status) = check(&case)? {
            *seen.lock().expect("lock").entry(status).or_insert(0) += 1;
        }
        Ok(())
    });
    if let Err(e) = outcome {
        panic!("{e}");
    }
    seen.into_inner().expect("lock")
}

#[test]
fn no_request_gets_a_5xx() {
    let seen = fuzz(cases(), 800);
    eprintln!("statuses: {seen:?}");
    for status in [200, 400, 401, 403, 404] {
        assert!(seen.contains_key(&status), "no {status} among {seen:?}");
    }
}

/// Well-formed POSTs from a merchant, so that the bodies reach parsing and the store.
#[test]
fn no_payment_body_gets_a_5xx() {
    let secret = target().secret.clone();
    let strategy = (bodies(), "[!-~]{1,40}").prop_map(move |(body, key)| Case {
        method: Method::POST,
        uri: "/v1/payments".to_owned(),
        auth: tokens(&secret).swap_remove(1),
        key: Some(key.into_bytes()),
        content_type: Some("application/json".to_owned()),
        traceparent: None,
        body,
    });
    let seen = fuzz(strategy, 800);
    eprintln!("statuses: {seen:?}");
    for status in [202, 400, 413] {
        assert!(seen.contains_key(&status), "no {status} among {seen:?}");
    }
}
