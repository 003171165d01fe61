//! Local stand-ins for the push providers, speaking their real protocols, for
//! `petrel dev --push` and the tests: one HTTPS server (HTTP/2 and HTTP/1.1, a
//! certificate from its own dev CA) that is
//! - **APNs**: `POST /3/device/{token}` over HTTP/2 only, the provider token (ES256,
//!   `kid`, `iss`, `iat` under an hour old) checked against the team key it made;
//! - **FCM**: the OAuth2 token endpoint `POST /token` (the JWT-bearer assertion's
//!   RS256 signature, `iss`, `aud`, `scope` checked) and `POST
//!   /v1/projects/{project}/messages:send` (the bearer must be a token it issued);
//! - **Web Push**: `POST /wp/{id}` for the subscriptions it made ([`FakeProviders::subscribe`]),
//!   the VAPID token checked against the `k` key and the payload decrypted with the
//!   subscription's private key (RFC 8291).
//!
//! What it received is kept ([`FakeProviders::received`]) and, in `petrel dev`,
//! appended to `push/received.jsonl`. A token (or subscription id) starting with
//! `gone` (or, for hex APNs tokens, `dead`) is answered as dead (APNs 410 Unregistered, FCM 404 UNREGISTERED, Web
//! Push 410), `flaky` with one 503 (`Retry-After: 1`) before success, `broken` with
//! 500 always.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aes_gcm::aead::{Aead, KeyInit};
use anyhow::Context;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::EncodePrivateKey;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// The APNs key id and team id the fake expects.
pub const APNS_KEY_ID: &str = "PETRELKEY1";
/// See [`APNS_KEY_ID`].
pub const APNS_TEAM_ID: &str = "PETRELTEAM";
/// The FCM project.
pub const FCM_PROJECT: &str = "petrel-dev";
const FCM_EMAIL: &str = "push@petrel-dev.iam.gserviceaccount.com";

/// One request a provider received.
#[derive(Debug, Clone, Serialize)]
pub struct Received {
    /// `apns`, `fcm` or `webpush`.
    pub provider: &'static str,
    /// The device token, registration token or subscription id.
    pub token: String,
    /// HTTP version, e.g. `HTTP/2.0`.
    pub version: String,
    /// The request's headers (lower case), authorization left out.
    pub headers: BTreeMap<String, String>,
    /// The payload: APNs' JSON, FCM's `message`, Web Push's decrypted JSON.
    pub body: serde_json::Value,
    /// The raw request body as text (for Web Push: its length and that it was
    /// encrypted).
    pub raw: String,
    /// What the fake answered.
    pub status: u16,
    /// When it arrived (ms since the Unix epoch).
    pub at_ms: u64,
}

struct UaKeys {
    secret: p256::SecretKey,
    auth: [u8; 16],
}

struct State {
    apns_key: DecodingKey,
    fcm_key: DecodingKey,
    token_url: String,
    origin: String,
    issued: Mutex<HashSet<String>>,
    subscriptions: Mutex<HashMap<String, UaKeys>>,
    flaky_seen: Mutex<HashSet<String>>,
    received: Mutex<Vec<Received>>,
    log: Option<PathBuf>,
}

/// A Web Push subscription the fake made, as a browser's `PushSubscription` has it.
#[derive(Debug, Clone, Serialize)]
pub struct Subscription {
    /// The push resource.
    pub endpoint: String,
    /// Public key (base64url).
    pub p256dh: String,
    /// Auth secret (base64url).
    pub auth: String,
}

/// The running fake providers and the files a push worker needs to use them.
pub struct FakeProviders {
    state: Arc<State>,
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    /// The CA that signed its certificate (the worker's `push.ca_file`).
    pub ca_file: PathBuf,
    /// The APNs `.p8` key.
    pub apns_key_file: PathBuf,
    /// The FCM service-account JSON.
    pub fcm_credentials_file: PathBuf,
    /// The VAPID private key (PEM).
    pub vapid_key_file: PathBuf,
    /// The VAPID public key (base64url) for `/client-config`.
    pub vapid_public_key: String,
    stop: CancellationToken,
}

impl Drop for FakeProviders {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

impl FakeProviders {
    /// Makes keys and a certificate in `dir` and starts serving on a free loopback
    /// port; with `log`, every request is also appended to `dir/received.jsonl`.
    pub async fn start(dir: &Path, log: bool) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let ca = crate::ca::DevCa::create(&dir.join("ca"))?;
        let cert = ca.issue("push-providers")?;
        // APNs: a team's P-256 key (.p8 is PKCS#8 PEM).
        let apns = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let apns_key_file = dir.join("apns-key.p8");
        petrel_gateway::tls::write_private(&apns_key_file, apns.serialize_pem().as_bytes())?;
        let apns_key = DecodingKey::from_ec_pem(apns.public_key_pem().as_bytes())?;
        // FCM: a service account's RSA key.
        let rsa = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 2048).context("RSA key")?;
        let rsa_pem = rsa
            .to_pkcs8_pem(Default::default())
            .context("RSA key PEM")?
            .to_string();
        let fcm_key = {
            use rsa::pkcs8::EncodePublicKey;
            let public = rsa
                .to_public_key()
                .to_public_key_pem(Default::default())
                .context("RSA public key")?;
            DecodingKey::from_rsa_pem(public.as_bytes())?
        };
        // Web Push: the application server's VAPID key.
        let vapid = p256::SecretKey::random(&mut rand_core::OsRng);
        let vapid_key_file = dir.join("vapid-key.pem");
        petrel_gateway::tls::write_private(
            &vapid_key_file,
            vapid.to_pkcs8_pem(Default::default())?.as_bytes(),
        )?;
        let vapid_public_key = b64(vapid.public_key().to_encoded_point(false).as_bytes());

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let url = format!("https://127.0.0.1:{}", addr.port());
        let token_url = format!("{url}/token");
        let fcm_credentials_file = dir.join("fcm-service-account.json");
        let account = serde_json::json!({
            "type": "service_account",
            "project_id": FCM_PROJECT,
            "private_key_id": "petrel-dev-key",
            "private_key": rsa_pem,
            "client_email": FCM_EMAIL,
            "client_id": "1",
            "token_uri": token_url,
        });
        petrel_gateway::tls::write_private(&fcm_credentials_file, account.to_string().as_bytes())?;
        let state = Arc::new(State {
            apns_key,
            fcm_key,
            token_url,
            origin: url.clone(),
            issued: Mutex::new(HashSet::new()),
            subscriptions: Mutex::new(HashMap::new()),
            flaky_seen: Mutex::new(HashSet::new()),
            received: Mutex::new(Vec::new()),
            log: log.then(|| dir.join("received.jsonl")),
        });
        let tls = server_tls(&cert.cert, &cert.key)?;
        let stop = CancellationToken::new();
        tokio::spawn(serve(listener, tls, state.clone(), stop.clone()));
        Ok(Self {
            state,
            url,
            ca_file: ca.ca_file(),
            apns_key_file,
            fcm_credentials_file,
            vapid_key_file,
            vapid_public_key,
            stop,
        })
    }

    /// The address it serves on.
    pub fn addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.url.trim_start_matches("https://").parse()?)
    }

    /// A new Web Push subscription with id `id` (start it with `gone`, `flaky` or
    /// `broken` to script the answers).
    pub fn subscribe(&self, id: &str) -> Subscription {
        let secret = p256::SecretKey::random(&mut rand_core::OsRng);
        let mut auth = [0u8; 16];
        rand::fill(&mut auth);
        let sub = Subscription {
            endpoint: format!("{}/wp/{id}", self.url),
            p256dh: b64(secret.public_key().to_encoded_point(false).as_bytes()),
            auth: b64(&auth),
        };
        if let Ok(mut s) = self.state.subscriptions.lock() {
            s.insert(id.to_string(), UaKeys { secret, auth });
        }
        sub
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.state
            .received
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// What `token` received that was accepted (status 2xx).
    pub fn delivered_to(&self, token: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.token == token && (200..300).contains(&r.status))
            .collect()
    }

    /// Waits up to `timeout` until `token` has `n` accepted pushes; returns them.
    pub async fn wait_delivered(
        &self,
        token: &str,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<Received>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let got = self.delivered_to(token);
            if got.len() >= n {
                return Ok(got);
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "{token} got {} pushes within {timeout:?}, expected {n}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The `[push.*]` provider sections pointing at this fake (for a push config).
    pub fn config_sections(&self) -> String {
        format!(
            r#"ca_file = "{ca}"

[push.apns]
endpoint = "{url}"
sandbox_endpoint = "{url}"
key_file = "{apns}"
key_id = "{APNS_KEY_ID}"
team_id = "{APNS_TEAM_ID}"

[push.fcm]
endpoint = "{url}"
credentials_file = "{fcm}"

[push.webpush]
vapid_private_key_file = "{vapid}"
subject = "mailto:dev@petrel.invalid"
"#,
            ca = self.ca_file.display(),
            url = self.url,
            apns = self.apns_key_file.display(),
            fcm = self.fcm_credentials_file.display(),
            vapid = self.vapid_key_file.display(),
        )
    }
}

/// Writes a push worker config in `dir`: the hub at `nats_url` (over TLS checked
/// against `nats_ca` when given), Redis at `redis_url`, metrics on `metrics`, the providers of `fake`;
/// `extra` adds `[push]` keys (e.g. shorter timings for tests).
pub fn write_push_config(
    dir: &Path,
    nats_url: &str,
    nats_ca: Option<&Path>,
    redis_url: &str,
    metrics: SocketAddr,
    fake: &FakeProviders,
    extra: &str,
) -> anyhow::Result<PathBuf> {
    let text = format!(
        "# Written by petrel dev / the tests for a push worker on the local fake providers.\n[push]\nnats_url = \"{nats_url}\"\n{}redis_url = \"{redis_url}\"\nmetrics_listen = \"{metrics}\"\n{extra}\n{}",
        nats_ca
            .map(|p| format!("nats_ca_file = \"{}\"\n", p.display()))
            .unwrap_or_default(),
        fake.config_sections()
    );
    let path = dir.join("push.toml");
    petrel_gateway::tls::write_private(&path, text.as_bytes())?;
    Ok(path)
}

fn server_tls(cert: &Path, key: &Path) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let certs = rustls_pemfile::certs(&mut std::fs::read(cert)?.as_slice())
        .collect::<Result<Vec<_>, _>>()?;
    let key =
        rustls_pemfile::private_key(&mut std::fs::read(key)?.as_slice())?.context("no key")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

async fn serve(
    listener: tokio::net::TcpListener,
    tls: tokio_rustls::TlsAcceptor,
    state: Arc<State>,
    stop: CancellationToken,
) {
    loop {
        let (tcp, _) = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
        };
        let (tls, state, stop) = (tls.clone(), state.clone(), stop.clone());
        tokio::spawn(async move {
            let Ok(stream) = tls.accept(tcp).await else {
                return;
            };
            let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(&state, req).await) }
            });
            let io = TokioIo::new(stream);
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = async {
                    if h2 {
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, service)
                            .await;
                    } else {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, service)
                            .await;
                    }
                } => {}
            }
        });
    }
}

type Reply = Response<Full<Bytes>>;

fn reply(status: StatusCode, body: serde_json::Value, extra: &[(&str, &str)]) -> Reply {
    let mut r = Response::builder()
        .status(status)
        .header("content-type", "application/json");
    for (k, v) in extra {
        r = r.header(*k, *v);
    }
    r.body(Full::new(Bytes::from(body.to_string())))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

/// What the script says for a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Script {
    /// Dead: 410 / UNREGISTERED.
    Gone,
    /// This time 503 with `Retry-After: 1` (the first request only).
    Unavailable,
    /// 500.
    Broken,
}

/// What the script says for `token`: `None` = success.
fn scripted(state: &State, token: &str) -> Option<Script> {
    if token.starts_with("gone") || token.starts_with("dead") {
        Some(Script::Gone)
    } else if token.starts_with("broken") {
        Some(Script::Broken)
    } else if token.starts_with("flaky") {
        let first = state
            .flaky_seen
            .lock()
            .map(|mut s| s.insert(token.to_string()))
            .unwrap_or(false);
        first.then_some(Script::Unavailable)
    } else {
        None
    }
}

async fn handle(state: &State, req: Request<hyper::body::Incoming>) -> Reply {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return reply(StatusCode::BAD_REQUEST, serde_json::json!({}), &[]),
    };
    let path = parts.uri.path().to_string();
    let headers: BTreeMap<String, String> = parts
        .headers
        .iter()
        .filter(|(k, _)| k.as_str() != "authorization")
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let auth = parts
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let version = format!("{:?}", parts.version);
    let (provider, token, result) = if let Some(token) = path.strip_prefix("/3/device/") {
        let r = apns(state, parts.version, &auth, &headers, &body, token);
        ("apns", token.to_string(), r)
    } else if path == "/token" {
        return oauth(state, &body);
    } else if path == format!("/v1/projects/{FCM_PROJECT}/messages:send") {
        match fcm(state, &auth, &body) {
            Ok((token, r)) => ("fcm", token, r),
            Err(reply) => return reply,
        }
    } else if let Some(id) = path.strip_prefix("/wp/") {
        let r = webpush(state, &auth, &headers, &body, id);
        ("webpush", id.to_string(), r)
    } else {
        return reply(
            StatusCode::NOT_FOUND,
            serde_json::json!({"reason": "BadPath"}),
            &[],
        );
    };
    let (status, payload, answer) = match result {
        Ok((payload, answer)) => (answer.status().as_u16(), payload, answer),
        Err(answer) => (answer.status().as_u16(), serde_json::Value::Null, answer),
    };
    let raw = if provider == "webpush" {
        format!("{} bytes, aes128gcm", body.len())
    } else {
        String::from_utf8_lossy(&body).into_owned()
    };
    let got = Received {
        provider,
        token,
        version,
        headers,
        body: payload,
        raw,
        status,
        at_ms: petrel_core::time::unix_ms(),
    };
    if let Some(log) = &state.log
        && let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
    {
        let _ = writeln!(f, "{}", serde_json::to_string(&got).unwrap_or_default());
    }
    if let Ok(mut r) = state.received.lock() {
        r.push(got);
    }
    answer
}

/// A provider handler's answer: the payload it took and the reply, or the refusal
/// (the HTTP answer itself, so it is as large as a reply).
type Handled = Result<(serde_json::Value, Reply), Reply>;

/// FCM's: the registration token and the answer, or a refusal before the token is read.
type FcmHandled = Result<(String, Handled), Reply>;

#[expect(
    clippy::result_large_err,
    reason = "the error is the HTTP answer itself"
)]
fn apns(
    state: &State,
    version: hyper::Version,
    auth: &str,
    headers: &BTreeMap<String, String>,
    body: &[u8],
    token: &str,
) -> Handled {
    let refuse = |status: StatusCode, reason: &str| {
        reply(status, serde_json::json!({ "reason": reason }), &[])
    };
    if version != hyper::Version::HTTP_2 {
        return Err(refuse(StatusCode::BAD_REQUEST, "HTTP/2 required"));
    }
    let jwt = auth.strip_prefix("bearer ").unwrap_or("");
    let Ok(header) = jsonwebtoken::decode_header(jwt) else {
        return Err(refuse(StatusCode::FORBIDDEN, "MissingProviderToken"));
    };
    let mut v = Validation::new(Algorithm::ES256);
    v.required_spec_claims = HashSet::new();
    v.validate_exp = false;
    v.set_issuer(&[APNS_TEAM_ID]);
    let claims = jsonwebtoken::decode::<serde_json::Value>(jwt, &state.apns_key, &v);
    let iat = claims
        .as_ref()
        .ok()
        .and_then(|c| c.claims.get("iat")?.as_u64())
        .unwrap_or(0);
    let now = petrel_core::time::unix_ms() / 1000;
    if header.kid.as_deref() != Some(APNS_KEY_ID) || claims.is_err() {
        return Err(refuse(StatusCode::FORBIDDEN, "InvalidProviderToken"));
    }
    if iat + 3600 < now || iat > now + 60 {
        return Err(refuse(StatusCode::FORBIDDEN, "ExpiredProviderToken"));
    }
    for h in ["apns-topic", "apns-push-type", "apns-priority"] {
        if !headers.contains_key(h) {
            return Err(refuse(StatusCode::BAD_REQUEST, "MissingTopic"));
        }
    }
    let payload: serde_json::Value = serde_json::from_slice(body)
        .map_err(|_| refuse(StatusCode::BAD_REQUEST, "PayloadEmpty"))?;
    if body.len() > 4096 {
        return Err(refuse(StatusCode::PAYLOAD_TOO_LARGE, "PayloadTooLarge"));
    }
    match scripted(state, token) {
        Some(Script::Gone) => Err(reply(
            StatusCode::GONE,
            serde_json::json!({ "reason": "Unregistered", "timestamp": now * 1000 }),
            &[],
        )),
        Some(Script::Unavailable) => Err(reply(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"reason": "ServiceUnavailable"}),
            &[("retry-after", "1")],
        )),
        Some(Script::Broken) => Err(refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServerError",
        )),
        None => Ok((
            payload,
            reply(
                StatusCode::OK,
                serde_json::json!({}),
                &[("apns-id", "00000000-0000-0000-0000-000000000000")],
            ),
        )),
    }
}

fn oauth(state: &State, body: &[u8]) -> Reply {
    let form: HashMap<String, String> = url::form_urlencoded::parse(body).into_owned().collect();
    let bad = |why: &str| {
        reply(
            StatusCode::BAD_REQUEST,
            serde_json::json!({"error": "invalid_grant", "error_description": why}),
            &[],
        )
    };
    if form.get("grant_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    {
        return bad("grant_type");
    }
    let mut v = Validation::new(Algorithm::RS256);
    v.set_audience(&[&state.token_url]);
    v.set_issuer(&[FCM_EMAIL]);
    let Ok(claims) = jsonwebtoken::decode::<serde_json::Value>(
        form.get("assertion").map(String::as_str).unwrap_or(""),
        &state.fcm_key,
        &v,
    ) else {
        return bad("assertion signature, aud, iss or exp");
    };
    let scope = claims
        .claims
        .get("scope")
        .and_then(|s| s.as_str())
        .unwrap_or("");
    if !scope
        .split(' ')
        .any(|s| s == "https://www.googleapis.com/auth/firebase.messaging")
    {
        return bad("scope");
    }
    let mut raw = [0u8; 16];
    rand::fill(&mut raw);
    let token = format!("ya29.{}", hex::encode(raw));
    if let Ok(mut i) = state.issued.lock() {
        i.insert(token.clone());
    }
    reply(
        StatusCode::OK,
        serde_json::json!({"access_token": token, "expires_in": 3599, "token_type": "Bearer"}),
        &[],
    )
}

#[expect(
    clippy::result_large_err,
    reason = "the error is the HTTP answer itself"
)]
fn fcm(state: &State, auth: &str, body: &[u8]) -> FcmHandled {
    let bearer = auth.strip_prefix("Bearer ").unwrap_or("");
    let known = state
        .issued
        .lock()
        .map(|i| i.contains(bearer))
        .unwrap_or(false);
    if !known {
        return Err(reply(
            StatusCode::UNAUTHORIZED,
            serde_json::json!({"error": {"code": 401, "status": "UNAUTHENTICATED", "message": "Request had invalid authentication credentials."}}),
            &[],
        ));
    }
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Err(reply(
            StatusCode::BAD_REQUEST,
            serde_json::json!({"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": "not JSON"}}),
            &[],
        ));
    };
    let message = v.get("message").cloned().unwrap_or_default();
    let token = message
        .get("token")
        .and_then(|t| t.as_str())
        .unwrap_or("")
        .to_string();
    let fcm_error = |code: u16, status: &str, error_code: &str, extra: &[(&str, &str)]| {
        reply(
            StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            serde_json::json!({"error": {"code": code, "status": status, "message": error_code,
                "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": error_code}]}}),
            extra,
        )
    };
    let r = match scripted(state, &token) {
        Some(Script::Gone) => Err(fcm_error(404, "NOT_FOUND", "UNREGISTERED", &[])),
        Some(Script::Unavailable) => Err(fcm_error(
            503,
            "UNAVAILABLE",
            "UNAVAILABLE",
            &[("retry-after", "1")],
        )),
        Some(Script::Broken) => Err(fcm_error(500, "INTERNAL", "INTERNAL", &[])),
        None => Ok((
            message,
            reply(
                StatusCode::OK,
                serde_json::json!({"name": format!("projects/{FCM_PROJECT}/messages/1")}),
                &[],
            ),
        )),
    };
    Ok((token, r))
}

#[expect(
    clippy::result_large_err,
    reason = "the error is the HTTP answer itself"
)]
fn webpush(
    state: &State,
    auth: &str,
    headers: &BTreeMap<String, String>,
    body: &[u8],
    id: &str,
) -> Handled {
    let refuse = |s: StatusCode, why: &str| reply(s, serde_json::json!({ "error": why }), &[]);
    // Authorization: vapid t=JWT, k=KEY
    let fields: HashMap<&str, &str> = auth
        .strip_prefix("vapid ")
        .unwrap_or("")
        .split(',')
        .filter_map(|p| p.trim().split_once('='))
        .collect();
    let (Some(jwt), Some(k)) = (fields.get("t"), fields.get("k")) else {
        return Err(refuse(StatusCode::UNAUTHORIZED, "no VAPID authorization"));
    };
    let key = petrel_core::push::b64url(k).and_then(|k| p256::PublicKey::from_sec1_bytes(&k).ok());
    let Some(key) = key else {
        return Err(refuse(StatusCode::UNAUTHORIZED, "k is not a P-256 key"));
    };
    let point = key.to_encoded_point(false);
    let (Some(x), Some(y)) = (point.x(), point.y()) else {
        return Err(refuse(StatusCode::UNAUTHORIZED, "k is not a P-256 key"));
    };
    let Ok(decoding) = DecodingKey::from_ec_components(&b64(x), &b64(y)) else {
        return Err(refuse(StatusCode::UNAUTHORIZED, "k is not a P-256 key"));
    };
    let mut v = Validation::new(Algorithm::ES256);
    v.set_audience(&[&state.origin]);
    let Ok(claims) = jsonwebtoken::decode::<serde_json::Value>(jwt, &decoding, &v) else {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "VAPID token signature, aud or exp",
        ));
    };
    let exp = claims
        .claims
        .get("exp")
        .and_then(|e| e.as_u64())
        .unwrap_or(0);
    if exp > petrel_core::time::unix_ms() / 1000 + 24 * 3600 {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "VAPID token valid for more than 24 hours",
        ));
    }
    if !headers.contains_key("ttl") {
        return Err(refuse(StatusCode::BAD_REQUEST, "TTL header missing"));
    }
    if headers.get("content-encoding").map(String::as_str) != Some("aes128gcm") {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "content-encoding must be aes128gcm",
        ));
    }
    let keys = state
        .subscriptions
        .lock()
        .ok()
        .and_then(|s| s.get(id).map(|k| (k.secret.clone(), k.auth)));
    let Some((secret, auth_secret)) = keys else {
        return Err(refuse(StatusCode::GONE, "no such subscription"));
    };
    let Some(plain) = decrypt(&secret, &auth_secret, body) else {
        return Err(refuse(StatusCode::BAD_REQUEST, "payload does not decrypt"));
    };
    let payload: serde_json::Value = serde_json::from_slice(&plain).unwrap_or_else(|_| {
        serde_json::Value::String(String::from_utf8_lossy(&plain).into_owned())
    });
    match scripted(state, id) {
        Some(Script::Gone) => Err(refuse(StatusCode::GONE, "unsubscribed")),
        Some(Script::Unavailable) => Err(reply(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({}),
            &[("retry-after", "1")],
        )),
        Some(Script::Broken) => Err(refuse(StatusCode::INTERNAL_SERVER_ERROR, "internal")),
        None => Ok((
            payload,
            reply(
                StatusCode::CREATED,
                serde_json::json!({}),
                &[("location", "/m/1")],
            ),
        )),
    }
}

/// Decrypts an RFC 8291 body as the user agent: ECDH with the sender's key from the
/// header, the same key schedule, one record, padding delimiter 0x02.
fn decrypt(secret: &p256::SecretKey, auth: &[u8; 16], body: &[u8]) -> Option<Vec<u8>> {
    let salt = body.get(..16)?;
    let idlen = *body.get(20)? as usize;
    let as_public = body.get(21..21 + idlen)?;
    let sealed = body.get(21 + idlen..)?;
    let sender = p256::PublicKey::from_sec1_bytes(as_public).ok()?;
    let shared = p256::ecdh::diffie_hellman(secret.to_nonzero_scalar(), sender.as_affine());
    let ua_public = secret.public_key().to_encoded_point(false);
    let (cek, nonce) = petrel_push::providers::ece::derive(
        shared.raw_secret_bytes(),
        auth,
        ua_public.as_bytes(),
        as_public,
        salt,
    );
    let plain = aes_gcm::Aes128Gcm::new((&cek).into())
        .decrypt(&aes_gcm::Nonce::from(nonce), sealed)
        .ok()?;
    let end = plain.iter().rposition(|b| *b != 0)?;
    (plain[end] == 2).then(|| plain[..end].to_vec())
}
