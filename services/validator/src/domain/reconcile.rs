//! The periodic reconciliation's rules: the ledger as a whole, and each PSP's settlement report
//! against the order store and the ledger. Pure, so each finding is unit-tested without a fleet.
//!
//! A finding has a stable fingerprint: a problem that persists over many runs is reported once.

use std::collections::{BTreeMap, BTreeSet};

use chrono::NaiveDate;
use paystream_domain::PaymentId;

/// The kind of a captured order whose charge no settlement report lists.
pub const SETTLEMENT_MISSING_CHARGE: &str = "settlement_missing_charge";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub kind: String,
    /// `None` for findings about the ledger as a whole or a charge no payment owns.
    pub payment_id: Option<PaymentId>,
    /// Same problem, same fingerprint, however many runs see it.
    pub fingerprint: String,
    pub message: String,
}

impl Finding {
    fn new(kind: &str, payment_id: Option<PaymentId>, key: &str, message: String) -> Self {
        Self {
            kind: kind.to_owned(),
            payment_id,
            fingerprint: format!("{kind}:{key}"),
            message,
        }
    }
}

/// Debits and credits of one currency over every entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrencyTotals {
    pub currency: String,
    pub debits: i64,
    pub credits: i64,
}

/// An account's running totals beside the sums of its entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountTotals {
    pub account: String,
    pub currency: String,
    pub debits: i64,
    pub credits: i64,
    pub entry_debits: i64,
    pub entry_credits: i64,
}

/// A transfer whose entries do not balance, or are not all in the transfer's currency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokenTransfer {
    pub transfer_id: String,
    pub payment_id: PaymentId,
    pub debits: i64,
    pub credits: i64,
    pub mixed_currencies: bool,
}

/// The ledger as read in one snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LedgerSnapshot {
    pub currencies: Vec<CurrencyTotals>,
    pub accounts: Vec<AccountTotals>,
    pub broken_transfers: Vec<BrokenTransfer>,
}

fn is_merchant_payable(account: &str) -> bool {
    account.starts_with("merchant:") && account.ends_with(":payable")
}

/// Sum of debits = sum of credits per currency, every account's totals = the sums of its
/// entries, every transfer balanced, and no merchant payable below zero unless allowed.
pub fn ledger_findings(ledger: &LedgerSnapshot, allow_negative_payable: bool) -> Vec<Finding> {
    let mut out = Vec::new();
    for c in &ledger.currencies {
        if c.debits != c.credits {
            out.push(Finding::new(
                "ledger_unbalanced",
                None,
                &c.currency,
                format!(
                    "the ledger's {} entries debit {} but credit {}",
                    c.currency, c.debits, c.credits
                ),
            ));
        }
    }
    for a in &ledger.accounts {
        if a.debits != a.entry_debits || a.credits != a.entry_credits {
            out.push(Finding::new(
                "account_total_mismatch",
                None,
                &format!("{}:{}", a.account, a.currency),
                format!(
                    "{} {} holds debits {} / credits {} but its entries sum to {} / {}",
                    a.account, a.currency, a.debits, a.credits, a.entry_debits, a.entry_credits
                ),
            ));
        }
        if !allow_negative_payable && is_merchant_payable(&a.account) && a.credits < a.debits {
            out.push(Finding::new(
                "negative_payable",
                None,
                &format!("{}:{}", a.account, a.currency),
                format!(
                    "{} {} is negative: {}",
                    a.account,
                    a.currency,
                    i128::from(a.credits) - i128::from(a.debits)
                ),
            ));
        }
    }
    for t in &ledger.broken_transfers {
        let message = if t.mixed_currencies {
            format!(
                "transfer {} has entries in another currency than its own",
                t.transfer_id
            )
        } else {
            format!(
                "transfer {} debits {} but credits {}",
                t.transfer_id, t.debits, t.credits
            )
        };
        out.push(Finding::new(
            "unbalanced_transfer",
            Some(t.payment_id),
            &t.transfer_id,
            message,
        ));
    }
    out
}

/// One line of a PSP's settlement report (`GET /v1/settlements?date=`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettlementLine {
    pub psp: String,
    pub date: NaiveDate,
    pub charge: String,
    pub reference: String,
    pub currency: String,
    pub captured: i64,
    pub refunded: i64,
}

/// What the order store and the ledger hold for a payment a settlement line names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Books {
    pub order: Option<OrderBook>,
    pub ledger_captured: i64,
    pub ledger_refunded: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderBook {
    pub psp: Option<String>,
    pub charge_id: Option<String>,
    pub currency: String,
    pub amount_captured: i64,
    pub amount_refunded: i64,
}

/// An order that captured money at a PSP and must therefore appear in its settlement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturedOrder {
    pub payment_id: PaymentId,
    pub psp: String,
    pub charge_id: Option<String>,
    pub amount_captured: i64,
}

/// The settlement lines against the books, and the captured orders against the lines.
///
/// `books` holds every payment a line references (absent: the order store does not know it);
/// `captured` the orders old enough to be settled, from PSPs whose reports were all read.
pub fn settlement_findings(
    lines: &[SettlementLine],
    books: &BTreeMap<PaymentId, Books>,
    captured: &[CapturedOrder],
) -> Vec<Finding> {
    let mut out = Vec::new();
    for line in lines {
        let key = format!("{}:{}", line.psp, line.charge);
        let Ok(payment_id) = PaymentId::parse(&line.reference) else {
            out.push(Finding::new(
                "settlement_unknown_reference",
                None,
                &key,
                format!(
                    "{} settled charge {} ({} {}) for reference {:?}, which is not a payment id",
                    line.psp, line.charge, line.captured, line.currency, line.reference
                ),
            ));
            continue;
        };
        let pid = Some(payment_id);
        let order = books.get(&payment_id).and_then(|b| b.order.as_ref());
        let Some(order) = order else {
            out.push(Finding::new(
                "settlement_unknown_payment",
                pid,
                &key,
                format!(
                    "{} settled charge {} ({} {}) for a payment the order store does not know",
                    line.psp, line.charge, line.captured, line.currency
                ),
            ));
            continue;
        };
        let same_charge = order.psp.as_deref() == Some(line.psp.as_str())
            && order.charge_id.as_deref() == Some(line.charge.as_str());
        if !same_charge {
            out.push(Finding::new(
                "settlement_charge_mismatch",
                pid,
                &key,
                format!(
                    "{} settled charge {} ({} {}) but the order names charge {} at {}",
                    line.psp,
                    line.charge,
                    line.captured,
                    line.currency,
                    order.charge_id.as_deref().unwrap_or("none"),
                    order.psp.as_deref().unwrap_or("no PSP")
                ),
            ));
            continue;
        }
        if order.currency != line.currency || order.amount_captured != line.captured {
            out.push(Finding::new(
                "settlement_amount_mismatch",
                pid,
                &key,
                format!(
                    "{} settled {} {} captured on charge {} but the order captured {} {}",
                    line.psp,
                    line.captured,
                    line.currency,
                    line.charge,
                    order.amount_captured,
                    order.currency
                ),
            ));
        }
        if order.amount_refunded != line.refunded {
            out.push(Finding::new(
                "settlement_refund_mismatch",
                pid,
                &key,
                format!(
                    "{} settled {} refunded on charge {} but the order shows {} refunded",
                    line.psp, line.refunded, line.charge, order.amount_refunded
                ),
            ));
        }
        let ledger = books.get(&payment_id);
        let (ledger_captured, ledger_refunded) = ledger
            .map(|b| (b.ledger_captured, b.ledger_refunded))
            .unwrap_or_default();
        if ledger_captured != line.captured || ledger_refunded != line.refunded {
            out.push(Finding::new(
                "settlement_ledger_mismatch",
                pid,
                &key,
                format!(
                    "{} settled {} captured and {} refunded on charge {} but the ledger posted {} captured and {} refunded",
                    line.psp,
                    line.captured,
                    line.refunded,
                    line.charge,
                    ledger_captured,
                    ledger_refunded
                ),
            ));
        }
    }

    let settled: BTreeSet<(&str, &str)> = lines
        .iter()
        .map(|l| (l.psp.as_str(), l.charge.as_str()))
        .collect();
    for order in captured {
        let charge = order.charge_id.as_deref().unwrap_or("");
        if !settled.contains(&(order.psp.as_str(), charge)) {
            out.push(Finding::new(
                SETTLEMENT_MISSING_CHARGE,
                Some(order.payment_id),
                &format!("{}:{}", order.psp, charge),
                format!(
                    "the order captured {} at {} (charge {}) but {}'s settlement has no such charge",
                    order.amount_captured,
                    order.psp,
                    order.charge_id.as_deref().unwrap_or("none"),
                    order.psp
                ),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(findings: &[Finding]) -> Vec<&str> {
        findings.iter().map(|f| f.kind.as_str()).collect()
    }

    #[test]
    fn a_consistent_ledger_has_no_finding() {
        let ledger = LedgerSnapshot {
            currencies: vec![CurrencyTotals {
                currency: "EUR".into(),
                debits: 100,
                credits: 100,
            }],
            accounts: vec![AccountTotals {
                account: "merchant:m_1:payable".into(),
                currency: "EUR".into(),
                debits: 0,
                credits: 97,
                entry_debits: 0,
                entry_credits: 97,
            }],
            broken_transfers: vec![],
        };
        assert!(ledger_findings(&ledger, false).is_empty());
    }

    #[test]
    fn each_ledger_fault_is_named() {
        let id = PaymentId::new();
        let ledger = LedgerSnapshot {
            currencies: vec![CurrencyTotals {
                currency: "EUR".into(),
                debits: 100,
                credits: 90,
            }],
            accounts: vec![AccountTotals {
                account: "merchant:m_1:payable".into(),
                currency: "EUR".into(),
                debits: 50,
                credits: 40,
                entry_debits: 50,
                entry_credits: 30,
            }],
            broken_transfers: vec![BrokenTransfer {
                transfer_id: "tr_x".into(),
                payment_id: id,
                debits: 100,
                credits: 90,
                mixed_currencies: false,
            }],
        };
        let found = ledger_findings(&ledger, false);
        assert_eq!(
            kinds(&found),
            [
                "ledger_unbalanced",
                "account_total_mismatch",
                "negative_payable",
                "unbalanced_transfer"
            ]
        );
        assert_eq!(found[0].payment_id, None);
        assert_eq!(found[3].payment_id, Some(id));
        assert_eq!(found[0].fingerprint, "ledger_unbalanced:EUR");
        assert!(
            !kinds(&ledger_findings(&ledger, true)).contains(&"negative_payable"),
            "allowed by configuration"
        );
    }

    fn line(reference: &str, charge: &str, captured: i64, refunded: i64) -> SettlementLine {
        SettlementLine {
            psp: "alpha".into(),
            date: NaiveDate::from_ymd_opt(2025, 1, 1).unwrap_or_default(),
            charge: charge.into(),
            reference: reference.into(),
            currency: "EUR".into(),
            captured,
            refunded,
        }
    }

    fn books(captured: i64, refunded: i64) -> Books {
        Books {
            order: Some(OrderBook {
                psp: Some("alpha".into()),
                charge_id: Some("ch_1".into()),
                currency: "EUR".into(),
                amount_captured: captured,
                amount_refunded: refunded,
            }),
            ledger_captured: captured,
            ledger_refunded: refunded,
        }
    }

    #[test]
    fn settlement_lines_that_match_the_books_are_clean() {
        let id = PaymentId::new();
        let lines = [line(&id.to_string(), "ch_1", 1_000, 300)];
        let b = BTreeMap::from([(id, books(1_000, 300))]);
        let captured = [CapturedOrder {
            payment_id: id,
            psp: "alpha".into(),
            charge_id: Some("ch_1".into()),
            amount_captured: 1_000,
        }];
        assert!(settlement_findings(&lines, &b, &captured).is_empty());
    }

    #[test]
    fn each_settlement_fault_is_named() {
        let id = PaymentId::new();
        let pid = id.to_string();
        let b = BTreeMap::from([(id, books(1_000, 0))]);
        let cases: Vec<(Vec<SettlementLine>, BTreeMap<PaymentId, Books>, &str)> = vec![
            (
                vec![line("order_42", "ch_9", 5, 0)],
                b.clone(),
                "settlement_unknown_reference",
            ),
            (
                vec![line(&PaymentId::new().to_string(), "ch_9", 5, 0)],
                b.clone(),
                "settlement_unknown_payment",
            ),
            (
                vec![line(&pid, "ch_2", 1_000, 0)],
                b.clone(),
                "settlement_charge_mismatch",
            ),
            (
                vec![line(&pid, "ch_1", 1_000, 100)],
                BTreeMap::from([(
                    id,
                    Books {
                        ledger_refunded: 100,
                        ..books(1_000, 0)
                    },
                )]),
                "settlement_refund_mismatch",
            ),
            (
                vec![line(&pid, "ch_1", 1_000, 0)],
                BTreeMap::from([(
                    id,
                    Books {
                        ledger_captured: 0,
                        ..books(1_000, 0)
                    },
                )]),
                "settlement_ledger_mismatch",
            ),
        ];
        for (lines, books, kind) in cases {
            assert_eq!(kinds(&settlement_findings(&lines, &books, &[])), [kind]);
        }
        let mut wrong_amount = books(900, 0);
        wrong_amount.ledger_captured = 1_000;
        let found = settlement_findings(
            &[line(&pid, "ch_1", 1_000, 0)],
            &BTreeMap::from([(id, wrong_amount)]),
            &[],
        );
        assert_eq!(kinds(&found), ["settlement_amount_mismatch"]);

        let missing = settlement_findings(
            &[],
            &BTreeMap::new(),
            &[CapturedOrder {
                payment_id: id,
                psp: "alpha".into(),
                charge_id: Some("ch_1".into()),
                amount_captured: 1_000,
            }],
        );
        assert_eq!(kinds(&missing), ["settlement_missing_charge"]);
        assert_eq!(
            missing[0].fingerprint,
            "settlement_missing_charge:alpha:ch_1"
        );
    }
}
