//! The comparison itself: pure, so that every discrepancy kind is unit-tested without a fleet.

pub mod ports;
pub mod reconcile;

use paystream_domain::{Discrepancy, PaymentStatus};

/// What the events say must be true of a payment once it settles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expectation {
    pub expected_status: String,
    pub amount: Option<i64>,
    pub psp: Option<String>,
    pub charge_id: Option<String>,
    pub amount_captured: i64,
    /// Sum of the refunds announced by `payment.refunded`, once per refund id.
    pub amount_refunded: i64,
    pub refund_count: i64,
}

/// Whether an outcome event moves the expected status: only forward along the order state
/// machine (or a repeat of the same status), so that an outcome that arrives late (the
/// authorisation after its capture) cannot move the expectation back.
pub fn advances(current: &str, reported: PaymentStatus) -> bool {
    match PaymentStatus::parse(current) {
        Some(current) => current == reported || current.can_become(reported),
        None => true,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderFacts {
    pub status: String,
    pub amount: i64,
    pub amount_captured: i64,
    pub amount_refunded: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferFacts {
    pub transfer_id: String,
    pub kind: String,
    pub debits: i64,
    pub credits: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PspCharge {
    pub psp: String,
    pub id: String,
    pub status: String,
    pub amount: i64,
    pub amount_captured: i64,
    pub amount_refunded: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    pub order: Option<OrderFacts>,
    pub transfers: Vec<TransferFacts>,
    pub charges: Vec<PspCharge>,
}

fn d(kind: &str, message: String) -> Discrepancy {
    Discrepancy {
        kind: kind.to_owned(),
        message,
    }
}

/// Every difference between what the events say must exist and what does.
pub fn compare(exp: &Expectation, obs: &Observed) -> Vec<Discrepancy> {
    let mut out = Vec::new();
    match &obs.order {
        None => out.push(d(
            "missing_order",
            "the order store has no row for this payment".into(),
        )),
        Some(order) => {
            if order.status != exp.expected_status {
                out.push(d(
                    "order_state_mismatch",
                    format!(
                        "order is {} but the events say {}",
                        order.status, exp.expected_status
                    ),
                ));
            }
            if let Some(amount) = exp.amount
                && order.amount != amount
            {
                out.push(d(
                    "amount_mismatch",
                    format!(
                        "order amount {} differs from the requested {amount}",
                        order.amount
                    ),
                ));
            }
            if exp.expected_status == "succeeded"
                && order.status == "succeeded"
                && order.amount_captured != exp.amount_captured
            {
                out.push(d(
                    "amount_mismatch",
                    format!(
                        "order captured {} but the PSP captured {}",
                        order.amount_captured, exp.amount_captured
                    ),
                ));
            }
            if order.amount_refunded != exp.amount_refunded {
                out.push(d(
                    "refund_mismatch",
                    format!(
                        "order shows {} refunded but the refunds total {} ({} refund(s))",
                        order.amount_refunded, exp.amount_refunded, exp.refund_count
                    ),
                ));
            }
        }
    }

    let captures: Vec<&TransferFacts> = obs
        .transfers
        .iter()
        .filter(|t| t.kind == "capture")
        .collect();
    for t in &obs.transfers {
        if t.debits != t.credits {
            out.push(d(
                "unbalanced_transfer",
                format!(
                    "transfer {} debits {} but credits {}",
                    t.transfer_id, t.debits, t.credits
                ),
            ));
        }
    }
    let captured = exp.expected_status == "succeeded";
    match (captured, captures.as_slice()) {
        (true, []) => out.push(d(
            "missing_ledger_transfer",
            format!(
                "payment captured {} but no capture transfer was posted",
                exp.amount_captured
            ),
        )),
        (true, [one]) if one.debits != exp.amount_captured => out.push(d(
            "amount_mismatch",
            format!(
                "capture transfer moves {} but the PSP captured {}",
                one.debits, exp.amount_captured
            ),
        )),
        (true, [_]) => {}
        (true, many) => out.push(d(
            "duplicate_ledger_transfer",
            format!("{} capture transfers for one capture", many.len()),
        )),
        (false, []) => {}
        (false, _) => out.push(d(
            "unexpected_ledger_transfer",
            format!(
                "a capture transfer exists but the payment is {}",
                exp.expected_status
            ),
        )),
    }
    compare_refund_transfers(exp, &obs.transfers, &mut out);

    let live: Vec<&PspCharge> = obs
        .charges
        .iter()
        .filter(|c| matches!(c.status.as_str(), "succeeded" | "requires_capture"))
        .collect();
    let charged = matches!(
        exp.expected_status.as_str(),
        "succeeded" | "requires_capture"
    );
    match (charged, live.as_slice()) {
        (true, []) => out.push(d(
            "missing_psp_charge",
            format!(
                "the payment is {} but no PSP holds a charge for it",
                exp.expected_status
            ),
        )),
        (true, [one]) => {
            if exp.charge_id.as_deref().is_some_and(|id| id != one.id) {
                out.push(d(
                    "charge_id_mismatch",
                    format!(
                        "the events name charge {:?} but {} holds {}",
                        exp.charge_id, one.psp, one.id
                    ),
                ));
            }
            if exp.amount.is_some_and(|a| a != one.amount) {
                out.push(d(
                    "amount_mismatch",
                    format!(
                        "{} charged {} but the payment is for {:?}",
                        one.psp, one.amount, exp.amount
                    ),
                ));
            }
            if exp.expected_status == "succeeded" && one.amount_captured != exp.amount_captured {
                out.push(d(
                    "amount_mismatch",
                    format!(
                        "{} captured {} but the events say {}",
                        one.psp, one.amount_captured, exp.amount_captured
                    ),
                ));
            }
            if one.amount_refunded != exp.amount_refunded {
                out.push(d(
                    "refund_mismatch",
                    format!(
                        "{} refunded {} of charge {} but the refunds total {}",
                        one.psp, one.amount_refunded, one.id, exp.amount_refunded
                    ),
                ));
            }
        }
        (true, many) => out.push(d(
            "duplicate_psp_charge",
            format!(
                "{} live charges for one payment: {}",
                many.len(),
                many.iter()
                    .map(|c| format!("{}@{}", c.id, c.psp))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
        (false, []) => {}
        (false, some) => out.push(d(
            "unexpected_psp_charge",
            format!(
                "the payment is {} but {} live charge(s) exist: {}",
                exp.expected_status,
                some.len(),
                some.iter()
                    .map(|c| format!("{}@{}", c.id, c.psp))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
    out
}

/// One transfer per refund, together moving exactly the refunded total.
fn compare_refund_transfers(
    exp: &Expectation,
    transfers: &[TransferFacts],
    out: &mut Vec<Discrepancy>,
) {
    let refunds: Vec<&TransferFacts> = transfers.iter().filter(|t| t.kind == "refund").collect();
    let moved: i64 = refunds.iter().map(|t| t.debits).sum();
    let count = i64::try_from(refunds.len()).unwrap_or(i64::MAX);
    if exp.amount_refunded > 0 && refunds.is_empty() {
        out.push(d(
            "missing_ledger_transfer",
            format!(
                "{} refund(s) of {} in total but no refund transfer was posted",
                exp.refund_count, exp.amount_refunded
            ),
        ));
    } else if moved != exp.amount_refunded || count != exp.refund_count {
        out.push(d(
            "refund_mismatch",
            format!(
                "{count} refund transfer(s) move {moved} but the events announce {} refund(s) of {} in total",
                exp.refund_count, exp.amount_refunded
            ),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exp() -> Expectation {
        Expectation {
            expected_status: "succeeded".into(),
            amount: Some(1000),
            psp: Some("alpha".into()),
            charge_id: Some("ch_1".into()),
            amount_captured: 1000,
            amount_refunded: 0,
            refund_count: 0,
        }
    }

    fn clean() -> Observed {
        Observed {
            order: Some(OrderFacts {
                status: "succeeded".into(),
                amount: 1000,
                amount_captured: 1000,
                amount_refunded: 0,
            }),
            transfers: vec![TransferFacts {
                transfer_id: "t".into(),
                kind: "capture".into(),
                debits: 1000,
                credits: 1000,
            }],
            charges: vec![PspCharge {
                psp: "alpha".into(),
                id: "ch_1".into(),
                status: "succeeded".into(),
                amount: 1000,
                amount_captured: 1000,
                amount_refunded: 0,
            }],
        }
    }

    fn kinds(obs: &Observed) -> Vec<String> {
        compare(&exp(), obs).into_iter().map(|d| d.kind).collect()
    }

    #[test]
    fn a_clean_payment_has_no_discrepancy() {
        assert!(kinds(&clean()).is_empty());
    }

    #[test]
    fn each_planted_fault_is_named() {
        let mut o = clean();
        o.transfers.clear();
        assert_eq!(kinds(&o), ["missing_ledger_transfer"]);

        let mut o = clean();
        o.charges.push(PspCharge {
            psp: "beta".into(),
            id: "ch_2".into(),
            status: "succeeded".into(),
            amount: 1000,
            amount_captured: 1000,
            amount_refunded: 0,
        });
        assert_eq!(kinds(&o), ["duplicate_psp_charge"]);

        let mut o = clean();
        o.charges.clear();
        assert_eq!(kinds(&o), ["missing_psp_charge"]);

        let mut o = clean();
        o.transfers[0].debits = 900;
        o.transfers[0].credits = 900;
        assert_eq!(kinds(&o), ["amount_mismatch"]);

        let mut o = clean();
        o.order = None;
        assert_eq!(kinds(&o), ["missing_order"]);
    }

    fn refunded(amounts: &[i64]) -> (Expectation, Observed) {
        let total: i64 = amounts.iter().sum();
        let mut e = exp();
        e.amount_refunded = total;
        e.refund_count = amounts.len() as i64;
        let mut o = clean();
        if let Some(order) = o.order.as_mut() {
            order.amount_refunded = total;
        }
        o.charges[0].amount_refunded = total;
        for (i, a) in amounts.iter().enumerate() {
            o.transfers.push(TransferFacts {
                transfer_id: format!("r{i}"),
                kind: "refund".into(),
                debits: *a,
                credits: *a,
            });
        }
        (e, o)
    }

    fn kinds_of(e: &Expectation, o: &Observed) -> Vec<String> {
        compare(e, o).into_iter().map(|d| d.kind).collect()
    }

    #[test]
    fn refunds_must_agree_in_the_order_the_ledger_and_the_psp() {
        let (e, o) = refunded(&[300, 200]);
        assert!(kinds_of(&e, &o).is_empty());

        let (e, mut o) = refunded(&[300, 200]);
        o.transfers.pop();
        assert_eq!(kinds_of(&e, &o), ["refund_mismatch"]);

        let (e, mut o) = refunded(&[300]);
        o.transfers.retain(|t| t.kind != "refund");
        assert_eq!(kinds_of(&e, &o), ["missing_ledger_transfer"]);

        let (e, mut o) = refunded(&[300]);
        o.charges[0].amount_refunded = 0;
        assert_eq!(kinds_of(&e, &o), ["refund_mismatch"]);

        let (e, mut o) = refunded(&[300]);
        if let Some(order) = o.order.as_mut() {
            order.amount_refunded = 600;
        }
        assert_eq!(kinds_of(&e, &o), ["refund_mismatch"]);
    }

    #[test]
    fn a_captured_amount_that_differs_anywhere_is_a_mismatch() {
        let mut o = clean();
        o.charges[0].amount_captured = 800;
        assert_eq!(kinds(&o), ["amount_mismatch"]);
        let mut o = clean();
        if let Some(order) = o.order.as_mut() {
            order.amount_captured = 800;
        }
        assert_eq!(kinds(&o), ["amount_mismatch"]);
    }

    #[test]
    fn a_late_outcome_cannot_move_the_expectation_back() {
        assert!(advances("processing", PaymentStatus::RequiresCapture));
        assert!(advances("requires_capture", PaymentStatus::Succeeded));
        assert!(advances("succeeded", PaymentStatus::Succeeded));
        assert!(!advances("succeeded", PaymentStatus::RequiresCapture));
        assert!(!advances("canceled", PaymentStatus::Succeeded));
    }
}
