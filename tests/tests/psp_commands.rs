//! Captures, cancels and refunds from `payments.commands`: each reaches the PSP once even when
//! the command record is delivered twice (the same record again, or the same command under a
//! new event id) and the PSP loses answers; a command the PSP refuses becomes
//! `payment.command_failed`.

mod psp_support;

use std::collections::HashSet;
use std::time::Duration;

use paystream_domain::{
    Amount, CancelRequested, CaptureMode, CaptureRequested, Currency, MerchantId, PaymentId,
    RefundRequested, topics,
};
use psp_sim::Faults;
use psp_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_reach_the_psp_exactly_once_even_when_delivered_twice() {
    let rig = start_rig(RigOptions {
        tune: Box::new(|c| {
            c.call_timeout = Duration::from_millis(150);
            c.resolve_backoff = Duration::from_millis(20);
            c.route = vec!["alpha".to_owned(), "beta".to_owned()];
        }),
        ..RigOptions::default()
    })
    .await;
    let mut results = TopicReader::at_end(topics::PAYMENTS_PSP_RESULTS);
    let producer = producer();
    let merchant = format!("m_{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let m = MerchantId::parse(&merchant).expect("merchant");

    // Charges first, with a healthy PSP: two authorisations and one captured payment per kind.
    let n = 6;
    let mut to_capture = Vec::new();
    let mut to_cancel = Vec::new();
    let mut to_refund = Vec::new();
    for i in 0..n * 3 {
        let id = PaymentId::new();
        let mode = if i % 3 == 2 {
            CaptureMode::Automatic
        } else {
            CaptureMode::Manual
        };
        let req = requested(&merchant, "cus_1", 10_000, "EUR", "pm_card_visa", mode);
        send(&producer, &record(id, approved(req))).await;
        match i % 3 {
            0 => to_capture.push(id),
            1 => to_cancel.push(id),
            _ => to_refund.push(id),
        }
    }
    let all: HashSet<String> = to_capture
        .iter()
        .chain(&to_cancel)
        .chain(&to_refund)
        .map(|p| p.to_string())
        .collect();
    let w = all.clone();
    let count = |seen: &[Seen], t: &str| {
        let ours = rig.charge_ids();
        seen.iter()
            .filter(|s| s.event_type == t && rig.owns(&ours, s))
            .map(|s| s.payment_id.clone())
            .collect::<HashSet<_>>()
            .len()
    };
    assert!(results.wait_until(
        Duration::from_secs(60),
        &move |p| w.contains(p),
        &|seen| count(seen, "payment.psp_result") >= all.len()
    ));

    // Now alpha loses answers: 30 % hang past the timeout, 20 % answer 500 after doing the work.
    rig.alpha.set_faults(Faults {
        timeout_rate: 0.3,
        ambiguous_rate: 0.2,
        hang_ms: 400,
        ..Faults::default()
    });
    for id in &to_capture {
        let cmd = CaptureRequested {
            merchant_id: m.clone(),
            command_id: format!("cmd_cap_{}", uuid::Uuid::new_v4().simple()),
            amount: Some(Amount::new(7_500).expect("amount")),
        };
        let r = record(*id, cmd.clone());
        send(&producer, &r).await; // the record...
        send(&producer, &r).await; // ...delivered twice
        send(&producer, &record(*id, cmd)).await; // and the same command under a new event id
    }
    for id in &to_cancel {
        let cmd = CancelRequested {
            merchant_id: m.clone(),
            command_id: format!("cmd_can_{}", uuid::Uuid::new_v4().simple()),
        };
        let r = record(*id, cmd.clone());
        send(&producer, &r).await;
        send(&producer, &r).await;
        send(&producer, &record(*id, cmd)).await;
    }
    for id in &to_refund {
        let cmd = RefundRequested {
            merchant_id: m.clone(),
            refund_id: format!("re_{}", uuid::Uuid::new_v4().simple()),
            amount: Amount::new(2_500).expect("amount"),
            currency: Currency::parse("EUR").expect("currency"),
        };
        let r = record(*id, cmd.clone());
        send(&producer, &r).await;
        send(&producer, &r).await;
        send(&producer, &record(*id, cmd)).await;
    }
    let w = all.clone();
    let n_cap = to_capture.len();
    let n_can = to_cancel.len();
    let n_ref = to_refund.len();
    assert!(
        results.wait_until(
            Duration::from_secs(90),
            &move |p| w.contains(p),
            &|seen| count(seen, "payment.captured") >= n_cap
                && count(seen, "payment.canceled") >= n_can
                && count(seen, "payment.refunded") >= n_ref
        ),
        "not every command settled: {:?}",
        results
            .seen
            .iter()
            .map(|s| &s.event_type)
            .collect::<Vec<_>>()
    );
    let w = all.clone();
    results.poll(Duration::from_secs(3), &move |p| w.contains(p));

    let charge_of = |id: &PaymentId| {
        rig.alpha
            .charges()
            .into_iter()
            .find(|c| c.reference == id.to_string())
            .expect("the payment's charge at alpha")
    };
    let ours = rig.charge_ids();
    let captured = results.by_payment_where("payment.captured", &|s| rig.owns(&ours, s));
    for id in &to_capture {
        let events = &captured[&id.to_string()];
        assert_eq!(events.len(), 1, "one capture published for {id}");
        assert_eq!(events[0].data["amount_captured"], 7_500);
        let c = charge_of(id);
        assert_eq!(c.status.as_str(), "succeeded");
        assert_eq!(c.amount_captured, 7_500);
    }
    let canceled = results.by_payment_where("payment.canceled", &|s| rig.owns(&ours, s));
    for id in &to_cancel {
        assert_eq!(
            canceled[&id.to_string()].len(),
            1,
            "one cancel published for {id}"
        );
        assert_eq!(charge_of(id).status.as_str(), "canceled");
    }
    let refunded = results.by_payment_where("payment.refunded", &|s| rig.owns(&ours, s));
    let refunds = rig.alpha.refunds();
    for id in &to_refund {
        let events = &refunded[&id.to_string()];
        assert_eq!(events.len(), 1, "one refund published for {id}");
        let c = charge_of(id);
        let at_psp: Vec<_> = refunds.iter().filter(|r| r.charge == c.id).collect();
        assert_eq!(at_psp.len(), 1, "refunded once at the PSP: {at_psp:?}");
        assert_eq!(at_psp[0].amount, 2_500);
        assert_eq!(events[0].data["psp_refund_id"], at_psp[0].id.as_str());
        assert_eq!(c.amount_refunded, 2_500);
    }

    // A capture of a canceled payment is refused for good.
    rig.alpha.set_faults(Faults::default());
    let late = CaptureRequested {
        merchant_id: m.clone(),
        command_id: "cmd_too_late".to_owned(),
        amount: None,
    };
    let target = to_cancel[0];
    send(&producer, &record(target, late)).await;
    let t = target.to_string();
    let t2 = t.clone();
    assert!(
        results.wait_until(Duration::from_secs(30), &move |p| p == t2, &|seen| {
            seen.iter()
                .any(|s| s.event_type == "payment.command_failed")
        })
    );
    let failed = results.by_payment("payment.command_failed");
    assert!(
        failed[&t].iter().any(|f| f.data["command"] == "capture"
            && f.data["command_id"] == "cmd_too_late"
            && f.data["code"] == "charge_not_capturable"),
        "{:?}",
        failed[&t]
    );
    rig.shutdown.cancel();
}
