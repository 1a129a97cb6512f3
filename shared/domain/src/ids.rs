use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

/// Why a raw value could not become a domain type. The message is safe to show a merchant: it
/// never repeats the rejected value, because that value may be a card number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("{0}")]
    Invalid(&'static str),
    #[error("raw card numbers are not accepted; send a payment method token such as pm_...")]
    RawCardNumber,
}

/// `pay_<uuid>`: the public id of a payment, also the Kafka key of all its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PaymentId(Uuid);

impl PaymentId {
    /// UUIDv7 so that ids sort by creation time, which keeps cursor pagination cheap.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    pub fn from_uuid(uuid: Uuid) -> Self {
        Self(uuid)
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }

    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let rest = raw
            .strip_prefix("pay_")
            .ok_or(ParseError::Invalid("a payment id starts with pay_"))?;
        Uuid::parse_str(rest)
            .map(Self)
            .map_err(|_| ParseError::Invalid("a payment id is pay_ followed by a UUID"))
    }
}

impl Default for PaymentId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for PaymentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pay_{}", self.0.hyphenated())
    }
}

impl FromStr for PaymentId {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for PaymentId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PaymentId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// Defines a string newtype whose constructor enforces a length range and a character set, so
/// that ids can be used as Redis keys, log fields and ledger account names without escaping.
macro_rules! token_newtype {
    ($(#[$meta:meta])* $name:ident, $min:expr, $max:expr, $msg:expr) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn parse(raw: &str) -> Result<Self, ParseError> {
                let ok_len = ($min..=$max).contains(&raw.chars().count());
                let ok_chars = raw
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '@'));
                if ok_len && ok_chars {
                    Ok(Self(raw.to_owned()))
                } else {
                    Err(ParseError::Invalid($msg))
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(d)?;
                Self::parse(&raw).map_err(serde::de::Error::custom)
            }
        }
    };
}

token_newtype!(
    /// The merchant a payment belongs to: the `sub` claim of a merchant's token.
    MerchantId,
    1,
    64,
    "a merchant id is 1-64 characters of letters, digits, _ - . @"
);
token_newtype!(
    /// The merchant's own reference for its customer; velocity rules count per customer.
    CustomerId,
    1,
    128,
    "customer_id must be 1-128 characters of letters, digits, _ - . @"
);

/// A tokenised payment method (`pm_...`). A raw card number is refused here, at the edge, so
/// that it can never reach a table, a topic or a log line.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct PaymentMethod(String);

impl PaymentMethod {
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        if looks_like_card_number(raw) {
            return Err(ParseError::RawCardNumber);
        }
        let rest = raw.strip_prefix("pm_").ok_or(ParseError::Invalid(
            "payment_method must be a token starting with pm_",
        ))?;
        let ok = !rest.is_empty()
            && raw.len() <= 128
            && rest.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(ParseError::Invalid(
                "payment_method must be pm_ followed by letters, digits or _ (at most 128 characters)",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PaymentMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for PaymentMethod {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// 12 to 19 digits once spaces and dashes are removed: the shape of a PAN. Deliberately broad
/// (no Luhn check) because refusing a harmless string costs less than storing a real card.
pub fn looks_like_card_number(raw: &str) -> bool {
    let mut digits = 0usize;
    for c in raw.chars() {
        match c {
            '0'..='9' => digits += 1,
            ' ' | '-' => {}
            _ => {
                // A token that merely embeds a long run of digits is still suspicious.
                return longest_digit_run(raw) >= 12;
            }
        }
    }
    (12..=19).contains(&digits)
}

fn longest_digit_run(raw: &str) -> usize {
    let (mut best, mut run) = (0, 0);
    for c in raw.chars() {
        if c.is_ascii_digit() {
            run += 1;
            best = best.max(run);
        } else {
            run = 0;
        }
    }
    best
}

/// The merchant's `Idempotency-Key`: 1-255 visible ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let ok = (1..=255).contains(&raw.len()) && raw.chars().all(|c| c.is_ascii_graphic());
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(ParseError::Invalid(
                "Idempotency-Key must be 1-255 visible ASCII characters",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payment_id_round_trips_through_its_text_form() {
        let id = PaymentId::new();
        assert_eq!(PaymentId::parse(&id.to_string()), Ok(id));
        assert!(PaymentId::parse("ch_123").is_err());
        assert!(PaymentId::parse("pay_nope").is_err());
    }

    #[test]
    fn raw_card_numbers_are_refused_in_every_usual_spelling() {
        for pan in [
            "4242424242424242",
            "4242 4242 4242 4242",
            "4242-4242-4242-4242",
            "pm_4242424242424242",
        ] {
            assert_eq!(
                PaymentMethod::parse(pan),
                Err(ParseError::RawCardNumber),
                "{pan}"
            );
        }
        assert!(PaymentMethod::parse("pm_card_visa").is_ok());
        assert!(PaymentMethod::parse("tok_visa").is_err());
    }

    #[test]
    fn idempotency_key_length_is_bounded() {
        assert!(IdempotencyKey::parse("").is_err());
        assert!(IdempotencyKey::parse(&"k".repeat(255)).is_ok());
        assert!(IdempotencyKey::parse(&"k".repeat(256)).is_err());
        assert!(IdempotencyKey::parse("has space").is_err());
    }
}
