//! Gathers the facts a decision needs through the ports, then applies the pure rules.

use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use paystream_domain::{PaymentId, PaymentRequested};

use super::ports::{Blocklist, BlocklistError, VelocityEntry, VelocityError, VelocityStore};
use super::rules::{Facts, Rules, Verdict, evaluate};

#[derive(Debug, thiserror::Error)]
pub enum DecideError {
    /// A fact could not be established: the caller retries later. Deciding without it would be
    /// a silent approval.
    #[error(transparent)]
    Velocity(#[from] VelocityError),
    #[error(transparent)]
    Blocklist(#[from] BlocklistError),
}

/// The rules in force, swapped whole by the reloader: a decision always sees one consistent
/// rule set, never half an update.
#[derive(Clone)]
pub struct RulesHandle(Arc<RwLock<Arc<Rules>>>);

impl RulesHandle {
    pub fn new(rules: Rules) -> Self {
        Self(Arc::new(RwLock::new(Arc::new(rules))))
    }

    pub fn current(&self) -> Arc<Rules> {
        // A poisoned lock still holds a complete rule set (it is replaced by one assignment).
        match self.0.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    pub fn replace(&self, rules: Rules) {
        let new = Arc::new(rules);
        match self.0.write() {
            Ok(mut g) => *g = new,
            Err(p) => *p.into_inner() = new,
        }
    }
}

pub struct RiskEngine {
    rules: RulesHandle,
    velocity: Arc<dyn VelocityStore>,
    blocklist: Arc<dyn Blocklist>,
}

/// A verdict and the rules version that produced it.
pub struct Decided {
    pub verdict: Verdict,
    pub rules_version: String,
}

impl RiskEngine {
    pub fn new(
        rules: RulesHandle,
        velocity: Arc<dyn VelocityStore>,
        blocklist: Arc<dyn Blocklist>,
    ) -> Self {
        Self {
            rules,
            velocity,
            blocklist,
        }
    }

    pub async fn decide(
        &self,
        payment_id: PaymentId,
        requested_at: DateTime<Utc>,
        request: &PaymentRequested,
    ) -> Result<Decided, DecideError> {
        let rules = self.rules.current();
        let mut facts = Facts::default();
        if rules.blocklist.customers {
            facts.blocked_customer = self
                .blocklist
                .customer(&request.merchant_id, &request.customer_id)
                .await?;
        }
        if rules.blocklist.payment_methods {
            facts.blocked_payment_method = self
                .blocklist
                .payment_method(&request.merchant_id, &request.payment_method)
                .await?;
        }
        if !rules.velocity.is_empty() {
            let windows: Vec<u64> = rules.velocity.iter().map(|r| r.window_secs).collect();
            let entry = VelocityEntry {
                merchant_id: &request.merchant_id,
                customer_id: &request.customer_id,
                payment_id,
                amount: request.amount,
                currency: request.currency,
                at: requested_at,
            };
            facts.velocity = self
                .velocity
                .record_and_count(&entry, &windows, rules.longest_window_secs())
                .await?;
        }
        Ok(Decided {
            verdict: evaluate(&rules, request, &facts),
            rules_version: rules.version.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::rules::{VelocityRule, WindowStats};
    use async_trait::async_trait;
    use paystream_domain::{
        Amount, CaptureMode, Currency, CustomerId, MerchantId, PaymentMethod, RiskDecision,
    };

    struct DownVelocity;
    #[async_trait]
    impl VelocityStore for DownVelocity {
        async fn record_and_count(
            &self,
            _: &VelocityEntry<'_>,
            _: &[u64],
            _: u64,
        ) -> Result<Vec<WindowStats>, VelocityError> {
            Err(VelocityError::Unavailable("connection refused".into()))
        }
    }

    struct Nothing;
    #[async_trait]
    impl Blocklist for Nothing {
        async fn customer(
            &self,
            _: &MerchantId,
            _: &CustomerId,
        ) -> Result<Option<String>, BlocklistError> {
            Ok(None)
        }
        async fn payment_method(
            &self,
            _: &MerchantId,
            _: &PaymentMethod,
        ) -> Result<Option<String>, BlocklistError> {
            Ok(None)
        }
    }

    fn request() -> PaymentRequested {
        PaymentRequested {
            merchant_id: MerchantId::parse("m_1").unwrap(),
            amount: Amount::new(100).unwrap(),
            currency: Currency::parse("EUR").unwrap(),
            customer_id: CustomerId::parse("c_1").unwrap(),
            payment_method: PaymentMethod::parse("pm_card_visa").unwrap(),
            capture: CaptureMode::Automatic,
            description: None,
            metadata: Default::default(),
        }
    }

    #[tokio::test]
    async fn an_unreachable_velocity_store_is_an_error_not_an_approval() {
        let mut rules = Rules::default();
        rules.velocity.push(VelocityRule {
            name: "h".into(),
            window_secs: 60,
            max_count: Some(5),
            max_amount: Default::default(),
        });
        let engine = RiskEngine::new(
            RulesHandle::new(rules),
            Arc::new(DownVelocity),
            Arc::new(Nothing),
        );
        let r = engine
            .decide(PaymentId::new(), Utc::now(), &request())
            .await;
        assert!(matches!(r, Err(DecideError::Velocity(_))));
    }

    #[tokio::test]
    async fn without_velocity_rules_the_store_is_not_asked() {
        let engine = RiskEngine::new(
            RulesHandle::new(Rules::default()),
            Arc::new(DownVelocity),
            Arc::new(Nothing),
        );
        let d = engine
            .decide(PaymentId::new(), Utc::now(), &request())
            .await
            .unwrap();
        assert_eq!(d.verdict.decision, RiskDecision::Approved);
    }
}
