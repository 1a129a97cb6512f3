use std::fmt;

use serde::{Deserialize, Serialize};

/// Payment statuses as merchants see them (contract).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    Processing,
    RequiresCapture,
    Succeeded,
    Declined,
    Failed,
    Canceled,
}

impl PaymentStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Processing => "processing",
            Self::RequiresCapture => "requires_capture",
            Self::Succeeded => "succeeded",
            Self::Declined => "declined",
            Self::Failed => "failed",
            Self::Canceled => "canceled",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Some(match raw {
            "processing" => Self::Processing,
            "requires_capture" => Self::RequiresCapture,
            "succeeded" => Self::Succeeded,
            "declined" => Self::Declined,
            "failed" => Self::Failed,
            "canceled" => Self::Canceled,
            _ => return None,
        })
    }

    /// Terminal statuses never change again (refunds change `amount_refunded`, not the status).
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Declined | Self::Failed | Self::Canceled
        )
    }

    /// The order state machine. Anything not listed is refused by the order store, so an
    /// out-of-order or replayed event can never move a payment backwards.
    pub fn can_become(&self, next: PaymentStatus) -> bool {
        use PaymentStatus::*;
        matches!(
            (self, next),
            (Processing, RequiresCapture)
                | (Processing, Succeeded)
                | (Processing, Declined)
                | (Processing, Failed)
                | (RequiresCapture, Succeeded)
                | (RequiresCapture, Canceled)
                | (RequiresCapture, Failed)
        )
    }
}

impl fmt::Display for PaymentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether the PSP captures at authorisation (`automatic`) or waits for an explicit capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaptureMode {
    #[default]
    Automatic,
    Manual,
}

#[cfg(test)]
mod tests {
    use super::PaymentStatus::*;

    #[test]
    fn terminal_states_never_move() {
        for from in [Succeeded, Declined, Failed, Canceled] {
            for to in [
                Processing,
                RequiresCapture,
                Succeeded,
                Declined,
                Failed,
                Canceled,
            ] {
                assert!(!from.can_become(to), "{from} -> {to}");
            }
        }
        assert!(Processing.can_become(Succeeded));
        assert!(!RequiresCapture.can_become(Processing));
    }
}
