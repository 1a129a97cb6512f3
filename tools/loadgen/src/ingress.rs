//! The HTTP side: `--concurrency` workers, each sending `POST /v1/payments` with a fresh
//! Idempotency-Key as soon as its previous request was answered (closed loop).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;

use crate::stats::{Summary, summarize};

pub struct Plan {
    pub url: String,
    pub tokens: Vec<String>,
    pub concurrency: usize,
    /// Stop after this long ...
    pub duration: Option<Duration>,
    /// ... or after this many requests in all.
    pub requests: Option<u64>,
    pub warmup: Duration,
    pub amount: i64,
    pub progress: bool,
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    accepted: AtomicU64,
    failed: AtomicU64,
}

struct WorkerResult {
    latencies_us: Vec<u64>,
    errors: BTreeMap<String, u64>,
}

pub async fn run(plan: Plan) -> anyhow::Result<Summary> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(plan.concurrency)
        .timeout(Duration::from_secs(30))
        .build()
        .context("building the HTTP client")?;
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let endpoint = format!("{}/v1/payments", plan.url.trim_end_matches('/'));

    if !plan.warmup.is_zero() {
        eprintln!("warming up for {:?}", plan.warmup);
        let until = Instant::now() + plan.warmup;
        let mut tasks = Vec::new();
        for w in 0..plan.concurrency {
            let (client, endpoint, token) = (
                client.clone(),
                endpoint.clone(),
                plan.tokens[w % plan.tokens.len()].clone(),
            );
            let key = format!("lgw-{run_id}-{w}");
            let amount = plan.amount;
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < until {
                    n += 1;
                    let _ = send(&client, &endpoint, &token, &format!("{key}-{n}"), amount).await;
                }
            }));
        }
        for t in tasks {
            t.await.context("warm-up worker")?;
        }
    }

    let counters = Arc::new(Counters::default());
    let started = Instant::now();
    let deadline = plan.duration.map(|d| started + d);
    let budget = plan.requests;
    let progress = plan.progress.then(|| {
        let counters = counters.clone();
        tokio::spawn(async move {
            let mut last = 0u64;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                let accepted = counters.accepted.load(Ordering::Relaxed);
                eprintln!(
                    "{:>5.1}s  accepted {:>8}  ({:>6}/s)  errors {}",
                    started.elapsed().as_secs_f64(),
                    accepted,
                    accepted - last,
                    counters.failed.load(Ordering::Relaxed)
                );
                last = accepted;
            }
        })
    });

    let mut tasks = Vec::new();
    for w in 0..plan.concurrency {
        let (client, endpoint, counters) = (client.clone(), endpoint.clone(), counters.clone());
        let token = plan.tokens[w % plan.tokens.len()].clone();
        let key = format!("lg-{run_id}-{w}");
        let amount = plan.amount;
        tasks.push(tokio::spawn(async move {
            let mut result = WorkerResult {
                latencies_us: Vec::new(),
                errors: BTreeMap::new(),
            };
            let mut n = 0u64;
            loop {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                if let Some(b) = budget
                    && counters.sent.fetch_add(1, Ordering::Relaxed) >= b
                {
                    break;
                }
                n += 1;
                let t0 = Instant::now();
                let outcome = send(&client, &endpoint, &token, &format!("{key}-{n}"), amount).await;
                let us = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
                match outcome {
                    Ok(202) => {
                        counters.accepted.fetch_add(1, Ordering::Relaxed);
                        result.latencies_us.push(us);
                    }
                    Ok(status) => {
                        counters.failed.fetch_add(1, Ordering::Relaxed);
                        *result.errors.entry(format!("status_{status}")).or_insert(0) += 1;
                    }
                    Err(kind) => {
                        counters.failed.fetch_add(1, Ordering::Relaxed);
                        *result.errors.entry(kind).or_insert(0) += 1;
                    }
                }
            }
            result
        }));
    }
    let mut latencies = Vec::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for t in tasks {
        let r = t.await.context("load worker")?;
        latencies.extend(r.latencies_us);
        for (k, v) in r.errors {
            *errors.entry(k).or_insert(0) += v;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    if let Some(p) = progress {
        p.abort();
    }
    Ok(summarize(
        "ingress POST /v1/payments (202)",
        plan.concurrency,
        latencies,
        errors.into_iter().collect(),
        seconds,
    ))
}

async fn send(
    client: &reqwest::Client,
    endpoint: &str,
    token: &str,
    key: &str,
    amount: i64,
) -> Result<u16, String> {
    let body = json!({"amount": amount, "currency": "EUR", "customer_id": "cus_loadgen", "payment_method": "pm_card_visa"});
    let response = client
        .post(endpoint)
        .bearer_auth(token)
        .header("Idempotency-Key", key)
        .json(&body)
        .send()
        .await
        .map_err(|e| {
            if e.is_timeout() {
                "timeout".to_owned()
            } else {
                "transport".to_owned()
            }
        })?;
    let status = response.status().as_u16();
    // Read the body so that the connection goes back to the pool.
    response.bytes().await.map_err(|_| "transport".to_owned())?;
    Ok(status)
}
