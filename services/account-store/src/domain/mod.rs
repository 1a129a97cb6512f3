//! Ledger rules: which entries a capture posts, the fee, and the invariants every transfer and
//! account keeps. Pure functions; the adapters only store what these return.

use std::collections::BTreeMap;

use paystream_domain::{
    LedgerPosting, MerchantId, PaymentId, PostingEntry, PspOutcome, PspResult, Side, TransferKind,
};

pub const PLATFORM_FEES: &str = "platform:fees";
/// The `transfers.step` of a payment's capture: one capture transfer per payment, ever.
pub const CAPTURE_STEP: &str = "capture";

const BPS_PER_UNIT: i128 = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    #[error("a fee rate of {0} bps is above 10000 (100 %)")]
    FeeRate(u32),
    #[error("a fixed fee of {0} is negative")]
    FixedFee(i64),
    #[error("PSP name {0:?} cannot name a ledger account (1-64 letters, digits, _ - .)")]
    PspName(String),
    #[error("captured amount {captured} is outside 0..={authorised}")]
    CapturedAmount { captured: i64, authorised: i64 },
    #[error("transfer {0} does not balance")]
    Unbalanced(String),
    #[error("{account} would go negative ({balance})")]
    NegativePayable { account: String, balance: i64 },
    #[error("the totals of {0} would overflow")]
    Overflow(String),
}

/// What the platform keeps from each capture: `fixed + round_half_up(amount * bps / 10000)`,
/// never more than the amount itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeeSchedule {
    bps: u32,
    fixed: i64,
}

impl Default for FeeSchedule {
    fn default() -> Self {
        Self { bps: 290, fixed: 0 }
    }
}

impl FeeSchedule {
    pub fn new(bps: u32, fixed: i64) -> Result<Self, LedgerError> {
        if i128::from(bps) > BPS_PER_UNIT {
            return Err(LedgerError::FeeRate(bps));
        }
        if fixed < 0 {
            return Err(LedgerError::FixedFee(fixed));
        }
        Ok(Self { bps, fixed })
    }

    pub fn bps(&self) -> u32 {
        self.bps
    }

    pub fn fixed(&self) -> i64 {
        self.fixed
    }

    /// The fee on `amount` minor units. Computed in i128 so no amount the domain accepts can
    /// overflow; half a minor unit rounds up, the usual rule in card pricing.
    pub fn fee(&self, amount: i64) -> i64 {
        if amount <= 0 {
            return 0;
        }
        let amount = i128::from(amount);
        let variable = (amount * i128::from(self.bps) + BPS_PER_UNIT / 2) / BPS_PER_UNIT;
        let fee = (i128::from(self.fixed) + variable).min(amount);
        // fee <= amount, which came from an i64.
        i64::try_from(fee).unwrap_or(i64::MAX)
    }
}

pub fn merchant_payable(merchant: &MerchantId) -> String {
    format!("merchant:{merchant}:payable")
}

pub fn is_merchant_payable(account: &str) -> bool {
    account.starts_with("merchant:") && account.ends_with(":payable")
}

/// The PSP name comes from another service's record; it becomes part of an account name, so
/// it must not be able to forge another account (`:`) or be empty.
pub fn psp_clearing(psp: &str) -> Result<String, LedgerError> {
    let ok = (1..=64).contains(&psp.len())
        && psp
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(format!("psp:{psp}:clearing"))
    } else {
        Err(LedgerError::PspName(psp.to_owned()))
    }
}

/// Deterministic, so that a redelivered or replayed result names the transfer that exists.
pub fn transfer_id(payment_id: PaymentId, step: &str) -> String {
    format!("tr_{}_{step}", payment_id.as_uuid().simple())
}

/// The capture transfer for a PSP result, or `None` when the result moved no money.
///
/// Zero-amount entries are left out (a 0 % fee, or a fee that takes the whole amount): they say
/// nothing, and every entry left is then a real movement.
pub fn capture_posting(
    payment_id: PaymentId,
    result: &PspResult,
    fees: &FeeSchedule,
) -> Result<Option<LedgerPosting>, LedgerError> {
    if result.outcome != PspOutcome::Succeeded || result.amount_captured == 0 {
        return Ok(None);
    }
    let captured = result.amount_captured;
    let authorised = result.amount.minor();
    if !(0..=authorised).contains(&captured) {
        return Err(LedgerError::CapturedAmount {
            captured,
            authorised,
        });
    }
    let fee = fees.fee(captured);
    let entries = [
        (psp_clearing(&result.psp)?, Side::Debit, captured),
        (
            merchant_payable(&result.merchant_id),
            Side::Credit,
            captured - fee,
        ),
        (PLATFORM_FEES.to_owned(), Side::Credit, fee),
    ]
    .into_iter()
    .filter(|(_, _, amount)| *amount > 0)
    .map(|(account, side, amount)| PostingEntry {
        account,
        side,
        amount,
    })
    .collect();
    let posting = LedgerPosting {
        transfer_id: transfer_id(payment_id, CAPTURE_STEP),
        payment_id: payment_id.to_string(),
        kind: TransferKind::Capture,
        currency: result.currency,
        entries,
    };
    ensure_balanced(&posting)?;
    Ok(Some(posting))
}

pub fn ensure_balanced(posting: &LedgerPosting) -> Result<(), LedgerError> {
    if posting.is_balanced() && posting.entries.iter().all(|e| e.amount >= 0) {
        Ok(())
    } else {
        Err(LedgerError::Unbalanced(posting.transfer_id.clone()))
    }
}

/// Running totals of one account in one currency, as stored next to its entries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub debits: i64,
    pub credits: i64,
}

/// A merchant payable is what the platform owes the merchant: credit-normal, and below zero it
/// would mean paying out money never captured. Captures only credit it; refunds will debit it.
pub fn ensure_payable_not_negative(account: &str, totals: Totals) -> Result<(), LedgerError> {
    if !is_merchant_payable(account) {
        return Ok(());
    }
    let balance = i128::from(totals.credits) - i128::from(totals.debits);
    if balance < 0 {
        return Err(LedgerError::NegativePayable {
            account: account.to_owned(),
            balance: i64::try_from(balance).unwrap_or(i64::MIN),
        });
    }
    Ok(())
}

/// The totals of the posting's accounts once it is applied to `current` (the locked rows; an
/// account missing from it starts at zero), or the rule it would break.
pub fn apply_posting(
    current: &BTreeMap<String, Totals>,
    posting: &LedgerPosting,
) -> Result<BTreeMap<String, Totals>, LedgerError> {
    ensure_balanced(posting)?;
    let mut next = BTreeMap::new();
    for entry in &posting.entries {
        let totals = next
            .entry(entry.account.clone())
            .or_insert_with(|| current.get(&entry.account).copied().unwrap_or_default());
        let slot = match entry.side {
            Side::Debit => &mut totals.debits,
            Side::Credit => &mut totals.credits,
        };
        *slot = slot
            .checked_add(entry.amount)
            .ok_or_else(|| LedgerError::Overflow(entry.account.clone()))?;
    }
    for (account, totals) in &next {
        ensure_payable_not_negative(account, *totals)?;
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use paystream_domain::{Amount, Currency};

    fn result(amount: i64, captured: i64) -> PspResult {
        PspResult {
            merchant_id: MerchantId::parse("m_1").unwrap(),
            outcome: PspOutcome::Succeeded,
            psp: "alpha".into(),
            charge_id: Some("ch_1".into()),
            amount: Amount::new(amount).unwrap(),
            currency: Currency::parse("EUR").unwrap(),
            amount_captured: captured,
            decline_code: None,
            message: None,
        }
    }

    fn entry(account: &str, side: Side, amount: i64) -> PostingEntry {
        PostingEntry {
            account: account.into(),
            side,
            amount,
        }
    }

    #[test]
    fn fee_rounds_half_up_adds_the_fixed_part_and_never_exceeds_the_amount() {
        let f = FeeSchedule::default();
        assert_eq!(f.fee(10_000), 290);
        assert_eq!(f.fee(1_250), 36); // 36.25
        assert_eq!(f.fee(50), 1); // 1.45
        assert_eq!(f.fee(1_000_050), 29_001); // 29001.45
        let half = FeeSchedule::new(50, 0).unwrap();
        assert_eq!(half.fee(100), 1); // 0.5 rounds up
        assert_eq!(half.fee(99), 0); // 0.495 rounds down
        let fixed = FeeSchedule::new(290, 30).unwrap();
        assert_eq!(fixed.fee(1_000), 59);
        assert_eq!(fixed.fee(20), 20, "capped at the amount");
        assert_eq!(f.fee(Amount::MAX), 2_900_000_000); // 2_899_999_999.971
        assert_eq!(
            FeeSchedule::new(10_001, 0),
            Err(LedgerError::FeeRate(10_001))
        );
        assert_eq!(FeeSchedule::new(0, -1), Err(LedgerError::FixedFee(-1)));
    }

    #[test]
    fn a_capture_debits_clearing_and_credits_merchant_and_fees() {
        let id = PaymentId::new();
        let posting = capture_posting(id, &result(10_000, 10_000), &FeeSchedule::default())
            .unwrap()
            .unwrap();
        assert_eq!(
            posting.transfer_id,
            format!("tr_{}_capture", id.as_uuid().simple())
        );
        assert_eq!(posting.payment_id, id.to_string());
        assert_eq!(posting.kind, TransferKind::Capture);
        assert_eq!(
            posting.entries,
            vec![
                entry("psp:alpha:clearing", Side::Debit, 10_000),
                entry("merchant:m_1:payable", Side::Credit, 9_710),
                entry("platform:fees", Side::Credit, 290),
            ]
        );
        assert!(posting.is_balanced());
    }

    #[test]
    fn only_captured_money_is_posted() {
        let id = PaymentId::new();
        let fees = FeeSchedule::default();
        let mut auth = result(1_000, 0);
        auth.outcome = PspOutcome::RequiresCapture;
        assert_eq!(capture_posting(id, &auth, &fees), Ok(None));
        let mut declined = result(1_000, 0);
        declined.outcome = PspOutcome::Declined;
        assert_eq!(capture_posting(id, &declined, &fees), Ok(None));
        assert_eq!(capture_posting(id, &result(1_000, 0), &fees), Ok(None));
        assert_eq!(
            capture_posting(id, &result(1_000, 1_001), &fees),
            Err(LedgerError::CapturedAmount {
                captured: 1_001,
                authorised: 1_000
            })
        );
        let partial = capture_posting(id, &result(1_000, 400), &fees)
            .unwrap()
            .unwrap();
        assert_eq!(partial.entries[0].amount, 400);
    }

    #[test]
    fn zero_entries_are_left_out_and_the_transfer_still_balances() {
        let id = PaymentId::new();
        let free = FeeSchedule::new(0, 0).unwrap();
        let posting = capture_posting(id, &result(500, 500), &free)
            .unwrap()
            .unwrap();
        assert_eq!(posting.entries.len(), 2);
        let all = FeeSchedule::new(0, 1_000).unwrap();
        let posting = capture_posting(id, &result(500, 500), &all)
            .unwrap()
            .unwrap();
        assert_eq!(
            posting.entries,
            vec![
                entry("psp:alpha:clearing", Side::Debit, 500),
                entry("platform:fees", Side::Credit, 500),
            ]
        );
    }

    #[test]
    fn a_psp_name_cannot_forge_an_account() {
        let mut bad = result(1_000, 1_000);
        bad.psp = "alpha:clearing:x".into();
        assert!(matches!(
            capture_posting(PaymentId::new(), &bad, &FeeSchedule::default()),
            Err(LedgerError::PspName(_))
        ));
        assert!(psp_clearing("").is_err());
    }

    #[test]
    fn applying_a_posting_adds_to_the_locked_totals() {
        let id = PaymentId::new();
        let posting = capture_posting(id, &result(10_000, 10_000), &FeeSchedule::default())
            .unwrap()
            .unwrap();
        let current = BTreeMap::from([(
            "platform:fees".to_owned(),
            Totals {
                debits: 0,
                credits: 10,
            },
        )]);
        let next = apply_posting(&current, &posting).unwrap();
        assert_eq!(
            next["platform:fees"],
            Totals {
                debits: 0,
                credits: 300
            }
        );
        assert_eq!(
            next["psp:alpha:clearing"],
            Totals {
                debits: 10_000,
                credits: 0
            }
        );
        assert_eq!(
            next["merchant:m_1:payable"],
            Totals {
                debits: 0,
                credits: 9_710
            }
        );
    }

    #[test]
    fn a_merchant_payable_never_goes_negative() {
        let refund = LedgerPosting {
            transfer_id: "tr_x_refund".into(),
            payment_id: PaymentId::new().to_string(),
            kind: TransferKind::Refund,
            currency: Currency::parse("EUR").unwrap(),
            entries: vec![
                entry("merchant:m_1:payable", Side::Debit, 500),
                entry("psp:alpha:clearing", Side::Credit, 500),
            ],
        };
        let enough = BTreeMap::from([(
            "merchant:m_1:payable".to_owned(),
            Totals {
                debits: 0,
                credits: 500,
            },
        )]);
        assert!(apply_posting(&enough, &refund).is_ok());
        let short = BTreeMap::from([(
            "merchant:m_1:payable".to_owned(),
            Totals {
                debits: 100,
                credits: 500,
            },
        )]);
        assert_eq!(
            apply_posting(&short, &refund),
            Err(LedgerError::NegativePayable {
                account: "merchant:m_1:payable".into(),
                balance: -100
            })
        );
        // Clearing accounts are debit-normal and may hold any balance.
        assert!(
            ensure_payable_not_negative(
                "psp:alpha:clearing",
                Totals {
                    debits: 0,
                    credits: 9
                }
            )
            .is_ok()
        );
    }

    #[test]
    fn an_unbalanced_posting_is_refused() {
        let posting = LedgerPosting {
            transfer_id: "tr_bad".into(),
            payment_id: PaymentId::new().to_string(),
            kind: TransferKind::Capture,
            currency: Currency::parse("EUR").unwrap(),
            entries: vec![
                entry("psp:alpha:clearing", Side::Debit, 100),
                entry("platform:fees", Side::Credit, 99),
            ],
        };
        assert_eq!(
            apply_posting(&BTreeMap::new(), &posting),
            Err(LedgerError::Unbalanced("tr_bad".into()))
        );
    }
}
