//! The `data` of each event type, and the topic it travels on (contract names, DESIGN.md §3).
//!
//! These are the typed form of the JSON payloads; `schemas/<event_type>.v<N>.json` describes the
//! same shapes for other languages and is enforced by the consumer runtime before a handler runs.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{Amount, CaptureMode, Currency, CustomerId, MerchantId, PaymentMethod};

pub mod topics {
    pub const PAYMENTS_REQUESTED: &str = "payments.requested";
    pub const PAYMENTS_RISK_DECIDED: &str = "payments.risk-decided";
    pub const PAYMENTS_PSP_RESULTS: &str = "payments.psp-results";
    pub const PAYMENTS_COMMANDS: &str = "payments.commands";
    pub const LEDGER_POSTINGS: &str = "ledger.postings";
    pub const PAYMENTS_VALIDATION: &str = "payments.validation";
    pub const PAYMENTS_DLT: &str = "payments.dlt";

    /// Every fixed topic of the fleet; retry topics (`<group>.retry`) come on top.
    pub const ALL: &[&str] = &[
        PAYMENTS_REQUESTED,
        PAYMENTS_RISK_DECIDED,
        PAYMENTS_PSP_RESULTS,
        PAYMENTS_COMMANDS,
        LEDGER_POSTINGS,
        PAYMENTS_VALIDATION,
        PAYMENTS_DLT,
    ];

    pub fn retry_topic(group: &str) -> String {
        format!("{group}.retry")
    }
}

/// An event payload: its type name and schema version travel in the envelope, and its topic is
/// fixed so that a producer cannot put it on the wrong one.
pub trait Event: Serialize + DeserializeOwned + Send + Sync {
    const EVENT_TYPE: &'static str;
    const SCHEMA_VERSION: u32;
    const TOPIC: &'static str;
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentRequested {
    pub merchant_id: MerchantId,
    pub amount: Amount,
    pub currency: Currency,
    pub customer_id: CustomerId,
    pub payment_method: PaymentMethod,
    pub capture: CaptureMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

impl Event for PaymentRequested {
    const EVENT_TYPE: &'static str = "payment.requested";
    const SCHEMA_VERSION: u32 = 1;
    const TOPIC: &'static str = topics::PAYMENTS_REQUESTED;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RiskDecision {
    Approved,
    Declined,
}

/// The risk engine's verdict. It carries the request so that the PSP gateway needs no lookup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RiskDecided {
    pub decision: RiskDecision,
    pub score: u32,
    pub reasons: Vec<String>,
    pub request: PaymentRequested,
}

impl Event for RiskDecided {
    const EVENT_TYPE: &'static str = "payment.risk_decided";
    const SCHEMA_VERSION: u32 = 1;
    const TOPIC: &'static str = topics::PAYMENTS_RISK_DECIDED;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PspOutcome {
    /// Charged and captured.
    Succeeded,
    /// Authorised; waits for a capture command.
    RequiresCapture,
    /// A definitive refusal by the PSP (card declined, insufficient funds).
    Declined,
    /// The gateway gave up without a charge (every PSP unavailable, for instance).
    Failed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PspResult {
    pub merchant_id: MerchantId,
    pub outcome: PspOutcome,
    /// The PSP that answered last; on a decline after fail-over, the last one tried.
    pub psp: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub charge_id: Option<String>,
    pub amount: Amount,
    pub currency: Currency,
    /// Minor units captured so far (0 while the charge only requires capture).
    pub amount_captured: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decline_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Event for PspResult {
    const EVENT_TYPE: &'static str = "payment.psp_result";
    const SCHEMA_VERSION: u32 = 1;
    const TOPIC: &'static str = topics::PAYMENTS_PSP_RESULTS;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Debit,
    Credit,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostingEntry {
    pub account: String,
    pub side: Side,
    pub amount: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferKind {
    Capture,
    Refund,
}

/// `ledger.postings` record data (contract).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerPosting {
    pub transfer_id: String,
    pub payment_id: String,
    pub kind: TransferKind,
    pub currency: Currency,
    pub entries: Vec<PostingEntry>,
}

impl LedgerPosting {
    /// Debits equal credits: the one invariant every transfer must keep.
    pub fn is_balanced(&self) -> bool {
        let sum = |side| {
            self.entries
                .iter()
                .filter(|e| e.side == side)
                .map(|e| i128::from(e.amount))
                .sum::<i128>()
        };
        sum(Side::Debit) == sum(Side::Credit)
    }
}

impl Event for LedgerPosting {
    const EVENT_TYPE: &'static str = "ledger.posting";
    const SCHEMA_VERSION: u32 = 1;
    const TOPIC: &'static str = topics::LEDGER_POSTINGS;
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Discrepancy {
    /// A short machine-readable name: `missing_ledger_transfer`, `amount_mismatch`, ...
    pub kind: String,
    /// What a person reads to understand what is wrong.
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentValidated {
    pub merchant_id: MerchantId,
    pub status: String,
    pub discrepancies: Vec<Discrepancy>,
}

impl Event for PaymentValidated {
    const EVENT_TYPE: &'static str = "payment.validated";
    const SCHEMA_VERSION: u32 = 1;
    const TOPIC: &'static str = topics::PAYMENTS_VALIDATION;
}

// ---- merchant commands (`payments.commands`) and their PSP outcomes (`payments.psp-results`) --

/// Capture of an authorised (`requires_capture`) payment; `amount` defaults to all of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaptureRequested {
    pub merchant_id: MerchantId,
    /// The ingress's id of the command, stable across redeliveries: the PSP idempotency key of
    /// the capture derives from it.
    pub command_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<Amount>,
}

impl Event for CaptureRequested {
    const EVENT_TYPE: &'static str = "payment.capture_requested";
    const SCHEMA_VERSION: u32 = 1;
    const TOPIC: &'static str = topics::PAYMENTS_COMMANDS;
}

/// Cancel of an authorised payment before capture.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CancelRequested {
    pub merchant_id: MerchantId,
    pub command_id: String,
}

impl Event for CancelRequested {
    const EVENT_TYPE: &'static str = "payment.cancel_requested";
    const SCHEMA_VERSION: u32 = 1;
    const TOPIC: &'static str = topics::PAYMENTS_COMMANDS;
}

/// Refund of (part of) a captured payment. The ingress has already reserved `amount` against
/// what was captured, so refunds can never exceed the capture even when sent concurrently.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefundRequested {
    pub merchant_id: MerchantId,
    /// `re_<uuid>`: the refund's public id, also its idempotency anchor downstream.
    pub refund_id: String,
    pub amount: Amount,
    pub currency: Currency,
}

impl Event for RefundRequested {
    const EVENT_TYPE: &'static str = "payment.refund_requested";
    const SCHEMA_VERSION: u32 = 1;
    const TOPIC: &'static str = topics::PAYMENTS_COMMANDS;
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentCaptured {
    pub merchant_id: MerchantId,
    pub command_id: String,
    pub psp: String,
    pub charge_id: String,
    pub currency: Currency,
    /// Minor units captured by this capture.
    pub amount_captured: i64,
}

impl Event for PaymentCaptured {
    const EVENT_TYPE: &'static str = "payment.captured";
    const SCHEMA_VERSION: u32 = 1;
    const TOPIC: &'static str = topics::PAYMENTS_PSP_RESULTS;
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentCanceled {
    pub merchant_id: MerchantId,
    pub command_id: String,
    pub psp: String,
    pub charge_id: String,
}

impl Event for PaymentCanceled {
    const EVENT_TYPE: &'static str = "payment.canceled";
    const SCHEMA_VERSION: u32 = 1;
    const TOPIC: &'static str = topics::PAYMENTS_PSP_RESULTS;
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentRefunded {
    pub merchant_id: MerchantId,
    pub refund_id: String,
    pub psp: String,
    pub charge_id: String,
    /// The PSP's id of the refund (`re_...` at the PSP).
    pub psp_refund_id: String,
    pub amount: Amount,
    pub currency: Currency,
}

impl Event for PaymentRefunded {
    const EVENT_TYPE: &'static str = "payment.refunded";
    const SCHEMA_VERSION: u32 = 1;
    const TOPIC: &'static str = topics::PAYMENTS_PSP_RESULTS;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandKind {
    Capture,
    Cancel,
    Refund,
}

/// A command the PSP refused for good (the charge cannot be captured any more, say). The ingress
/// releases what it reserved for it (a refund's amount).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandFailed {
    pub merchant_id: MerchantId,
    pub command: CommandKind,
    /// `command_id` of a capture or cancel, `refund_id` of a refund.
    pub command_id: String,
    pub code: String,
    pub message: String,
}

impl Event for CommandFailed {
    const EVENT_TYPE: &'static str = "payment.command_failed";
    const SCHEMA_VERSION: u32 = 1;
    const TOPIC: &'static str = topics::PAYMENTS_PSP_RESULTS;
}
