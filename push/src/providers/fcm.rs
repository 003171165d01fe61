//! FCM HTTP v1: `POST {endpoint}/v1/projects/{project}/messages:send` with an OAuth2
//! access token got by the JWT-bearer grant (RFC 7523) from the service account's
//! `token_uri`: an RS256 assertion signed with its private key. The token is cached
//! until [`EXPIRY_MARGIN`] before it expires, and dropped when FCM answers 401.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use petrel_core::push::{Alert, Urgency};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::Mutex;

use super::{Outcome, app_data, retry_after, unix_secs};
use crate::config::FcmSection;

/// A cached access token is renewed this long before it expires.
pub const EXPIRY_MARGIN: Duration = Duration::from_secs(300);

/// The scope FCM's v1 API needs.
pub const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

/// The fields of a Google service-account key file that the grant uses.
#[derive(Debug, Clone, Deserialize)]
pub struct ServiceAccount {
    /// The Firebase project.
    pub project_id: String,
    /// The key's id (the assertion's `kid`).
    #[serde(default)]
    pub private_key_id: String,
    /// PKCS#8 PEM RSA key.
    pub private_key: String,
    /// The account (the assertion's `iss`).
    pub client_email: String,
    /// Where the grant goes.
    pub token_uri: String,
}

impl ServiceAccount {
    /// Reads a service-account JSON file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let raw = std::fs::read(path)
            .with_context(|| format!("reading credentials_file {}", path.display()))?;
        serde_json::from_slice(&raw).with_context(|| {
            format!(
                "credentials_file {} is not a service-account key (project_id, private_key, client_email, token_uri)",
                path.display()
            )
        })
    }
}

/// The FCM client.
pub struct Fcm {
    http: reqwest::Client,
    send_url: url::Url,
    token_uri: url::Url,
    account: ServiceAccount,
    key: EncodingKey,
    token: Mutex<Option<(String, Instant)>>,
}

#[derive(serde::Serialize)]
struct Assertion<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default = "default_expires_in")]
    expires_in: u64,
}

fn default_expires_in() -> u64 {
    3600
}

#[derive(Deserialize, Default)]
struct ErrorResponse {
    #[serde(default)]
    error: ErrorBody,
}

#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    status: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    details: Vec<serde_json::Value>,
}

impl ErrorBody {
    /// The FcmError detail's `errorCode`, else the top-level status.
    fn code(&self) -> String {
        self.details
            .iter()
            .find(|d| {
                d.get("@type")
                    .and_then(|t| t.as_str())
                    .is_some_and(|t| t.ends_with("google.firebase.fcm.v1.FcmError"))
            })
            .and_then(|d| d.get("errorCode")?.as_str())
            .unwrap_or(&self.status)
            .to_string()
    }
}

impl Fcm {
    /// The client `cfg` describes, its service account read from `credentials_file`.
    pub fn new(cfg: &FcmSection, http: reqwest::Client) -> anyhow::Result<Self> {
        let account = ServiceAccount::load(&cfg.credentials_file)?;
        let key = EncodingKey::from_rsa_pem(account.private_key.as_bytes())
            .context("the service account's private_key is not an RSA key (PEM)")?;
        let token_uri = crate::config::provider_url(&account.token_uri)
            .context("the service account's token_uri")?;
        let send_url = cfg
            .endpoint
            .join(&format!(
                "/v1/projects/{}/messages:send",
                account.project_id
            ))
            .context("project_id does not make a URL")?;
        Ok(Self {
            http,
            send_url,
            token_uri,
            account,
            key,
            token: Mutex::new(None),
        })
    }

    /// A valid access token: the cached one, or a new one from the grant.
    async fn access_token(&self) -> Result<String, Outcome> {
        let mut cached = self.token.lock().await;
        if let Some((t, until)) = cached.as_ref()
            && Instant::now() < *until
        {
            return Ok(t.clone());
        }
        let now = unix_secs();
        let mut header = Header::new(Algorithm::RS256);
        if !self.account.private_key_id.is_empty() {
            header.kid = Some(self.account.private_key_id.clone());
        }
        let claims = Assertion {
            iss: &self.account.client_email,
            scope: SCOPE,
            aud: self.token_uri.as_str(),
            iat: now,
            exp: now + 3600,
        };
        let assertion = jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| Outcome::Failed(format!("signing the OAuth assertion: {e}")))?;
        let form = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer")
            .append_pair("assertion", &assertion)
            .finish();
        let resp = self
            .http
            .post(self.token_uri.clone())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await
            .map_err(|e| Outcome::unreachable(&e))?;
        let status = resp.status();
        if !status.is_success() {
            let after = retry_after(resp.headers());
            let body = resp.text().await.unwrap_or_default();
            return Err(Outcome::from_status(
                status,
                after,
                format!("OAuth token endpoint answered {status}: {}", body.trim()),
            ));
        }
        let t: TokenResponse = super::json_body(resp).await.map_err(|e| Outcome::Retry {
            after: None,
            reason: format!("OAuth token response: {e}"),
        })?;
        let life = Duration::from_secs(t.expires_in).saturating_sub(EXPIRY_MARGIN);
        *cached = Some((t.access_token.clone(), Instant::now() + life));
        Ok(t.access_token)
    }

    /// Sends `alert` to the registration `token`.
    pub async fn send(&self, token: &str, alert: &Alert, ttl: Duration) -> Outcome {
        let access = match self.access_token().await {
            Ok(t) => t,
            Err(outcome) => return outcome,
        };
        let priority = match alert.urgency {
            Urgency::High => "HIGH",
            Urgency::Normal => "NORMAL",
        };
        let body = json!({
            "message": {
                "token": token,
                "notification": { "title": alert.title, "body": alert.body },
                "data": app_data(alert),
                "android": {
                    "priority": priority,
                    "collapse_key": alert.collapse_id,
                    "ttl": format!("{}s", ttl.as_secs()),
                    "notification": {
                        "notification_count": alert.badge,
                        "tag": alert.collapse_id,
                    },
                },
            }
        });
        let resp = self
            .http
            .post(self.send_url.clone())
            .bearer_auth(access)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await;
        let (status, after, resp) = match super::refusal(resp) {
            Ok(r) => r,
            Err(outcome) => return outcome,
        };
        let err = super::json_body::<ErrorResponse>(resp)
            .await
            .unwrap_or_default()
            .error;
        let code = err.code();
        let reason = format!("{code}: {}", err.message);
        match code.as_str() {
            "UNREGISTERED" | "SENDER_ID_MISMATCH" => Outcome::Gone(code),
            "INVALID_ARGUMENT" if err.message.contains("registration token") => {
                Outcome::Gone(reason)
            }
            _ if status == reqwest::StatusCode::UNAUTHORIZED
                && code != "THIRD_PARTY_AUTH_ERROR" =>
            {
                *self.token.lock().await = None;
                Outcome::Retry {
                    after: None,
                    reason,
                }
            }
            _ => Outcome::from_status(status, after, reason),
        }
    }
}
