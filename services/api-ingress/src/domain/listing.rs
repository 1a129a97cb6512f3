//! Who is asking, and what they may list: payments with cursor pagination, and balances.

use paystream_domain::{MerchantId, PaymentId, PaymentStatus};
use serde::Serialize;

use crate::domain::commands::RefundView;
use crate::domain::error::ApiError;
use crate::domain::payment::{PaymentView, unknown_field};

/// An authenticated caller with an API role. Analysts have none: they read the reporting views.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Merchant(MerchantId),
    Operator,
}

impl Caller {
    /// The merchant whose data this caller is limited to; `None` for operators.
    pub fn scope(&self) -> Option<&MerchantId> {
        match self {
            Self::Merchant(m) => Some(m),
            Self::Operator => None,
        }
    }
}

pub const DEFAULT_LIMIT: u32 = 10;
pub const MAX_LIMIT: u32 = 100;

/// `GET /v1/payments` after parsing. Newest first; `starting_after` is the id of the last payment
/// of the previous page (ids are UUIDv7, so they sort by creation time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    pub merchant: Option<MerchantId>,
    pub limit: u32,
    pub starting_after: Option<PaymentId>,
    pub status: Option<PaymentStatus>,
}

fn param_error(param: &str, code: &'static str, message: &str) -> ApiError {
    ApiError::invalid(code, format!("{param}: {message}")).param(param)
}

/// Parses the query string pairs. Unknown, repeated or malformed parameters are refused, naming
/// the parameter; `merchant_id` is for operators only.
pub fn parse_list(pairs: &[(String, String)], caller: &Caller) -> Result<ListQuery, ApiError> {
    let mut query = ListQuery {
        merchant: caller.scope().cloned(),
        limit: DEFAULT_LIMIT,
        starting_after: None,
        status: None,
    };
    let mut seen: Vec<&str> = Vec::new();
    for (name, value) in pairs {
        if seen.contains(&name.as_str()) {
            return Err(param_error(
                name,
                "parameter_invalid",
                "given more than once",
            ));
        }
        match name.as_str() {
            "limit" => {
                query.limit = value
                    .parse::<u32>()
                    .ok()
                    .filter(|l| (1..=MAX_LIMIT).contains(l))
                    .ok_or_else(|| {
                        param_error(
                            "limit",
                            "parameter_invalid",
                            &format!("must be an integer from 1 to {MAX_LIMIT}"),
                        )
                    })?;
            }
            "starting_after" => {
                query.starting_after = Some(PaymentId::parse(value).map_err(|_| {
                    param_error(
                        "starting_after",
                        "parameter_invalid",
                        "must be a payment id (pay_...)",
                    )
                })?);
            }
            "status" => {
                query.status = Some(PaymentStatus::parse(value).ok_or_else(|| {
                    param_error(
                        "status",
                        "parameter_invalid",
                        "must be processing, requires_capture, succeeded, declined, failed or canceled",
                    )
                })?);
            }
            "merchant_id" => match caller {
                Caller::Operator => {
                    query.merchant = Some(MerchantId::parse(value).map_err(|_| {
                        param_error(
                            "merchant_id",
                            "parameter_invalid",
                            "is not a valid merchant id",
                        )
                    })?);
                }
                Caller::Merchant(_) => {
                    return Err(param_error(
                        "merchant_id",
                        "parameter_not_allowed",
                        "only operators filter by merchant; merchants see their own payments",
                    ));
                }
            },
            _ => {
                return Err(unknown_field(name).into());
            }
        }
        seen.push(name.as_str());
    }
    Ok(query)
}

/// Which merchant's balance: the caller's own, or for operators the one named by `merchant_id`.
pub fn parse_balance(pairs: &[(String, String)], caller: &Caller) -> Result<MerchantId, ApiError> {
    let mut merchant: Option<MerchantId> = None;
    for (name, value) in pairs {
        match (name.as_str(), caller) {
            ("merchant_id", Caller::Operator) if merchant.is_none() => {
                merchant = Some(MerchantId::parse(value).map_err(|_| {
                    param_error(
                        "merchant_id",
                        "parameter_invalid",
                        "is not a valid merchant id",
                    )
                })?);
            }
            ("merchant_id", Caller::Operator) => {
                return Err(param_error(
                    "merchant_id",
                    "parameter_invalid",
                    "given more than once",
                ));
            }
            ("merchant_id", Caller::Merchant(_)) => {
                return Err(param_error(
                    "merchant_id",
                    "parameter_not_allowed",
                    "only operators name a merchant; merchants see their own balance",
                ));
            }
            _ => {
                return Err(unknown_field(name).into());
            }
        }
    }
    match (caller, merchant) {
        (Caller::Merchant(m), _) => Ok(m.clone()),
        (Caller::Operator, Some(m)) => Ok(m),
        (Caller::Operator, None) => Err(ApiError::invalid(
            "parameter_missing",
            "merchant_id is required for operators",
        )
        .param("merchant_id")),
    }
}

/// One page of payments (`{"object": "list", "data": [...], "has_more": bool}`).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct PaymentList {
    /// Always `list`.
    pub object: String,
    pub data: Vec<PaymentView>,
    /// Whether another page follows: ask for it with `starting_after` = the last id of `data`.
    pub has_more: bool,
    pub url: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct RefundList {
    /// Always `list`.
    pub object: String,
    pub data: Vec<RefundView>,
    pub has_more: bool,
    pub url: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct BalanceAmount {
    pub currency: String,
    /// Minor units.
    pub amount: i64,
}

/// `GET /v1/balance` (contract shape).
///
/// - `available`: per currency, the merchant's ledger account `merchant:<id>:payable` (credits
///   minus debits in `account_store.accounts`): captured amounts net of fees, minus refunds.
/// - `pending`: per currency, what is authorised but not captured yet: the sum of `amount -
///   amount_captured` over the merchant's payments in `requires_capture`. It becomes available
///   (net of fees) when captured, and disappears when canceled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Balance {
    /// Always `balance`.
    pub object: String,
    pub available: Vec<BalanceAmount>,
    pub pending: Vec<BalanceAmount>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    }

    fn merchant() -> Caller {
        Caller::Merchant(MerchantId::parse("m_1").unwrap())
    }

    #[test]
    fn list_parameters_are_checked_and_named() {
        let ok = parse_list(&q(&[("limit", "3"), ("status", "succeeded")]), &merchant()).unwrap();
        assert_eq!((ok.limit, ok.status), (3, Some(PaymentStatus::Succeeded)));
        assert_eq!(ok.merchant.unwrap().as_str(), "m_1");
        for (pairs, param, code) in [
            (q(&[("limit", "0")]), "limit", "parameter_invalid"),
            (q(&[("limit", "101")]), "limit", "parameter_invalid"),
            (q(&[("limit", "x")]), "limit", "parameter_invalid"),
            (q(&[("status", "done")]), "status", "parameter_invalid"),
            (
                q(&[("starting_after", "ch_1")]),
                "starting_after",
                "parameter_invalid",
            ),
            (
                q(&[("merchant_id", "m_2")]),
                "merchant_id",
                "parameter_not_allowed",
            ),
            (q(&[("color", "red")]), "color", "parameter_unknown"),
            (
                q(&[("limit", "1"), ("limit", "2")]),
                "limit",
                "parameter_invalid",
            ),
        ] {
            let e = parse_list(&pairs, &merchant()).unwrap_err();
            assert_eq!(
                (e.param.as_deref(), e.code),
                (Some(param), code),
                "{pairs:?}"
            );
        }
        let op = parse_list(&q(&[("merchant_id", "m_2")]), &Caller::Operator).unwrap();
        assert_eq!(op.merchant.unwrap().as_str(), "m_2");
        assert_eq!(parse_list(&[], &Caller::Operator).unwrap().merchant, None);
    }

    #[test]
    fn balance_is_the_callers_own_or_named_by_an_operator() {
        assert_eq!(parse_balance(&[], &merchant()).unwrap().as_str(), "m_1");
        assert_eq!(
            parse_balance(&q(&[("merchant_id", "m_2")]), &merchant())
                .unwrap_err()
                .code,
            "parameter_not_allowed"
        );
        assert_eq!(
            parse_balance(&[], &Caller::Operator).unwrap_err().code,
            "parameter_missing"
        );
        assert_eq!(
            parse_balance(&q(&[("merchant_id", "m_2")]), &Caller::Operator)
                .unwrap()
                .as_str(),
            "m_2"
        );
    }
}
