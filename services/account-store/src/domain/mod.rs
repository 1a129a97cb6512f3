//! Ledger rules: which entries a capture and a refund post, the fee, and the invariants every
//! transfer and account keeps. Pure functions; the adapters only store what these return.

use std::collections::BTreeMap;

use paystream_domain::{
    Currency, LedgerPosting, MerchantId, PaymentCaptured, PaymentId, PaymentRefunded, PostingEntry,
    PspOutcome, PspResult, Side, TransferKind,
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
    #[error(
        "refund {refund_id} of {amount} would bring the refunded total to {total}, above the captured {captured}"
    )]
    RefundExceedsCapture {
        refund_id: String,
        amount: i64,
        total: i64,
        captured: i64,
    },
    #[error("the refund is in {refund} but the capture was in {capture}")]
    CurrencyMismatch { refund: Currency, capture: Currency },
    #[error("the refund moves {refund} but the capture moved {capture}")]
    AccountMismatch { refund: String, capture: String },
    #[error("the capture transfer of this payment has an unexpected shape: {0}")]
    CaptureShape(String),
}

impl LedgerError {
    /// A short label for metrics: a fixed set, never an id.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::FeeRate(_) | Self::FixedFee(_) => "fee_schedule",
            Self::PspName(_) => "psp_name",
            Self::CapturedAmount { .. } => "captured_amount",
            Self::Unbalanced(_) => "unbalanced",
            Self::NegativePayable { .. } => "negative_payable",
            Self::Overflow(_) => "overflow",
            Self::RefundExceedsCapture { .. } => "refund_exceeds_capture",
            Self::CurrencyMismatch { .. } => "currency_mismatch",
            Self::AccountMismatch { .. } => "account_mismatch",
            Self::CaptureShape(_) => "capture_shape",
        }
    }
}

/// Rules that are configuration rather than code.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policy {
    /// `PAYSTREAM_LEDGER_ALLOW_NEGATIVE_PAYABLE`: let a refund take a merchant's payable below
    /// zero (the platform fronts the money and recovers it from later captures). Off by default:
    /// a negative payable means paying out money that was never captured.
    pub allow_negative_payable: bool,
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

/// The `transfers.step` of one refund: one refund transfer per refund id, ever.
pub fn refund_step(refund_id: &str) -> String {
    format!("refund:{refund_id}")
}

/// Deterministic, so that a redelivered or replayed result names the transfer that exists.
/// (`tr_<payment>_capture`, `tr_<payment>_refund_<refund id>`.)
pub fn transfer_id(payment_id: PaymentId, step: &str) -> String {
    format!(
        "tr_{}_{}",
        payment_id.as_uuid().simple(),
        step.replace(':', "_")
    )
}

/// The capture transfer for a PSP result, or `None` when the result moved no money.
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
    let capture = Capture {
        merchant: &result.merchant_id,
        psp: &result.psp,
        currency: result.currency,
        captured,
    };
    capture_entries(payment_id, &capture, fees).map(Some)
}

/// The capture transfer of a manual capture (`payment.captured`): posted exactly like an
/// automatic one, under the same step, so a payment is captured in the ledger at most once
/// whichever way the capture was reported.
pub fn manual_capture_posting(
    payment_id: PaymentId,
    captured: &PaymentCaptured,
    fees: &FeeSchedule,
) -> Result<LedgerPosting, LedgerError> {
    if captured.amount_captured <= 0 {
        return Err(LedgerError::CapturedAmount {
            captured: captured.amount_captured,
            authorised: 0,
        });
    }
    let capture = Capture {
        merchant: &captured.merchant_id,
        psp: &captured.psp,
        currency: captured.currency,
        captured: captured.amount_captured,
    };
    capture_entries(payment_id, &capture, fees)
}

struct Capture<'a> {
    merchant: &'a MerchantId,
    psp: &'a str,
    currency: Currency,
    captured: i64,
}

/// Debit PSP clearing, credit the merchant's payable net of the fee, credit the fee.
///
/// Zero-amount entries are left out (a 0 % fee, or a fee that takes the whole amount): they say
/// nothing, and every entry left is then a real movement.
fn capture_entries(
    payment_id: PaymentId,
    capture: &Capture<'_>,
    fees: &FeeSchedule,
) -> Result<LedgerPosting, LedgerError> {
    let captured = capture.captured;
    let fee = fees.fee(captured);
    let entries = [
        (psp_clearing(capture.psp)?, Side::Debit, captured),
        (
            merchant_payable(capture.merchant),
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
        currency: capture.currency,
        entries,
    };
    ensure_balanced(&posting)?;
    Ok(posting)
}

/// How a payment's capture was split, read back from its stored entries: what a refund reverses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureSplit {
    pub currency: Currency,
    pub clearing: String,
    /// `None` when the fee took the whole amount (no payable entry was posted).
    pub payable: Option<String>,
    pub captured: i64,
    pub fee: i64,
}

impl CaptureSplit {
    /// Reads the split from the capture transfer's entries (account, side, amount).
    pub fn from_entries(
        currency: Currency,
        entries: &[(String, Side, i64)],
    ) -> Result<Self, LedgerError> {
        let shape = |what: &str| LedgerError::CaptureShape(what.to_owned());
        let mut clearing = None;
        let mut payable = None;
        let mut fee = 0;
        for (account, side, amount) in entries {
            match side {
                Side::Debit if account.starts_with("psp:") && clearing.is_none() => {
                    clearing = Some((account.clone(), *amount));
                }
                Side::Credit if is_merchant_payable(account) && payable.is_none() => {
                    payable = Some((account.clone(), *amount));
                }
                Side::Credit if account == PLATFORM_FEES => fee += amount,
                _ => return Err(shape(&format!("an unexpected {side:?} entry on {account}"))),
            }
        }
        let (clearing, captured) = clearing.ok_or_else(|| shape("no PSP clearing debit"))?;
        let net = payable.as_ref().map(|(_, a)| *a).unwrap_or(0);
        if net + fee != captured {
            return Err(shape("the credits do not add up to the debit"));
        }
        Ok(Self {
            currency,
            clearing,
            payable: payable.map(|(a, _)| a),
            captured,
            fee,
        })
    }

    /// The part of the fee reversed once `refunded` of the capture has been refunded:
    /// `round_half_up(fee * refunded / captured)`. Each refund reverses the difference between
    /// this share after it and before it, so the refunds of a payment always add up to exactly
    /// the capture's split at a full refund, whatever the order and size of the partial ones.
    fn fee_share(&self, refunded: i64) -> i64 {
        if self.captured <= 0 {
            return 0;
        }
        let captured = i128::from(self.captured);
        let share = (i128::from(self.fee) * i128::from(refunded) + captured / 2) / captured;
        // 0 <= share <= fee, which is an i64.
        i64::try_from(share).unwrap_or(self.fee)
    }
}

/// The transfer of one refund: debit the merchant's payable and the fees in proportion to the
/// capture's split, credit PSP clearing with the refunded amount. `refunded_before` is what
/// earlier refunds of the payment already reversed (read under the ledger lock).
pub fn refund_posting(
    payment_id: PaymentId,
    refund: &PaymentRefunded,
    split: &CaptureSplit,
    refunded_before: i64,
) -> Result<LedgerPosting, LedgerError> {
    if refund.currency != split.currency {
        return Err(LedgerError::CurrencyMismatch {
            refund: refund.currency,
            capture: split.currency,
        });
    }
    let clearing = psp_clearing(&refund.psp)?;
    if clearing != split.clearing {
        return Err(LedgerError::AccountMismatch {
            refund: clearing,
            capture: split.clearing.clone(),
        });
    }
    let payable = merchant_payable(&refund.merchant_id);
    if let Some(captured_to) = &split.payable
        && captured_to != &payable
    {
        return Err(LedgerError::AccountMismatch {
            refund: payable,
            capture: captured_to.clone(),
        });
    }
    let amount = refund.amount.minor();
    let total = refunded_before.saturating_add(amount);
    if total > split.captured {
        return Err(LedgerError::RefundExceedsCapture {
            refund_id: refund.refund_id.clone(),
            amount,
            total,
            captured: split.captured,
        });
    }
    let fee = split.fee_share(total) - split.fee_share(refunded_before);
    let entries = [
        (payable, Side::Debit, amount - fee),
        (PLATFORM_FEES.to_owned(), Side::Debit, fee),
        (clearing, Side::Credit, amount),
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
        transfer_id: transfer_id(payment_id, &refund_step(&refund.refund_id)),
        payment_id: payment_id.to_string(),
        kind: TransferKind::Refund,
        currency: refund.currency,
        entries,
    };
    ensure_balanced(&posting)?;
    Ok(posting)
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
/// would mean paying out money never captured. Captures only credit it; refunds debit it.
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
    policy: &Policy,
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
    if !policy.allow_negative_payable {
        for (account, totals) in &next {
            ensure_payable_not_negative(account, *totals)?;
        }
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
        let next = apply_posting(&current, &posting, &Policy::default()).unwrap();
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
        assert!(apply_posting(&enough, &refund, &Policy::default()).is_ok());
        let short = BTreeMap::from([(
            "merchant:m_1:payable".to_owned(),
            Totals {
                debits: 100,
                credits: 500,
            },
        )]);
        assert_eq!(
            apply_posting(&short, &refund, &Policy::default()),
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
            apply_posting(&BTreeMap::new(), &posting, &Policy::default()),
            Err(LedgerError::Unbalanced("tr_bad".into()))
        );
    }

    fn refund(id: &str, amount: i64) -> PaymentRefunded {
        PaymentRefunded {
            merchant_id: MerchantId::parse("m_1").unwrap(),
            refund_id: id.into(),
            psp: "alpha".into(),
            charge_id: "ch_1".into(),
            psp_refund_id: format!("psp_{id}"),
            amount: Amount::new(amount).unwrap(),
            currency: Currency::parse("EUR").unwrap(),
        }
    }

    fn split_of(posting: &LedgerPosting) -> CaptureSplit {
        let entries: Vec<(String, Side, i64)> = posting
            .entries
            .iter()
            .map(|e| (e.account.clone(), e.side, e.amount))
            .collect();
        CaptureSplit::from_entries(posting.currency, &entries).unwrap()
    }

    /// (payable debit, fees debit, clearing credit) of a refund posting.
    fn parts(p: &LedgerPosting) -> (i64, i64, i64) {
        let get = |account: &str, side| {
            p.entries
                .iter()
                .filter(|e| e.account == account && e.side == side)
                .map(|e| e.amount)
                .sum::<i64>()
        };
        (
            get("merchant:m_1:payable", Side::Debit),
            get("platform:fees", Side::Debit),
            get("psp:alpha:clearing", Side::Credit),
        )
    }

    #[test]
    fn a_manual_capture_posts_like_an_automatic_one() {
        let id = PaymentId::new();
        let fees = FeeSchedule::default();
        let auto = capture_posting(id, &result(10_000, 10_000), &fees)
            .unwrap()
            .unwrap();
        let manual = PaymentCaptured {
            merchant_id: MerchantId::parse("m_1").unwrap(),
            command_id: "cmd_1".into(),
            psp: "alpha".into(),
            charge_id: "ch_1".into(),
            currency: Currency::parse("EUR").unwrap(),
            amount_captured: 10_000,
        };
        assert_eq!(manual_capture_posting(id, &manual, &fees).unwrap(), auto);
    }

    #[test]
    fn a_full_refund_reverses_the_capture_exactly() {
        let id = PaymentId::new();
        let capture = capture_posting(id, &result(10_000, 10_000), &FeeSchedule::default())
            .unwrap()
            .unwrap();
        let split = split_of(&capture);
        assert_eq!((split.captured, split.fee), (10_000, 290));
        let r = refund_posting(id, &refund("re_1", 10_000), &split, 0).unwrap();
        assert_eq!(r.kind, TransferKind::Refund);
        assert_eq!(
            r.transfer_id,
            format!("tr_{}_refund_re_1", id.as_uuid().simple())
        );
        assert_eq!(
            r.entries,
            vec![
                entry("merchant:m_1:payable", Side::Debit, 9_710),
                entry("platform:fees", Side::Debit, 290),
                entry("psp:alpha:clearing", Side::Credit, 10_000),
            ]
        );
    }

    #[test]
    fn partial_refunds_in_any_order_add_up_to_the_capture_split() {
        let fees = FeeSchedule::new(333, 7).unwrap();
        for (captured, pieces) in [
            (1_001_i64, vec![1_i64, 1, 999]),
            (1_001, vec![999, 1, 1]),
            (7, vec![3, 3, 1]),
            (99_999, vec![33_333, 33_333, 33_333]),
            (12_345, vec![1; 40].into_iter().chain([12_305]).collect()),
        ] {
            let id = PaymentId::new();
            let capture = capture_posting(id, &result(captured, captured), &fees)
                .unwrap()
                .unwrap();
            let split = split_of(&capture);
            let (mut payable, mut fee, mut clearing, mut before) = (0, 0, 0, 0);
            for (i, amount) in pieces.iter().enumerate() {
                let r = refund_posting(id, &refund(&format!("re_{i}"), *amount), &split, before)
                    .unwrap();
                assert!(r.is_balanced());
                assert!(r.entries.iter().all(|e| e.amount > 0));
                let (p, f, c) = parts(&r);
                assert_eq!(c, *amount);
                payable += p;
                fee += f;
                clearing += c;
                before += amount;
            }
            assert_eq!(clearing, captured, "{pieces:?}");
            assert_eq!(fee, split.fee, "fees of {captured} in {pieces:?}");
            assert_eq!(
                payable,
                captured - split.fee,
                "net of {captured} in {pieces:?}"
            );
        }
    }

    #[test]
    fn a_refund_beyond_the_capture_or_in_another_currency_is_refused() {
        let id = PaymentId::new();
        let capture = capture_posting(id, &result(1_000, 1_000), &FeeSchedule::default())
            .unwrap()
            .unwrap();
        let split = split_of(&capture);
        assert!(matches!(
            refund_posting(id, &refund("re_1", 1_001), &split, 0),
            Err(LedgerError::RefundExceedsCapture { total: 1_001, .. })
        ));
        assert!(matches!(
            refund_posting(id, &refund("re_2", 300), &split, 800),
            Err(LedgerError::RefundExceedsCapture { total: 1_100, .. })
        ));
        let mut usd = refund("re_3", 100);
        usd.currency = Currency::parse("USD").unwrap();
        assert!(matches!(
            refund_posting(id, &usd, &split, 0),
            Err(LedgerError::CurrencyMismatch { .. })
        ));
        let mut beta = refund("re_4", 100);
        beta.psp = "beta".into();
        assert!(matches!(
            refund_posting(id, &beta, &split, 0),
            Err(LedgerError::AccountMismatch { .. })
        ));
    }

    #[test]
    fn a_negative_payable_is_allowed_only_when_configured() {
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
        let empty = BTreeMap::new();
        assert!(apply_posting(&empty, &refund, &Policy::default()).is_err());
        let lenient = Policy {
            allow_negative_payable: true,
        };
        let next = apply_posting(&empty, &refund, &lenient).unwrap();
        assert_eq!(next["merchant:m_1:payable"].debits, 500);
    }
}
