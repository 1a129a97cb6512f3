//! The comparison itself: pure, so that every discrepancy kind is unit-tested without a fleet.

pub mod ports;

use paystream_domain::Discrepancy;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expectation {
    pub expected_status: String,
    pub amount: Option<i64>,
    pub psp: Option<String>,
    pub charge_id: Option<String>,
    pub amount_captured: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderFacts {
    pub status: String,
    pub amount: i64,
    pub amount_captured: i64,
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
        }
    }

    fn clean() -> Observed {
        Observed {
            order: Some(OrderFacts {
                status: "succeeded".into(),
                amount: 1000,
                amount_captured: 1000,
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
}
