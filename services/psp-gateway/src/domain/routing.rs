//! Routing rules: which PSPs a payment may be charged at, in order. The first PSP gets the
//! charge; the later ones only after a definitive decline (or when an open circuit breaker skips
//! a PSP before any attempt was made there).

use paystream_domain::{Currency, MerchantId};
use serde::Deserialize;

/// Loaded from `PAYSTREAM_PSP_ROUTING_FILE` (TOML, or JSON for a `.json` name). The first rule
/// whose conditions all match decides; an empty condition matches everything.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingRules {
    /// The fallback list when no rule matches (`PAYSTREAM_PSP_ROUTE` when the file has none).
    #[serde(default)]
    pub default: Vec<String>,
    #[serde(default)]
    pub rules: Vec<RouteRule>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteRule {
    pub name: String,
    #[serde(default)]
    pub currencies: Vec<Currency>,
    #[serde(default)]
    pub merchants: Vec<MerchantId>,
    /// Inclusive bounds in minor units.
    #[serde(default)]
    pub min_amount: Option<i64>,
    #[serde(default)]
    pub max_amount: Option<i64>,
    pub route: Vec<String>,
}

impl RouteRule {
    fn matches(&self, merchant: &MerchantId, currency: &Currency, amount: i64) -> bool {
        (self.currencies.is_empty() || self.currencies.contains(currency))
            && (self.merchants.is_empty() || self.merchants.contains(merchant))
            && self.min_amount.is_none_or(|m| amount >= m)
            && self.max_amount.is_none_or(|m| amount <= m)
    }
}

impl RoutingRules {
    pub fn fallback_only(default: Vec<String>) -> Self {
        Self {
            default,
            rules: Vec::new(),
        }
    }

    pub fn parse(text: &str, json: bool) -> Result<Self, String> {
        if json {
            serde_json::from_str(text).map_err(|e| e.to_string())
        } else {
            toml::from_str(text).map_err(|e| e.to_string())
        }
    }

    /// Every route must name configured PSPs, at most once each: a PSP listed twice would get
    /// a second attempt for the same payment, which the one-attempt-per-PSP rule relies on not
    /// happening.
    pub fn validate(&self, known: &[String]) -> Result<(), String> {
        let check = |name: &str, route: &[String]| -> Result<(), String> {
            if route.is_empty() {
                return Err(format!("route {name} lists no PSP"));
            }
            let mut seen = std::collections::BTreeSet::new();
            for psp in route {
                if !known.contains(psp) {
                    return Err(format!("route {name} names unknown PSP {psp:?}"));
                }
                if !seen.insert(psp) {
                    return Err(format!("route {name} lists {psp} twice"));
                }
            }
            Ok(())
        };
        check("default", &self.default)?;
        for rule in &self.rules {
            check(&rule.name, &rule.route)?;
        }
        Ok(())
    }

    /// The matching rule's name and its PSP list.
    pub fn route(
        &self,
        merchant: &MerchantId,
        currency: &Currency,
        amount: i64,
    ) -> (&str, &[String]) {
        self.rules
            .iter()
            .find(|r| r.matches(merchant, currency, amount))
            .map(|r| (r.name.as_str(), r.route.as_slice()))
            .unwrap_or(("default", self.default.as_slice()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_matching_rule_wins_and_the_default_catches_the_rest() {
        let rules = RoutingRules::parse(
            r#"
            default = ["alpha", "beta"]
            [[rules]]
            name = "yen"
            currencies = ["JPY"]
            route = ["beta"]
            [[rules]]
            name = "big-m1"
            merchants = ["m_1"]
            min_amount = 100000
            route = ["beta", "alpha"]
            "#,
            false,
        )
        .unwrap();
        let known = vec!["alpha".to_owned(), "beta".to_owned()];
        rules.validate(&known).unwrap();
        let m1 = MerchantId::parse("m_1").unwrap();
        let eur = Currency::parse("EUR").unwrap();
        let jpy = Currency::parse("JPY").unwrap();
        assert_eq!(rules.route(&m1, &jpy, 5).0, "yen");
        assert_eq!(rules.route(&m1, &eur, 100_000).1, ["beta", "alpha"]);
        assert_eq!(rules.route(&m1, &eur, 99_999).0, "default");
        let m2 = MerchantId::parse("m_2").unwrap();
        assert_eq!(rules.route(&m2, &eur, 500_000).1, ["alpha", "beta"]);
    }

    #[test]
    fn the_example_file_is_valid() {
        let rules = RoutingRules::parse(include_str!("../../routing.example.toml"), false).unwrap();
        rules
            .validate(&["alpha".to_owned(), "beta".to_owned()])
            .unwrap();
    }

    #[test]
    fn unknown_or_repeated_psps_are_refused() {
        let known = vec!["alpha".to_owned(), "beta".to_owned()];
        assert!(
            RoutingRules::fallback_only(vec!["gamma".into()])
                .validate(&known)
                .is_err()
        );
        assert!(
            RoutingRules::fallback_only(vec!["alpha".into(), "alpha".into()])
                .validate(&known)
                .is_err()
        );
        assert!(RoutingRules::parse("defualt = []", false).is_err());
    }
}
