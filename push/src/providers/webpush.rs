//! Web Push (RFC 8030): `POST` to the subscription's endpoint, the payload encrypted
//! for the subscription ([`super::ece`], RFC 8291), signed for the push service with
//! VAPID (RFC 8292: an ES256 JWT for the endpoint's origin, and our public key).

use std::time::Duration;

use anyhow::Context;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::DecodePrivateKey;
use petrel_core::push::{Alert, Urgency, b64url};

use super::{Outcome, app_data, ece, unix_secs};
use crate::config::WebPushSection;

/// How long a VAPID token is valid (RFC 8292 allows at most 24 hours).
const VAPID_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// The Web Push client.
pub struct WebPush {
    http: reqwest::Client,
    key: EncodingKey,
    public_key: String,
    subject: String,
}

#[derive(serde::Serialize)]
struct VapidClaims<'a> {
    aud: &'a str,
    exp: u64,
    sub: &'a str,
}

/// The public key (uncompressed P-256, base64url) of a VAPID private key in PEM
/// (PKCS#8): what browsers pass to `pushManager.subscribe`.
pub fn public_key_of(pem: &str) -> anyhow::Result<String> {
    let secret =
        p256::SecretKey::from_pkcs8_pem(pem).context("not a P-256 private key (PKCS#8 PEM)")?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(secret.public_key().to_encoded_point(false).as_bytes()))
}

/// Makes a VAPID key pair: writes the private key (PKCS#8 PEM, mode 0600) to `path`
/// and returns the public key (base64url).
pub fn generate_key(path: &std::path::Path) -> anyhow::Result<String> {
    use p256::pkcs8::EncodePrivateKey;
    let secret = p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
    let pem = secret
        .to_pkcs8_pem(Default::default())
        .context("encoding the key")?;
    petrel_gateway::tls::write_private(path, pem.as_bytes())?;
    public_key_of(&pem)
}

impl WebPush {
    /// The client `cfg` describes, its VAPID key read from `vapid_private_key_file`.
    pub fn new(cfg: &WebPushSection, http: reqwest::Client) -> anyhow::Result<Self> {
        let path = &cfg.vapid_private_key_file;
        let pem = std::fs::read_to_string(path)
            .with_context(|| format!("reading vapid_private_key_file {}", path.display()))?;
        let public_key = public_key_of(&pem)
            .with_context(|| format!("vapid_private_key_file {}", path.display()))?;
        let key = EncodingKey::from_ec_pem(pem.as_bytes())
            .with_context(|| format!("vapid_private_key_file {}", path.display()))?;
        Ok(Self {
            http,
            key,
            public_key,
            subject: cfg.subject.clone(),
        })
    }

    /// The VAPID public key (base64url).
    pub fn public_key(&self) -> &str {
        &self.public_key
    }

    /// Sends `alert` to the subscription (`endpoint`, `p256dh`, `auth`).
    pub async fn send(
        &self,
        endpoint: &str,
        p256dh: &str,
        auth: &str,
        alert: &Alert,
        ttl: Duration,
    ) -> Outcome {
        let url = match url::Url::parse(endpoint) {
            Ok(u) if u.scheme() == "https" && u.host().is_some() => u,
            _ => return Outcome::Gone("the endpoint is not an https URL".into()),
        };
        let (Some(ua_public), Some(auth)) = (b64url(p256dh), b64url(auth)) else {
            return Outcome::Gone("the subscription's keys are not base64url".into());
        };
        let mut payload = serde_json::Map::new();
        payload.insert("title".into(), alert.title.clone().into());
        payload.insert("body".into(), alert.body.clone().into());
        payload.insert("tag".into(), alert.collapse_id.clone().into());
        payload.insert("data".into(), app_data(alert).into());
        let plaintext = serde_json::Value::Object(payload).to_string();
        let body = match ece::encrypt(&ua_public, &auth, plaintext.as_bytes()) {
            Ok(b) => b,
            Err(e @ (ece::EceError::BadPublicKey | ece::EceError::BadAuth)) => {
                return Outcome::Gone(e.to_string());
            }
            Err(e) => return Outcome::Failed(e.to_string()),
        };
        let origin = url.origin().ascii_serialization();
        let claims = VapidClaims {
            aud: &origin,
            exp: unix_secs() + VAPID_LIFETIME.as_secs(),
            sub: &self.subject,
        };
        let jwt = match jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &self.key) {
            Ok(t) => t,
            Err(e) => return Outcome::Failed(format!("signing the VAPID token: {e}")),
        };
        let urgency = match alert.urgency {
            Urgency::High => "high",
            Urgency::Normal => "low",
        };
        let resp = self
            .http
            .post(url)
            .header(
                "authorization",
                format!("vapid t={jwt}, k={}", self.public_key),
            )
            .header("ttl", ttl.as_secs().to_string())
            .header("urgency", urgency)
            .header("topic", &alert.collapse_id)
            .header("content-encoding", "aes128gcm")
            .header("content-type", "application/octet-stream")
            .body(body)
            .send()
            .await;
        let (status, after, resp) = match super::refusal(resp) {
            Ok(r) => r,
            Err(outcome) => return outcome,
        };
        let text = resp.text().await.unwrap_or_default();
        let reason = format!(
            "{status}: {}",
            text.trim().chars().take(200).collect::<String>()
        );
        match status.as_u16() {
            404 | 410 => Outcome::Gone(reason),
            _ => Outcome::from_status(status, after, reason),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_vapid_key_yields_its_uncompressed_public_key() {
        let key = rcgen_free_key();
        let public = super::public_key_of(&key).unwrap();
        let raw = petrel_core::push::b64url(&public).unwrap();
        assert_eq!(raw.len(), 65);
        assert_eq!(raw[0], 4);
        assert!(super::public_key_of("not a key").is_err());
    }

    fn rcgen_free_key() -> String {
        use p256::pkcs8::EncodePrivateKey;
        p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng)
            .to_pkcs8_pem(Default::default())
            .unwrap()
            .to_string()
    }
}
