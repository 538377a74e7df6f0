//! JWTs for Socket.IO clients: who a socket belongs to.
//!
//! Two kinds of signer are trusted. The bridge's own HS256 secret (`notify
//! token` signs with it), and the platform's identity provider: one PEM
//! public key (`--jwt-public-key`, RS256, ES256 or EdDSA) or a JWKS file
//! (`--jwks-file`, re-read when it changes, the token's `kid` choosing the
//! key), with `iss` and `aud` checked when configured.
//!
//! The key decides the algorithm, never the token: an HS256 token is checked
//! against the secret alone, and an asymmetric token only against a public
//! key of that very algorithm. So a public key can never be used as an HMAC
//! secret (the `alg` confusion attack), and `alg: none` matches nothing.
//!
//! Claims: `sub` (the numeric id, as a string), `role` (`vendor` or
//! `customer`), `exp`, and optionally `nbf` and `iat`. No clock leeway: an
//! expired token is expired.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
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
        decode(token, &self.decoding, &self.validation)
    }
}

/// Checks a token's signature and claims with `key` and reads who it names.
fn decode(token: &str, key: &DecodingKey, validation: &Validation) -> Result<Identity, TokenError> {
    let data =
        jsonwebtoken::decode::<Claims>(token, key, validation).map_err(|error| {
            match error.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                ErrorKind::InvalidSignature => TokenError::Invalid("bad signature"),
                ErrorKind::InvalidAlgorithm => {
                    TokenError::Invalid("algorithm does not match the key")
                }
                ErrorKind::MissingRequiredClaim(_) => TokenError::Invalid("missing claim"),
                ErrorKind::InvalidIssuer => TokenError::Invalid("wrong issuer"),
                ErrorKind::InvalidAudience => TokenError::Invalid("wrong audience"),
                _ => TokenError::Invalid("malformed"),
            }
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

/// Where the platform's identity provider keeps its public keys, and what
/// its tokens must say.
#[derive(Debug, Clone, Default)]
pub struct ProviderConfig {
    /// One PEM public key (SPKI): RSA (RS256), P-256 (ES256) or Ed25519
    /// (EdDSA).
    pub public_key: Option<PathBuf>,
    /// A JWKS document; re-read when it changes.
    pub jwks_file: Option<PathBuf>,
    /// The `iss` tokens must carry, when given.
    pub issuer: Option<String>,
    /// An `aud` tokens must carry, when given.
    pub audience: Option<String>,
}

/// Every signer the bridge trusts: its HS256 secret, the identity provider,
/// or both.
pub struct Verifier {
    secret: Option<Jwt>,
    provider: Option<Provider>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("secret", &self.secret.is_some())
            .field("provider", &self.provider.is_some())
            .finish()
    }
}

impl Verifier {
    /// Trusts `secret` (HS256) and the provider's keys, whichever are given.
    /// A key file that cannot be read or holds no usable key is an error
    /// here, at startup, naming the flag.
    pub fn new(secret: Option<&[u8]>, provider: &ProviderConfig) -> anyhow::Result<Verifier> {
        let keys = match (&provider.public_key, &provider.jwks_file) {
            (Some(_), Some(_)) => {
                anyhow::bail!("give --jwt-public-key or --jwks-file, not both")
            }
            (Some(path), None) => Some(ProviderKeys::Pem(
                read_public_key(path)
                    .with_context(|| format!("--jwt-public-key {}", path.display()))?,
            )),
            (None, Some(path)) => Some(ProviderKeys::Jwks(JwksFile::open(path)?)),
            (None, None) => None,
        };
        if keys.is_none() && (provider.issuer.is_some() || provider.audience.is_some()) {
            anyhow::bail!("--jwt-issuer and --jwt-audience need --jwt-public-key or --jwks-file");
        }
        if secret.is_none() && keys.is_none() {
            anyhow::bail!("give --jwt-secret, --jwt-public-key or --jwks-file");
        }
        Ok(Verifier {
            secret: secret.map(Jwt::new),
            provider: keys.map(|keys| Provider {
                keys,
                issuer: provider.issuer.clone(),
                audience: provider.audience.clone(),
            }),
        })
    }

    /// Who a token names and until when, if a trusted signer made it and it
    /// is valid now.
    pub fn verify(&self, token: &str) -> Result<Identity, TokenError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| TokenError::Invalid("malformed"))?;
        match header.alg {
            Algorithm::HS256 => match &self.secret {
                Some(secret) => secret.verify(token),
                None => Err(TokenError::Invalid("HS256 tokens are not accepted here")),
            },
            Algorithm::RS256 | Algorithm::ES256 | Algorithm::EdDSA => match &self.provider {
                Some(provider) => provider.verify(token, &header),
                None => Err(TokenError::Invalid("algorithm must be HS256")),
            },
            // Name what this bridge accepts, not what it could.
            _ => Err(TokenError::Invalid(
                match (self.secret.is_some(), self.provider.is_some()) {
                    (true, false) => "algorithm must be HS256",
                    (false, true) => "algorithm must be RS256, ES256 or EdDSA",
                    _ => "algorithm must be HS256, RS256, ES256 or EdDSA",
                },
            )),
        }
    }
}

/// The identity provider's keys and the claims its tokens must carry.
struct Provider {
    keys: ProviderKeys,
    issuer: Option<String>,
    audience: Option<String>,
}

enum ProviderKeys {
    Pem(PublicKey),
    Jwks(JwksFile),
}

impl Provider {
    fn verify(&self, token: &str, header: &Header) -> Result<Identity, TokenError> {
        let key = match &self.keys {
            ProviderKeys::Pem(key) => key.clone(),
            ProviderKeys::Jwks(file) => file.select(header.kid.as_deref())?,
        };
        if key.algorithm != header.alg {
            return Err(TokenError::Invalid("algorithm does not match the key"));
        }
        let mut validation = Validation::new(key.algorithm);
        validation.leeway = 0;
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        match &self.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        decode(token, &key.key, &validation)
    }
}

/// A public key and the one algorithm it verifies.
#[derive(Clone)]
struct PublicKey {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

/// A PEM public key; its type names its algorithm.
fn read_public_key(path: &Path) -> anyhow::Result<PublicKey> {
    let pem = std::fs::read(path)?;
    let (algorithm, key) = if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
        (Algorithm::RS256, key)
    } else if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
        (Algorithm::ES256, key)
    } else if let Ok(key) = DecodingKey::from_ed_pem(&pem) {
        (Algorithm::EdDSA, key)
    } else {
        anyhow::bail!("not a PEM public key of RSA, P-256 or Ed25519");
    };
    Ok(PublicKey {
        kid: None,
        algorithm,
        key,
    })
}

/// A signing key of a JWKS document, if it is one we verify with: RSA
/// (RS256), EC P-256 (ES256) or OKP Ed25519 (EdDSA), not for encryption, its
/// `alg` (when given) matching. Symmetric (`oct`) keys are never taken: a
/// key published in a JWKS is public.
fn jwks_key(jwk: &Jwk) -> Option<PublicKey> {
    if matches!(jwk.common.public_key_use, Some(ref usage) if *usage != PublicKeyUse::Signature) {
        return None;
    }
    let (algorithm, stated) = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => (Algorithm::RS256, KeyAlgorithm::RS256),
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
            (Algorithm::ES256, KeyAlgorithm::ES256)
        }
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            (Algorithm::EdDSA, KeyAlgorithm::EdDSA)
        }
        _ => return None,
    };
    if jwk.common.key_algorithm.is_some_and(|alg| alg != stated) {
        return None;
    }
    Some(PublicKey {
        kid: jwk.common.key_id.clone(),
        algorithm,
        key: DecodingKey::from_jwk(jwk).ok()?,
    })
}

/// A JWKS file, re-read when its size, time or inode changes (a key
/// rotation writes a new one), checked at each handshake: a stat is cheap
/// next to a signature check, and a rotated key works from the next
/// handshake on, with no polling period to wait out.
struct JwksFile {
    path: PathBuf,
    loaded: Mutex<(Stamp, Arc<Vec<PublicKey>>)>,
}

/// What tells a changed file from the one read.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

impl Stamp {
    fn of(path: &Path) -> std::io::Result<Stamp> {
        use std::os::unix::fs::MetadataExt as _;
        let meta = std::fs::metadata(path)?;
        Ok(Stamp {
            modified: meta.modified().ok(),
            len: meta.len(),
            inode: meta.ino(),
        })
    }
}

impl JwksFile {
    fn open(path: &Path) -> anyhow::Result<JwksFile> {
        let context = || format!("--jwks-file {}", path.display());
        let stamp = Stamp::of(path).with_context(context)?;
        let keys = read_jwks(path).with_context(context)?;
        Ok(JwksFile {
            path: path.to_owned(),
            loaded: Mutex::new((stamp, Arc::new(keys))),
        })
    }

    /// The keys now: re-read if the file changed. A file that cannot be read
    /// or parsed (caught mid-write, or broken) leaves the last good keys in
    /// place, and is tried again at the next handshake.
    fn keys(&self) -> Arc<Vec<PublicKey>> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if let Ok(stamp) = Stamp::of(&self.path)
            && stamp != loaded.0
        {
            match read_jwks(&self.path) {
                Ok(keys) => {
                    tracing::info!(path = %self.path.display(), keys = keys.len(), "JWKS re-read");
                    *loaded = (stamp, Arc::new(keys));
                }
                Err(error) => tracing::warn!(
                    path = %self.path.display(),
                    error = %format!("{error:#}"),
                    "JWKS changed but cannot be used; keeping the keys read before"
                ),
            }
        }
        loaded.1.clone()
    }

    /// The key `kid` names; with no `kid`, the only key, if there is one.
    fn select(&self, kid: Option<&str>) -> Result<PublicKey, TokenError> {
        let keys = self.keys();
        match kid {
            Some(kid) => keys
                .iter()
                .find(|key| key.kid.as_deref() == Some(kid))
                .cloned()
                .ok_or(TokenError::Invalid("unknown kid")),
            None if keys.len() == 1 => Ok(keys[0].clone()),
            None => Err(TokenError::Invalid("token has no kid")),
        }
    }
}

/// The usable signing keys of a JWKS document; keys of other kinds are
/// skipped, and a document with none is an error.
fn read_jwks(path: &Path) -> anyhow::Result<Vec<PublicKey>> {
    #[derive(Deserialize)]
    struct Document {
        keys: Vec<serde_json::Value>,
    }
    let document: Document = serde_json::from_slice(&std::fs::read(path)?)
        .context("not a JWKS document ({\"keys\": [...]})")?;
    let keys: Vec<PublicKey> = document
        .keys
        .into_iter()
        .filter_map(|key| serde_json::from_value::<Jwk>(key).ok())
        .filter_map(|jwk| jwks_key(&jwk))
        .collect();
    anyhow::ensure!(
        !keys.is_empty(),
        "no RS256, ES256 or EdDSA signing key in the document"
    );
    Ok(keys)
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
