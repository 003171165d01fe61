//! TLS trust for clients: either pin the server certificate's SHA-256 (what browsers
//! do with WebTransport `serverCertificateHashes`, and what `petrel dev` publishes), or
//! trust CA certificates from a PEM file.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::ClientError;

/// How the client decides to trust the gateway's certificate.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Accept exactly the certificate with this SHA-256 (of its DER encoding).
    CertSha256([u8; 32]),
    /// Trust the CA (or self-signed) certificates in this PEM data.
    CaPem(Vec<u8>),
}

impl Trust {
    /// Parses a hex SHA-256 (colons allowed, as printed by openssl).
    pub fn from_hex_sha256(hex_str: &str) -> Result<Self, ClientError> {
        let clean: String = hex_str.chars().filter(|c| *c != ':').collect();
        let bytes = hex::decode(&clean)
            .map_err(|e| ClientError::Config(format!("bad certificate hash: {e}")))?;
        let arr: [u8; 32] = bytes.try_into().map_err(|_| {
            ClientError::Config("certificate hash must be 32 bytes (64 hex digits)".into())
        })?;
        Ok(Self::CertSha256(arr))
    }
}

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

#[derive(Debug)]
struct PinnedVerifier {
    sha256: [u8; 32],
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if got == self.sha256 {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "server certificate sha256 {} does not match the pinned {}",
                hex::encode(got),
                hex::encode(self.sha256)
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// A rustls client config for `trust` offering `alpn`.
pub(crate) fn client_config(
    trust: &Trust,
    alpn: &[&[u8]],
) -> Result<rustls::ClientConfig, ClientError> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ClientError::Config(e.to_string()))?;
    let mut cfg = match trust {
        Trust::CertSha256(sha256) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedVerifier {
                sha256: *sha256,
                algs: provider.signature_verification_algorithms,
            }))
            .with_no_client_auth(),
        Trust::CaPem(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert = cert.map_err(|e| ClientError::Config(format!("bad CA PEM: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| ClientError::Config(format!("bad CA certificate: {e}")))?;
            }
            if roots.is_empty() {
                return Err(ClientError::Config("no certificate in the CA PEM".into()));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Ok(cfg)
}
