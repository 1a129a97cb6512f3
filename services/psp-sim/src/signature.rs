//! Webhook signatures of the PSP wire protocol:
//! `PSP-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>`.
//!
//! The timestamp is signed together with the body so that a captured webhook cannot be replayed
//! later than the receiver's tolerance; the receiver must verify against the raw bytes it
//! received, before any JSON parsing, because re-serialising would change the signed text.

use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// SHA-256 block size: RFC 2104 pads (or first hashes) every HMAC key to this length.
const BLOCK_SIZE: usize = 64;

/// Why a webhook was refused. Receivers answer all of them the same way (400), but the variant
/// tells an operator whether to look at clocks, secrets or the sender.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("signature header is malformed: {0}")]
    Malformed(&'static str),
    #[error("signature timestamp is outside the tolerance window")]
    TimestampOutsideTolerance,
    #[error("no v1 signature matches the payload")]
    Mismatch,
}

/// Builds the `PSP-Signature` header value for `body` sent at unix time `t`.
pub fn sign(secret: &str, t: i64, body: &[u8]) -> String {
    let mut mac = keyed_mac(secret.as_bytes());
    feed(&mut mac, t, body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// Checks a `PSP-Signature` header against the raw body.
///
/// Several `v1=` entries are accepted (any one matching is enough) so a sender can sign with an
/// old and a new secret while the secret is being rotated. The timestamp must be within
/// `tolerance_secs` of `now` in either direction, so clock skew is tolerated but replays are not.
pub fn verify(
    secret: &str,
    header: &str,
    body: &[u8],
    now: i64,
    tolerance_secs: u64,
) -> Result<(), SignatureError> {
    let mut timestamp = None;
    let mut candidates = Vec::new();
    for part in header.split(',') {
        let Some((scheme, value)) = part.trim().split_once('=') else {
            return Err(SignatureError::Malformed("expected key=value pairs"));
        };
        match scheme {
            "t" => {
                let t = value
                    .parse::<i64>()
                    .map_err(|_| SignatureError::Malformed("timestamp is not an integer"))?;
                timestamp = Some(t);
            }
            "v1" => candidates.push(value),
            // Unknown schemes are ignored so a sender can add a stronger one without breaking us.
            _ => {}
        }
    }
    let t = timestamp.ok_or(SignatureError::Malformed("missing t="))?;
    if candidates.is_empty() {
        return Err(SignatureError::Malformed("missing v1="));
    }
    if now.abs_diff(t) > tolerance_secs {
        return Err(SignatureError::TimestampOutsideTolerance);
    }
    let mut base = keyed_mac(secret.as_bytes());
    feed(&mut base, t, body);
    let matched = candidates.into_iter().any(|candidate| {
        hex::decode(candidate).is_ok_and(|expected| base.clone().verify_slice(&expected).is_ok())
    });
    if matched {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

fn feed(mac: &mut HmacSha256, t: i64, body: &[u8]) {
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
}

/// `Hmac::new_from_slice` returns a `Result` although HMAC accepts keys of any length; doing
/// RFC 2104's key preparation here gives an infallible constructor (no panic path) that
/// produces exactly the same MAC.
fn keyed_mac(secret: &[u8]) -> HmacSha256 {
    let mut block = [0u8; BLOCK_SIZE];
    if secret.len() > BLOCK_SIZE {
        let digest = Sha256::digest(secret);
        block[..digest.len()].copy_from_slice(&digest);
    } else {
        block[..secret.len()].copy_from_slice(secret);
    }
    <HmacSha256 as KeyInit>::new(&block.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_alpha";
    const BODY: &[u8] = br#"{"id":"evt_1","type":"charge.succeeded"}"#;

    #[test]
    fn good_signature_verifies() {
        let header = sign(SECRET, 1_700_000_000, BODY);
        assert!(header.starts_with("t=1700000000,v1="));
        assert_eq!(verify(SECRET, &header, BODY, 1_700_000_010, 300), Ok(()));
    }

    #[test]
    fn tampered_body_is_refused() {
        let header = sign(SECRET, 1_700_000_000, BODY);
        let tampered = br#"{"id":"evt_1","type":"charge.refunded"}"#;
        assert_eq!(
            verify(SECRET, &header, tampered, 1_700_000_000, 300),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn old_timestamp_is_refused_even_with_valid_mac() {
        let header = sign(SECRET, 1_700_000_000, BODY);
        assert_eq!(
            verify(SECRET, &header, BODY, 1_700_000_301, 300),
            Err(SignatureError::TimestampOutsideTolerance)
        );
        // Clock skew in the other direction is bounded too.
        assert_eq!(
            verify(SECRET, &header, BODY, 1_699_999_699, 300),
            Err(SignatureError::TimestampOutsideTolerance)
        );
    }

    #[test]
    fn wrong_secret_is_refused() {
        let header = sign("whsec_beta", 1_700_000_000, BODY);
        assert_eq!(
            verify(SECRET, &header, BODY, 1_700_000_000, 300),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn changing_the_timestamp_breaks_the_mac() {
        let header = sign(SECRET, 1_700_000_000, BODY);
        let forged = header.replace("t=1700000000", "t=1700000100");
        assert_eq!(
            verify(SECRET, &forged, BODY, 1_700_000_100, 300),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn any_matching_v1_is_accepted_during_rotation() {
        let good = sign(SECRET, 1_700_000_000, BODY);
        let old = sign("whsec_old", 1_700_000_000, BODY);
        let old_v1 = old.split_once(",v1=").map(|(_, v)| v).unwrap_or_default();
        let header = format!("{good},v1={old_v1},v0=legacy");
        assert_eq!(verify(SECRET, &header, BODY, 1_700_000_000, 300), Ok(()));
        assert_eq!(
            verify("whsec_old", &header, BODY, 1_700_000_000, 300),
            Ok(())
        );
    }

    #[test]
    fn malformed_headers_are_refused() {
        for header in ["", "garbage", "t=abc,v1=00", "v1=00", "t=1700000000"] {
            assert!(
                matches!(
                    verify(SECRET, header, BODY, 1_700_000_000, 300),
                    Err(SignatureError::Malformed(_))
                ),
                "{header:?} should be malformed"
            );
        }
        assert_eq!(
            verify(SECRET, "t=1700000000,v1=not-hex", BODY, 1_700_000_000, 300),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn key_preparation_matches_the_hmac_crate() {
        for secret in ["", "short", &"k".repeat(64), &"long".repeat(40)] {
            let mut ours = keyed_mac(secret.as_bytes());
            let mut theirs = match <HmacSha256 as Mac>::new_from_slice(secret.as_bytes()) {
                Ok(mac) => mac,
                Err(err) => panic!("hmac refused a key: {err}"),
            };
            ours.update(BODY);
            theirs.update(BODY);
            assert_eq!(ours.finalize().into_bytes(), theirs.finalize().into_bytes());
        }
    }
}
