//! The dev certificate authority: one CA per topology, and a certificate for each hub
//! node, so that leaf → hub links and the hub's routes run over TLS that verifies the
//! peer — the production form, on loopback.
//!
//! ```text
//! ROOT/ca/ca.pem               the CA certificate (what leaves and tools trust)
//! ROOT/ca/NAME.pem, NAME.key   a node's certificate (127.0.0.1, localhost) and key
//! ```
//!
//! ECDSA P-256. Node certificates carry both server and client authentication: a route
//! is dialled by one node and accepted by the other, and each side verifies the other.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};

/// A node's certificate and key files.
#[derive(Debug, Clone)]
pub struct NodeCert {
    /// PEM certificate.
    pub cert: PathBuf,
    /// PEM private key (readable by this user only).
    pub key: PathBuf,
}

/// A CA that lives in one directory.
pub struct DevCa {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

impl DevCa {
    /// Makes a fresh CA in `dir` (replacing one that was there).
    pub fn create(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "Petrel dev CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key)?;
        std::fs::write(dir.join("ca.pem"), cert.pem()).context("writing the CA certificate")?;
        Ok(Self {
            dir: dir.to_path_buf(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate's path.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Issues a certificate for `name` on loopback (IP 127.0.0.1 and `localhost`).
    pub fn issue(&self, name: &str) -> anyhow::Result<NodeCert> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.issuer)?;
        let out = NodeCert {
            cert: self.dir.join(format!("{name}.pem")),
            key: self.dir.join(format!("{name}.key")),
        };
        std::fs::write(&out.cert, cert.pem())
            .with_context(|| format!("writing {}", out.cert.display()))?;
        petrel_gateway::tls::write_private(&out.key, key.serialize_pem().as_bytes())?;
        Ok(out)
    }
}
