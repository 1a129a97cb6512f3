//! The order of one payment and how each event moves it: pure rules, no I/O.
//!
//! Events reach the store from three topics with no ordering between them, so any event may be
//! the first one seen for a payment. Each carries the payment's merchant, amount and currency,
//! which is enough to create the order; the request's details arrive whenever they arrive.

pub mod outcomes;
pub mod ports;

use std::collections::BTreeMap;

use paystream_domain::{
    Amount, CaptureMode, Currency, CustomerId, MerchantId, PaymentId, PaymentRequested,
    PaymentStatus, PspOutcome, PspResult, RiskDecided, RiskDecision,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub payment_id: PaymentId,
    pub merchant_id: MerchantId,
    pub amount: Amount,
    pub currency: Currency,
    pub customer_id: Option<CustomerId>,
    pub capture: Option<CaptureMode>,
    pub description: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub status: PaymentStatus,
    pub amount_captured: i64,
    pub amount_refunded: i64,
    pub psp: Option<String>,
    pub charge_id: Option<String>,
    pub decline_code: Option<String>,
    pub failure_reason: Option<String>,
    pub risk_score: Option<u32>,
    pub risk_reasons: Option<Vec<String>>,
    /// Optimistic lock: the version the row had when read, bumped by every write.
    pub version: i32,
}

impl Order {
    /// A payment nobody has decided on yet: where every order starts, whichever event came first.
    pub fn new(
        payment_id: PaymentId,
        merchant_id: MerchantId,
        amount: Amount,
        currency: Currency,
    ) -> Self {
        Self {
            payment_id,
            merchant_id,
            amount,
            currency,
            customer_id: None,
            capture: None,
            description: None,
            metadata: BTreeMap::new(),
            status: PaymentStatus::Processing,
            amount_captured: 0,
            amount_refunded: 0,
            psp: None,
            charge_id: None,
            decline_code: None,
            failure_reason: None,
            risk_score: None,
            risk_reasons: None,
            version: 1,
        }
    }

    fn fill_request(&mut self, request: &PaymentRequested) {
        self.customer_id = Some(request.customer_id.clone());
        self.capture = Some(request.capture);
        self.description.clone_from(&request.description);
        self.metadata.clone_from(&request.metadata);
    }
}

pub fn capture_mode_str(mode: CaptureMode) -> &'static str {
    match mode {
        CaptureMode::Automatic => "automatic",
        CaptureMode::Manual => "manual",
    }
}

pub fn parse_capture_mode(raw: &str) -> Option<CaptureMode> {
    match raw {
        "automatic" => Some(CaptureMode::Automatic),
        "manual" => Some(CaptureMode::Manual),
        _ => None,
    }
}

/// The events the store understands, already typed.
#[derive(Debug, Clone, Copy)]
pub enum OrderEvent<'a> {
    Requested(&'a PaymentRequested),
    RiskDecided(&'a RiskDecided),
    PspResult(&'a PspResult),
}

impl OrderEvent<'_> {
    fn identity(&self) -> (&MerchantId, Amount, Currency) {
        match self {
            Self::Requested(r) => (&r.merchant_id, r.amount, r.currency),
            Self::RiskDecided(d) => (&d.request.merchant_id, d.request.amount, d.request.currency),
            Self::PspResult(p) => (&p.merchant_id, p.amount, p.currency),
        }
    }

    /// The status the event asks for; `None` for events that only add information.
    fn target(&self) -> Option<PaymentStatus> {
        match self {
            Self::Requested(_) => None,
            Self::RiskDecided(d) => match d.decision {
                RiskDecision::Approved => None,
                RiskDecision::Declined => Some(PaymentStatus::Declined),
            },
            Self::PspResult(p) => Some(match p.outcome {
                PspOutcome::Succeeded => PaymentStatus::Succeeded,
                PspOutcome::RequiresCapture => PaymentStatus::RequiresCapture,
                PspOutcome::Declined => PaymentStatus::Declined,
                PspOutcome::Failed => PaymentStatus::Failed,
            }),
        }
    }
}

/// The history row of one event: what it found, what it asked for, whether it was applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct History {
    /// `None` when the event created the order.
    pub from: Option<PaymentStatus>,
    pub to: Option<PaymentStatus>,
    pub applied: bool,
    pub note: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Nothing to store besides the history row.
    None,
    Insert,
    /// Update the row only if it still has this version.
    Update {
        expected_version: i32,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub order: Order,
    pub write: Write,
    pub history: History,
}

/// Applies one event to the order (absent if no event was seen for the payment yet).
///
/// A transition the state machine refuses changes nothing and is reported, not raised: an
/// out-of-order or repeated result is a normal occurrence on an at-least-once stream, not a
/// broken record.
pub fn apply(current: Option<Order>, payment_id: PaymentId, event: OrderEvent<'_>) -> Change {
    let (merchant_id, amount, currency) = event.identity();
    let created = current.is_none();
    let base =
        current.unwrap_or_else(|| Order::new(payment_id, merchant_id.clone(), amount, currency));
    let from = (!created).then_some(base.status);
    let mut notes = Vec::new();
    if created {
        notes.push("order created".to_owned());
    }
    notes.extend(identity_mismatches(&base, merchant_id, amount, currency));

    if let Some(target) = event.target()
        && !base.status.can_become(target)
    {
        notes.push(format!("refused: {} cannot become {target}", base.status));
        return Change {
            write: if created { Write::Insert } else { Write::None },
            history: History {
                from,
                to: Some(target),
                applied: false,
                note: notes.join("; "),
            },
            order: base,
        };
    }

    let mut next = base.clone();
    match event {
        OrderEvent::Requested(request) => {
            next.fill_request(request);
            notes.push("request details recorded".to_owned());
        }
        OrderEvent::RiskDecided(decided) => {
            // The decision carries the whole request, so the details need not wait for it.
            next.fill_request(&decided.request);
            next.risk_score = Some(decided.score);
            next.risk_reasons = Some(decided.reasons.clone());
            if let Some(target) = event.target() {
                next.status = target;
            }
            let verdict = match decided.decision {
                RiskDecision::Approved => "approved",
                RiskDecision::Declined => "declined",
            };
            notes.push(format!("risk {verdict} with score {}", decided.score));
        }
        OrderEvent::PspResult(result) => {
            apply_psp_result(&mut next, result);
            if let Some(target) = event.target() {
                next.status = target;
            }
            notes.push(psp_note(result));
        }
    }

    let write = if created {
        Write::Insert
    } else if next != base {
        next.version = base.version + 1;
        Write::Update {
            expected_version: base.version,
        }
    } else {
        notes.push("nothing new".to_owned());
        Write::None
    };
    Change {
        history: History {
            from,
            to: Some(next.status),
            applied: true,
            note: notes.join("; "),
        },
        order: next,
        write,
    }
}

fn apply_psp_result(order: &mut Order, result: &PspResult) {
    order.psp = Some(result.psp.clone());
    if result.charge_id.is_some() {
        order.charge_id.clone_from(&result.charge_id);
    }
    match result.outcome {
        PspOutcome::Succeeded => order.amount_captured = result.amount_captured,
        PspOutcome::RequiresCapture => {}
        PspOutcome::Declined => {
            order.decline_code = Some(
                result
                    .decline_code
                    .clone()
                    .unwrap_or_else(|| "declined".to_owned()),
            );
        }
        PspOutcome::Failed => {
            order.failure_reason = Some(
                result
                    .message
                    .clone()
                    .unwrap_or_else(|| "the payment could not be processed".to_owned()),
            );
        }
    }
}

fn psp_note(result: &PspResult) -> String {
    let psp = &result.psp;
    match result.outcome {
        PspOutcome::Succeeded => {
            format!("psp {psp}: succeeded, captured {}", result.amount_captured)
        }
        PspOutcome::RequiresCapture => format!("psp {psp}: authorised, requires capture"),
        PspOutcome::Declined => format!(
            "psp {psp}: declined ({})",
            result.decline_code.as_deref().unwrap_or("no code")
        ),
        PspOutcome::Failed => format!(
            "psp {psp}: failed ({})",
            result.message.as_deref().unwrap_or("no message")
        ),
    }
}

/// The order keeps what it was created with; a disagreeing event is noted for the validator and
/// analysts rather than trusted, since the first event and the later one cannot both be right.
fn identity_mismatches(
    order: &Order,
    merchant_id: &MerchantId,
    amount: Amount,
    currency: Currency,
) -> Vec<String> {
    let mut notes = Vec::new();
    if &order.merchant_id != merchant_id {
        notes.push(format!(
            "mismatch: order merchant {} but event merchant {merchant_id}",
            order.merchant_id
        ));
    }
    if order.amount != amount {
        notes.push(format!(
            "mismatch: order amount {} but event amount {}",
            order.amount.minor(),
            amount.minor()
        ));
    }
    if order.currency != currency {
        notes.push(format!(
            "mismatch: order currency {} but event currency {currency}",
            order.currency
        ));
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;
    use paystream_domain::PaymentMethod;

    fn request() -> PaymentRequested {
        PaymentRequested {
            merchant_id: MerchantId::parse("m_1").unwrap(),
            amount: Amount::new(1_000).unwrap(),
            currency: Currency::parse("EUR").unwrap(),
            customer_id: CustomerId::parse("c_1").unwrap(),
            payment_method: PaymentMethod::parse("pm_card_visa").unwrap(),
            capture: CaptureMode::Automatic,
            description: Some("tea".into()),
            metadata: BTreeMap::from([("order".into(), "42".into())]),
        }
    }

    fn psp(outcome: PspOutcome) -> PspResult {
        PspResult {
            merchant_id: MerchantId::parse("m_1").unwrap(),
            outcome,
            psp: "alpha".into(),
            charge_id: Some("ch_1".into()),
            amount: Amount::new(1_000).unwrap(),
            currency: Currency::parse("EUR").unwrap(),
            amount_captured: if outcome == PspOutcome::Succeeded {
                1_000
            } else {
                0
            },
            decline_code: (outcome == PspOutcome::Declined).then(|| "card_declined".into()),
            message: None,
        }
    }

    fn risk(decision: RiskDecision) -> RiskDecided {
        RiskDecided {
            decision,
            score: 12,
            reasons: vec!["amount_limit: ok".into()],
            request: request(),
        }
    }

    #[test]
    fn a_result_before_the_request_creates_the_order_and_the_request_fills_it() {
        let id = PaymentId::new();
        let result = psp(PspOutcome::Succeeded);
        let first = apply(None, id, OrderEvent::PspResult(&result));
        assert_eq!(first.write, Write::Insert);
        assert_eq!(first.order.status, PaymentStatus::Succeeded);
        assert_eq!(first.order.amount_captured, 1_000);
        assert_eq!(first.history.from, None);
        assert!(first.history.applied);

        let req = request();
        let second = apply(Some(first.order), id, OrderEvent::Requested(&req));
        assert_eq!(
            second.write,
            Write::Update {
                expected_version: 1
            }
        );
        assert_eq!(second.order.version, 2);
        assert_eq!(second.order.status, PaymentStatus::Succeeded);
        assert_eq!(
            second.order.customer_id.as_ref().map(|c| c.as_str()),
            Some("c_1")
        );
        assert_eq!(second.order.description.as_deref(), Some("tea"));
    }

    #[test]
    fn refused_transitions_are_reported_and_change_nothing() {
        let id = PaymentId::new();
        let succeeded = psp(PspOutcome::Succeeded);
        let order = apply(None, id, OrderEvent::PspResult(&succeeded)).order;
        let declined = psp(PspOutcome::Declined);
        let change = apply(Some(order.clone()), id, OrderEvent::PspResult(&declined));
        assert_eq!(change.write, Write::None);
        assert_eq!(change.order, order);
        assert_eq!(
            change.history,
            History {
                from: Some(PaymentStatus::Succeeded),
                to: Some(PaymentStatus::Declined),
                applied: false,
                note: "refused: succeeded cannot become declined".into(),
            }
        );
    }

    #[test]
    fn an_event_that_adds_nothing_does_not_bump_the_version() {
        let id = PaymentId::new();
        let req = request();
        let order = apply(None, id, OrderEvent::Requested(&req)).order;
        let again = apply(Some(order.clone()), id, OrderEvent::Requested(&req));
        assert_eq!(again.write, Write::None);
        assert_eq!(again.order.version, order.version);
        assert!(again.history.applied);
    }

    #[test]
    fn risk_approval_keeps_processing_and_a_decline_ends_the_payment() {
        let id = PaymentId::new();
        let approved = risk(RiskDecision::Approved);
        let change = apply(None, id, OrderEvent::RiskDecided(&approved));
        assert_eq!(change.order.status, PaymentStatus::Processing);
        assert_eq!(change.order.risk_score, Some(12));

        let declined = risk(RiskDecision::Declined);
        let change = apply(Some(change.order), id, OrderEvent::RiskDecided(&declined));
        assert_eq!(change.order.status, PaymentStatus::Declined);
        assert_eq!(
            change.write,
            Write::Update {
                expected_version: 1
            }
        );
    }

    #[test]
    fn psp_outcomes_map_to_statuses_with_their_details() {
        let id = PaymentId::new();
        let auth = psp(PspOutcome::RequiresCapture);
        let order = apply(None, id, OrderEvent::PspResult(&auth)).order;
        assert_eq!(order.status, PaymentStatus::RequiresCapture);
        assert_eq!(order.amount_captured, 0);
        let captured = psp(PspOutcome::Succeeded);
        let order = apply(Some(order), id, OrderEvent::PspResult(&captured)).order;
        assert_eq!(order.status, PaymentStatus::Succeeded);
        assert_eq!(order.amount_captured, 1_000);

        let declined = psp(PspOutcome::Declined);
        let order = apply(None, id, OrderEvent::PspResult(&declined)).order;
        assert_eq!(order.decline_code.as_deref(), Some("card_declined"));
        let failed = psp(PspOutcome::Failed);
        let order = apply(None, id, OrderEvent::PspResult(&failed)).order;
        assert_eq!(order.status, PaymentStatus::Failed);
        assert!(order.failure_reason.is_some());
    }

    #[test]
    fn a_disagreeing_amount_is_noted_and_the_first_one_kept() {
        let id = PaymentId::new();
        let req = request();
        let order = apply(None, id, OrderEvent::Requested(&req)).order;
        let mut result = psp(PspOutcome::Succeeded);
        result.amount = Amount::new(2_000).unwrap();
        let change = apply(Some(order), id, OrderEvent::PspResult(&result));
        assert_eq!(change.order.amount.minor(), 1_000);
        assert!(change.history.note.contains("mismatch: order amount 1000"));
    }
}
