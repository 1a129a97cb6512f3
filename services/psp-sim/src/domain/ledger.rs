//! The PSP's own books: charges, refunds and the settlement report derived from them.
//! Pure state transitions; the HTTP layer decides when they run and what the client sees.

use chrono::{DateTime, NaiveDate};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChargeStatus {
    Succeeded,
    RequiresCapture,
    Canceled,
    /// A declined attempt. Kept in the ledger, as real PSPs do, so that a client that lost the
    /// 402 can still learn the definitive outcome by listing charges for its reference.
    Failed,
}

impl ChargeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::RequiresCapture => "requires_capture",
            Self::Canceled => "canceled",
            Self::Failed => "failed",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Charge {
    pub id: String,
    pub object: String,
    pub status: ChargeStatus,
    pub amount: i64,
    pub amount_captured: i64,
    pub amount_refunded: i64,
    pub currency: String,
    pub reference: String,
    pub payment_method: String,
    pub created: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_message: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refund {
    pub id: String,
    pub object: String,
    pub charge: String,
    pub amount: i64,
    pub currency: String,
    pub status: String,
    pub created: i64,
}

/// What a client asked to be charged, already validated.
#[derive(Clone, Debug)]
pub struct NewCharge {
    pub amount: i64,
    pub currency: String,
    pub payment_method: String,
    pub capture: bool,
    pub reference: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeclineCode {
    CardDeclined,
    InsufficientFunds,
}

impl DeclineCode {
    pub fn code(self) -> &'static str {
        match self {
            Self::CardDeclined => "card_declined",
            Self::InsufficientFunds => "insufficient_funds",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Self::CardDeclined => "Your card was declined.",
            Self::InsufficientFunds => "Your card has insufficient funds.",
        }
    }
}

/// Test payment methods that always decline, so black-box tests can force a definitive
/// decline (and a failover) without relying on random fault rates.
pub fn deterministic_decline(payment_method: &str) -> Option<DeclineCode> {
    match payment_method {
        "pm_card_declined" => Some(DeclineCode::CardDeclined),
        "pm_card_insufficient_funds" => Some(DeclineCode::InsufficientFunds),
        _ => None,
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    #[error("no such charge: {0}")]
    NoSuchCharge(String),
    #[error("charge {0} has already been captured")]
    AlreadyCaptured(String),
    #[error("charge {id} cannot be captured: it is {status}")]
    NotCapturable { id: String, status: &'static str },
    #[error("charge {id} cannot be canceled: it is {status}")]
    NotCancelable { id: String, status: &'static str },
    #[error("charge {id} cannot be refunded: it is {status}")]
    NotRefundable { id: String, status: &'static str },
    #[error("charge {0} has already been refunded in full")]
    AlreadyRefunded(String),
    #[error("amount {requested} is greater than the {available} available")]
    AmountTooLarge { requested: i64, available: i64 },
}

#[derive(Default)]
pub struct Ledger {
    charges: Vec<Charge>,
    by_id: HashMap<String, usize>,
    refunds: Vec<Refund>,
}

impl Ledger {
    pub fn charges(&self) -> &[Charge] {
        &self.charges
    }

    pub fn refunds(&self) -> &[Refund] {
        &self.refunds
    }

    pub fn charge(&self, id: &str) -> Option<&Charge> {
        self.by_id.get(id).and_then(|&i| self.charges.get(i))
    }

    pub fn refund(&self, id: &str) -> Option<&Refund> {
        self.refunds.iter().find(|r| r.id == id)
    }

    pub fn charges_for_reference<'a>(
        &'a self,
        reference: &'a str,
    ) -> impl Iterator<Item = &'a Charge> + 'a {
        self.charges
            .iter()
            .filter(move |c| c.reference == reference)
    }

    /// Records a charge attempt; a `decline` still leaves a `failed` charge behind.
    pub fn create_charge(
        &mut self,
        id: String,
        req: NewCharge,
        now: i64,
        decline: Option<DeclineCode>,
    ) -> Charge {
        let (status, captured) = match (decline, req.capture) {
            (Some(_), _) => (ChargeStatus::Failed, 0),
            (None, true) => (ChargeStatus::Succeeded, req.amount),
            (None, false) => (ChargeStatus::RequiresCapture, 0),
        };
        let charge = Charge {
            id,
            object: "charge".to_owned(),
            status,
            amount: req.amount,
            amount_captured: captured,
            amount_refunded: 0,
            currency: req.currency,
            reference: req.reference,
            payment_method: req.payment_method,
            created: now,
            failure_code: decline.map(|d| d.code().to_owned()),
            failure_message: decline.map(|d| d.message().to_owned()),
        };
        self.by_id.insert(charge.id.clone(), self.charges.len());
        self.charges.push(charge.clone());
        charge
    }

    /// Captures an authorization, partially if `amount` is given; the rest is released.
    pub fn capture(&mut self, id: &str, amount: Option<i64>) -> Result<Charge, LedgerError> {
        let charge = self.charge_mut(id)?;
        match charge.status {
            ChargeStatus::RequiresCapture => {}
            ChargeStatus::Succeeded => return Err(LedgerError::AlreadyCaptured(id.to_owned())),
            other => {
                return Err(LedgerError::NotCapturable {
                    id: id.to_owned(),
                    status: other.as_str(),
                });
            }
        }
        let amount = amount.unwrap_or(charge.amount);
        if amount > charge.amount {
            return Err(LedgerError::AmountTooLarge {
                requested: amount,
                available: charge.amount,
            });
        }
        charge.status = ChargeStatus::Succeeded;
        charge.amount_captured = amount;
        Ok(charge.clone())
    }

    pub fn cancel(&mut self, id: &str) -> Result<Charge, LedgerError> {
        let charge = self.charge_mut(id)?;
        if charge.status != ChargeStatus::RequiresCapture {
            return Err(LedgerError::NotCancelable {
                id: id.to_owned(),
                status: charge.status.as_str(),
            });
        }
        charge.status = ChargeStatus::Canceled;
        Ok(charge.clone())
    }

    /// Refunds `amount` (default: whatever is still refundable) of a captured charge.
    pub fn refund_charge(
        &mut self,
        refund_id: String,
        charge_id: &str,
        amount: Option<i64>,
        now: i64,
    ) -> Result<(Refund, Charge), LedgerError> {
        let charge = self.charge_mut(charge_id)?;
        if charge.status != ChargeStatus::Succeeded {
            return Err(LedgerError::NotRefundable {
                id: charge_id.to_owned(),
                status: charge.status.as_str(),
            });
        }
        let available = charge.amount_captured - charge.amount_refunded;
        let amount = match amount {
            Some(requested) if requested > available => {
                return Err(LedgerError::AmountTooLarge {
                    requested,
                    available,
                });
            }
            Some(requested) => requested,
            None if available == 0 => {
                return Err(LedgerError::AlreadyRefunded(charge_id.to_owned()));
            }
            None => available,
        };
        charge.amount_refunded += amount;
        let charge = charge.clone();
        let refund = Refund {
            id: refund_id,
            object: "refund".to_owned(),
            charge: charge.id.clone(),
            amount,
            currency: charge.currency.clone(),
            status: "succeeded".to_owned(),
            created: now,
        };
        self.refunds.push(refund.clone());
        Ok((refund, charge))
    }

    /// The day's settlement as the validator reconciles it: one line per charge created that UTC
    /// day that moved money. Refunds count against their charge's day, which keeps the report a
    /// pure function of the charge list (a real PSP would settle refunds on the day they happen).
    pub fn settlement(&self, date: NaiveDate) -> (Vec<SettlementLine>, Vec<SettlementTotal>) {
        let mut lines = Vec::new();
        let mut totals: BTreeMap<&str, SettlementTotal> = BTreeMap::new();
        for charge in &self.charges {
            let day = DateTime::from_timestamp(charge.created, 0).map(|d| d.date_naive());
            if day != Some(date) || charge.amount_captured == 0 {
                continue;
            }
            let net = charge.amount_captured - charge.amount_refunded;
            lines.push(SettlementLine {
                charge: charge.id.clone(),
                reference: charge.reference.clone(),
                currency: charge.currency.clone(),
                captured: charge.amount_captured,
                refunded: charge.amount_refunded,
                net,
            });
            let total = totals
                .entry(charge.currency.as_str())
                .or_insert_with(|| SettlementTotal {
                    currency: charge.currency.clone(),
                    captured: 0,
                    refunded: 0,
                    net: 0,
                });
            total.captured = total.captured.saturating_add(charge.amount_captured);
            total.refunded = total.refunded.saturating_add(charge.amount_refunded);
            total.net = total.net.saturating_add(net);
        }
        (lines, totals.into_values().collect())
    }

    fn charge_mut(&mut self, id: &str) -> Result<&mut Charge, LedgerError> {
        self.by_id
            .get(id)
            .and_then(|&i| self.charges.get_mut(i))
            .ok_or_else(|| LedgerError::NoSuchCharge(id.to_owned()))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettlementLine {
    pub charge: String,
    pub reference: String,
    pub currency: String,
    pub captured: i64,
    pub refunded: i64,
    pub net: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettlementTotal {
    pub currency: String,
    pub captured: i64,
    pub refunded: i64,
    pub net: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_charge(capture: bool) -> NewCharge {
        NewCharge {
            amount: 1000,
            currency: "EUR".into(),
            payment_method: "pm_card_visa".into(),
            capture,
            reference: "pay_1".into(),
        }
    }

    #[test]
    fn partial_capture_then_refunds_down_to_zero() {
        let mut ledger = Ledger::default();
        ledger.create_charge("ch_1".into(), new_charge(false), 0, None);
        let captured = ledger.capture("ch_1", Some(800));
        assert_eq!(captured.map(|c| c.amount_captured), Ok(800));
        assert!(
            ledger
                .refund_charge("re_1".into(), "ch_1", Some(300), 0)
                .is_ok()
        );
        assert_eq!(
            ledger.refund_charge("re_2".into(), "ch_1", Some(501), 0),
            Err(LedgerError::AmountTooLarge {
                requested: 501,
                available: 500
            })
        );
        let rest = ledger.refund_charge("re_3".into(), "ch_1", None, 0);
        assert_eq!(
            rest.map(|(r, c)| (r.amount, c.amount_refunded)),
            Ok((500, 800))
        );
        assert_eq!(
            ledger.refund_charge("re_4".into(), "ch_1", None, 0),
            Err(LedgerError::AlreadyRefunded("ch_1".into()))
        );
    }

    #[test]
    fn declined_charge_cannot_move_money() {
        let mut ledger = Ledger::default();
        let charge = ledger.create_charge(
            "ch_1".into(),
            new_charge(true),
            0,
            Some(DeclineCode::CardDeclined),
        );
        assert_eq!(charge.status, ChargeStatus::Failed);
        assert_eq!(charge.amount_captured, 0);
        assert!(ledger.capture("ch_1", None).is_err());
        assert!(
            ledger
                .refund_charge("re_1".into(), "ch_1", None, 0)
                .is_err()
        );
    }
}
