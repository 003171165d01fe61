//! TLS for the listeners: load PEM files, and generate the dev certificate.
//!
//! The dev certificate is self-signed ECDSA P-256, valid 14 days: the rules browsers
//! apply to WebTransport `serverCertificateHashes`, so one certificate serves QUIC,
//! WebSocket and (later) WebTransport. Clients pin its SHA-256.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

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
        let cert_pem = std::fs::read(cert)
            .with_context(|| format!("reading certificate {}", cert.display()))?;
        let key_pem =
            std::fs::read(key).with_context(|| format!("reading key {}", key.display()))?;
        let chain = rustls_pemfile::certs(&mut cert_pem.as_slice())
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("parsing certificate {}", cert.display()))?;
        if chain.is_empty() {
            bail!("no certificate in {}", cert.display());
        }
        let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
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

    /// A rustls server config offering `alpn`.
    pub fn server_config(&self, alpn: &[&[u8]]) -> anyhow::Result<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .context("TLS versions")?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .context("certificate and key do not match or are unsupported")?;
        cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
        Ok(cfg)
    }
}

/// Writes a self-signed ECDSA P-256 certificate for localhost valid `days` days.
/// Returns the SHA-256 (hex) of its DER.
pub fn write_dev_cert(cert_path: &Path, key_path: &Path, days: i64) -> anyhow::Result<String> {
    let key =
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).context("generating key")?;
    let mut params = rcgen::CertificateParams::new(vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ])
    .context("certificate names")?;
    let now = time::OffsetDateTime::now_utc();
    // A little slack for clock skew, while staying within the browsers' 14-day rule.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days) - time::Duration::hours(2);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "petrel dev");
    let cert = params.self_signed(&key).context("signing certificate")?;
    write_private(cert_path, cert.pem().as_bytes())?;
    write_private(key_path, key.serialize_pem().as_bytes())?;
    Ok(hex::encode(Sha256::digest(cert.der())))
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
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        Claims {
            sub: "alice".into(),
            device: Some("phone".into()),
            exp: now + 60,
            iat: None,
        }
    }

    #[test]
    fn es256_tokens_verify_with_the_public_key_and_hs256_is_refused() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let auth = Authenticator::new(None, Some(key.public_key_pem().as_bytes())).unwrap();
        let enc = EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();
        let token = jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims(), &enc).unwrap();
        let id = auth.verify(&token, "").unwrap();
        assert_eq!((id.user.as_str(), id.device.as_str()), ("alice", "phone"));
        // Algorithm confusion: an HS256 token "signed" with the public key is refused.
        let forged = mint_hs256(key.public_key_pem().as_bytes(), &claims()).unwrap();
        assert!(matches!(
            auth.verify(&forged, ""),
            Err(AuthError::Invalid(_))
        ));
        // Another key's ES256 token is refused.
        let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let enc = EncodingKey::from_ec_pem(other.serialize_pem().as_bytes()).unwrap();
        let token = jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims(), &enc).unwrap();
        assert!(matches!(
            auth.verify(&token, ""),
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
        loaded.server_config(&[b"h3"]).unwrap();
        assert!(
            CertKey::load(&k, &k).is_err(),
            "a key file is no certificate"
        );
    }
}
