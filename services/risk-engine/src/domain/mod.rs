//! Risk rules: pure functions from a request to an explained decision.

use std::collections::BTreeMap;

use paystream_domain::{Currency, PaymentRequested, RiskDecision};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// Largest amount (minor units) approved in a currency without its own limit.
    pub max_amount: i64,
    pub max_amount_per_currency: BTreeMap<Currency, i64>,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            max_amount: 1_000_000,
            max_amount_per_currency: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub decision: RiskDecision,
    /// 0 (no risk seen) to 100 (certain fraud).
    pub score: u32,
    pub reasons: Vec<String>,
}

pub fn evaluate(rules: &Rules, request: &PaymentRequested) -> Verdict {
    let limit = rules
        .max_amount_per_currency
        .get(&request.currency)
        .copied()
        .unwrap_or(rules.max_amount);
    let amount = request.amount.minor();
    if amount > limit {
        return Verdict {
            decision: RiskDecision::Declined,
            score: 100,
            reasons: vec![format!(
                "amount_limit: {amount} {} is above the limit of {limit}",
                request.currency
            )],
        };
    }
    // The score grows with the share of the limit used, so analysts can see near-limit traffic.
    let score = ((amount.saturating_mul(50)) / limit.max(1)).clamp(0, 50) as u32;
    Verdict {
        decision: RiskDecision::Approved,
        score,
        reasons: vec![format!("amount_limit: {amount} within {limit}")],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use paystream_domain::{Amount, CaptureMode, CustomerId, MerchantId, PaymentMethod};

    fn request(amount: i64, currency: &str) -> PaymentRequested {
        PaymentRequested {
            merchant_id: MerchantId::parse("m_1").unwrap(),
            amount: Amount::new(amount).unwrap(),
            currency: Currency::parse(currency).unwrap(),
            customer_id: CustomerId::parse("c_1").unwrap(),
            payment_method: PaymentMethod::parse("pm_card_visa").unwrap(),
            capture: CaptureMode::Automatic,
            description: None,
            metadata: Default::default(),
        }
    }

    #[test]
    fn declines_above_the_currency_limit_and_says_which_rule() {
        let mut rules = Rules::default();
        rules
            .max_amount_per_currency
            .insert(Currency::parse("JPY").unwrap(), 5_000);
        let v = evaluate(&rules, &request(6_000, "JPY"));
        assert_eq!(v.decision, RiskDecision::Declined);
        assert!(v.reasons[0].starts_with("amount_limit"));
        assert_eq!(
            evaluate(&rules, &request(6_000, "EUR")).decision,
            RiskDecision::Approved
        );
    }
}
