//! RFC 8291 message encryption for Web Push: the `aes128gcm` content coding of
//! RFC 8188 with keys from an ECDH agreement between a one-time application server
//! key and the subscription's P-256 key, mixed with the subscription's auth secret.
//!
//! One record (a push message is at most 4 KiB), padding delimiter 0x02.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes128Gcm, Nonce};
use hkdf::Hkdf;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::{PublicKey, SecretKey};
use sha2::Sha256;

/// Record size written in the header.
pub const RECORD_SIZE: u32 = 4096;

/// Largest plaintext one record holds (the record size less the tag and the delimiter).
pub const MAX_PLAINTEXT: usize = RECORD_SIZE as usize - 16 - 1;

/// Why a message could not be encrypted or decrypted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EceError {
    /// The subscription's public key is not a P-256 point.
    #[error("the subscription's p256dh is not a P-256 public key")]
    BadPublicKey,
    /// The auth secret is not 16 bytes.
    #[error("the subscription's auth secret is not 16 bytes")]
    BadAuth,
    /// More than one record's worth.
    #[error("the payload is larger than {MAX_PLAINTEXT} bytes")]
    TooLarge,
    /// Not an aes128gcm body, or it does not decrypt.
    #[error("the body is not an aes128gcm record for this subscription")]
    Undecryptable,
}

/// The content encryption key and nonce (RFC 8291 §3.4, RFC 8188 §2.2–2.3).
pub fn derive(
    ecdh_secret: &[u8],
    auth: &[u8],
    ua_public: &[u8],
    as_public: &[u8],
    salt: &[u8],
) -> ([u8; 16], [u8; 12]) {
    let mut key_info = Vec::with_capacity(14 + 65 + 65);
    key_info.extend_from_slice(b"WebPush: info\0");
    key_info.extend_from_slice(ua_public);
    key_info.extend_from_slice(as_public);
    let mut ikm = [0u8; 32];
    // Lengths are fixed and within HKDF-SHA-256's limit: expand cannot fail.
    let _ = Hkdf::<Sha256>::new(Some(auth), ecdh_secret).expand(&key_info, &mut ikm);
    let prk = Hkdf::<Sha256>::new(Some(salt), &ikm);
    let mut cek = [0u8; 16];
    let mut nonce = [0u8; 12];
    let _ = prk.expand(b"Content-Encoding: aes128gcm\0", &mut cek);
    let _ = prk.expand(b"Content-Encoding: nonce\0", &mut nonce);
    (cek, nonce)
}

/// Encrypts `plaintext` for the subscription (`ua_public` uncompressed, `auth`) with
/// a fresh application server key and salt.
pub fn encrypt(ua_public: &[u8], auth: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, EceError> {
    let as_secret = SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
    let mut salt = [0u8; 16];
    rand::fill(&mut salt);
    encrypt_with(ua_public, auth, plaintext, &as_secret, &salt)
}

/// [`encrypt`] with a given application server key and salt (the RFC's test vector).
pub fn encrypt_with(
    ua_public: &[u8],
    auth: &[u8],
    plaintext: &[u8],
    as_secret: &SecretKey,
    salt: &[u8; 16],
) -> Result<Vec<u8>, EceError> {
    if auth.len() != 16 {
        return Err(EceError::BadAuth);
    }
    if plaintext.len() > MAX_PLAINTEXT {
        return Err(EceError::TooLarge);
    }
    let ua = PublicKey::from_sec1_bytes(ua_public).map_err(|_| EceError::BadPublicKey)?;
    let as_public = as_secret.public_key().to_encoded_point(false);
    let shared = p256::ecdh::diffie_hellman(as_secret.to_nonzero_scalar(), ua.as_affine());
    let (cek, nonce) = derive(
        shared.raw_secret_bytes(),
        auth,
        ua_public,
        as_public.as_bytes(),
        salt,
    );
    let mut record = Vec::with_capacity(plaintext.len() + 1);
    record.extend_from_slice(plaintext);
    record.push(2);
    let cipher = Aes128Gcm::new((&cek).into());
    let sealed = cipher
        .encrypt(
            &Nonce::from(nonce),
            Payload {
                msg: &record,
                aad: b"",
            },
        )
        .map_err(|_| EceError::TooLarge)?;
    let mut body = Vec::with_capacity(16 + 4 + 1 + 65 + sealed.len());
    body.extend_from_slice(salt);
    body.extend_from_slice(&RECORD_SIZE.to_be_bytes());
    body.push(as_public.as_bytes().len() as u8);
    body.extend_from_slice(as_public.as_bytes());
    body.extend_from_slice(&sealed);
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use petrel_core::push::b64url;

    /// RFC 8291 Appendix A.
    #[test]
    fn the_rfc_8291_example_encrypts_byte_for_byte() {
        let plaintext = b"When I grow up, I want to be a watermelon";
        let as_private = b64url("yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw").unwrap();
        let ua_public = b64url(
            "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4",
        )
        .unwrap();
        let auth = b64url("BTBZMqHH6r4Tts7J_aSIgg").unwrap();
        let salt: [u8; 16] = b64url("DGv6ra1nlYgDCS1FRnbzlw")
            .unwrap()
            .try_into()
            .unwrap();
        let expected = b64url(
            "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN",
        )
        .unwrap();
        let key = SecretKey::from_slice(&as_private).unwrap();
        let body = encrypt_with(&ua_public, &auth, plaintext, &key, &salt).unwrap();
        assert_eq!(body, expected);
    }

    #[test]
    fn bad_subscriptions_and_large_payloads_are_refused() {
        let ua = SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng)
            .public_key()
            .to_encoded_point(false);
        assert_eq!(
            encrypt(&[4; 65], &[0; 16], b"x"),
            Err(EceError::BadPublicKey)
        );
        assert_eq!(
            encrypt(ua.as_bytes(), &[0; 15], b"x"),
            Err(EceError::BadAuth)
        );
        assert_eq!(
            encrypt(ua.as_bytes(), &[0; 16], &[0; MAX_PLAINTEXT + 1]),
            Err(EceError::TooLarge)
        );
        assert!(encrypt(ua.as_bytes(), &[0; 16], &[0; MAX_PLAINTEXT]).is_ok());
    }
}
