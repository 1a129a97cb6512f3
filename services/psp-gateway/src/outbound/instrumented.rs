//! A decorator around each PSP adapter: times every call into the latency histogram and feeds
//! the PSP's circuit breaker, so no call path can forget either.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use paystream_domain::PaymentId;

use crate::domain::breaker::BreakerBoard;
use crate::domain::ports::{Charge, ChargeRequest, Psp, PspError, Refund};
use crate::metrics::GatewayMetrics;

pub struct InstrumentedPsp {
    inner: Arc<dyn Psp>,
    breakers: Arc<BreakerBoard>,
    metrics: GatewayMetrics,
}

impl InstrumentedPsp {
    pub fn new(inner: Arc<dyn Psp>, breakers: Arc<BreakerBoard>, metrics: GatewayMetrics) -> Self {
        Self {
            inner,
            breakers,
            metrics,
        }
    }

    /// Only mutating calls feed the breaker: a PSP whose reads work while its charges time out
    /// is not healthy for the purpose of new charges.
    fn observe<T>(&self, operation: &str, started: Instant, result: &Result<T, PspError>) {
        let outcome = match result {
            Ok(_) => "ok",
            Err(e) => e.outcome_label(),
        };
        self.metrics
            .call_seconds
            .with_label_values(&[self.inner.name(), operation, outcome])
            .observe(started.elapsed().as_secs_f64());
        if operation == "inquiry" {
            return;
        }
        match result {
            Err(PspError::InFlight) => {} // says nothing about the PSP's health
            Err(e) if e.is_failure() => self.breakers.record(self.inner.name(), false),
            _ => self.breakers.record(self.inner.name(), true),
        }
    }
}

#[async_trait]
impl Psp for InstrumentedPsp {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn create_charge(
        &self,
        request: &ChargeRequest,
        idempotency_key: &str,
    ) -> Result<Charge, PspError> {
        let started = Instant::now();
        let r = self.inner.create_charge(request, idempotency_key).await;
        self.observe("charge", started, &r);
        r
    }

    async fn charges_for(&self, payment_id: PaymentId) -> Result<Vec<Charge>, PspError> {
        let started = Instant::now();
        let r = self.inner.charges_for(payment_id).await;
        self.observe("inquiry", started, &r);
        r
    }

    async fn capture(
        &self,
        charge_id: &str,
        amount: Option<i64>,
        idempotency_key: &str,
    ) -> Result<Charge, PspError> {
        let started = Instant::now();
        let r = self.inner.capture(charge_id, amount, idempotency_key).await;
        self.observe("capture", started, &r);
        r
    }

    async fn cancel(&self, charge_id: &str, idempotency_key: &str) -> Result<Charge, PspError> {
        let started = Instant::now();
        let r = self.inner.cancel(charge_id, idempotency_key).await;
        self.observe("cancel", started, &r);
        r
    }

    async fn refund(
        &self,
        charge_id: &str,
        amount: i64,
        idempotency_key: &str,
    ) -> Result<Refund, PspError> {
        let started = Instant::now();
        let r = self.inner.refund(charge_id, amount, idempotency_key).await;
        self.observe("refund", started, &r);
        r
    }
}
