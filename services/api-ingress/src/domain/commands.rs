//! Capture, cancel and refund: what a merchant may ask of a payment in which state. Pure rules;
//! the store runs them on what it read under the payment's row lock.

use paystream_domain::{Amount, Currency, PaymentId, PaymentStatus};
use serde::{Deserialize, Serialize};

use crate::domain::error::ApiError;
use crate::domain::payment::{FieldError, RawBody, amount_field, only_known};

/// The order as the order store has it, as far as commands care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderSnapshot {
    pub status: PaymentStatus,
    pub amount: i64,
    pub amount_captured: i64,
    pub amount_refunded: i64,
    pub currency: Currency,
}

/// Refunds the ingress accepted for one payment, by what the PSP made of them so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RefundTotals {
    pub pending: i64,
    pub succeeded: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandKind {
    Capture,
    Cancel,
}

impl CommandKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Capture => "capture",
            Self::Cancel => "cancel",
        }
    }
}

/// `POST /v1/payments/{id}/capture` after parsing (also what its idempotency hash covers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CaptureRequest {
    pub payment_id: PaymentId,
    /// `None`: everything that was authorised.
    pub amount: Option<Amount>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CancelRequest {
    pub payment_id: PaymentId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RefundRequest {
    pub payment_id: PaymentId,
    /// `None`: whatever is left to refund.
    pub amount: Option<Amount>,
}

pub fn parse_capture(raw: &RawBody, payment_id: PaymentId) -> Result<CaptureRequest, FieldError> {
    only_known(raw, &["amount"])?;
    Ok(CaptureRequest {
        payment_id,
        amount: amount_field(raw, Amount::MAX)?,
    })
}

pub fn parse_cancel(raw: &RawBody, payment_id: PaymentId) -> Result<CancelRequest, FieldError> {
    only_known(raw, &[])?;
    Ok(CancelRequest { payment_id })
}

pub fn parse_refund(raw: &RawBody, payment_id: PaymentId) -> Result<RefundRequest, FieldError> {
    only_known(raw, &["amount"])?;
    Ok(RefundRequest {
        payment_id,
        amount: amount_field(raw, Amount::MAX)?,
    })
}

fn unexpected_state(order: Option<&OrderSnapshot>, what: &str, allowed: &str) -> ApiError {
    let status = order.map_or(PaymentStatus::Processing, |o| o.status);
    ApiError::conflict(
        "payment_unexpected_state",
        format!("the payment is {status}; only {allowed} payments can be {what}"),
    )
}

fn command_in_progress(pending: CommandKind) -> ApiError {
    ApiError::conflict(
        "payment_command_in_progress",
        format!(
            "a {} of this payment is still pending; retry once it completed",
            pending.as_str()
        ),
    )
}

/// A capture is allowed of a `requires_capture` payment with no capture or cancel pending, for
/// at most the authorised amount. Returns the amount to capture (`None`: all of it).
pub fn decide_capture(
    order: Option<&OrderSnapshot>,
    pending: Option<CommandKind>,
    amount: Option<Amount>,
) -> Result<Option<Amount>, ApiError> {
    let Some(o) = order.filter(|o| o.status == PaymentStatus::RequiresCapture) else {
        return Err(unexpected_state(order, "captured", "requires_capture"));
    };
    if let Some(p) = pending {
        return Err(command_in_progress(p));
    }
    if let Some(a) = amount
        && a.minor() > o.amount
    {
        return Err(ApiError::invalid(
            "amount_too_large",
            format!(
                "amount: at most the authorised {} can be captured",
                o.amount
            ),
        )
        .param("amount"));
    }
    Ok(amount)
}

/// A cancel is allowed of a `requires_capture` payment with no capture or cancel pending.
pub fn decide_cancel(
    order: Option<&OrderSnapshot>,
    pending: Option<CommandKind>,
) -> Result<(), ApiError> {
    if order.is_none_or(|o| o.status != PaymentStatus::RequiresCapture) {
        return Err(unexpected_state(order, "canceled", "requires_capture"));
    }
    if let Some(p) = pending {
        return Err(command_in_progress(p));
    }
    Ok(())
}

/// What may still be refunded: captured, minus refunds that succeeded (as the order store or the
/// ingress knows them, whichever is more) and refunds still pending.
pub fn refundable(order: &OrderSnapshot, totals: RefundTotals) -> i64 {
    let refunded = order.amount_refunded.max(totals.succeeded);
    order.amount_captured - refunded - totals.pending
}

/// A refund is allowed of a `succeeded` payment, for at most what is still refundable. Returns
/// the amount to reserve.
pub fn decide_refund(
    order: Option<&OrderSnapshot>,
    totals: RefundTotals,
    amount: Option<Amount>,
) -> Result<Amount, ApiError> {
    let Some(o) = order.filter(|o| o.status == PaymentStatus::Succeeded) else {
        return Err(unexpected_state(order, "refunded", "succeeded"));
    };
    let left = refundable(o, totals);
    let exceeds = |msg: String| ApiError::invalid("amount_exceeds_refundable", msg).param("amount");
    match amount {
        Some(a) if a.minor() > left => Err(exceeds(format!(
            "amount: at most {} can still be refunded (captured {}, refunded or pending {})",
            left.max(0),
            o.amount_captured,
            o.amount_captured - left
        ))),
        Some(a) => Ok(a),
        None => Amount::new(left)
            .map_err(|_| exceeds("amount: nothing is left to refund on this payment".to_owned())),
    }
}

/// A refund as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RefundView {
    /// `re_<uuid>`.
    pub id: String,
    /// Always `refund`.
    pub object: String,
    /// The payment's id.
    pub payment: String,
    pub amount: i64,
    pub currency: String,
    /// pending | succeeded | failed
    pub status: String,
    pub failure_code: Option<String>,
    /// Unix seconds.
    pub created: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(status: PaymentStatus, captured: i64, refunded: i64) -> OrderSnapshot {
        OrderSnapshot {
            status,
            amount: 1000,
            amount_captured: captured,
            amount_refunded: refunded,
            currency: Currency::parse("EUR").unwrap(),
        }
    }

    fn amt(v: i64) -> Option<Amount> {
        Some(Amount::new(v).unwrap())
    }

    #[test]
    fn capture_only_from_requires_capture_and_within_the_authorisation() {
        let o = order(PaymentStatus::RequiresCapture, 0, 0);
        assert_eq!(decide_capture(Some(&o), None, None), Ok(None));
        assert_eq!(decide_capture(Some(&o), None, amt(600)), Ok(amt(600)));
        assert_eq!(
            decide_capture(Some(&o), None, amt(1001)).unwrap_err().code,
            "amount_too_large"
        );
        assert_eq!(
            decide_capture(Some(&o), Some(CommandKind::Cancel), None)
                .unwrap_err()
                .code,
            "payment_command_in_progress"
        );
        for s in [
            PaymentStatus::Succeeded,
            PaymentStatus::Canceled,
            PaymentStatus::Declined,
        ] {
            let e = decide_capture(Some(&order(s, 0, 0)), None, None).unwrap_err();
            assert_eq!((e.status, e.code), (409, "payment_unexpected_state"));
        }
        let e = decide_capture(None, None, None).unwrap_err();
        assert!(e.message.contains("processing"), "{}", e.message);
    }

    #[test]
    fn cancel_only_from_requires_capture() {
        let o = order(PaymentStatus::RequiresCapture, 0, 0);
        assert_eq!(decide_cancel(Some(&o), None), Ok(()));
        assert_eq!(
            decide_cancel(Some(&o), Some(CommandKind::Capture))
                .unwrap_err()
                .code,
            "payment_command_in_progress"
        );
        assert_eq!(
            decide_cancel(Some(&order(PaymentStatus::Succeeded, 1000, 0)), None)
                .unwrap_err()
                .code,
            "payment_unexpected_state"
        );
    }

    #[test]
    fn refunds_never_exceed_the_capture_counting_pending_ones() {
        let o = order(PaymentStatus::Succeeded, 1000, 0);
        let none = RefundTotals::default();
        assert_eq!(
            decide_refund(Some(&o), none, None),
            Ok(Amount::new(1000).unwrap())
        );
        assert_eq!(
            decide_refund(Some(&o), none, amt(400)),
            Ok(Amount::new(400).unwrap())
        );
        let some = RefundTotals {
            pending: 300,
            succeeded: 200,
        };
        assert_eq!(
            decide_refund(Some(&o), some, None),
            Ok(Amount::new(500).unwrap())
        );
        assert_eq!(
            decide_refund(Some(&o), some, amt(501)).unwrap_err().code,
            "amount_exceeds_refundable"
        );
        // The order store may know of refunds the ingress did not make.
        let o2 = order(PaymentStatus::Succeeded, 1000, 900);
        assert_eq!(
            decide_refund(Some(&o2), some, None)
                .unwrap_err()
                .param
                .as_deref(),
            Some("amount")
        );
        let all = RefundTotals {
            pending: 0,
            succeeded: 1000,
        };
        assert_eq!(
            decide_refund(Some(&o), all, None).unwrap_err().code,
            "amount_exceeds_refundable"
        );
        assert_eq!(
            decide_refund(
                Some(&order(PaymentStatus::RequiresCapture, 0, 0)),
                none,
                None
            )
            .unwrap_err()
            .code,
            "payment_unexpected_state"
        );
    }

    #[test]
    fn command_bodies_take_only_their_fields() {
        let id = PaymentId::new();
        let body: RawBody = serde_json::from_value(serde_json::json!({"amount": 5})).unwrap();
        assert_eq!(parse_capture(&body, id).unwrap().amount, amt(5));
        assert_eq!(
            parse_cancel(&body, id).unwrap_err().code,
            "parameter_unknown"
        );
        let bad: RawBody = serde_json::from_value(serde_json::json!({"amount": -5})).unwrap();
        assert_eq!(parse_refund(&bad, id).unwrap_err().param, "amount");
    }
}
