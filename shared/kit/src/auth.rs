//! HS256 bearer tokens (claims `sub`, `role`, `exp`), minted by `payctl token` and checked by the
//! ingress. Token text never goes into a log line.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Merchant,
    Operator,
    Analyst,
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "merchant" => Ok(Self::Merchant),
            "operator" => Ok(Self::Operator),
            "analyst" => Ok(Self::Analyst),
            other => Err(format!(
                "unknown role {other:?}; expected merchant, operator or analyst"
            )),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub role: Role,
    pub exp: i64,
    #[serde(default)]
    pub iat: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the token has expired")]
    Expired,
    #[error("the token is malformed or its signature is invalid")]
    Invalid,
}

pub fn mint(secret: &str, sub: &str, role: Role, ttl_secs: i64) -> anyhow::Result<String> {
    let now = chrono_now();
    let claims = Claims {
        sub: sub.to_owned(),
        role,
        exp: now + ttl_secs,
        iat: now,
    };
    Ok(jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

pub fn verify(secret: &str, token: &str) -> Result<Claims, TokenError> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = 0;
    validation.set_required_spec_claims(&["exp", "sub"]);
    jsonwebtoken::decode::<Claims>(
        token,
        &DecodingKey::from_secret(secret.as_bytes()),
        &validation,
    )
    .map(|d| d.claims)
    .map_err(|e| match e.kind() {
        jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
        _ => TokenError::Invalid,
    })
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_only_with_their_secret_and_before_expiry() {
        let t = mint("s1", "m_1", Role::Merchant, 60).unwrap();
        assert_eq!(verify("s1", &t).unwrap().sub, "m_1");
        assert!(matches!(verify("s2", &t), Err(TokenError::Invalid)));
        let old = mint("s1", "m_1", Role::Merchant, -10).unwrap();
        assert!(matches!(verify("s1", &old), Err(TokenError::Expired)));
        assert!(matches!(verify("s1", "abc.def"), Err(TokenError::Invalid)));
    }
}
