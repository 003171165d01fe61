//! The token issuer's key set (JWKS): loaded at start, refreshed on a timer and when
//! a token names a `kid` the set does not hold, so an operator rotates signing keys by
//! publishing the new key and then signing with it — no gateway restart.
//!
//! A failed refresh keeps the keys in use (logged and counted); only the first load
//! must succeed, so a gateway never starts unable to verify anyone. Refreshes caused by
//! unknown kids are single-flight and at most one per `min_refetch`, so tokens with
//! made-up kids cannot turn the gateway into a load generator against the issuer.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use petrel_core::auth::{Authenticator, KeyError, KeySet, Skipped};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::KeySetSource;
use crate::metrics::{Metrics, RefreshLabels};

/// Largest key-set document read.
pub const MAX_DOCUMENT_BYTES: usize = 1 << 20;

/// Longest one fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a key set could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeySetError {
    /// The file could not be read.
    #[error("reading {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The request failed (connection, TLS, timeout).
    #[error("fetching {url}: {why}")]
    Fetch {
        /// The URL.
        url: String,
        /// Why, without the URL again.
        why: String,
    },
    /// The issuer answered something other than 200.
    #[error("{url} answered HTTP {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status code.
        status: u16,
    },
    /// The document is larger than [`MAX_DOCUMENT_BYTES`].
    #[error("the key set is larger than {MAX_DOCUMENT_BYTES} bytes")]
    TooLarge,
    /// The document holds no usable key.
    #[error(transparent)]
    Keys(#[from] KeyError),
}

/// Reads the key set from its source.
#[derive(Debug)]
pub struct KeySetLoader {
    source: KeySetSource,
    http: Option<reqwest::Client>,
}

impl KeySetLoader {
    /// A loader for `source`; `ca_file` adds trusted CA certificates (PEM) for a URL.
    pub fn new(source: KeySetSource, ca_file: Option<&Path>) -> anyhow::Result<Self> {
        let http = match &source {
            KeySetSource::Url(_) => Some(http_client(ca_file)?),
            KeySetSource::File(_) => None,
        };
        Ok(Self { source, http })
    }

    /// Reads and parses the key set once.
    pub async fn load(&self) -> Result<(KeySet, Vec<Skipped>), KeySetError> {
        let bytes = match (&self.source, &self.http) {
            (KeySetSource::File(path), _) => read_file(path).await?,
            (KeySetSource::Url(url), Some(http)) => fetch(http, url).await?,
            (KeySetSource::Url(url), None) => {
                return Err(KeySetError::Fetch {
                    url: url.to_string(),
                    why: "no HTTP client".into(),
                });
            }
        };
        Ok(KeySet::parse(&bytes)?)
    }

    /// The first load, retried a few times (an issuer restarting with the gateway) and
    /// then given up with the reason.
    pub async fn load_at_start(&self) -> anyhow::Result<KeySet> {
        let mut delay = Duration::from_millis(500);
        let mut attempt = 1;
        loop {
            match self.load().await {
                Ok((set, skipped)) => {
                    log_skipped(&skipped);
                    info!(keys = set.len(), source = %self.describe(), "token key set loaded");
                    return Ok(set);
                }
                Err(e) if attempt < 4 => {
                    warn!(error = %e, "loading the token key set; retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    attempt += 1;
                }
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("loading the token key set from {}", self.describe())
                    });
                }
            }
        }
    }

    fn describe(&self) -> String {
        match &self.source {
            KeySetSource::Url(u) => u.to_string(),
            KeySetSource::File(p) => p.display().to_string(),
        }
    }
}

/// Keeps the authenticator's key set fresh.
#[derive(Debug)]
pub struct KeySetRefresher {
    loader: KeySetLoader,
    auth: Arc<Authenticator>,
    metrics: Arc<Metrics>,
    every: Duration,
    min_refetch: Duration,
    /// When the last load for an unknown kid started; held across every load, which
    /// makes loads single-flight.
    last_unknown: tokio::sync::Mutex<Option<Instant>>,
}

impl KeySetRefresher {
    /// Refreshes `auth`'s key set from `loader` every `every`, and on unknown kids at
    /// most once per `min_refetch`.
    pub fn new(
        loader: KeySetLoader,
        auth: Arc<Authenticator>,
        metrics: Arc<Metrics>,
        every: Duration,
        min_refetch: Duration,
    ) -> Self {
        if let Some(set) = auth.key_set() {
            metrics.key_set_keys.set(set.len() as i64);
        }
        Self {
            loader,
            auth,
            metrics,
            every,
            min_refetch,
            last_unknown: tokio::sync::Mutex::new(None),
        }
    }

    /// Before verifying `token`: if it names a key the set does not hold, reload the
    /// set (unless that was done within `min_refetch`). Returns at once otherwise.
    /// Bounded by the fetch timeout, plus the wait for a load already under way.
    pub async fn before_verify(&self, token: &str) {
        let Some(kid) = self.auth.unknown_kid(token) else {
            return;
        };
        let mut last = self.last_unknown.lock().await;
        if self.auth.key_set().is_some_and(|s| s.contains(&kid)) {
            return; // loaded while this one waited
        }
        if last.is_some_and(|t| t.elapsed() < self.min_refetch) {
            return;
        }
        *last = Some(Instant::now());
        self.reload("unknown_kid").await;
    }

    /// Reloads every `every` until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.every) => {}
            }
            let _single_flight = self.last_unknown.lock().await;
            self.reload("timer").await;
        }
    }

    async fn reload(&self, trigger: &'static str) {
        let result = match self.loader.load().await {
            Ok((set, skipped)) => {
                let before = self.auth.key_set();
                if before.is_none_or(|b| b.kids() != set.kids()) {
                    log_skipped(&skipped);
                    info!(keys = set.len(), trigger, "token key set changed");
                }
                self.metrics.key_set_keys.set(set.len() as i64);
                self.auth.replace_key_set(set);
                "ok"
            }
            Err(e) => {
                warn!(error = %e, trigger, "refreshing the token key set failed; keeping the current keys");
                "error"
            }
        };
        self.metrics
            .key_set_refreshes
            .get_or_create(&RefreshLabels { trigger, result })
            .inc();
    }
}

fn log_skipped(skipped: &[Skipped]) {
    for s in skipped {
        warn!(
            kid = s.kid.as_deref().unwrap_or("(none)"),
            why = s.why,
            "key set: key skipped"
        );
    }
}

async fn read_file(path: &Path) -> Result<Vec<u8>, KeySetError> {
    let read = |source| KeySetError::Read {
        path: path.to_owned(),
        source,
    };
    let len = tokio::fs::metadata(path).await.map_err(read)?.len();
    if len > MAX_DOCUMENT_BYTES as u64 {
        return Err(KeySetError::TooLarge);
    }
    tokio::fs::read(path).await.map_err(read)
}

async fn fetch(http: &reqwest::Client, url: &url::Url) -> Result<Vec<u8>, KeySetError> {
    let failed = |e: reqwest::Error| KeySetError::Fetch {
        url: url.to_string(),
        why: error_chain(&e),
    };
    let mut resp = http
        .get(url.clone())
        .header("accept", "application/json")
        .send()
        .await
        .map_err(failed)?;
    if resp.status() != reqwest::StatusCode::OK {
        return Err(KeySetError::Status {
            url: url.to_string(),
            status: resp.status().as_u16(),
        });
    }
    if resp
        .content_length()
        .is_some_and(|n| n > MAX_DOCUMENT_BYTES as u64)
    {
        return Err(KeySetError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(failed)? {
        if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
            return Err(KeySetError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// An error and its causes on one line (reqwest's own message stops at the outermost).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// An HTTPS client trusting the system's roots and `ca_file`, on the ring provider.
fn http_client(ca_file: Option<&Path>) -> anyhow::Result<reqwest::Client> {
    let tls = crate::tls::client_config(ca_file, "auth.jwks_ca_file")?;
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(FETCH_TIMEOUT)
        .connect_timeout(FETCH_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("petrel-gateway/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("building the HTTP client for auth.jwks_url")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A JWKS document of the same valid P-256 public key (RFC 7515 A.3) under `kids`.
    fn document(kids: &[&str]) -> String {
        let keys: Vec<_> = kids
            .iter()
            .map(|kid| {
                serde_json::json!({
                    "kty": "EC", "crv": "P-256", "kid": kid,
                    "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
                    "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"
                })
            })
            .collect();
        serde_json::json!({ "keys": keys }).to_string()
    }

    /// A token naming `kid` (its signature is never reached by these tests).
    fn naming(kid: &str) -> String {
        use base64::Engine;
        let b64 = |v: serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        format!(
            "{}.{}.c2ln",
            b64(serde_json::json!({"alg": "ES256", "kid": kid})),
            b64(serde_json::json!({"sub": "alice", "exp": 1}))
        )
    }

    #[tokio::test(start_paused = true)]
    async fn unknown_kids_reload_the_set_at_most_once_per_cooldown() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("jwks.json");
        std::fs::write(&file, document(&["a"])).unwrap();
        let loader = KeySetLoader::new(KeySetSource::File(file.clone()), None).unwrap();
        let set = loader.load_at_start().await.unwrap();
        let auth = Arc::new(Authenticator::with_keys(None, None, Some(set)).unwrap());
        let metrics = Arc::new(Metrics::new());
        let refresher = KeySetRefresher::new(
            loader,
            auth.clone(),
            metrics.clone(),
            Duration::from_secs(3600),
            Duration::from_secs(10),
        );
        assert_eq!(auth.unknown_kid(&naming("a")), None);
        assert_eq!(auth.unknown_kid(&naming("b")), Some("b".into()));

        std::fs::write(&file, document(&["a", "b"])).unwrap();
        refresher.before_verify(&naming("b")).await;
        assert_eq!(
            auth.unknown_kid(&naming("b")),
            None,
            "b taken on first sight"
        );

        std::fs::write(&file, document(&["a", "b", "c"])).unwrap();
        refresher.before_verify(&naming("c")).await;
        assert_eq!(
            auth.unknown_kid(&naming("c")),
            Some("c".into()),
            "within the cooldown"
        );
        tokio::time::advance(Duration::from_secs(11)).await;
        refresher.before_verify(&naming("c")).await;
        assert_eq!(auth.unknown_kid(&naming("c")), None, "after the cooldown");
        assert_eq!(metrics.key_set_keys.get(), 3);

        // A broken file is not taken: the keys in use stay.
        std::fs::write(&file, "{\"keys\": []}").unwrap();
        tokio::time::advance(Duration::from_secs(11)).await;
        refresher.before_verify(&naming("d")).await;
        assert_eq!(auth.key_set().map(|s| s.len()), Some(3));
        let text = metrics.encode();
        for (series, want) in [
            ("trigger=\"unknown_kid\",result=\"ok\"", "2"),
            ("trigger=\"unknown_kid\",result=\"error\"", "1"),
        ] {
            let line = format!("petrel_key_set_refreshes_total{{{series}}} {want}");
            assert!(text.contains(&line), "{line} not in\n{text}");
        }
    }

    #[tokio::test]
    async fn a_missing_or_oversized_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = KeySetLoader::new(KeySetSource::File(dir.path().join("nope")), None).unwrap();
        assert!(matches!(
            missing.load().await,
            Err(KeySetError::Read { .. })
        ));
        let big = dir.path().join("big.json");
        std::fs::write(&big, vec![b' '; MAX_DOCUMENT_BYTES + 1]).unwrap();
        let big = KeySetLoader::new(KeySetSource::File(big), None).unwrap();
        assert!(matches!(big.load().await, Err(KeySetError::TooLarge)));
    }
}
