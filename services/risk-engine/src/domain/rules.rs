//! The rule set (configuration, not code) and the pure evaluation of one request against it.
//!
//! Evaluation takes the facts that need I/O (velocity counts, blocklist hits) as plain values
//! gathered beforehand through the ports, so every decision can be reproduced in a unit test from
//! the rules, the request and the facts alone.

use std::collections::BTreeMap;

use paystream_domain::{Currency, MerchantId, PaymentRequested, RiskDecision};
use serde::{Deserialize, Serialize};

/// Everything an operator can change without a deploy. Missing fields take their defaults, so a
/// file may hold only what differs; unknown fields are refused, so a typo cannot silently turn a
/// rule off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rules {
    /// A label stored with each decision, so that analysts can tell which rules decided.
    pub version: String,
    /// Largest amount (minor units) approved in a currency without its own limit.
    pub max_amount: i64,
    pub max_amount_per_currency: BTreeMap<Currency, i64>,
    /// Limits of one merchant; they replace the global ones for that merchant's payments.
    pub merchants: BTreeMap<MerchantId, MerchantLimits>,
    /// Per customer (of a merchant), over sliding windows.
    pub velocity: Vec<VelocityRule>,
    pub blocklist: BlocklistRules,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            version: "default".to_owned(),
            max_amount: 1_000_000,
            max_amount_per_currency: BTreeMap::new(),
            merchants: BTreeMap::new(),
            velocity: Vec::new(),
            blocklist: BlocklistRules::default(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MerchantLimits {
    pub max_amount: Option<i64>,
    pub max_amount_per_currency: BTreeMap<Currency, i64>,
}

/// A customer may make at most `max_count` payments, and at most `max_amount[currency]` in a
/// currency, within any `window_secs`. The current payment counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VelocityRule {
    pub name: String,
    pub window_secs: u64,
    #[serde(default)]
    pub max_count: Option<u64>,
    #[serde(default)]
    pub max_amount: BTreeMap<Currency, i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BlocklistRules {
    pub customers: bool,
    pub payment_methods: bool,
}

impl Default for BlocklistRules {
    /// On by default: an entry an operator added to the table must take effect without also
    /// having to remember a switch in the rules.
    fn default() -> Self {
        Self {
            customers: true,
            payment_methods: true,
        }
    }
}

/// Why a rule set cannot be used. A reload that fails validation keeps the previous rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid risk rules: {0}")]
pub struct InvalidRules(pub String);

impl Rules {
    pub fn validate(&self) -> Result<(), InvalidRules> {
        let bad = |msg: String| Err(InvalidRules(msg));
        if self.max_amount <= 0 {
            return bad(format!(
                "max_amount must be positive, got {}",
                self.max_amount
            ));
        }
        for (cur, limit) in &self.max_amount_per_currency {
            if *limit <= 0 {
                return bad(format!("max_amount_per_currency.{cur} must be positive"));
            }
        }
        for (merchant, limits) in &self.merchants {
            if limits.max_amount.is_some_and(|l| l <= 0)
                || limits.max_amount_per_currency.values().any(|l| *l <= 0)
            {
                return bad(format!("limits of merchant {merchant} must be positive"));
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for rule in &self.velocity {
            let ok_name = !rule.name.is_empty()
                && rule
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
            if !ok_name {
                return bad(format!(
                    "velocity rule name {:?} must be letters, digits, _ - .",
                    rule.name
                ));
            }
            if !names.insert(rule.name.as_str()) {
                return bad(format!("velocity rule {} is defined twice", rule.name));
            }
            if rule.window_secs == 0 || rule.window_secs > 90 * 86_400 {
                return bad(format!(
                    "velocity rule {}: window_secs must be 1..=7776000",
                    rule.name
                ));
            }
            if rule.max_count.is_none() && rule.max_amount.is_empty() {
                return bad(format!(
                    "velocity rule {} needs max_count or max_amount",
                    rule.name
                ));
            }
            if rule.max_count == Some(0) || rule.max_amount.values().any(|l| *l <= 0) {
                return bad(format!(
                    "velocity rule {}: limits must be positive",
                    rule.name
                ));
            }
        }
        Ok(())
    }

    /// The longest velocity window: how long the velocity store must remember a payment.
    pub fn longest_window_secs(&self) -> u64 {
        self.velocity
            .iter()
            .map(|r| r.window_secs)
            .max()
            .unwrap_or(0)
    }

    /// The limit that applies to a request, and where it comes from (for the reason text).
    /// Precedence: merchant+currency, merchant, currency, global.
    fn amount_limit(&self, merchant: &MerchantId, currency: &Currency) -> (i64, RuleKind) {
        if let Some(m) = self.merchants.get(merchant) {
            if let Some(l) = m.max_amount_per_currency.get(currency) {
                return (*l, RuleKind::MerchantAmountLimit);
            }
            if let Some(l) = m.max_amount {
                return (l, RuleKind::MerchantAmountLimit);
            }
        }
        match self.max_amount_per_currency.get(currency) {
            Some(l) => (*l, RuleKind::AmountLimit),
            None => (self.max_amount, RuleKind::AmountLimit),
        }
    }
}

/// The rule kinds, a small fixed set (metric label values and reason prefixes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RuleKind {
    AmountLimit,
    MerchantAmountLimit,
    VelocityCount,
    VelocityAmount,
    BlocklistCustomer,
    BlocklistPaymentMethod,
}

impl RuleKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::AmountLimit => "amount_limit",
            Self::MerchantAmountLimit => "merchant_amount_limit",
            Self::VelocityCount => "velocity_count",
            Self::VelocityAmount => "velocity_amount",
            Self::BlocklistCustomer => "blocklist_customer",
            Self::BlocklistPaymentMethod => "blocklist_payment_method",
        }
    }
}

/// A customer's activity in one window, the current payment included. `sum` is in the request's
/// currency only: amounts in different currencies cannot be added.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WindowStats {
    pub count: u64,
    pub sum: i64,
}

/// What the ports found out about a request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// One entry per `rules.velocity` rule, in the same order; empty when there are none.
    pub velocity: Vec<WindowStats>,
    /// The blocklist entry's reason, when the customer is blocked.
    pub blocked_customer: Option<String>,
    pub blocked_payment_method: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub decision: RiskDecision,
    /// 0 (no risk seen) to 100 (a rule declined).
    pub score: u32,
    /// Human-readable, each prefixed by the rule that produced it; on a decline the rules that
    /// fired come first.
    pub reasons: Vec<String>,
    /// The rules that fired (declined), for metrics.
    pub fired: Vec<RuleKind>,
}

/// The decision for one request. Any rule that fires declines (score 100); otherwise the score
/// says how close the request came to the limits (amount share 0–50 plus velocity share 0–49),
/// so analysts can see near-limit traffic.
pub fn evaluate(rules: &Rules, request: &PaymentRequested, facts: &Facts) -> Verdict {
    let mut fired: Vec<(RuleKind, String)> = Vec::new();
    let mut notes: Vec<String> = Vec::new();

    if rules.blocklist.customers
        && let Some(why) = &facts.blocked_customer
    {
        fired.push((
            RuleKind::BlocklistCustomer,
            format!(
                "blocklist_customer: customer {} is blocked ({why})",
                request.customer_id
            ),
        ));
    }
    if rules.blocklist.payment_methods
        && let Some(why) = &facts.blocked_payment_method
    {
        fired.push((
            RuleKind::BlocklistPaymentMethod,
            format!(
                "blocklist_payment_method: payment method {} is blocked ({why})",
                request.payment_method
            ),
        ));
    }

    let amount = request.amount.minor();
    let cur = request.currency;
    let (limit, kind) = rules.amount_limit(&request.merchant_id, &cur);
    if amount > limit {
        fired.push((
            kind,
            format!(
                "{}: {amount} {cur} is above the limit of {limit}",
                kind.as_str()
            ),
        ));
    } else {
        notes.push(format!("{}: {amount} {cur} within {limit}", kind.as_str()));
    }
    let amount_score = (amount.saturating_mul(50) / limit.max(1)).clamp(0, 50);

    let mut velocity_score = 0i64;
    for (rule, stats) in rules.velocity.iter().zip(facts.velocity.iter()) {
        let window = rule.window_secs;
        if let Some(max) = rule.max_count {
            if stats.count > max {
                fired.push((
                    RuleKind::VelocityCount,
                    format!(
                        "velocity_count:{}: {} payments by customer {} in {window} s, limit {max}",
                        rule.name, stats.count, request.customer_id
                    ),
                ));
            } else {
                velocity_score = velocity_score.max(share(stats.count as i64, max as i64));
                notes.push(format!(
                    "velocity_count:{}: {} of {max} payments in {window} s",
                    rule.name, stats.count
                ));
            }
        }
        if let Some(max) = rule.max_amount.get(&cur) {
            if stats.sum > *max {
                fired.push((
                    RuleKind::VelocityAmount,
                    format!(
                        "velocity_amount:{}: {} {cur} by customer {} in {window} s, limit {max}",
                        rule.name, stats.sum, request.customer_id
                    ),
                ));
            } else {
                velocity_score = velocity_score.max(share(stats.sum, *max));
                notes.push(format!(
                    "velocity_amount:{}: {} of {max} {cur} in {window} s",
                    rule.name, stats.sum
                ));
            }
        }
    }

    if fired.is_empty() {
        Verdict {
            decision: RiskDecision::Approved,
            score: (amount_score + velocity_score).clamp(0, 99) as u32,
            reasons: notes,
            fired: Vec::new(),
        }
    } else {
        let kinds = fired.iter().map(|(k, _)| *k).collect();
        let mut reasons: Vec<String> = fired.into_iter().map(|(_, r)| r).collect();
        reasons.extend(notes);
        Verdict {
            decision: RiskDecision::Declined,
            score: 100,
            reasons,
            fired: kinds,
        }
    }
}

/// 0–49 for the share of a limit used.
fn share(used: i64, limit: i64) -> i64 {
    (used.saturating_mul(49) / limit.max(1)).clamp(0, 49)
}

/// Parses a rule file: TOML unless the path ends in `.json`.
pub fn parse_rules(text: &str, json: bool) -> Result<Rules, InvalidRules> {
    let rules: Rules = if json {
        serde_json::from_str(text).map_err(|e| InvalidRules(e.to_string()))?
    } else {
        toml::from_str(text).map_err(|e| InvalidRules(e.to_string()))?
    };
    rules.validate()?;
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;
    use paystream_domain::{Amount, CaptureMode, CustomerId, PaymentMethod};

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

    fn eur() -> Currency {
        Currency::parse("EUR").unwrap()
    }

    #[test]
    fn declines_above_the_currency_limit_and_says_which_rule() {
        let mut rules = Rules::default();
        rules
            .max_amount_per_currency
            .insert(Currency::parse("JPY").unwrap(), 5_000);
        let v = evaluate(&rules, &request(6_000, "JPY"), &Facts::default());
        assert_eq!(v.decision, RiskDecision::Declined);
        assert!(v.reasons[0].starts_with("amount_limit"));
        assert_eq!(v.score, 100);
        let ok = evaluate(&rules, &request(6_000, "EUR"), &Facts::default());
        assert_eq!(ok.decision, RiskDecision::Approved);
        assert!(ok.score < 100);
    }

    #[test]
    fn merchant_limits_replace_the_global_ones() {
        let mut rules = Rules::default();
        rules.merchants.insert(
            MerchantId::parse("m_1").unwrap(),
            MerchantLimits {
                max_amount: Some(100),
                ..Default::default()
            },
        );
        let v = evaluate(&rules, &request(150, "EUR"), &Facts::default());
        assert_eq!(v.decision, RiskDecision::Declined);
        assert!(v.reasons[0].starts_with("merchant_amount_limit"), "{v:?}");
        let mut other = request(150, "EUR");
        other.merchant_id = MerchantId::parse("m_2").unwrap();
        assert_eq!(
            evaluate(&rules, &other, &Facts::default()).decision,
            RiskDecision::Approved
        );
    }

    #[test]
    fn velocity_count_and_sum_decline_with_the_rule_name() {
        let mut rules = Rules::default();
        rules.velocity.push(VelocityRule {
            name: "hourly".into(),
            window_secs: 3600,
            max_count: Some(3),
            max_amount: [(eur(), 10_000)].into(),
        });
        let facts = |count, sum| Facts {
            velocity: vec![WindowStats { count, sum }],
            ..Default::default()
        };
        let r = request(100, "EUR");
        assert_eq!(
            evaluate(&rules, &r, &facts(3, 300)).decision,
            RiskDecision::Approved
        );
        let v = evaluate(&rules, &r, &facts(4, 400));
        assert_eq!(v.decision, RiskDecision::Declined);
        assert!(v.reasons[0].starts_with("velocity_count:hourly"), "{v:?}");
        let v = evaluate(&rules, &r, &facts(2, 10_001));
        assert!(v.reasons[0].starts_with("velocity_amount:hourly"), "{v:?}");
        assert_eq!(v.fired, vec![RuleKind::VelocityAmount]);
    }

    #[test]
    fn blocklist_hits_decline_unless_switched_off() {
        let mut rules = Rules::default();
        let facts = Facts {
            blocked_customer: Some("chargebacks".into()),
            ..Default::default()
        };
        let v = evaluate(&rules, &request(100, "EUR"), &facts);
        assert_eq!(v.decision, RiskDecision::Declined);
        assert!(v.reasons[0].starts_with("blocklist_customer"));
        assert!(v.reasons[0].contains("chargebacks"));
        rules.blocklist.customers = false;
        assert_eq!(
            evaluate(&rules, &request(100, "EUR"), &facts).decision,
            RiskDecision::Approved
        );
    }

    #[test]
    fn the_example_file_is_valid() {
        let rules = parse_rules(include_str!("../../rules.example.toml"), false).unwrap();
        assert_eq!(rules.velocity.len(), 2);
    }

    #[test]
    fn rule_files_parse_and_bad_ones_are_refused() {
        let toml = r#"
            version = "v7"
            max_amount = 50000
            [max_amount_per_currency]
            JPY = 9000
            [merchants.m_big]
            max_amount = 900000
            [[velocity]]
            name = "ten_minutes"
            window_secs = 600
            max_count = 5
            max_amount = { EUR = 20000 }
        "#;
        let rules = parse_rules(toml, false).unwrap();
        assert_eq!(rules.version, "v7");
        assert_eq!(rules.velocity[0].max_amount[&eur()], 20_000);
        assert!(rules.blocklist.customers);
        let json = serde_json::to_string(&rules).unwrap();
        assert_eq!(parse_rules(&json, true).unwrap(), rules);

        assert!(parse_rules("max_amount = -1", false).is_err());
        assert!(parse_rules("max_amout = 5", false).is_err(), "typo refused");
        assert!(
            parse_rules("[[velocity]]\nname = \"x\"\nwindow_secs = 60\n", false).is_err(),
            "a velocity rule without a limit"
        );
        assert!(parse_rules("[max_amount_per_currency]\nEUD = 5\n", false).is_err());
    }
}
