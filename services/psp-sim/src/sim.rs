//! The simulator's state and the in-process handle tests use to steer and inspect it.

use crate::config::Faults;
use crate::domain::Event;
use crate::domain::idempotency::{Begin, Fingerprint, IdempotencyStore, StoredResponse};
use crate::domain::ledger::{Charge, ChargeStatus, Ledger, Refund};
use crate::outbound::webhook::WebhookSender;
use serde::Serialize;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::watch;

/// How often each injected fault actually fired, so a test or demo can tell "the gateway coped"
/// from "the fault never happened".
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub(crate) struct FaultStats {
    pub timeouts_lost: u64,
    pub timeouts_committed: u64,
    pub ambiguous: u64,
    pub random_declines: u64,
    pub in_flight_conflicts: u64,
}

/// Everything mutable lives under one lock, so "apply the operation" and "store its response
/// under the idempotency key" are one atomic step: no retry can observe one without the other.
#[derive(Default)]
pub(crate) struct State {
    pub ledger: Ledger,
    pub idempotency: IdempotencyStore,
    pub faults: Faults,
    pub stats: FaultStats,
}

pub(crate) struct Shared {
    pub name: String,
    pub api_key: String,
    webhook: Option<WebhookSender>,
    state: Mutex<State>,
    stopping: watch::Sender<bool>,
}

impl Shared {
    pub(crate) fn new(
        name: String,
        api_key: String,
        webhook: Option<WebhookSender>,
        faults: Faults,
    ) -> Self {
        Self {
            name,
            api_key,
            webhook,
            state: Mutex::new(State {
                faults,
                ..State::default()
            }),
            stopping: watch::Sender::new(false),
        }
    }

    /// A panic while holding the lock cannot leave the ledger half-updated (every transition is
    /// a single assignment sequence without fallible steps), so poisoning is safe to ignore.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn dispatch(&self, events: Vec<Event>) {
        if let Some(webhook) = &self.webhook {
            webhook.dispatch(events);
        }
    }

    pub(crate) fn begin(self: &Arc<Self>, key: &str, fingerprint: Fingerprint) -> Start {
        let mut state = self.lock();
        match state.idempotency.begin(key, fingerprint) {
            Begin::Reserved => Start::Reserved(Reservation {
                shared: Arc::clone(self),
                key: key.to_owned(),
                finished: false,
            }),
            Begin::InFlight => {
                state.stats.in_flight_conflicts += 1;
                Start::InFlight
            }
            Begin::Reused => Start::Reused,
            Begin::Replay(response) => Start::Replay(response),
        }
    }

    /// Sleeps, but wakes early on shutdown so a 30 s simulated hang never delays a SIGTERM.
    pub(crate) async fn pause(&self, millis: u64) {
        if millis == 0 {
            return;
        }
        let mut stopping = self.stopping.subscribe();
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(millis)) => {}
            _ = stopping.wait_for(|stopping| *stopping) => {}
        }
    }

    pub(crate) fn begin_shutdown(&self) {
        self.stopping.send_replace(true);
    }
}

pub(crate) enum Start {
    Reserved(Reservation),
    InFlight,
    Reused,
    Replay(StoredResponse),
}

/// The result of one mutating operation: what the client is (or would have been) told, and the
/// webhooks it triggers.
pub(crate) struct Outcome {
    pub response: StoredResponse,
    pub events: Vec<Event>,
}

/// Ownership of an in-flight idempotency key. Dropping it without committing (the client hung up
/// mid-latency, or a simulated timeout lost the request) frees the key, so a retry is processed
/// instead of being told `409` forever.
pub(crate) struct Reservation {
    shared: Arc<Shared>,
    key: String,
    finished: bool,
}

impl Reservation {
    pub(crate) fn commit(mut self, operation: impl FnOnce(&mut State) -> Outcome) -> Outcome {
        let shared = Arc::clone(&self.shared);
        let mut state = shared.lock();
        let outcome = operation(&mut state);
        state
            .idempotency
            .complete(&self.key, outcome.response.clone());
        self.finished = true;
        outcome
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.finished {
            self.shared.lock().idempotency.release(&self.key);
        }
    }
}

/// Cheap to clone; lets an in-process test change faults mid-test and count what the PSP really
/// did, which is the only ground truth for "charged exactly once".
#[derive(Clone)]
pub struct SimHandle {
    pub(crate) shared: Arc<Shared>,
}

impl SimHandle {
    pub fn set_faults(&self, faults: Faults) {
        self.shared.lock().faults = faults;
    }

    pub fn faults(&self) -> Faults {
        self.shared.lock().faults
    }

    /// Every charge attempt, declined ones included (status `failed`).
    pub fn charges(&self) -> Vec<Charge> {
        self.shared.lock().ledger.charges().to_vec()
    }

    pub fn refunds(&self) -> Vec<Refund> {
        self.shared.lock().ledger.refunds().to_vec()
    }

    /// Charges for a reference that reached the card (authorized, captured or later canceled).
    /// Declined attempts are left out: this is the number a double-charge check compares with 1.
    pub fn charge_count_for_reference(&self, reference: &str) -> usize {
        self.shared
            .lock()
            .ledger
            .charges_for_reference(reference)
            .filter(|c| c.status != ChargeStatus::Failed)
            .count()
    }
}
