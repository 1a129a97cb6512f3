//! Thousands of payments through psp-gateway against two psp-sims that time out (5 %) and lose
//! answers after charging (2 %): the PSPs' own ledgers must show every approved payment charged
//! exactly once or definitively declined, never twice, and the published results must agree.

mod psp_support;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use paystream_domain::{CaptureMode, PaymentId, topics};
use psp_sim::Faults;
use psp_support::*;

const PAYMENTS: usize = 2_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faulty_psps_never_charge_twice_and_every_payment_settles() {
    let faults = |decline_rate| Faults {
        latency_ms: 0,
        decline_rate,
        timeout_rate: 0.05,
        ambiguous_rate: 0.02,
        hang_ms: 500,
    };
    let rig = start_rig(RigOptions {
        // alpha declines some cards that beta accepts, so fail-over happens under faults too
        alpha: faults(0.04),
        beta: faults(0.01),
        webhooks: true,
        tune: Box::new(|c| {
            c.call_timeout = Duration::from_millis(150);
            c.resolve_backoff = Duration::from_millis(20);
        }),
        ..RigOptions::default()
    })
    .await;

    let mut results = TopicReader::at_end(topics::PAYMENTS_PSP_RESULTS);
    let producer = producer();
    let merchant = format!("m_{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let mut ids = Vec::with_capacity(PAYMENTS);
    let mut records = Vec::with_capacity(PAYMENTS);
    for i in 0..PAYMENTS {
        let id = PaymentId::new();
        // 2 % cards that every PSP declines; 10 % authorise-only
        let pm = if i % 50 == 7 {
            "pm_card_declined"
        } else {
            "pm_card_visa"
        };
        let capture = if i % 10 == 3 {
            CaptureMode::Manual
        } else {
            CaptureMode::Automatic
        };
        let req = requested(
            &merchant,
            &format!("cus_{i}"),
            500 + (i as i64 % 97) * 13,
            "EUR",
            pm,
            capture,
        );
        records.push(record(id, approved(req)));
        ids.push(id.to_string());
    }
    let started = Instant::now();
    for chunk in records.chunks(200) {
        futures::future::join_all(chunk.iter().map(|r| send(&producer, r))).await;
    }
    let produced_in = started.elapsed();

    let wanted: Arc<HashSet<String>> = Arc::new(ids.iter().cloned().collect());
    let w = wanted.clone();
    let all_settled =
        results.wait_until(Duration::from_secs(150), &move |p| w.contains(p), &|seen| {
            seen.iter()
                .filter(|s| s.event_type == "payment.psp_result")
                .map(|s| s.payment_id.as_str())
                .collect::<HashSet<_>>()
                .len()
                >= PAYMENTS
        });
    let settled_in = started.elapsed();
    // Late duplicates, if any, would show up here.
    let w = wanted.clone();
    results.poll(Duration::from_secs(3), &move |p| w.contains(p));
    let ours = rig.charge_ids();
    let by_payment = results.by_payment_where("payment.psp_result", &|s| rig.owns(&ours, s));
    let foreign = results
        .by_payment("payment.psp_result")
        .values()
        .map(Vec::len)
        .sum::<usize>()
        - by_payment.values().map(Vec::len).sum::<usize>();
    assert!(
        all_settled,
        "only {} of {PAYMENTS} payments have a result after {settled_in:?}",
        by_payment.len()
    );

    let mut outcomes: HashMap<String, usize> = HashMap::new();
    let mut on_beta_after_alpha_decline = 0;
    for id in &ids {
        let published = &by_payment[id];
        // A declined result names no charge, so another fleet's copy cannot be told apart by
        // its charge; identical copies are the same fact.
        let distinct: HashSet<String> = published.iter().map(|s| s.data.to_string()).collect();
        assert_eq!(distinct.len(), 1, "one result for {id}: {published:?}");
        assert!(
            published.len() == 1 || published[0].data["charge_id"].is_null(),
            "one result for {id}: {published:?}"
        );
        let data = &published[0].data;
        let outcome = data["outcome"].as_str().unwrap_or_default().to_owned();
        let live_alpha = rig.alpha.charge_count_for_reference(id);
        let live_beta = rig.beta.charge_count_for_reference(id);
        assert!(
            live_alpha + live_beta <= 1,
            "{id} charged {live_alpha} times at alpha and {live_beta} at beta"
        );
        match outcome.as_str() {
            "succeeded" | "requires_capture" => {
                assert_eq!(
                    live_alpha + live_beta,
                    1,
                    "{id} is {outcome} but has no live charge"
                );
                let psp = data["psp"].as_str().unwrap_or_default();
                let sim = if psp == "alpha" {
                    &rig.alpha
                } else {
                    &rig.beta
                };
                let charge_id = data["charge_id"].as_str().unwrap_or_default();
                let charge = sim
                    .charges()
                    .into_iter()
                    .find(|c| c.id == charge_id)
                    .unwrap_or_else(|| panic!("{id}: charge {charge_id} not in {psp}'s ledger"));
                assert_eq!(charge.reference, *id);
                assert_eq!(charge.status.as_str(), outcome, "{id}");
                if psp == "beta"
                    && rig
                        .alpha
                        .charges()
                        .iter()
                        .any(|c| c.reference == *id && c.status.as_str() == "failed")
                {
                    on_beta_after_alpha_decline += 1;
                }
            }
            "declined" | "failed" => {
                assert_eq!(
                    live_alpha + live_beta,
                    0,
                    "{id} is {outcome} but was charged"
                );
            }
            other => panic!("unexpected outcome {other} for {id}"),
        }
        *outcomes.entry(outcome).or_default() += 1;
    }

    // Nothing in the PSP ledgers beyond these payments' single charges.
    let live_total = |sim: &psp_sim::SimHandle| {
        sim.charges()
            .iter()
            .filter(|c| wanted.contains(&c.reference) && c.status.as_str() != "failed")
            .count()
    };
    let charged = outcomes.get("succeeded").copied().unwrap_or(0)
        + outcomes.get("requires_capture").copied().unwrap_or(0);
    assert_eq!(live_total(&rig.alpha) + live_total(&rig.beta), charged);

    let alpha_stats = sim_stats(&rig.alpha_url).await;
    let beta_stats = sim_stats(&rig.beta_url).await;
    let injected =
        |s: &serde_json::Value, k: &str| s["faults"]["injected"][k].as_u64().unwrap_or(0);
    let timeouts = ["timeouts_lost", "timeouts_committed"]
        .iter()
        .map(|k| injected(&alpha_stats, k) + injected(&beta_stats, k))
        .sum::<u64>();
    let ambiguous = injected(&alpha_stats, "ambiguous") + injected(&beta_stats, "ambiguous");
    assert!(
        timeouts > 0 && ambiguous > 0,
        "the faults must actually fire"
    );
    assert!(
        on_beta_after_alpha_decline > 0,
        "some payments failed over after a decline"
    );
    let metrics = rig.metrics().await;
    println!(
        "{PAYMENTS} payments: produced in {produced_in:?}, all settled after {settled_in:?}; outcomes {outcomes:?}; \
         faults injected: {timeouts} timeouts ({} committed), {ambiguous} ambiguous; \
         {on_beta_after_alpha_decline} charged at beta after an alpha decline; \
         unknown outcomes handed to retry: alpha {}, beta {}; webhooks that settled a charge: alpha {}, beta {}; \
         {foreign} results from other fleets on the broker ignored",
        injected(&alpha_stats, "timeouts_committed") + injected(&beta_stats, "timeouts_committed"),
        metric_value(
            &metrics,
            "psp_gateway_unknown_outcomes_total{operation=\"charge\",psp=\"alpha\"}"
        ),
        metric_value(
            &metrics,
            "psp_gateway_unknown_outcomes_total{operation=\"charge\",psp=\"beta\"}"
        ),
        metric_value(
            &metrics,
            "psp_gateway_webhooks_total{psp=\"alpha\",result=\"resolved_charge\"}"
        ),
        metric_value(
            &metrics,
            "psp_gateway_webhooks_total{psp=\"beta\",result=\"resolved_charge\"}"
        ),
    );
    rig.shutdown.cancel();
}
