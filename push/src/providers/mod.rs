//! The push providers, each a client of its real protocol with a configurable
//! endpoint: [`apns`] (HTTP/2, ES256 provider tokens), [`fcm`] (HTTP v1, OAuth2
//! JWT-bearer grant), [`webpush`] (RFC 8030, [`ece`] payload encryption, VAPID).
//!
//! A send ends in one [`Outcome`]: the worker retries, prunes or dead-letters from it.

pub mod apns;
pub mod ece;
pub mod fcm;
pub mod webpush;

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use petrel_core::push::{Alert, PushTarget};

use crate::config::PushSection;

/// How a send ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The provider took it.
    Delivered,
    /// The target is dead (uninstalled, expired, never valid): remove it.
    Gone(String),
    /// Try again later (429, 5xx, a network error), after `after` when the provider
    /// said (`Retry-After`).
    Retry {
        /// What the provider asked for.
        after: Option<Duration>,
        /// Why.
        reason: String,
    },
    /// Refused for good (a bad request, credentials): dead-letter it.
    Failed(String),
}

impl Outcome {
    /// The metrics label.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Gone(_) => "gone",
            Self::Retry { .. } => "retry",
            Self::Failed(_) => "failed",
        }
    }

    /// From an HTTP status that is neither success nor a known "gone": 429 and 5xx
    /// are retried, anything else fails.
    fn from_status(
        status: reqwest::StatusCode,
        retry_after: Option<Duration>,
        reason: String,
    ) -> Self {
        if status == reqwest::StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            Self::Retry {
                after: retry_after,
                reason,
            }
        } else {
            Self::Failed(reason)
        }
    }

    /// A request that got no answer: retried.
    fn unreachable(e: &reqwest::Error) -> Self {
        Self::Retry {
            after: None,
            reason: format!("no answer: {}", error_chain(e)),
        }
    }
}

/// A provider's answer to read further: its status, `Retry-After` and the response;
/// or the outcome when the answer already says it (delivered, or no answer at all).
fn refusal(
    sent: Result<reqwest::Response, reqwest::Error>,
) -> Result<(reqwest::StatusCode, Option<Duration>, reqwest::Response), Outcome> {
    let resp = sent.map_err(|e| Outcome::unreachable(&e))?;
    let status = resp.status();
    if status.is_success() {
        return Err(Outcome::Delivered);
    }
    Ok((status, retry_after(resp.headers()), resp))
}

/// `Retry-After` in seconds (the HTTP-date form is read as "no hint").
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// A response body read as JSON (a provider's answer is small: at most 64 KiB read).
async fn json_body<T: serde::de::DeserializeOwned>(resp: reqwest::Response) -> Result<T, String> {
    let bytes = resp.bytes().await.map_err(|e| error_chain(&e))?;
    if bytes.len() > 64 * 1024 {
        return Err(format!("a {} byte answer", bytes.len()));
    }
    serde_json::from_slice(&bytes).map_err(|e| e.to_string())
}

/// An error and its causes on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// The configured providers.
pub struct Providers {
    /// APNs, when `[push.apns]` is set.
    pub apns: Option<apns::Apns>,
    /// FCM, when `[push.fcm]` is set.
    pub fcm: Option<fcm::Fcm>,
    /// Web Push, when `[push.webpush]` is set.
    pub webpush: Option<webpush::WebPush>,
}

impl std::fmt::Debug for Providers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Providers")
            .field("apns", &self.apns.is_some())
            .field("fcm", &self.fcm.is_some())
            .field("webpush", &self.webpush.is_some())
            .finish()
    }
}

impl Providers {
    /// The providers `cfg` configures, reading their key files.
    pub fn from_config(cfg: &PushSection) -> anyhow::Result<Self> {
        let ca = cfg.ca_file.as_deref();
        Ok(Self {
            apns: cfg
                .apns
                .as_ref()
                .map(|a| apns::Apns::new(a, http_client(ca, true)?))
                .transpose()
                .context("[push.apns]")?,
            fcm: cfg
                .fcm
                .as_ref()
                .map(|f| fcm::Fcm::new(f, http_client(ca, false)?))
                .transpose()
                .context("[push.fcm]")?,
            webpush: cfg
                .webpush
                .as_ref()
                .map(|w| webpush::WebPush::new(w, http_client(ca, false)?))
                .transpose()
                .context("[push.webpush]")?,
        })
    }

    /// Sends `alert` to `target`, asking the provider to keep it at most `ttl`.
    pub async fn send(&self, target: &PushTarget, alert: &Alert, ttl: Duration) -> Outcome {
        match target {
            PushTarget::Apns {
                token,
                topic,
                sandbox,
            } => match &self.apns {
                Some(p) => p.send(token, topic, *sandbox, alert, ttl).await,
                None => Outcome::Failed("no [push.apns] provider configured".into()),
            },
            PushTarget::Fcm { token } => match &self.fcm {
                Some(p) => p.send(token, alert, ttl).await,
                None => Outcome::Failed("no [push.fcm] provider configured".into()),
            },
            PushTarget::WebPush {
                endpoint,
                p256dh,
                auth,
            } => match &self.webpush {
                Some(p) => p.send(endpoint, p256dh, auth, alert, ttl).await,
                None => Outcome::Failed("no [push.webpush] provider configured".into()),
            },
        }
    }
}

/// Longest a provider request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// An HTTPS client trusting the system's roots and `ca_file`; `http2` insists on
/// HTTP/2 (APNs speaks nothing else).
fn http_client(ca_file: Option<&Path>, http2: bool) -> anyhow::Result<reqwest::Client> {
    let mut tls = petrel_gateway::tls::client_config(ca_file, "push.ca_file")?;
    if http2 {
        tls.alpn_protocols = vec![b"h2".to_vec()];
    }
    let mut b = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(Duration::from_secs(5))
        .pool_idle_timeout(Duration::from_secs(600))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("petrel-push/", env!("CARGO_PKG_VERSION")));
    if http2 {
        b = b.http2_prior_knowledge();
    }
    b.build().context("building an HTTP client")
}

/// The JSON this push carries for the app besides the visible alert (every value a
/// string, as FCM's `data` requires).
fn app_data(alert: &Alert) -> serde_json::Map<String, serde_json::Value> {
    let mut m = serde_json::Map::new();
    m.insert("count".into(), alert.count.to_string().into());
    m.insert("badge".into(), alert.badge.to_string().into());
    if !alert.subject.is_empty() {
        m.insert("subject".into(), alert.subject.clone().into());
        m.insert("seq".into(), alert.seq.to_string().into());
    }
    m
}

/// Seconds since the Unix epoch.
fn unix_secs() -> u64 {
    petrel_core::time::unix_ms() / 1000
}
