//! Token verification (and dev token minting).
//!
//! A client proves who it is with a JWT in Hello: `sub` is the user id, the optional
//! `device` claim pins the device id, `exp` is required. HS256 with a shared secret is
//! meant for development; ES256 with a public key file for production. Only the
//! algorithms configured here are accepted, so `alg: none` or an HS256 token signed
//! with an ES256 public key (the classic confusion attack) are refused.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};

use crate::ids::{DeviceId, IdError, UserId};

/// The claims Petrel reads from a token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// User id.
    pub sub: String,
    /// Device id, when the token is bound to one device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Issued at, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token in Hello.
    #[error("no token")]
    Missing,
    /// The token has expired.
    #[error("token expired")]
    Expired,
    /// The token is malformed, badly signed, or uses an algorithm that is not accepted.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// The token's `sub` or `device` is not a valid id.
    #[error("invalid id in token: {0}")]
    BadId(IdError),
    /// The token is bound to a device other than the one in Hello.
    #[error("token is for device {token:?}, Hello says {hello:?}")]
    DeviceMismatch {
        /// Device in the token.
        token: String,
        /// Device in Hello.
        hello: String,
    },
}

/// Who a verified token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user.
    pub user: UserId,
    /// The device (from Hello, or the token's claim).
    pub device: DeviceId,
    /// Token expiry (seconds since the epoch).
    pub expires_at: u64,
}

/// Problems with the key material given to [`Authenticator`].
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Neither an HS256 secret nor an ES256 key was configured.
    #[error("no token key configured (set an HS256 secret or an ES256 public key)")]
    NoKey,
    /// The HS256 secret is too short to be safe.
    #[error("the HS256 secret must be at least 32 bytes")]
    ShortSecret,
    /// The ES256 public key PEM could not be parsed.
    #[error("bad ES256 public key: {0}")]
    BadPublicKey(String),
}

/// Verifies tokens with the configured keys.
pub struct Authenticator {
    hs256: Option<DecodingKey>,
    es256: Option<DecodingKey>,
    leeway_secs: u64,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("hs256", &self.hs256.is_some())
            .field("es256", &self.es256.is_some())
            .finish()
    }
}

impl Authenticator {
    /// Builds an authenticator from an HS256 secret and/or an ES256 public key (PEM).
    pub fn new(
        hs256_secret: Option<&[u8]>,
        es256_public_pem: Option<&[u8]>,
    ) -> Result<Self, KeyError> {
        let hs256 = match hs256_secret {
            Some(s) if s.len() < 32 => return Err(KeyError::ShortSecret),
            Some(s) => Some(DecodingKey::from_secret(s)),
            None => None,
        };
        let es256 = match es256_public_pem {
            Some(pem) => Some(
                DecodingKey::from_ec_pem(pem).map_err(|e| KeyError::BadPublicKey(e.to_string()))?,
            ),
            None => None,
        };
        if hs256.is_none() && es256.is_none() {
            return Err(KeyError::NoKey);
        }
        Ok(Self {
            hs256,
            es256,
            leeway_secs: 5,
        })
    }

    /// Verifies `token` and binds it to `hello_device` (empty: take the token's claim).
    pub fn verify(&self, token: &str, hello_device: &str) -> Result<Identity, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let key = match header.alg {
            Algorithm::HS256 => self.hs256.as_ref(),
            Algorithm::ES256 => self.es256.as_ref(),
            _ => None,
        }
        .ok_or_else(|| AuthError::Invalid(format!("algorithm {:?} is not accepted", header.alg)))?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.leeway_secs;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "sub"]);
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(|e| match e
            .kind()
        {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            _ => AuthError::Invalid(e.to_string()),
        })?;
        let claims = data.claims;
        let user = UserId::parse(claims.sub).map_err(AuthError::BadId)?;
        let device = match (claims.device, hello_device) {
            (Some(t), h) if !h.is_empty() && t != h => {
                return Err(AuthError::DeviceMismatch {
                    token: t,
                    hello: h.to_string(),
                });
            }
            (Some(t), _) => t,
            (None, h) if !h.is_empty() => h.to_string(),
            (None, _) => "default".to_string(),
        };
        let device = DeviceId::parse(device).map_err(AuthError::BadId)?;
        Ok(Identity {
            user,
            device,
            expires_at: claims.exp,
        })
    }
}

/// Mints HS256 tokens (dev mode and tests only: production tokens come from the
/// application's own auth service).
pub fn mint_hs256(secret: &[u8], claims: &Claims) -> Result<String, String> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|e| e.to_string())
}

/// Why a dev token could not be minted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MintError {
    /// The user id is not valid.
    #[error("user: {0}")]
    User(IdError),
    /// The device id is not valid.
    #[error("device: {0}")]
    Device(IdError),
    /// Signing failed.
    #[error("signing the token: {0}")]
    Sign(String),
}

/// Mints a dev token (HS256 with the dev secret) for `user`, bound to `device` when
/// given, valid `ttl` from now. Both ids are validated first, so a bad id is refused
/// here rather than by the gateway at Hello.
pub fn mint_dev_token(
    secret: &[u8],
    user: &str,
    device: Option<&str>,
    ttl: std::time::Duration,
) -> Result<String, MintError> {
    UserId::parse(user).map_err(MintError::User)?;
    if let Some(d) = device {
        DeviceId::parse(d).map_err(MintError::Device)?;
    }
    let now = crate::time::unix_secs();
    mint_hs256(
        secret,
        &Claims {
            sub: user.to_string(),
            device: device.map(str::to_string),
            exp: now.saturating_add(ttl.as_secs()),
            iat: Some(now),
        },
    )
    .map_err(MintError::Sign)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_tokens_verify_and_bad_ids_are_refused() {
        let ttl = std::time::Duration::from_secs(60);
        let t = mint_dev_token(SECRET, "alice", Some("phone"), ttl).unwrap();
        let auth = Authenticator::new(Some(SECRET), None).unwrap();
        let id = auth.verify(&t, "phone").unwrap();
        assert_eq!(id.user.as_str(), "alice");
        assert!(matches!(
            mint_dev_token(SECRET, "a.b", None, ttl),
            Err(MintError::User(_))
        ));
        assert!(matches!(
            mint_dev_token(SECRET, "alice", Some("a b"), ttl),
            Err(MintError::Device(_))
        ));
    }

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn now() -> u64 {
        crate::time::unix_secs()
    }

    fn token(sub: &str, device: Option<&str>, exp: u64) -> String {
        mint_hs256(
            SECRET,
            &Claims {
                sub: sub.into(),
                device: device.map(Into::into),
                exp,
                iat: None,
            },
        )
        .unwrap()
    }

    fn b64(v: &serde_json::Value) -> String {
        use std::fmt::Write;
        // base64url without padding, written here to avoid a dependency for tests.
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let bytes = v.to_string().into_bytes();
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n =
                chunk.iter().fold(0u32, |a, &b| (a << 8) | u32::from(b)) << (8 * (3 - chunk.len()));
            for i in 0..=chunk.len() {
                let _ = write!(out, "{}", T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }

    #[test]
    fn accepts_a_good_token_and_binds_the_device() {
        let a = Authenticator::new(Some(SECRET), None).unwrap();
        let id = a
            .verify(&token("alice", None, now() + 60), "phone")
            .unwrap();
        assert_eq!(id.user.as_str(), "alice");
        assert_eq!(id.device.as_str(), "phone");
        let id = a
            .verify(&token("alice", Some("tab"), now() + 60), "")
            .unwrap();
        assert_eq!(id.device.as_str(), "tab");
        assert!(matches!(
            a.verify(&token("alice", Some("tab"), now() + 60), "phone"),
            Err(AuthError::DeviceMismatch { .. })
        ));
    }

    #[test]
    fn refuses_forged_expired_none_and_bad_ids() {
        let a = Authenticator::new(Some(SECRET), None).unwrap();
        let forged = mint_hs256(
            b"another-secret-another-secret-xx",
            &Claims {
                sub: "alice".into(),
                device: None,
                exp: now() + 60,
                iat: None,
            },
        )
        .unwrap();
        assert!(matches!(a.verify(&forged, "d"), Err(AuthError::Invalid(_))));
        assert_eq!(
            a.verify(&token("alice", None, now() - 120), "d"),
            Err(AuthError::Expired)
        );
        let none = format!(
            "{}.{}.",
            b64(&serde_json::json!({"alg": "none", "typ": "JWT"})),
            b64(&serde_json::json!({"sub": "alice", "exp": now() + 60}))
        );
        assert!(matches!(a.verify(&none, "d"), Err(AuthError::Invalid(_))));
        assert!(matches!(
            a.verify(&token("al.ice", None, now() + 60), "d"),
            Err(AuthError::BadId(_))
        ));
        assert!(matches!(
            a.verify(&token("alice", None, now() + 60), "d*"),
            Err(AuthError::BadId(_))
        ));
        assert_eq!(a.verify("", "d"), Err(AuthError::Missing));
        assert!(matches!(
            a.verify("garbage", "d"),
            Err(AuthError::Invalid(_))
        ));
    }

    #[test]
    fn hs256_is_refused_when_only_es256_is_configured() {
        assert!(matches!(
            Authenticator::new(None, None),
            Err(KeyError::NoKey)
        ));
        assert!(matches!(
            Authenticator::new(Some(b"short"), None),
            Err(KeyError::ShortSecret)
        ));
    }
}
