//! A circuit breaker per PSP, so that a PSP that stopped answering is not sent every new
//! payment only to time out on each.
//!
//! The one rule that keeps customers from being charged twice limits what an open breaker may
//! do: it may only make the gateway *skip* a PSP for a NEW charge attempt (no attempt row exists
//! there yet, so nothing can have been charged). It never blocks the resolution of an unknown
//! outcome: an attempt in doubt at a PSP is resolved at that PSP, with its key, whatever the
//! breaker says, because moving such a payment to another PSP is the classic double charge.
//! Captures, cancels and refunds must go to the PSP holding the charge, so they are not gated
//! either; all calls feed the breaker.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    HalfOpen,
    Open,
}

impl BreakerState {
    /// Gauge value: 0 closed, 1 half-open, 2 open.
    pub fn gauge(&self) -> i64 {
        match self {
            Self::Closed => 0,
            Self::HalfOpen => 1,
            Self::Open => 2,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::HalfOpen => "half_open",
            Self::Open => "open",
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Inner {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe at a time; a probe that never reports (its caller failed before calling) is
    /// given up after a cool-down so the PSP is not skipped forever.
    HalfOpen {
        probe_since: Option<Instant>,
    },
}

/// The state machine, with time passed in so that it is tested without sleeping.
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    threshold: u32,
    cooldown: Duration,
    inner: Inner,
}

impl CircuitBreaker {
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            cooldown,
            inner: Inner::Closed { failures: 0 },
        }
    }

    pub fn state(&self) -> BreakerState {
        match self.inner {
            Inner::Closed { .. } => BreakerState::Closed,
            Inner::Open { .. } => BreakerState::Open,
            Inner::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// May a new charge attempt go to this PSP now? Open → half-open after the cool-down, and
    /// then one attempt is let through as the probe.
    pub fn allow_new_attempt(&mut self, now: Instant) -> bool {
        match self.inner {
            Inner::Closed { .. } => true,
            Inner::Open { until } if now < until => false,
            Inner::Open { .. } => {
                self.inner = Inner::HalfOpen {
                    probe_since: Some(now),
                };
                true
            }
            Inner::HalfOpen { probe_since: None } => {
                self.inner = Inner::HalfOpen {
                    probe_since: Some(now),
                };
                true
            }
            Inner::HalfOpen {
                probe_since: Some(since),
            } => {
                if now.saturating_duration_since(since) >= self.cooldown {
                    self.inner = Inner::HalfOpen {
                        probe_since: Some(now),
                    };
                    true
                } else {
                    false
                }
            }
        }
    }

    pub fn on_success(&mut self) {
        self.inner = Inner::Closed { failures: 0 };
    }

    /// While open, only resolution calls reach the PSP; their failures say it is still down,
    /// so the cool-down counts from the last failure, not the first.
    pub fn on_failure(&mut self, now: Instant) {
        self.inner = match self.inner {
            Inner::Closed { failures } if failures + 1 < self.threshold => Inner::Closed {
                failures: failures + 1,
            },
            _ => Inner::Open {
                until: now + self.cooldown,
            },
        };
    }
}

/// Called with (psp, new state) on every transition, for metrics and logs.
pub type TransitionObserver = Arc<dyn Fn(&str, BreakerState) + Send + Sync>;

/// The breakers of all PSPs of this instance. Breakers are per process: each gateway instance
/// learns about a PSP's health from its own calls.
pub struct BreakerBoard {
    breakers: BTreeMap<String, Mutex<CircuitBreaker>>,
    observer: TransitionObserver,
}

impl BreakerBoard {
    pub fn new(
        psps: &[String],
        threshold: u32,
        cooldown: Duration,
        observer: TransitionObserver,
    ) -> Self {
        let breakers = psps
            .iter()
            .map(|p| {
                (
                    p.clone(),
                    Mutex::new(CircuitBreaker::new(threshold, cooldown)),
                )
            })
            .collect();
        for p in psps {
            observer(p, BreakerState::Closed);
        }
        Self { breakers, observer }
    }

    fn with<T>(&self, psp: &str, f: impl FnOnce(&mut CircuitBreaker) -> T) -> Option<T> {
        let cell = self.breakers.get(psp)?;
        // The breaker is a few plain fields; a panic elsewhere cannot leave it inconsistent.
        let mut b = cell.lock().unwrap_or_else(PoisonError::into_inner);
        let before = b.state();
        let out = f(&mut b);
        let after = b.state();
        drop(b);
        if before != after {
            (self.observer)(psp, after);
        }
        Some(out)
    }

    /// Only for NEW charge attempts (see the module doc). Unknown PSPs are allowed: routing
    /// validation keeps them out anyway.
    pub fn allow_new_attempt(&self, psp: &str) -> bool {
        self.with(psp, |b| b.allow_new_attempt(Instant::now()))
            .unwrap_or(true)
    }

    pub fn record(&self, psp: &str, healthy: bool) {
        self.with(psp, |b| {
            if healthy {
                b.on_success();
            } else {
                b.on_failure(Instant::now());
            }
        });
    }

    pub fn state(&self, psp: &str) -> Option<BreakerState> {
        self.with(psp, |b| b.state())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_n_failures_probes_after_cooldown_and_closes_on_success() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(3, Duration::from_secs(10));
        b.on_failure(t0);
        b.on_failure(t0);
        assert_eq!(b.state(), BreakerState::Closed);
        b.on_success();
        b.on_failure(t0);
        b.on_failure(t0);
        assert_eq!(
            b.state(),
            BreakerState::Closed,
            "a success resets the count"
        );
        b.on_failure(t0);
        assert_eq!(b.state(), BreakerState::Open);
        assert!(!b.allow_new_attempt(t0 + Duration::from_secs(9)));
        // A failed resolution call while open pushes the probe back.
        b.on_failure(t0 + Duration::from_secs(9));
        assert!(!b.allow_new_attempt(t0 + Duration::from_secs(18)));
        let t0 = t0 + Duration::from_secs(9);
        assert!(
            b.allow_new_attempt(t0 + Duration::from_secs(10)),
            "the probe"
        );
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(
            !b.allow_new_attempt(t0 + Duration::from_secs(11)),
            "one probe at a time"
        );
        b.on_success();
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.allow_new_attempt(t0 + Duration::from_secs(11)));
    }

    #[test]
    fn a_failed_probe_opens_again_and_a_lost_probe_is_replaced() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(1, Duration::from_secs(5));
        b.on_failure(t0);
        assert!(b.allow_new_attempt(t0 + Duration::from_secs(5)));
        b.on_failure(t0 + Duration::from_secs(6));
        assert_eq!(b.state(), BreakerState::Open);
        assert!(!b.allow_new_attempt(t0 + Duration::from_secs(10)));
        assert!(b.allow_new_attempt(t0 + Duration::from_secs(11)));
        // The probe's caller never reported: after another cool-down a new probe may go.
        assert!(!b.allow_new_attempt(t0 + Duration::from_secs(12)));
        assert!(b.allow_new_attempt(t0 + Duration::from_secs(16)));
    }

    #[test]
    fn the_board_reports_transitions() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let board = BreakerBoard::new(
            &["alpha".to_owned()],
            2,
            Duration::from_secs(60),
            Arc::new(move |p: &str, st| s.lock().unwrap().push((p.to_owned(), st))),
        );
        board.record("alpha", false);
        board.record("alpha", false);
        assert!(!board.allow_new_attempt("alpha"));
        board.record("alpha", true);
        let seen = seen.lock().unwrap().clone();
        assert_eq!(
            seen.iter().map(|(_, s)| *s).collect::<Vec<_>>(),
            vec![
                BreakerState::Closed,
                BreakerState::Open,
                BreakerState::Closed
            ]
        );
    }
}
