//! A JSON Web Key Set (RFC 7517): the public keys an operator's token issuer signs
//! with, each named by its `kid`, so signing keys can be rotated without restarting a
//! gateway.
//!
//! Each usable key fixes the one algorithm it verifies (ES256 for EC P-256, RS256 or
//! PS256 for RSA of at least 2048 bits, EdDSA for Ed25519), so a token cannot choose a
//! weaker reading of a key. Shared secrets (`kty: oct`), encryption keys and anything
//! else are skipped with a reason rather than failing the whole set, because issuers
//! publish keys for other uses next to their signing keys.

use std::collections::HashMap;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

use super::KeyError;

/// The most keys one set may hold; issuers publish a handful.
pub const MAX_KEYS: usize = 64;

/// Smallest RSA modulus accepted, in bytes (2048 bits).
const MIN_RSA_MODULUS_BYTES: usize = 256;

/// One verification key and the algorithm it is for.
#[derive(Clone)]
pub(crate) struct VerifyKey {
    pub(crate) alg: Algorithm,
    pub(crate) key: DecodingKey,
}

/// The usable signing keys of a JWKS document, by `kid`.
#[derive(Clone, Default)]
pub struct KeySet {
    keys: HashMap<String, VerifyKey>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet")
            .field("kids", &self.kids())
            .finish()
    }
}

/// A key of the document that was not taken, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// Its `kid`, when it had one.
    pub kid: Option<String>,
    /// Why it was skipped.
    pub why: &'static str,
}

impl KeySet {
    /// Parses a JWKS document (`{"keys": [...]}`). Keys that cannot verify Petrel tokens
    /// are skipped and listed; a document with no usable key at all is an error, so a
    /// broken publication never replaces a working set with an empty one.
    pub fn parse(json: &[u8]) -> Result<(KeySet, Vec<Skipped>), KeyError> {
        #[derive(serde::Deserialize)]
        struct Document {
            keys: Vec<serde_json::Value>,
        }
        let doc: Document = serde_json::from_slice(json)
            .map_err(|_| KeyError::BadKeySet("not a JWKS document ({\"keys\": [...]})"))?;
        let mut set = KeySet::default();
        let mut skipped = Vec::new();
        for value in doc.keys {
            let kid = value.get("kid").and_then(|k| k.as_str()).map(str::to_owned);
            let taken = match serde_json::from_value::<Jwk>(value) {
                Ok(jwk) => set.take(jwk),
                Err(_) => Err("not a key this gateway can read"),
            };
            if let Err(why) = taken {
                skipped.push(Skipped { kid, why });
            }
        }
        if set.keys.is_empty() {
            return Err(KeyError::BadKeySet(
                "the key set holds no usable signing key",
            ));
        }
        Ok((set, skipped))
    }

    fn take(&mut self, jwk: Jwk) -> Result<(), &'static str> {
        let kid = jwk.common.key_id.clone().ok_or("no kid")?;
        if kid.is_empty() || kid.len() > 256 {
            return Err("kid empty or longer than 256 bytes");
        }
        if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
            return Err("not a signing key (use)");
        }
        if self.keys.contains_key(&kid) {
            return Err("duplicate kid");
        }
        if self.keys.len() >= MAX_KEYS {
            return Err("more keys than a set may hold");
        }
        let alg = algorithm_of(&jwk)?;
        let key = DecodingKey::from_jwk(&jwk).map_err(|_| "key material does not parse")?;
        self.keys.insert(kid, VerifyKey { alg, key });
        Ok(())
    }

    /// Number of usable keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the set holds no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The kids of this set, sorted.
    pub fn kids(&self) -> Vec<&str> {
        let mut kids: Vec<_> = self.keys.keys().map(String::as_str).collect();
        kids.sort_unstable();
        kids
    }

    /// Whether `kid` names a key of this set.
    pub fn contains(&self, kid: &str) -> bool {
        self.keys.contains_key(kid)
    }

    pub(crate) fn get(&self, kid: &str) -> Option<&VerifyKey> {
        self.keys.get(kid)
    }
}

/// The one algorithm a key verifies: the declared `alg` when it fits the key type,
/// otherwise the key type's usual one.
fn algorithm_of(jwk: &Jwk) -> Result<Algorithm, &'static str> {
    let declared = jwk.common.key_algorithm;
    match &jwk.algorithm {
        AlgorithmParameters::EllipticCurve(ec) => {
            if ec.curve != EllipticCurve::P256 {
                return Err("EC keys must be on P-256 (ES256)");
            }
            match declared {
                None | Some(KeyAlgorithm::ES256) => Ok(Algorithm::ES256),
                Some(_) => Err("alg does not fit an EC P-256 key"),
            }
        }
        AlgorithmParameters::RSA(rsa) => {
            if modulus_bytes(&rsa.n).ok_or("RSA modulus does not parse")? < MIN_RSA_MODULUS_BYTES {
                return Err("RSA keys must be at least 2048 bits");
            }
            match declared {
                None | Some(KeyAlgorithm::RS256) => Ok(Algorithm::RS256),
                Some(KeyAlgorithm::PS256) => Ok(Algorithm::PS256),
                Some(_) => Err("RSA keys are accepted for RS256 or PS256 only"),
            }
        }
        AlgorithmParameters::OctetKeyPair(okp) => {
            if okp.curve != EllipticCurve::Ed25519 {
                return Err("OKP keys must be Ed25519");
            }
            match declared {
                None | Some(KeyAlgorithm::EdDSA) => Ok(Algorithm::EdDSA),
                Some(_) => Err("alg does not fit an Ed25519 key"),
            }
        }
        AlgorithmParameters::OctetKey(_) => Err("shared secrets (kty oct) are not published keys"),
        _ => Err("unsupported key type"),
    }
}

/// Length of an RSA modulus (base64url, big-endian) without leading zero bytes.
fn modulus_bytes(n: &str) -> Option<usize> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(n.trim_end_matches('='))
        .ok()?;
    Some(bytes.iter().skip_while(|b| **b == 0).count())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A valid EC P-256 signing key named `kid`.
    pub(crate) fn ec_key(kid: &str) -> serde_json::Value {
        // A valid P-256 public key (RFC 7515 appendix A.3).
        serde_json::json!({
            "kty": "EC", "crv": "P-256", "kid": kid,
            "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
            "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"
        })
    }

    pub(crate) fn parse(keys: Vec<serde_json::Value>) -> Result<(KeySet, Vec<Skipped>), KeyError> {
        KeySet::parse(serde_json::json!({ "keys": keys }).to_string().as_bytes())
    }

    #[test]
    fn usable_keys_are_taken_and_the_rest_skipped_with_a_reason() {
        let (set, skipped) = parse(vec![
            ec_key("a"),
            ec_key("a"),
            serde_json::json!({"kty": "oct", "kid": "s", "k": "c2VjcmV0"}),
            serde_json::json!({"kty": "EC", "crv": "P-256", "kid": "e", "use": "enc",
                "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
                "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}),
            serde_json::json!({"kty": "RSA", "kid": "small", "n": "AQAB", "e": "AQAB"}),
            serde_json::json!({"kty": "EC", "crv": "P-256", "x": "f83O", "y": "x_FE"}),
            serde_json::json!({"kty": "XYZ", "kid": "odd"}),
            serde_json::json!({"kty": "EC", "crv": "P-256", "kid": "mis", "alg": "RS256",
                "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
                "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}),
        ])
        .unwrap();
        assert_eq!(set.len(), 1);
        assert!(set.contains("a"));
        let why: Vec<_> = skipped.iter().map(|s| (s.kid.as_deref(), s.why)).collect();
        assert_eq!(
            why,
            vec![
                (Some("a"), "duplicate kid"),
                (Some("s"), "shared secrets (kty oct) are not published keys"),
                (Some("e"), "not a signing key (use)"),
                (Some("small"), "RSA keys must be at least 2048 bits"),
                (None, "no kid"),
                (Some("odd"), "unsupported key type"),
                (Some("mis"), "alg does not fit an EC P-256 key"),
            ]
        );
    }

    #[test]
    fn a_set_without_a_usable_key_is_an_error() {
        assert!(matches!(parse(vec![]), Err(KeyError::BadKeySet(_))));
        assert!(matches!(
            parse(vec![
                serde_json::json!({"kty": "oct", "kid": "s", "k": "c2VjcmV0"})
            ]),
            Err(KeyError::BadKeySet(_))
        ));
        for bad in [&b"{"[..], b"[]", b"{\"keys\": 3}", b"null"] {
            assert!(matches!(KeySet::parse(bad), Err(KeyError::BadKeySet(_))));
        }
    }

    #[test]
    fn the_number_of_keys_is_bounded() {
        let keys = (0..MAX_KEYS + 3)
            .map(|i| ec_key(&format!("k{i}")))
            .collect();
        let (set, skipped) = parse(keys).unwrap();
        assert_eq!(set.len(), MAX_KEYS);
        assert_eq!(skipped.len(), 3);
    }
}
