//! A token issuer as an application's auth service runs one: ES256 signing keys named
//! by `kid`, published as a JWKS document from a file or a loopback HTTP(S) server.

use std::sync::{Arc, Mutex};

use anyhow::Context;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use petrel_core::auth::Claims;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// One ES256 signing key.
pub struct SigningKey {
    /// Its key id.
    pub kid: String,
    pair: rcgen::KeyPair,
}

impl SigningKey {
    /// A fresh P-256 key named `kid`.
    pub fn new(kid: &str) -> anyhow::Result<Self> {
        Ok(Self {
            kid: kid.into(),
            pair: rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?,
        })
    }

    /// The public key as a JWK.
    pub fn jwk(&self) -> anyhow::Result<serde_json::Value> {
        let raw = self.pair.public_key_raw();
        // An uncompressed P-256 point: 0x04, then X and Y of 32 bytes each.
        anyhow::ensure!(raw.len() == 65 && raw[0] == 4, "not an uncompressed point");
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        Ok(serde_json::json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": self.kid,
            "x": b64(&raw[1..33]), "y": b64(&raw[33..]),
        }))
    }

    /// A token for `user` valid `ttl_secs`, with this key's `kid` in its header.
    pub fn token(&self, user: &str, ttl_secs: u64) -> anyhow::Result<String> {
        self.token_with_kid(user, ttl_secs, &self.kid.clone())
    }

    /// Like [`token`](Self::token) but naming `kid` (another key's, or a made-up one).
    pub fn token_with_kid(&self, user: &str, ttl_secs: u64, kid: &str) -> anyhow::Result<String> {
        let now = petrel_core::time::unix_secs();
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.into());
        let key = EncodingKey::from_ec_pem(self.pair.serialize_pem().as_bytes())?;
        let claims = Claims {
            sub: user.into(),
            device: None,
            exp: now + ttl_secs,
            iat: Some(now),
            nbf: None,
        };
        Ok(jsonwebtoken::encode(&header, &claims, &key)?)
    }
}

/// The JWKS document publishing `keys`.
pub fn jwks(keys: &[&SigningKey]) -> anyhow::Result<String> {
    let keys = keys
        .iter()
        .map(|k| k.jwk())
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(serde_json::json!({ "keys": keys }).to_string())
}

/// What the server answers: a status and a body.
type Answer = Arc<Mutex<(u16, String)>>;

/// A loopback HTTP(S) server answering every request with the current answer.
pub struct JwksServer {
    /// `http://127.0.0.1:PORT/jwks.json` or `https://…`.
    pub url: String,
    answer: Answer,
    stop: CancellationToken,
    requests: Arc<std::sync::atomic::AtomicU64>,
}

impl JwksServer {
    /// Serves `body` (200) over plain HTTP.
    pub async fn http(body: String) -> anyhow::Result<Self> {
        Self::start(body, None).await
    }

    /// Serves `body` (200) over TLS with a fresh certificate for 127.0.0.1, written as
    /// PEM to `ca_file` (what the gateway is told to trust).
    pub async fn https(body: String, ca_file: &std::path::Path) -> anyhow::Result<Self> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])?;
        let cert = params.self_signed(&key)?;
        std::fs::write(ca_file, cert.pem()).context("writing the CA file")?;
        let der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], der)?;
        Self::start(body, Some(tokio_rustls::TlsAcceptor::from(Arc::new(tls)))).await
    }

    async fn start(body: String, tls: Option<tokio_rustls::TlsAcceptor>) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{}/jwks.json", listener.local_addr()?);
        let answer: Answer = Arc::new(Mutex::new((200, body)));
        let stop = CancellationToken::new();
        let requests = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (a, s, r) = (answer.clone(), stop.clone(), requests.clone());
        tokio::spawn(async move {
            loop {
                let (tcp, _) = tokio::select! {
                    _ = s.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(c) => c,
                        Err(_) => continue,
                    },
                };
                let (a, r, tls) = (a.clone(), r.clone(), tls.clone());
                tokio::spawn(async move {
                    let _ = match tls {
                        Some(acceptor) => match acceptor.accept(tcp).await {
                            Ok(stream) => answer_one(stream, &a, &r).await,
                            Err(e) => Err(e),
                        },
                        None => answer_one(tcp, &a, &r).await,
                    };
                });
            }
        });
        Ok(Self {
            url,
            answer,
            stop,
            requests,
        })
    }

    /// Answers `status` with `body` from now on.
    pub fn set(&self, status: u16, body: String) {
        if let Ok(mut a) = self.answer.lock() {
            *a = (status, body);
        }
    }

    /// Requests answered so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Reads one request head and answers it, closing the connection.
async fn answer_one<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    answer: &Answer,
    requests: &std::sync::atomic::AtomicU64,
) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (status, body) = answer
        .lock()
        .map(|a| a.clone())
        .unwrap_or((500, String::new()));
    let response = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}
