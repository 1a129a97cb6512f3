//! Fail-over only after a definitive decline; a circuit breaker that opens on a failing PSP,
//! never moves an in-doubt payment elsewhere, and closes when the PSP recovers.

mod psp_support;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use paystream_domain::{CaptureMode, PaymentId, topics};
use psp_sim::Faults;
use psp_support::*;

fn merchant() -> String {
    format!("m_{}", &uuid::Uuid::new_v4().simple().to_string()[..10])
}

async fn produce(producer: &rdkafka::producer::FutureProducer, merchant: &str, pm: &str) -> String {
    let id = PaymentId::new();
    let req = requested(merchant, "cus_1", 1_234, "EUR", pm, CaptureMode::Automatic);
    send(producer, &record(id, approved(req))).await;
    id.to_string()
}

fn wait_results(rig: &Rig, reader: &mut TopicReader, ids: &[String], timeout: Duration) -> bool {
    let wanted: HashSet<String> = ids.iter().cloned().collect();
    let w = wanted.clone();
    reader.wait_until(timeout, &move |p| w.contains(p), &|seen| {
        seen.iter()
            .filter(|s| {
                s.event_type == "payment.psp_result"
                    && wanted.contains(&s.payment_id)
                    && rig.owns(&rig.charge_ids(), s)
            })
            .map(|s| s.payment_id.as_str())
            .collect::<HashSet<_>>()
            .len()
            >= wanted.len()
    })
}

fn result_of<'a>(rig: &Rig, reader: &'a TopicReader, id: &str) -> &'a serde_json::Value {
    let ours = rig.charge_ids();
    &reader
        .seen
        .iter()
        .find(|s| s.payment_id == id && s.event_type == "payment.psp_result" && rig.owns(&ours, s))
        .unwrap_or_else(|| panic!("no result for {id}"))
        .data
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_declined_by_alpha_is_charged_once_at_beta() {
    let rig = start_rig(RigOptions {
        alpha: Faults {
            decline_rate: 1.0,
            ..Faults::default()
        },
        ..RigOptions::default()
    })
    .await;
    let mut results = TopicReader::at_end(topics::PAYMENTS_PSP_RESULTS);
    let producer = producer();
    let m = merchant();
    let moved = produce(&producer, &m, "pm_card_visa").await;
    let refused = produce(&producer, &m, "pm_card_declined").await;
    assert!(wait_results(
        &rig,
        &mut results,
        &[moved.clone(), refused.clone()],
        Duration::from_secs(60)
    ));

    let r = result_of(&rig, &results, &moved);
    assert_eq!(r["outcome"], "succeeded");
    assert_eq!(r["psp"], "beta");
    assert_eq!(rig.alpha.charge_count_for_reference(&moved), 0);
    assert_eq!(rig.beta.charge_count_for_reference(&moved), 1);
    let declined_at_alpha = rig
        .alpha
        .charges()
        .iter()
        .filter(|c| c.reference == moved && c.status.as_str() == "failed")
        .count();
    assert_eq!(
        declined_at_alpha, 1,
        "alpha saw the payment once and declined it"
    );

    // A card every PSP declines: declined, charged nowhere, tried once per PSP.
    let r = result_of(&rig, &results, &refused);
    assert_eq!(r["outcome"], "declined");
    assert_eq!(r["decline_code"], "card_declined");
    assert_eq!(rig.live_charges(&refused), 0);
    assert_eq!(
        rig.alpha
            .charges()
            .iter()
            .filter(|c| c.reference == refused)
            .count()
            + rig
                .beta
                .charges()
                .iter()
                .filter(|c| c.reference == refused)
                .count(),
        2
    );
    rig.shutdown.cancel();
}

const ALPHA_STATE: &str = "psp_gateway_breaker_state{psp=\"alpha\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_opens_on_a_failing_psp_and_closes_when_it_recovers() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("warn,psp_gateway=info")
        .with_test_writer()
        .try_init();
    let alpha_up = Arc::new(AtomicBool::new(true));
    let rig = start_rig(RigOptions {
        alpha_switch: Some(alpha_up.clone()),
        tune: Box::new(|c| {
            c.call_timeout = Duration::from_millis(200);
            c.resolve_backoff = Duration::from_millis(20);
            c.breaker_failures = 3;
            c.breaker_cooldown = Duration::from_millis(1500);
        }),
        ..RigOptions::default()
    })
    .await;
    let mut results = TopicReader::at_end(topics::PAYMENTS_PSP_RESULTS);
    let producer = producer();
    let m = merchant();
    assert_eq!(rig.metric(ALPHA_STATE).await, 0.0);

    // alpha stops answering: every call hangs past the gateway's timeout.
    alpha_up.store(false, Ordering::SeqCst);
    let in_doubt = produce(&producer, &m, "pm_card_visa").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while rig.metric(ALPHA_STATE).await != 2.0 {
        assert!(Instant::now() < deadline, "alpha's breaker did not open");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // While it is open, new payments go straight to beta...
    let mut rerouted = Vec::new();
    for _ in 0..5 {
        rerouted.push(produce(&producer, &m, "pm_card_visa").await);
    }
    assert!(wait_results(
        &rig,
        &mut results,
        &rerouted,
        Duration::from_secs(60)
    ));
    for id in &rerouted {
        assert_eq!(result_of(&rig, &results, id)["psp"], "beta", "{id}");
        assert_eq!(rig.beta.charge_count_for_reference(id), 1);
        assert_eq!(
            rig.alpha
                .charges()
                .iter()
                .filter(|c| c.reference == *id)
                .count(),
            0
        );
    }
    assert!(
        rig.metric("psp_gateway_breaker_skips_total{psp=\"alpha\"}")
            .await
            >= 5.0
    );
    // ...but the payment in doubt at alpha was not moved: nothing at beta.
    assert_eq!(
        rig.beta
            .charges()
            .iter()
            .filter(|c| c.reference == in_doubt)
            .count(),
        0
    );

    // alpha recovers: the in-doubt payment is settled there, and after the cool-down new
    // payments go to alpha again with the breaker closed.
    alpha_up.store(true, Ordering::SeqCst);
    assert!(wait_results(
        &rig,
        &mut results,
        std::slice::from_ref(&in_doubt),
        Duration::from_secs(60)
    ));
    let r = result_of(&rig, &results, &in_doubt);
    assert_eq!(r["outcome"], "succeeded");
    assert_eq!(r["psp"], "alpha");
    assert_eq!(rig.alpha.charge_count_for_reference(&in_doubt), 1);
    assert_eq!(
        rig.beta
            .charges()
            .iter()
            .filter(|c| c.reference == in_doubt)
            .count(),
        0
    );

    tokio::time::sleep(Duration::from_millis(1600)).await;
    let after = produce(&producer, &m, "pm_card_visa").await;
    assert!(wait_results(
        &rig,
        &mut results,
        std::slice::from_ref(&after),
        Duration::from_secs(30)
    ));
    assert_eq!(result_of(&rig, &results, &after)["psp"], "alpha");
    assert_eq!(rig.metric(ALPHA_STATE).await, 0.0, "closed again");
    assert!(
        rig.metric("psp_gateway_breaker_transitions_total{psp=\"alpha\",state=\"open\"}")
            .await
            >= 1.0
    );
    assert!(
        rig.metric("psp_gateway_breaker_transitions_total{psp=\"alpha\",state=\"closed\"}")
            .await
            >= 2.0,
        "closed at start and again after recovery"
    );
    rig.shutdown.cancel();
}
