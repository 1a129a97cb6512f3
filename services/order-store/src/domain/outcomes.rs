//! The outcomes of merchant commands at the PSP (`payment.captured`, `payment.canceled`,
//! `payment.refunded`, `payment.command_failed`) and how each moves an order.
//!
//! Unlike the request and the first PSP result, these events cannot create an order (they carry
//! no authorised amount), and each needs a particular state: a capture or cancel needs an
//! authorisation (`requires_capture`), a refund needs captured money. Kafka gives no order
//! between topics, and a record on a retry topic comes back later than its successors, so an
//! outcome may arrive before the state it needs. Such an event is parked and applied once the
//! order has moved (see the handler), never applied to the wrong state and never dropped.

use paystream_domain::{
    CommandFailed, CommandKind, Currency, MerchantId, PaymentCanceled, PaymentCaptured,
    PaymentRefunded, PaymentStatus,
};

use super::{History, Order};

#[derive(Debug, Clone, Copy)]
pub enum OutcomeEvent<'a> {
    Captured(&'a PaymentCaptured),
    Canceled(&'a PaymentCanceled),
    /// `already_applied`: a refund with this `refund_id` is already part of the order (the same
    /// refund published again under another event id).
    Refunded {
        refund: &'a PaymentRefunded,
        already_applied: bool,
    },
    CommandFailed(&'a CommandFailed),
}

/// A refund to remember with the order, so that it is applied once per `refund_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedRefund {
    pub refund_id: String,
    pub amount: i64,
    pub currency: Currency,
    pub psp: String,
    pub psp_refund_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Write `order` (its version already bumped) if the row still has `expected_version`.
    Apply {
        order: Box<Order>,
        expected_version: i32,
        history: History,
        refund: Option<AppliedRefund>,
    },
    /// Only a history row: a refusal, a repeat, or an event that is history by nature.
    Record(History),
    /// The order has not reached the state this event needs; keep it and try again after the
    /// order's next change. The text says what it waits for.
    Park(String),
}

impl Decision {
    /// Whether the order row changes, which is what can make parked events applicable.
    pub fn changes_order(&self) -> bool {
        matches!(self, Self::Apply { .. })
    }
}

fn record(order: &Order, applied: bool, note: String) -> Decision {
    Decision::Record(History {
        from: Some(order.status),
        to: Some(order.status),
        applied,
        note,
    })
}

fn refuse(order: &Order, target: PaymentStatus, note: String) -> Decision {
    Decision::Record(History {
        from: Some(order.status),
        to: Some(target),
        applied: false,
        note: format!("refused: {note}"),
    })
}

fn apply(order: &Order, next: Order, note: String, refund: Option<AppliedRefund>) -> Decision {
    let mut next = next;
    next.version = order.version + 1;
    Decision::Apply {
        history: History {
            from: Some(order.status),
            to: Some(next.status),
            applied: true,
            note,
        },
        order: Box::new(next),
        expected_version: order.version,
        refund,
    }
}

/// The merchant and currency are the order's; an outcome that names others belongs to another
/// payment or is corrupt, and applying it would move money on the wrong order.
fn foreign(order: &Order, merchant: &MerchantId, currency: Option<Currency>) -> Option<String> {
    if &order.merchant_id != merchant {
        return Some(format!(
            "the event names merchant {merchant} but the order belongs to {}",
            order.merchant_id
        ));
    }
    match currency {
        Some(c) if c != order.currency => Some(format!(
            "the event is in {c} but the order is in {}",
            order.currency
        )),
        _ => None,
    }
}

/// What `event` does to the order (absent when no event created it yet).
pub fn decide(current: Option<&Order>, event: OutcomeEvent<'_>) -> Decision {
    match event {
        OutcomeEvent::Captured(c) => captured(current, c),
        OutcomeEvent::Canceled(c) => canceled(current, c),
        OutcomeEvent::Refunded {
            refund,
            already_applied,
        } => refunded(current, refund, already_applied),
        OutcomeEvent::CommandFailed(f) => command_failed(current, f),
    }
}

fn captured(current: Option<&Order>, c: &PaymentCaptured) -> Decision {
    use PaymentStatus::*;
    let Some(order) = current else {
        return Decision::Park("no order yet; waiting for the authorisation".into());
    };
    if let Some(why) = foreign(order, &c.merchant_id, Some(c.currency)) {
        return refuse(order, Succeeded, why);
    }
    match order.status {
        Processing => Decision::Park(
            "the order is still processing; waiting for the authorisation (requires_capture)"
                .into(),
        ),
        RequiresCapture if c.amount_captured > order.amount.minor() => refuse(
            order,
            Succeeded,
            format!(
                "capture of {} is above the authorised {}",
                c.amount_captured,
                order.amount.minor()
            ),
        ),
        RequiresCapture => {
            let mut next = order.clone();
            next.status = Succeeded;
            next.amount_captured = c.amount_captured;
            next.psp = Some(c.psp.clone());
            let mut note = format!(
                "captured {} of {} by command {} at {}",
                c.amount_captured,
                order.amount.minor(),
                c.command_id,
                c.psp
            );
            match &order.charge_id {
                Some(known) if known != &c.charge_id => note.push_str(&format!(
                    "; mismatch: the capture names charge {} but the order has {known}",
                    c.charge_id
                )),
                Some(_) => {}
                None => next.charge_id = Some(c.charge_id.clone()),
            }
            apply(order, next, note, None)
        }
        Succeeded if order.amount_captured == c.amount_captured => record(
            order,
            false,
            format!(
                "already captured {}; repeated capture (command {}) ignored",
                c.amount_captured, c.command_id
            ),
        ),
        status => refuse(
            order,
            Succeeded,
            format!(
                "a {status} payment cannot be captured (capture of {} by command {})",
                c.amount_captured, c.command_id
            ),
        ),
    }
}

fn canceled(current: Option<&Order>, c: &PaymentCanceled) -> Decision {
    use PaymentStatus::*;
    let Some(order) = current else {
        return Decision::Park("no order yet; waiting for the authorisation".into());
    };
    if let Some(why) = foreign(order, &c.merchant_id, None) {
        return refuse(order, Canceled, why);
    }
    match order.status {
        Processing => Decision::Park(
            "the order is still processing; waiting for the authorisation (requires_capture)"
                .into(),
        ),
        RequiresCapture => {
            let mut next = order.clone();
            next.status = Canceled;
            next.psp = Some(c.psp.clone());
            if next.charge_id.is_none() {
                next.charge_id = Some(c.charge_id.clone());
            }
            let note = format!("canceled by command {} at {}", c.command_id, c.psp);
            apply(order, next, note, None)
        }
        Canceled => record(
            order,
            false,
            format!(
                "already canceled; repeated cancel (command {}) ignored",
                c.command_id
            ),
        ),
        status => refuse(
            order,
            Canceled,
            format!(
                "a {status} payment cannot be canceled (command {})",
                c.command_id
            ),
        ),
    }
}

fn refunded(current: Option<&Order>, r: &PaymentRefunded, already_applied: bool) -> Decision {
    use PaymentStatus::*;
    let Some(order) = current else {
        return Decision::Park("no order yet; waiting for the capture".into());
    };
    if already_applied {
        return record(
            order,
            false,
            format!(
                "refund {} was already applied; repeated refund ignored",
                r.refund_id
            ),
        );
    }
    if let Some(why) = foreign(order, &r.merchant_id, Some(r.currency)) {
        return refuse(order, order.status, why);
    }
    match order.status {
        Processing | RequiresCapture => Decision::Park(format!(
            "the order is {}; waiting for the capture",
            order.status
        )),
        Succeeded => {
            let amount = r.amount.minor();
            let refunded = order.amount_refunded.saturating_add(amount);
            if refunded > order.amount_captured {
                return refuse(
                    order,
                    Succeeded,
                    format!(
                        "refund {} of {amount} would bring the refunded total to {refunded}, above the captured {}",
                        r.refund_id, order.amount_captured
                    ),
                );
            }
            let mut next = order.clone();
            next.amount_refunded = refunded;
            let note = format!(
                "refund {} of {amount} at {} ({}); refunded {refunded} of {}",
                r.refund_id, r.psp, r.psp_refund_id, order.amount_captured
            );
            let refund = AppliedRefund {
                refund_id: r.refund_id.clone(),
                amount,
                currency: r.currency,
                psp: r.psp.clone(),
                psp_refund_id: r.psp_refund_id.clone(),
            };
            apply(order, next, note, Some(refund))
        }
        status => refuse(
            order,
            status,
            format!(
                "a {status} payment has no captured money to refund (refund {})",
                r.refund_id
            ),
        ),
    }
}

/// A command the PSP refused changes nothing about the payment (the ingress releases what it
/// reserved); the store keeps it in the history so the order's story is complete.
fn command_failed(current: Option<&Order>, f: &CommandFailed) -> Decision {
    let command = match f.command {
        CommandKind::Capture => "capture",
        CommandKind::Cancel => "cancel",
        CommandKind::Refund => "refund",
    };
    let note = format!(
        "{command} {} failed at the PSP: {} ({})",
        f.command_id, f.code, f.message
    );
    let status = current.map(|o| o.status);
    Decision::Record(History {
        from: status,
        to: status,
        applied: true,
        note,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use paystream_domain::{Amount, PaymentId};

    fn order(status: PaymentStatus) -> Order {
        let mut o = Order::new(
            PaymentId::new(),
            MerchantId::parse("m_1").unwrap(),
            Amount::new(1_000).unwrap(),
            Currency::parse("EUR").unwrap(),
        );
        o.status = status;
        o.charge_id = Some("ch_1".into());
        if status == PaymentStatus::Succeeded {
            o.amount_captured = 1_000;
        }
        o.version = 3;
        o
    }

    fn capture(amount: i64) -> PaymentCaptured {
        PaymentCaptured {
            merchant_id: MerchantId::parse("m_1").unwrap(),
            command_id: "cmd_1".into(),
            psp: "alpha".into(),
            charge_id: "ch_1".into(),
            currency: Currency::parse("EUR").unwrap(),
            amount_captured: amount,
        }
    }

    fn refund_event(id: &str, amount: i64) -> PaymentRefunded {
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

    fn applied(d: Decision) -> (Order, i32, History, Option<AppliedRefund>) {
        match d {
            Decision::Apply {
                order,
                expected_version,
                history,
                refund,
            } => (*order, expected_version, history, refund),
            other => panic!("expected Apply, got {other:?}"),
        }
    }

    #[test]
    fn a_capture_moves_an_authorisation_to_succeeded_with_the_captured_amount() {
        let o = order(PaymentStatus::RequiresCapture);
        let (next, expected, history, _) =
            applied(decide(Some(&o), OutcomeEvent::Captured(&capture(800))));
        assert_eq!(next.status, PaymentStatus::Succeeded);
        assert_eq!(next.amount_captured, 800);
        assert_eq!((expected, next.version), (3, 4));
        assert_eq!(history.from, Some(PaymentStatus::RequiresCapture));
        assert_eq!(history.to, Some(PaymentStatus::Succeeded));
    }

    #[test]
    fn a_capture_before_the_authorisation_is_parked_and_a_late_one_refused() {
        assert!(matches!(
            decide(None, OutcomeEvent::Captured(&capture(1_000))),
            Decision::Park(_)
        ));
        let processing = order(PaymentStatus::Processing);
        assert!(matches!(
            decide(Some(&processing), OutcomeEvent::Captured(&capture(1_000))),
            Decision::Park(_)
        ));
        let canceled = order(PaymentStatus::Canceled);
        match decide(Some(&canceled), OutcomeEvent::Captured(&capture(1_000))) {
            Decision::Record(h) => assert!(!h.applied && h.note.starts_with("refused")),
            other => panic!("{other:?}"),
        }
        let over = order(PaymentStatus::RequiresCapture);
        match decide(Some(&over), OutcomeEvent::Captured(&capture(1_001))) {
            Decision::Record(h) => assert!(h.note.contains("above the authorised")),
            other => panic!("{other:?}"),
        }
        let done = order(PaymentStatus::Succeeded);
        match decide(Some(&done), OutcomeEvent::Captured(&capture(1_000))) {
            Decision::Record(h) => assert!(!h.applied && h.note.contains("repeated capture")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refunds_add_up_to_the_capture_and_never_beyond() {
        let o = order(PaymentStatus::Succeeded);
        let (o, _, _, refund) = applied(decide(
            Some(&o),
            OutcomeEvent::Refunded {
                refund: &refund_event("re_1", 600),
                already_applied: false,
            },
        ));
        assert_eq!(o.amount_refunded, 600);
        assert_eq!(refund.map(|r| r.amount), Some(600));
        match decide(
            Some(&o),
            OutcomeEvent::Refunded {
                refund: &refund_event("re_2", 401),
                already_applied: false,
            },
        ) {
            Decision::Record(h) => assert!(!h.applied && h.note.contains("above the captured")),
            other => panic!("{other:?}"),
        }
        let (o, _, _, _) = applied(decide(
            Some(&o),
            OutcomeEvent::Refunded {
                refund: &refund_event("re_3", 400),
                already_applied: false,
            },
        ));
        assert_eq!(
            (o.amount_refunded, o.status),
            (1_000, PaymentStatus::Succeeded)
        );
        match decide(
            Some(&o),
            OutcomeEvent::Refunded {
                refund: &refund_event("re_3", 400),
                already_applied: true,
            },
        ) {
            Decision::Record(h) => assert!(h.note.contains("already applied")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_refund_before_the_capture_waits_and_one_on_a_dead_payment_is_refused() {
        for status in [PaymentStatus::Processing, PaymentStatus::RequiresCapture] {
            let o = order(status);
            let d = decide(
                Some(&o),
                OutcomeEvent::Refunded {
                    refund: &refund_event("re_1", 100),
                    already_applied: false,
                },
            );
            assert!(matches!(d, Decision::Park(_)), "{status}");
        }
        let declined = order(PaymentStatus::Declined);
        let d = decide(
            Some(&declined),
            OutcomeEvent::Refunded {
                refund: &refund_event("re_1", 100),
                already_applied: false,
            },
        );
        assert!(matches!(d, Decision::Record(ref h) if !h.applied), "{d:?}");
    }

    #[test]
    fn an_outcome_for_another_merchant_or_currency_is_refused() {
        let o = order(PaymentStatus::RequiresCapture);
        let mut c = capture(1_000);
        c.currency = Currency::parse("USD").unwrap();
        assert!(matches!(
            decide(Some(&o), OutcomeEvent::Captured(&c)),
            Decision::Record(ref h) if !h.applied
        ));
        let mut c = capture(1_000);
        c.merchant_id = MerchantId::parse("m_2").unwrap();
        assert!(matches!(
            decide(Some(&o), OutcomeEvent::Captured(&c)),
            Decision::Record(ref h) if !h.applied
        ));
    }

    #[test]
    fn cancel_needs_an_authorisation_and_a_failed_command_is_history_only() {
        let cancel = PaymentCanceled {
            merchant_id: MerchantId::parse("m_1").unwrap(),
            command_id: "cmd_2".into(),
            psp: "alpha".into(),
            charge_id: "ch_1".into(),
        };
        let o = order(PaymentStatus::RequiresCapture);
        let (next, _, _, _) = applied(decide(Some(&o), OutcomeEvent::Canceled(&cancel)));
        assert_eq!(next.status, PaymentStatus::Canceled);
        assert!(matches!(
            decide(Some(&next), OutcomeEvent::Canceled(&cancel)),
            Decision::Record(ref h) if !h.applied
        ));
        let failed = CommandFailed {
            merchant_id: MerchantId::parse("m_1").unwrap(),
            command: CommandKind::Capture,
            command_id: "cmd_3".into(),
            code: "charge_expired".into(),
            message: "too late".into(),
        };
        let d = decide(Some(&o), OutcomeEvent::CommandFailed(&failed));
        assert!(!d.changes_order());
        assert!(matches!(d, Decision::Record(ref h) if h.note.contains("capture cmd_3 failed")));
    }
}
