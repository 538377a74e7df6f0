//! JWT (HS256) for Socket.IO clients: who a socket belongs to.
//!
//! Claims: `sub` (the numeric id, as a string), `role` (`vendor` or
//! `customer`), `exp`, and optionally `nbf` and `iat`. Only HS256 with the
//! bridge's secret is accepted, so `alg: none` and tokens signed with
//! another algorithm or key are refused. No clock leeway: an expired token
//! is expired.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use notify_store::{Role, User};
use serde::{Deserialize, Serialize};

/// What a token says.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    /// The numeric user id, as a string.
    pub sub: String,
    /// `vendor` or `customer`.
    pub role: String,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Issued at, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Not valid before, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
}

/// Why a token was refused; the text is what the client is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No token in `auth.token` nor an `Authorization: Bearer` header.
    #[error("authentication required: send auth.token or an Authorization: Bearer header")]
    Missing,
    /// Past `exp`.
    #[error("token expired")]
    Expired,
    /// Before `nbf`.
    #[error("token not yet valid")]
    NotYetValid,
    /// Bad signature, algorithm, encoding or claims.
    #[error("invalid token: {0}")]
    Invalid(&'static str),
}

/// Who a valid token names, and until when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    /// The user.
    pub user: User,
    /// The token's `exp`: a socket opened with it is closed then.
    pub expires_at: SystemTime,
}

/// Signs and checks tokens with one secret.
pub struct Jwt {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl Jwt {
    /// Tokens signed with `secret`.
    pub fn new(secret: &[u8]) -> Jwt {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Jwt {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// A token for `user`, valid for `ttl`.
    pub fn issue(&self, user: User, ttl: Duration) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let claims = Claims {
            sub: user.id.to_string(),
            role: match user.role {
                Role::Vendor => "vendor".into(),
                Role::Customer => "customer".into(),
            },
            exp: now + ttl.as_secs(),
            iat: Some(now),
            nbf: None,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing with an in-memory key cannot fail")
    }

    /// Who a token names and until when, if it is valid now.
    pub fn verify(&self, token: &str) -> Result<Identity, TokenError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|error| match error.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                ErrorKind::InvalidSignature => TokenError::Invalid("bad signature"),
                ErrorKind::InvalidAlgorithm => TokenError::Invalid("algorithm must be HS256"),
                ErrorKind::MissingRequiredClaim(_) => TokenError::Invalid("missing claim"),
                _ => TokenError::Invalid("malformed"),
            })?;
        let claims = data.claims;
        let id: i64 = claims
            .sub
            .parse()
            .ok()
            .filter(|id| *id > 0)
            .ok_or(TokenError::Invalid("sub must be a positive numeric id"))?;
        let user = match claims.role.as_str() {
            "vendor" => User::vendor(id),
            "customer" => User::customer(id),
            _ => return Err(TokenError::Invalid("role must be vendor or customer")),
        };
        Ok(Identity {
            user,
            expires_at: UNIX_EPOCH + Duration::from_secs(claims.exp),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_tokens_verify_and_others_do_not() {
        let jwt = Jwt::new(b"secret");
        let token = jwt.issue(User::customer(12), Duration::from_secs(60));
        let identity = jwt.verify(&token).unwrap();
        assert_eq!(identity.user, User::customer(12));
        let left = identity
            .expires_at
            .duration_since(SystemTime::now())
            .unwrap();
        assert!(left > Duration::from_secs(50) && left <= Duration::from_secs(60));
        let other = Jwt::new(b"another secret");
        assert_eq!(
            other.verify(&token),
            Err(TokenError::Invalid("bad signature"))
        );
        assert!(jwt.verify("not.a.token").is_err());
        let expired = jwt.issue(User::vendor(5), Duration::ZERO);
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(jwt.verify(&expired), Err(TokenError::Expired));
    }

    #[test]
    fn alg_none_is_refused() {
        use base64::Engine;
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = engine.encode(r#"{"alg":"none","typ":"JWT"}"#);
        let claims = engine.encode(r#"{"sub":"5","role":"vendor","exp":99999999999}"#);
        let jwt = Jwt::new(b"secret");
        assert!(jwt.verify(&format!("{header}.{claims}.")).is_err());
    }
}
