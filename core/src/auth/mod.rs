//! Token verification (and dev token minting).
//!
//! A client proves who it is with a JWT in Hello: `sub` is the user id, the optional
//! `device` claim pins the device id, `exp` is required. HS256 with a shared secret is
//! meant for development; for production, ES256 with a public key file, or a key set
//! ([`KeySet`], JWKS) whose keys are picked by the token's `kid` and replaced while the
//! gateway runs ([`Authenticator::replace_key_set`]) so signing keys can be rotated.
//! Only the algorithms configured here are accepted, and a key-set key verifies only
//! its own algorithm, so `alg: none` or an HS256 token signed with an ES256 public key
//! (the classic confusion attack) are refused.
//!
//! `jwks` parses key sets; fetching them is the gateway's job (this crate does no I/O).
//!
//! Time is checked here against the caller's clock ([`Authenticator::verify`] takes
//! `now`), within [`TokenPolicy`]: `exp` in the past, `nbf` in the future, `iat` in the
//! future, or an `exp` further away than the longest lifetime allowed are refused. A
//! `crit` header names extensions this gateway cannot honour, so it is refused too.
//! Error messages say what is wrong, never the parser's words.

use std::sync::{Arc, PoisonError, RwLock};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};

mod jwks;

pub use jwks::{KeySet, MAX_KEYS, Skipped};

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
    /// Not before, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
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
    /// The token's `nbf` is still in the future.
    #[error("token not valid yet (nbf is in the future)")]
    NotYetValid,
    /// The token's `iat` is in the future (beyond the allowed clock skew).
    #[error("token issued in the future (iat)")]
    IssuedInFuture,
    /// The token is valid for longer than the gateway allows.
    #[error("token valid for longer than the {max_secs} s this gateway allows")]
    TooLong {
        /// The longest lifetime allowed.
        max_secs: u64,
    },
    /// The token is malformed, badly signed, or uses an algorithm that is not accepted.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// The token names (`kid`) a key that is not in the gateway's key set.
    #[error("token signed with a key this gateway does not know (kid)")]
    UnknownKey,
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
    /// Neither an HS256 secret, an ES256 key nor a key set was configured.
    #[error("no token key configured (set an HS256 secret, an ES256 public key or a JWKS)")]
    NoKey,
    /// A JWKS document that yields no usable key.
    #[error("bad key set: {0}")]
    BadKeySet(&'static str),
    /// The HS256 secret is too short to be safe.
    #[error("the HS256 secret must be at least 32 bytes")]
    ShortSecret,
    /// The ES256 public key PEM could not be parsed.
    #[error("bad ES256 public key: {0}")]
    BadPublicKey(String),
}

/// What a token's times may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenPolicy {
    /// Clock skew allowed between the token's issuer and the gateway.
    pub leeway_secs: u64,
    /// The furthest `exp` may be from now.
    pub max_lifetime_secs: u64,
}

impl Default for TokenPolicy {
    fn default() -> Self {
        Self {
            leeway_secs: 5,
            max_lifetime_secs: 24 * 3600,
        }
    }
}

/// Verifies tokens with the configured keys.
pub struct Authenticator {
    hs256: Option<DecodingKey>,
    es256: Option<DecodingKey>,
    /// The key set, when one is configured; swapped whole on refresh.
    key_set: Option<RwLock<Arc<KeySet>>>,
    policy: TokenPolicy,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("hs256", &self.hs256.is_some())
            .field("es256", &self.es256.is_some())
            .field("key_set", &self.key_set())
            .finish()
    }
}

/// Where a token's key comes from.
enum KeyChoice {
    Static(DecodingKey),
    FromSet(jwks::VerifyKey),
}

impl Authenticator {
    /// Builds an authenticator from an HS256 secret and/or an ES256 public key (PEM).
    pub fn new(
        hs256_secret: Option<&[u8]>,
        es256_public_pem: Option<&[u8]>,
    ) -> Result<Self, KeyError> {
        Self::with_keys(hs256_secret, es256_public_pem, None)
    }

    /// Builds an authenticator from any of an HS256 secret, an ES256 public key (PEM)
    /// and a key set; at least one is needed.
    pub fn with_keys(
        hs256_secret: Option<&[u8]>,
        es256_public_pem: Option<&[u8]>,
        key_set: Option<KeySet>,
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
        if hs256.is_none() && es256.is_none() && key_set.is_none() {
            return Err(KeyError::NoKey);
        }
        Ok(Self {
            hs256,
            es256,
            key_set: key_set.map(|s| RwLock::new(Arc::new(s))),
            policy: TokenPolicy::default(),
        })
    }

    /// The current key set, if one is configured.
    pub fn key_set(&self) -> Option<Arc<KeySet>> {
        self.key_set
            .as_ref()
            .map(|s| s.read().unwrap_or_else(PoisonError::into_inner).clone())
    }

    /// Replaces the key set (a refresh). Returns false, changing nothing, if this
    /// authenticator was built without one.
    pub fn replace_key_set(&self, set: KeySet) -> bool {
        let Some(slot) = &self.key_set else {
            return false;
        };
        *slot.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(set);
        true
    }

    /// The `kid` of `token` when it names a key the key set does not hold, so that the
    /// caller may refresh the set before verifying. `None` for every other token
    /// (including malformed ones, which [`verify`](Self::verify) refuses).
    pub fn unknown_kid(&self, token: &str) -> Option<String> {
        let set = self.key_set()?;
        let kid = jsonwebtoken::decode_header(token).ok()?.kid?;
        (!set.contains(&kid)).then_some(kid)
    }

    /// The same keys under `policy`.
    pub fn with_policy(mut self, policy: TokenPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Verifies `token` at `now_secs` (Unix seconds) and binds it to `hello_device`
    /// (empty: take the token's claim).
    pub fn verify(
        &self,
        token: &str,
        hello_device: &str,
        now_secs: u64,
    ) -> Result<Identity, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        refuse_critical_extensions(token)?;
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| AuthError::Invalid("malformed token or unsupported algorithm".into()))?;
        let key = self.key_for(&header)?;
        let key = match &key {
            KeyChoice::Static(k) => k,
            KeyChoice::FromSet(k) => &k.key,
        };
        // Times are checked below against the caller's clock, not the library's.
        let mut validation = Validation::new(header.alg);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "sub"]);
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation)
            .map_err(|e| AuthError::Invalid(describe(e.kind()).into()))?;
        let claims = data.claims;
        self.check_times(&claims, now_secs)?;
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

impl Authenticator {
    /// The key that must have signed a token with `header`: from the key set by `kid`
    /// (and only for that key's algorithm), otherwise the static key of its algorithm.
    fn key_for(&self, header: &Header) -> Result<KeyChoice, AuthError> {
        if let (Some(kid), Some(set)) = (&header.kid, self.key_set()) {
            let key = set.get(kid).ok_or(AuthError::UnknownKey)?;
            if key.alg != header.alg {
                return Err(AuthError::Invalid(
                    "the token's algorithm is not the one of its key".into(),
                ));
            }
            return Ok(KeyChoice::FromSet(key.clone()));
        }
        let key = match header.alg {
            Algorithm::HS256 => self.hs256.as_ref(),
            Algorithm::ES256 => self.es256.as_ref(),
            _ => None,
        };
        match key {
            Some(k) => Ok(KeyChoice::Static(k.clone())),
            None if self.key_set.is_some() => Err(AuthError::Invalid(
                "the token names no key (kid) of this gateway's key set".into(),
            )),
            None => Err(AuthError::Invalid(format!(
                "algorithm {:?} is not accepted",
                header.alg
            ))),
        }
    }

    fn check_times(&self, c: &Claims, now: u64) -> Result<(), AuthError> {
        let TokenPolicy {
            leeway_secs: skew,
            max_lifetime_secs: max,
        } = self.policy;
        if c.exp.saturating_add(skew) <= now {
            return Err(AuthError::Expired);
        }
        if c.nbf.is_some_and(|nbf| nbf > now.saturating_add(skew)) {
            return Err(AuthError::NotYetValid);
        }
        if c.iat.is_some_and(|iat| iat > now.saturating_add(skew)) {
            return Err(AuthError::IssuedInFuture);
        }
        if c.exp > now.saturating_add(max).saturating_add(skew) {
            return Err(AuthError::TooLong { max_secs: max });
        }
        Ok(())
    }
}

/// A `crit` header lists extensions the verifier must understand (RFC 7515 §4.1.11);
/// this gateway understands none, so any is refused.
fn refuse_critical_extensions(token: &str) -> Result<(), AuthError> {
    use base64::Engine;
    let malformed = || AuthError::Invalid("malformed token".into());
    let header = token.split('.').next().ok_or_else(malformed)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| malformed())?;
    let header: serde_json::Value = serde_json::from_slice(&bytes).map_err(|_| malformed())?;
    if header.get("crit").is_some() {
        return Err(AuthError::Invalid(
            "the token requires extensions this gateway does not support (crit)".into(),
        ));
    }
    Ok(())
}

/// What is wrong with a token, in words that do not echo the parser's.
fn describe(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::InvalidSignature => "bad signature",
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => "algorithm not accepted",
        ErrorKind::MissingRequiredClaim(c) if c == "exp" => "missing claim exp",
        ErrorKind::MissingRequiredClaim(c) if c == "sub" => "missing claim sub",
        ErrorKind::MissingRequiredClaim(_) => "missing a required claim",
        ErrorKind::Json(_) => "claims are not valid (sub a string, exp/iat/nbf numbers)",
        _ => "malformed token",
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
            nbf: None,
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
        let id = auth.verify(&t, "phone", now()).unwrap();
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
                nbf: None,
            },
        )
        .unwrap()
    }

    fn b64(v: &serde_json::Value) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    }

    fn claims(exp: u64) -> Claims {
        Claims {
            sub: "alice".into(),
            device: None,
            exp,
            iat: None,
            nbf: None,
        }
    }

    fn signed(c: &Claims) -> String {
        mint_hs256(SECRET, c).unwrap()
    }

    /// A token with header `header`, signed with the test secret.
    fn with_header(header: serde_json::Value, c: &Claims) -> String {
        use hmac_free::sign;
        let head = b64(&header);
        let body = b64(&serde_json::to_value(c).unwrap());
        let sig = sign(SECRET, format!("{head}.{body}").as_bytes());
        format!("{head}.{body}.{sig}")
    }

    mod hmac_free {
        //! HS256 over an arbitrary header, through jsonwebtoken's own signer.
        pub fn sign(secret: &[u8], message: &[u8]) -> String {
            jsonwebtoken::crypto::sign(
                message,
                &jsonwebtoken::EncodingKey::from_secret(secret),
                jsonwebtoken::Algorithm::HS256,
            )
            .unwrap()
        }
    }

    #[test]
    fn times_are_checked_against_the_callers_clock() {
        let a = Authenticator::new(Some(SECRET), None).unwrap();
        let t0 = 1_800_000_000;
        let ok = signed(&claims(t0 + 60));
        assert!(a.verify(&ok, "d", t0).is_ok());
        assert_eq!(a.verify(&ok, "d", t0 + 66), Err(AuthError::Expired));
        assert!(a.verify(&ok, "d", t0 + 64).is_ok(), "within the skew");
        let later = signed(&Claims {
            nbf: Some(t0 + 30),
            ..claims(t0 + 60)
        });
        assert_eq!(a.verify(&later, "d", t0), Err(AuthError::NotYetValid));
        assert!(a.verify(&later, "d", t0 + 30).is_ok());
        let future = signed(&Claims {
            iat: Some(t0 + 3600),
            ..claims(t0 + 7200)
        });
        assert_eq!(a.verify(&future, "d", t0), Err(AuthError::IssuedInFuture));
    }

    #[test]
    fn a_lifetime_beyond_the_maximum_is_refused_even_at_the_end_of_time() {
        let a = Authenticator::new(Some(SECRET), None)
            .unwrap()
            .with_policy(TokenPolicy {
                leeway_secs: 5,
                max_lifetime_secs: 3600,
            });
        let t0 = 1_800_000_000;
        assert!(a.verify(&signed(&claims(t0 + 3600)), "d", t0).is_ok());
        assert_eq!(
            a.verify(&signed(&claims(t0 + 3606)), "d", t0),
            Err(AuthError::TooLong { max_secs: 3600 })
        );
        assert_eq!(
            a.verify(&signed(&claims(u64::MAX)), "d", t0),
            Err(AuthError::TooLong { max_secs: 3600 })
        );
        // The end of time itself must not overflow anything.
        assert_eq!(
            a.verify(&signed(&claims(u64::MAX)), "d", u64::MAX),
            Err(AuthError::Expired)
        );
    }

    #[test]
    fn a_crit_header_is_refused_and_messages_do_not_echo_the_parser() {
        let a = Authenticator::new(Some(SECRET), None).unwrap();
        let plain = with_header(
            serde_json::json!({"alg": "HS256", "typ": "JWT"}),
            &claims(now() + 60),
        );
        assert!(a.verify(&plain, "d", now()).is_ok(), "the signer is right");
        let crit = with_header(
            serde_json::json!({"alg": "HS256", "crit": ["exp"], "exp": 1}),
            &claims(now() + 60),
        );
        let Err(AuthError::Invalid(why)) = a.verify(&crit, "d", now()) else {
            panic!("crit accepted");
        };
        assert!(why.contains("crit"), "{why}");
        let none = with_header(serde_json::json!({"alg": "none"}), &claims(now() + 60));
        for bad in [none.as_str(), "garbage", "a.b.c"] {
            let Err(AuthError::Invalid(why)) = a.verify(bad, "d", now()) else {
                panic!("{bad} accepted");
            };
            for internal in ["variant", "expected one of", "Base64", "Json", "Error("] {
                assert!(!why.contains(internal), "{why:?} echoes the parser");
            }
        }
    }

    #[test]
    fn key_set_tokens_need_a_known_kid_and_that_keys_algorithm() {
        use super::jwks::tests::{ec_key, parse};
        let (set, _) = parse(vec![ec_key("a")]).unwrap();
        let a = Authenticator::with_keys(Some(SECRET), None, Some(set)).unwrap();
        let c = claims(now() + 60);
        let hs = |kid: &str| with_header(serde_json::json!({"alg": "HS256", "kid": kid}), &c);
        // HS256 naming the EC key: the key fixes the algorithm (no confusion).
        let Err(AuthError::Invalid(why)) = a.verify(&hs("a"), "d", now()) else {
            panic!("HS256 accepted for an ES256 key");
        };
        assert!(why.contains("algorithm"), "{why}");
        assert_eq!(a.verify(&hs("zz"), "d", now()), Err(AuthError::UnknownKey));
        assert_eq!(a.unknown_kid(&hs("zz")).as_deref(), Some("zz"));
        assert_eq!(a.unknown_kid(&hs("a")), None);
        assert_eq!(a.unknown_kid("garbage"), None);
        // No kid: the static keys, as before.
        assert!(a.verify(&signed(&c), "d", now()).is_ok());
        // A rotation replaces the set whole.
        let (next, _) = parse(vec![ec_key("zz")]).unwrap();
        assert!(a.replace_key_set(next));
        assert_eq!(a.verify(&hs("a"), "d", now()), Err(AuthError::UnknownKey));
        assert!(matches!(
            a.verify(&hs("zz"), "d", now()),
            Err(AuthError::Invalid(_))
        ));
        // A key set alone: a token naming no key is refused in plain words.
        let (set, _) = parse(vec![ec_key("a")]).unwrap();
        let only = Authenticator::with_keys(None, None, Some(set)).unwrap();
        let Err(AuthError::Invalid(why)) = only.verify(&signed(&c), "d", now()) else {
            panic!("a token without kid accepted");
        };
        assert!(why.contains("kid"), "{why}");
        let (set, _) = parse(vec![ec_key("a")]).unwrap();
        assert!(
            !Authenticator::new(Some(SECRET), None)
                .unwrap()
                .replace_key_set(set)
        );
    }

    #[test]
    fn accepts_a_good_token_and_binds_the_device() {
        let a = Authenticator::new(Some(SECRET), None).unwrap();
        let id = a
            .verify(&token("alice", None, now() + 60), "phone", now())
            .unwrap();
        assert_eq!(id.user.as_str(), "alice");
        assert_eq!(id.device.as_str(), "phone");
        let id = a
            .verify(&token("alice", Some("tab"), now() + 60), "", now())
            .unwrap();
        assert_eq!(id.device.as_str(), "tab");
        assert!(matches!(
            a.verify(&token("alice", Some("tab"), now() + 60), "phone", now()),
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
                nbf: None,
            },
        )
        .unwrap();
        assert!(matches!(
            a.verify(&forged, "d", now()),
            Err(AuthError::Invalid(_))
        ));
        assert_eq!(
            a.verify(&token("alice", None, now() - 120), "d", now()),
            Err(AuthError::Expired)
        );
        let none = format!(
            "{}.{}.",
            b64(&serde_json::json!({"alg": "none", "typ": "JWT"})),
            b64(&serde_json::json!({"sub": "alice", "exp": now() + 60}))
        );
        assert!(matches!(
            a.verify(&none, "d", now()),
            Err(AuthError::Invalid(_))
        ));
        assert!(matches!(
            a.verify(&token("al.ice", None, now() + 60), "d", now()),
            Err(AuthError::BadId(_))
        ));
        assert!(matches!(
            a.verify(&token("alice", None, now() + 60), "d*", now()),
            Err(AuthError::BadId(_))
        ));
        assert_eq!(a.verify("", "d", now()), Err(AuthError::Missing));
        assert!(matches!(
            a.verify("garbage", "d", now()),
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
