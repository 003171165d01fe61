//! TLS for the listeners: one [`CertStore`] serves QUIC, WebTransport and WebSocket,
//! and its certificate can change while the gateway runs.
//!
//! Two sources ([`CertSource`]):
//! - **files** (production, e.g. from ACME): PEM certificate chain and key, re-read
//!   every `reload_secs`; a changed pair that parses and matches replaces the served
//!   one; a broken pair is logged and the old one kept. Open connections are not
//!   touched: a certificate matters only during a handshake.
//! - **self-signed** (development): ECDSA P-256, generated in memory. Browsers accept
//!   such a certificate for WebTransport only through `serverCertificateHashes`, and
//!   only when it is valid for at most 14 days, so the store keeps a *current* and a
//!   *next* certificate and rotates every `rotate_secs`. A page that pins both hashes
//!   keeps connecting across one rotation; the hashes are published at the gateway's
//!   HTTP endpoint `/cert-hashes`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Longest validity a browser accepts for a hash-pinned certificate.
pub const MAX_PINNED_VALIDITY: Duration = Duration::from_secs(14 * 24 * 3600);

/// Slack before `not_before` for clock skew.
const SKEW: Duration = Duration::from_secs(3600);

/// Longest rotation period for self-signed certificates: each is next for one
/// period and current for the following one, so it must stay valid for two periods
/// plus the skew allowances, within [`MAX_PINNED_VALIDITY`].
pub const MAX_ROTATE: Duration = Duration::from_secs(6 * 24 * 3600 + 20 * 3600);

/// TLS for an HTTPS client (the token issuer, push providers): the system's roots plus
/// the CA certificates in `ca_file` (PEM; named `what` in errors), ALPN h2 then
/// http/1.1, on the ring provider.
pub fn client_config(ca_file: Option<&Path>, what: &str) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca_file {
        let pem =
            std::fs::read(path).with_context(|| format!("reading {what} {}", path.display()))?;
        let certs = rustls_pemfile::certs(&mut pem.as_slice())
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("parsing {what} {}", path.display()))?;
        if certs.is_empty() {
            bail!("{what} {} holds no certificate", path.display());
        }
        for c in certs {
            roots
                .add(c)
                .with_context(|| format!("a certificate of {}", path.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tls)
}

/// A certificate chain and its key.
#[derive(Debug)]
pub struct CertKey {
    /// Chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// Private key.
    pub key: PrivateKeyDer<'static>,
}

impl Clone for CertKey {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl CertKey {
    /// Loads PEM files.
    pub fn load(cert: &Path, key: &Path) -> anyhow::Result<Self> {
        let (cert_pem, key_pem) = read_pair(cert, key)?;
        Self::parse(&cert_pem, &key_pem, cert, key)
    }

    /// Parses PEM data (the paths only name it in errors).
    pub fn parse(cert_pem: &[u8], key_pem: &[u8], cert: &Path, key: &Path) -> anyhow::Result<Self> {
        let chain = rustls_pemfile::certs(&mut &cert_pem[..])
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("parsing certificate {}", cert.display()))?;
        if chain.is_empty() {
            bail!("no certificate in {}", cert.display());
        }
        let key = rustls_pemfile::private_key(&mut &key_pem[..])
            .with_context(|| format!("parsing key {}", key.display()))?
            .with_context(|| format!("no private key in {}", key.display()))?;
        Ok(Self { chain, key })
    }

    /// SHA-256 of the leaf certificate (what clients pin), hex.
    pub fn leaf_sha256_hex(&self) -> String {
        self.chain
            .first()
            .map(|c| hex::encode(Sha256::digest(c.as_ref())))
            .unwrap_or_default()
    }

    /// Checks that the key signs for the certificate and makes the rustls form.
    pub fn certified(&self) -> anyhow::Result<Arc<CertifiedKey>> {
        let signer = rustls::crypto::ring::sign::any_supported_type(&self.key)
            .context("unsupported private key type")?;
        let ck = CertifiedKey::new(self.chain.clone(), signer);
        ck.keys_match()
            .context("the private key does not belong to the certificate")?;
        Ok(Arc::new(ck))
    }

    /// A new self-signed ECDSA P-256 certificate for localhost, valid from an hour
    /// ago for `validity` (capped at [`MAX_PINNED_VALIDITY`]).
    pub fn self_signed(validity: Duration) -> anyhow::Result<Self> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .context("generating key")?;
        let mut params = rcgen::CertificateParams::new(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ])
        .context("certificate names")?;
        let now = time::OffsetDateTime::now_utc();
        let validity = validity.min(MAX_PINNED_VALIDITY - SKEW);
        params.not_before = now - SKEW;
        params.not_after = now + validity;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "petrel dev");
        let cert = params.self_signed(&key).context("signing certificate")?;
        let key_der = PrivateKeyDer::try_from(key.serialize_der())
            .map_err(|e| anyhow::anyhow!("encoding key: {e}"))?;
        Ok(Self {
            chain: vec![cert.der().clone()],
            key: key_der,
        })
    }

    /// PEM text of the chain (for clients that trust it as a CA file).
    pub fn chain_pem(&self) -> String {
        self.chain
            .iter()
            .map(|c| pem_block("CERTIFICATE", c.as_ref()))
            .collect()
    }
}

fn pem_block(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Where the served certificate comes from.
#[derive(Debug, Clone)]
pub enum CertSource {
    /// PEM files, re-read every `reload` (zero: never).
    Files {
        /// Certificate chain.
        cert: PathBuf,
        /// Private key.
        key: PathBuf,
        /// How often to look for a change.
        reload: Duration,
    },
    /// Self-signed, rotated every `rotate`.
    SelfSigned {
        /// Rotation period (each certificate is valid for two of them plus slack).
        rotate: Duration,
    },
}

/// The hashes a page pins (`/cert-hashes`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct CertHashes {
    /// Hash algorithm, as WebTransport's `serverCertificateHashes` names it.
    pub algorithm: String,
    /// SHA-256 (hex) of the certificate served now.
    pub current: String,
    /// SHA-256 (hex) of the certificate served after the next rotation (self-signed only).
    pub next: Option<String>,
    /// When the next rotation happens, Unix seconds (self-signed only).
    pub rotates_at: Option<u64>,
}

struct Served {
    current: Arc<CertifiedKey>,
    current_pem: String,
    current_hash: String,
    next: Option<CertKey>,
    rotates_at: Option<SystemTime>,
    /// Bytes of the files last loaded (files source), to notice a change.
    loaded_files: Option<(Vec<u8>, Vec<u8>)>,
}

/// The certificate every listener serves; swapped in place on reload or rotation.
pub struct CertStore {
    source: CertSource,
    served: RwLock<Served>,
    /// Reloads or rotations that failed (the old certificate stayed in service).
    errors: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore")
            .field("source", &self.source)
            .field("hashes", &self.hashes())
            .finish()
    }
}

impl CertStore {
    /// Loads (or generates) the first certificate.
    pub fn new(source: CertSource) -> anyhow::Result<Arc<Self>> {
        let served = match &source {
            CertSource::Files { cert, key, .. } => {
                let (cert_pem, key_pem) = read_pair(cert, key)?;
                let ck = CertKey::parse(&cert_pem, &key_pem, cert, key)?;
                Served {
                    current: ck.certified()?,
                    current_pem: ck.chain_pem(),
                    current_hash: ck.leaf_sha256_hex(),
                    next: None,
                    rotates_at: None,
                    loaded_files: Some((cert_pem, key_pem)),
                }
            }
            CertSource::SelfSigned { rotate } => {
                if rotate.is_zero() || *rotate > MAX_ROTATE {
                    bail!(
                        "self-signed rotation period must be between 1 s and {} s",
                        MAX_ROTATE.as_secs()
                    );
                }
                let validity = *rotate * 2 + SKEW;
                let current = CertKey::self_signed(validity)?;
                let next = CertKey::self_signed(validity * 2)?;
                Served {
                    current: current.certified()?,
                    current_pem: current.chain_pem(),
                    current_hash: current.leaf_sha256_hex(),
                    next: Some(next),
                    rotates_at: Some(SystemTime::now() + *rotate),
                    loaded_files: None,
                }
            }
        };
        Ok(Arc::new(Self {
            source,
            served: RwLock::new(served),
            errors: Default::default(),
        }))
    }

    /// The hashes a page should pin now.
    pub fn hashes(&self) -> CertHashes {
        let s = self.served.read().unwrap_or_else(|e| e.into_inner());
        CertHashes {
            algorithm: "sha-256".into(),
            current: s.current_hash.clone(),
            next: s.next.as_ref().map(CertKey::leaf_sha256_hex),
            rotates_at: s
                .rotates_at
                .map(|t| petrel_core::time::unix_ms_at(t) / 1000),
        }
    }

    /// Reloads or rotations that failed so far (each logged; the old certificate
    /// stayed in service).
    pub fn errors(&self) -> u64 {
        self.errors.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// PEM of the certificate served now.
    pub fn current_pem(&self) -> String {
        let s = self.served.read().unwrap_or_else(|e| e.into_inner());
        s.current_pem.clone()
    }

    /// A rustls server config offering `alpn`, serving whatever this store holds at
    /// each handshake.
    pub fn server_config(self: &Arc<Self>, alpn: &[&[u8]]) -> anyhow::Result<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .context("TLS versions")?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
        Ok(cfg)
    }

    /// Rotates (self-signed) or reloads (files) when due, until `shutdown`.
    pub async fn maintain(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            let wait = match &self.source {
                CertSource::Files { reload, .. } if reload.is_zero() => return,
                CertSource::Files { reload, .. } => *reload,
                CertSource::SelfSigned { .. } => self.until_rotation(),
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            let result = match &self.source {
                CertSource::Files { cert, key, .. } => self.reload_files(cert, key).map(|_| ()),
                CertSource::SelfSigned { rotate } => self.rotate(*rotate),
            };
            if let Err(e) = result {
                self.errors
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                warn!(
                    error = format!("{e:#}"),
                    "certificate not replaced; still serving the old one"
                );
            }
        }
    }

    fn until_rotation(&self) -> Duration {
        let s = self.served.read().unwrap_or_else(|e| e.into_inner());
        s.rotates_at
            .and_then(|t| t.duration_since(SystemTime::now()).ok())
            .unwrap_or_default()
    }

    /// Promotes the next self-signed certificate and generates a new next one.
    pub fn rotate(&self, period: Duration) -> anyhow::Result<()> {
        let fresh = CertKey::self_signed(period * 2 + SKEW)?;
        let mut s = self.served.write().unwrap_or_else(|e| e.into_inner());
        let Some(next) = s.next.replace(fresh) else {
            return Ok(());
        };
        s.current = next.certified()?;
        s.current_pem = next.chain_pem();
        s.current_hash = next.leaf_sha256_hex();
        s.rotates_at = Some(SystemTime::now() + period);
        info!(sha256 = %s.current_hash, "rotated the self-signed certificate");
        Ok(())
    }

    /// Re-reads the files; returns whether the served certificate changed.
    pub fn reload_files(&self, cert: &Path, key: &Path) -> anyhow::Result<bool> {
        let (cert_pem, key_pem) = read_pair(cert, key)?;
        {
            let s = self.served.read().unwrap_or_else(|e| e.into_inner());
            if s.loaded_files.as_ref() == Some(&(cert_pem.clone(), key_pem.clone())) {
                return Ok(false);
            }
        }
        let ck = CertKey::parse(&cert_pem, &key_pem, cert, key)?;
        let certified = ck.certified()?;
        let mut s = self.served.write().unwrap_or_else(|e| e.into_inner());
        s.current = certified;
        s.current_pem = ck.chain_pem();
        s.current_hash = ck.leaf_sha256_hex();
        s.loaded_files = Some((cert_pem, key_pem));
        info!(sha256 = %s.current_hash, cert = %cert.display(), "loaded a changed certificate");
        Ok(true)
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let s = self.served.read().unwrap_or_else(|e| e.into_inner());
        Some(s.current.clone())
    }
}

fn read_pair(cert: &Path, key: &Path) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    let c =
        std::fs::read(cert).with_context(|| format!("reading certificate {}", cert.display()))?;
    let k = std::fs::read(key).with_context(|| format!("reading key {}", key.display()))?;
    Ok((c, k))
}

/// Writes a self-signed ECDSA P-256 certificate for localhost valid `days` days
/// (for a gateway configured with files). Returns the SHA-256 (hex) of its DER.
pub fn write_dev_cert(cert_path: &Path, key_path: &Path, days: u64) -> anyhow::Result<String> {
    let ck = CertKey::self_signed(Duration::from_secs(days * 24 * 3600) - SKEW * 2)?;
    write_private(cert_path, ck.chain_pem().as_bytes())?;
    write_private(
        key_path,
        pem_block("PRIVATE KEY", ck.key.secret_der()).as_bytes(),
    )?;
    Ok(ck.leaf_sha256_hex())
}

/// Writes a file readable by the owner only.
pub fn write_private(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use petrel_core::auth::{AuthError, Authenticator, Claims, mint_hs256};

    fn claims() -> Claims {
        let now = petrel_core::time::unix_secs();
        Claims {
            sub: "alice".into(),
            device: Some("phone".into()),
            exp: now + 60,
            iat: None,
            nbf: None,
        }
    }

    #[test]
    fn es256_tokens_verify_with_the_public_key_and_hs256_is_refused() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let auth = Authenticator::new(None, Some(key.public_key_pem().as_bytes())).unwrap();
        let enc = EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();
        let token = jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims(), &enc).unwrap();
        let id = auth
            .verify(&token, "", petrel_core::time::unix_secs())
            .unwrap();
        assert_eq!((id.user.as_str(), id.device.as_str()), ("alice", "phone"));
        // Algorithm confusion: an HS256 token "signed" with the public key is refused.
        let forged = mint_hs256(key.public_key_pem().as_bytes(), &claims()).unwrap();
        assert!(matches!(
            auth.verify(&forged, "", petrel_core::time::unix_secs()),
            Err(AuthError::Invalid(_))
        ));
        // Another key's ES256 token is refused.
        let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let enc = EncodingKey::from_ec_pem(other.serialize_pem().as_bytes()).unwrap();
        let token = jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims(), &enc).unwrap();
        assert!(matches!(
            auth.verify(&token, "", petrel_core::time::unix_secs()),
            Err(AuthError::Invalid(_))
        ));
    }

    #[test]
    fn dev_cert_is_p256_and_loads() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        let hash = write_dev_cert(&c, &k, 14).unwrap();
        let loaded = CertKey::load(&c, &k).unwrap();
        assert_eq!(loaded.leaf_sha256_hex(), hash);
        loaded.certified().unwrap();
        assert!(
            CertKey::load(&k, &k).is_err(),
            "a key file is no certificate"
        );
    }
}
