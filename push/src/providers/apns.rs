//! APNs: the HTTP/2 provider API with token authentication.
//!
//! `POST {endpoint}/3/device/{token}` with a provider token — an ES256 JWT
//! (`kid` = key id, `iss` = team id, `iat`) signed with the team's `.p8` key — made
//! once and reused for [`TOKEN_LIFETIME`]: Apple refuses tokens older than an hour and
//! refreshing more often than every 20 minutes.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use petrel_core::push::{Alert, Urgency};
use serde_json::json;

use super::{Outcome, app_data, unix_secs};
use crate::config::ApnsSection;

/// How long one provider token is used: between Apple's 20 and 60 minutes.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(40 * 60);

/// The APNs client.
pub struct Apns {
    http: reqwest::Client,
    endpoint: url::Url,
    sandbox_endpoint: url::Url,
    key: EncodingKey,
    key_id: String,
    team_id: String,
    token: Mutex<Option<(String, Instant)>>,
}

#[derive(serde::Serialize)]
struct Claims<'a> {
    iss: &'a str,
    iat: u64,
}

#[derive(serde::Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    reason: String,
}

impl Apns {
    /// The client `cfg` describes, its key read from `key_file`.
    pub fn new(cfg: &ApnsSection, http: reqwest::Client) -> anyhow::Result<Self> {
        let pem = std::fs::read(&cfg.key_file)
            .with_context(|| format!("reading key_file {}", cfg.key_file.display()))?;
        let key = EncodingKey::from_ec_pem(&pem).with_context(|| {
            format!(
                "key_file {} is not a P-256 private key (.p8, PEM)",
                cfg.key_file.display()
            )
        })?;
        Ok(Self {
            http,
            endpoint: cfg.endpoint.clone(),
            sandbox_endpoint: cfg.sandbox_endpoint.clone(),
            key,
            key_id: cfg.key_id.clone(),
            team_id: cfg.team_id.clone(),
            token: Mutex::new(None),
        })
    }

    /// The provider token to use now: the cached one while younger than
    /// [`TOKEN_LIFETIME`], else a new one.
    fn provider_token(&self, now: Instant) -> Result<String, String> {
        let mut cached = self
            .token
            .lock()
            .map_err(|_| "token cache poisoned".to_string())?;
        if let Some((t, made)) = cached.as_ref()
            && now.duration_since(*made) < TOKEN_LIFETIME
        {
            return Ok(t.clone());
        }
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.key_id.clone());
        let claims = Claims {
            iss: &self.team_id,
            iat: unix_secs(),
        };
        let t = jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| format!("signing the provider token: {e}"))?;
        *cached = Some((t.clone(), now));
        Ok(t)
    }

    fn forget_token(&self) {
        if let Ok(mut c) = self.token.lock() {
            *c = None;
        }
    }

    /// Sends `alert` to the device `token` of app `topic`.
    pub async fn send(
        &self,
        token: &str,
        topic: &str,
        sandbox: bool,
        alert: &Alert,
        ttl: Duration,
    ) -> Outcome {
        let bearer = match self.provider_token(Instant::now()) {
            Ok(t) => t,
            Err(e) => return Outcome::Failed(e),
        };
        let base = if sandbox {
            &self.sandbox_endpoint
        } else {
            &self.endpoint
        };
        let url = match base.join(&format!("/3/device/{token}")) {
            Ok(u) => u,
            Err(e) => return Outcome::Failed(format!("device token does not make a URL: {e}")),
        };
        let mut body = serde_json::Map::new();
        body.insert(
            "aps".into(),
            json!({
                "alert": { "title": alert.title, "body": alert.body },
                "badge": alert.badge,
                "sound": "default",
                "thread-id": alert.collapse_id,
            }),
        );
        body.insert("petrel".into(), app_data(alert).into());
        let priority = match alert.urgency {
            Urgency::High => "10",
            Urgency::Normal => "5",
        };
        let resp = self
            .http
            .post(url)
            .header("authorization", format!("bearer {bearer}"))
            .header("apns-topic", topic)
            .header("apns-push-type", "alert")
            .header("apns-priority", priority)
            .header("apns-collapse-id", &alert.collapse_id)
            .header("apns-expiration", (unix_secs() + ttl.as_secs()).to_string())
            .header("content-type", "application/json")
            .body(serde_json::Value::Object(body).to_string())
            .send()
            .await;
        let (status, after, resp) = match super::refusal(resp) {
            Ok(r) => r,
            Err(outcome) => return outcome,
        };
        let reason = super::json_body::<ErrorBody>(resp)
            .await
            .unwrap_or_default()
            .reason;
        let reason = if reason.is_empty() {
            status.to_string()
        } else {
            reason
        };
        match (status.as_u16(), reason.as_str()) {
            (410, _) | (400, "BadDeviceToken" | "DeviceTokenNotForTopic") => Outcome::Gone(reason),
            (403, "ExpiredProviderToken") => {
                self.forget_token();
                Outcome::Retry {
                    after: None,
                    reason,
                }
            }
            _ => Outcome::from_status(status, after, reason),
        }
    }
}
