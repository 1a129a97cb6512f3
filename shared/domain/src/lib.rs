//! Domain types shared by every paystream service.
//!
//! Everything here is parsed, never validated-after-the-fact: a value of one of these types is
//! known to be well formed, so the services' domain code never has to re-check raw strings.

pub mod events;
pub mod ids;
pub mod money;
pub mod status;

pub use events::*;
pub use ids::{CustomerId, IdempotencyKey, MerchantId, ParseError, PaymentId, PaymentMethod};
pub use money::{Amount, Currency, Money};
pub use status::{CaptureMode, PaymentStatus};
