//! Incoming PSP webhooks: signature check (DESIGN.md §4, `PSP-Signature: t=<unix s>,v1=<hex
//! HMAC-SHA256(secret, "<t>.<raw body>")>`) and the event shape.
//!
//! The signature is checked over the raw bytes received, before any parsing, because a parsed
//! and re-serialised body would not be the signed text. The timestamp is inside the MAC, so a
//! captured webhook cannot be re-sent with a fresh time; within the tolerance, replays are
//! stopped by remembering event ids.

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

/// Why a webhook was refused. The text names the problem, never the header or the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("signature header malformed: {0}")]
    Malformed(&'static str),
    #[error("signature timestamp outside the tolerance")]
    Stale,
    #[error("signature does not match")]
    Mismatch,
}

impl SignatureError {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::Stale => "stale",
            Self::Mismatch => "bad_signature",
        }
    }
}

/// Verifies `header` for `body` at unix time `now`. Any one `v1=` may match (secret rotation);
/// unknown schemes are ignored.
pub fn verify(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now: i64,
    tolerance_secs: u64,
) -> Result<(), SignatureError> {
    let mut timestamp = None;
    let mut candidates = Vec::new();
    for part in header.split(',') {
        let (scheme, value) = part
            .trim()
            .split_once('=')
            .ok_or(SignatureError::Malformed("expected key=value pairs"))?;
        match scheme {
            "t" => {
                timestamp = Some(
                    value
                        .parse::<i64>()
                        .map_err(|_| SignatureError::Malformed("timestamp is not an integer"))?,
                )
            }
            "v1" => candidates.push(value),
            _ => {}
        }
    }
    let t = timestamp.ok_or(SignatureError::Malformed("missing t="))?;
    if candidates.is_empty() {
        return Err(SignatureError::Malformed("missing v1="));
    }
    if now.abs_diff(t) > tolerance_secs {
        return Err(SignatureError::Stale);
    }
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .map_err(|_| SignatureError::Malformed("unusable secret"))?;
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let matched = candidates.into_iter().any(|candidate| {
        // `verify_slice` compares in constant time.
        hex::decode(candidate).is_ok_and(|expected| mac.clone().verify_slice(&expected).is_ok())
    });
    if matched {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// Builds a header the way a PSP does (tests, and tools that replay webhooks by hand).
pub fn sign(secret: &[u8], t: i64, body: &[u8]) -> Result<String, SignatureError> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .map_err(|_| SignatureError::Malformed("unusable secret"))?;
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Ok(format!(
        "t={t},v1={}",
        hex::encode(mac.finalize().into_bytes())
    ))
}

#[derive(Debug, Clone, Deserialize)]
pub struct WebhookEvent {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub data: WebhookCharge,
}

#[derive(Debug, Clone, Deserialize)]
pub struct WebhookCharge {
    pub id: String,
    pub status: String,
    pub amount: i64,
    #[serde(default)]
    pub amount_captured: i64,
    #[serde(default)]
    pub currency: String,
    #[serde(default)]
    pub reference: String,
    #[serde(default)]
    pub failure_code: Option<String>,
    #[serde(default)]
    pub failure_message: Option<String>,
}

impl WebhookEvent {
    /// Ids end up in a table and in log lines: keep them short and plain.
    pub fn parse(body: &[u8]) -> Result<Self, String> {
        let event: Self = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        let plain = |s: &str| {
            !s.is_empty()
                && s.len() <= 255
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))
        };
        if !plain(&event.id) || !plain(&event.data.id) {
            return Err("event or charge id is not a plain identifier".to_owned());
        }
        Ok(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = br#"{"id":"evt_1","type":"charge.succeeded"}"#;

    #[test]
    fn signed_bodies_verify_and_everything_else_is_refused() {
        let h = sign(b"whsec_alpha", 1_700_000_000, BODY).unwrap();
        assert_eq!(verify(b"whsec_alpha", &h, BODY, 1_700_000_100, 300), Ok(()));
        assert_eq!(
            verify(b"whsec_beta", &h, BODY, 1_700_000_100, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"whsec_alpha", &h, b"{}", 1_700_000_100, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"whsec_alpha", &h, BODY, 1_700_000_301, 300),
            Err(SignatureError::Stale)
        );
        let forged = h.replace("t=1700000000", "t=1700000200");
        assert_eq!(
            verify(b"whsec_alpha", &forged, BODY, 1_700_000_200, 300),
            Err(SignatureError::Mismatch)
        );
        for bad in ["", "t=1", "v1=00", "t=x,v1=00"] {
            assert!(matches!(
                verify(b"whsec_alpha", bad, BODY, 1_700_000_000, 300),
                Err(SignatureError::Malformed(_))
            ));
        }
    }
}
