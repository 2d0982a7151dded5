//! Web Push message encryption (RFC 8291, `aes128gcm` content coding of RFC 8188) and VAPID
//! authentication (RFC 8292), on RustCrypto's `p256`, `hkdf` and `aes-gcm`.
//!
//! Encryption: an ephemeral P-256 key pair per message; the ECDH secret with the browser's
//! `p256dh` key and its `auth` secret give, through HKDF-SHA-256, a content key and nonce; the
//! payload plus the last-record delimiter `0x02` is sealed with AES-128-GCM into a single record
//! behind the RFC 8188 header (salt, record size, key id = the ephemeral public key).
//! [`decrypt`] is the user agent's side, for tests and tools. Errors are pm-core's `Invalid`
//! naming the subscription field at fault (`keys.p256dh`, `keys.auth`).
//!
//! VAPID: an ES256 JWT (`aud` = the push service's origin, `exp` ≤ 24 h, `sub` = a contact URI)
//! signed with the server's long-lived key, sent as `Authorization: vapid t=<jwt>, k=<key>`.

use aes_gcm::aead::consts::U12;
use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes128Gcm, Key, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hkdf::Hkdf;
use p256::ecdsa::signature::Signer as _;
use p256::elliptic_curve::sec1::ToEncodedPoint as _;
use p256::{PublicKey, SecretKey};
use sha2::Sha256;

use pm_core::{Error, Result};

fn random_failed(e: getrandom::Error) -> Error {
    Error::storage(std::io::Error::other(format!("no system randomness: {e}")))
}

fn undecryptable() -> Error {
    Error::invalid("body", "the message does not decrypt")
}

/// The record size written into the header (RFC 8291 §4 recommends 4096).
pub const RECORD_SIZE: u32 = 4096;
/// Largest plaintext we encrypt: push services accept bodies of at most 4096 bytes, and the
/// body adds 86 bytes of header, 16 of tag and 1 of delimiter.
pub const MAX_PLAINTEXT: usize = 3993;

/// Base64url without padding, the encoding of every Web Push key on the wire.
pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes base64url, accepting padding (some browsers' `toJSON()` include it).
pub fn unb64(s: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok()
}

/// A fresh P-256 private key from the system's randomness.
pub fn random_secret() -> Result<SecretKey> {
    loop {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(random_failed)?;
        // Out-of-range scalars (about 2^-32 of draws) are simply drawn again.
        if let Ok(k) = SecretKey::from_slice(&bytes) {
            return Ok(k);
        }
    }
}

/// The uncompressed SEC1 form (65 bytes, `0x04 || x || y`) of a public key.
pub fn public_bytes(key: &PublicKey) -> Vec<u8> {
    key.to_encoded_point(false).as_bytes().to_vec()
}

/// Parses the browser's `p256dh` (65-byte uncompressed point).
pub fn parse_public(bytes: &[u8]) -> Result<PublicKey> {
    if bytes.len() != 65 || bytes[0] != 4 {
        return Err(Error::invalid("keys.p256dh", "must be a 65-byte uncompressed P-256 point"));
    }
    PublicKey::from_sec1_bytes(bytes)
        .map_err(|_| Error::invalid("keys.p256dh", "is not a point on the P-256 curve"))
}

fn hkdf_expand<const N: usize>(salt: &[u8], ikm: &[u8], info: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    // N ≤ 32 here, far below HKDF-SHA-256's 8160-byte limit.
    Hkdf::<Sha256>::new(Some(salt), ikm).expand(info, &mut out).expect("short HKDF output");
    out
}

/// The content key and nonce both sides derive (RFC 8291 §3.4).
fn derive(
    ecdh_secret: &[u8],
    auth_secret: &[u8],
    ua_public: &[u8],
    as_public: &[u8],
    salt: &[u8],
) -> ([u8; 16], [u8; 12]) {
    let mut key_info = Vec::with_capacity(14 + 65 + 65);
    key_info.extend_from_slice(b"WebPush: info\0");
    key_info.extend_from_slice(ua_public);
    key_info.extend_from_slice(as_public);
    let ikm: [u8; 32] = hkdf_expand(auth_secret, ecdh_secret, &key_info);
    let cek = hkdf_expand(salt, &ikm, b"Content-Encoding: aes128gcm\0");
    let nonce = hkdf_expand(salt, &ikm, b"Content-Encoding: nonce\0");
    (cek, nonce)
}

/// Encrypts `plaintext` for the subscription (`ua_public` = `p256dh`, `auth_secret` = `auth`)
/// with the sender key `as_secret` and `salt`: the full `aes128gcm` body. Use
/// [`encrypt_fresh`] in production; this form exists so the RFC's test vector can be replayed.
pub fn encrypt(
    plaintext: &[u8],
    ua_public: &[u8],
    auth_secret: &[u8],
    as_secret: &SecretKey,
    salt: &[u8; 16],
) -> Result<Vec<u8>> {
    if plaintext.len() > MAX_PLAINTEXT {
        return Err(Error::invalid(
            "payload",
            format!("{} bytes do not fit one {RECORD_SIZE}-byte record", plaintext.len()),
        ));
    }
    if auth_secret.len() != 16 {
        return Err(Error::invalid("keys.auth", "must be 16 bytes"));
    }
    let ua = parse_public(ua_public)?;
    let as_public = public_bytes(&as_secret.public_key());
    let shared = p256::ecdh::diffie_hellman(as_secret.to_nonzero_scalar(), ua.as_affine());
    let (cek, nonce) = derive(shared.raw_secret_bytes(), auth_secret, ua_public, &as_public, salt);
    let mut record = Vec::with_capacity(plaintext.len() + 1);
    record.extend_from_slice(plaintext);
    record.push(2); // the last (and only) record's delimiter
    let sealed = Aes128Gcm::new(&Key::<Aes128Gcm>::from(cek))
        .encrypt(&Nonce::<U12>::from(nonce), record.as_slice())
        .map_err(|_| Error::invalid("payload", "cannot be sealed"))?;
    let mut body = Vec::with_capacity(16 + 4 + 1 + 65 + sealed.len());
    body.extend_from_slice(salt);
    body.extend_from_slice(&RECORD_SIZE.to_be_bytes());
    body.push(as_public.len() as u8);
    body.extend_from_slice(&as_public);
    body.extend_from_slice(&sealed);
    Ok(body)
}

/// [`encrypt`] with a fresh ephemeral key and random salt.
pub fn encrypt_fresh(plaintext: &[u8], ua_public: &[u8], auth_secret: &[u8]) -> Result<Vec<u8>> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(random_failed)?;
    encrypt(plaintext, ua_public, auth_secret, &random_secret()?, &salt)
}

/// The user agent's side: decrypts an `aes128gcm` body with the subscription's private key and
/// auth secret; returns the plaintext without delimiter and padding.
pub fn decrypt(body: &[u8], ua_secret: &SecretKey, auth_secret: &[u8]) -> Result<Vec<u8>> {
    if body.len() < 21 {
        return Err(undecryptable());
    }
    let salt = &body[..16];
    let id_len = body[20] as usize;
    let header = 21 + id_len;
    if body.len() < header + 17 {
        return Err(undecryptable());
    }
    let as_public = &body[21..header];
    let sender = PublicKey::from_sec1_bytes(as_public).map_err(|_| undecryptable())?;
    let ua_public = public_bytes(&ua_secret.public_key());
    let shared = p256::ecdh::diffie_hellman(ua_secret.to_nonzero_scalar(), sender.as_affine());
    let (cek, nonce) = derive(shared.raw_secret_bytes(), auth_secret, &ua_public, as_public, salt);
    let mut record = Aes128Gcm::new(&Key::<Aes128Gcm>::from(cek))
        .decrypt(&Nonce::<U12>::from(nonce), &body[header..])
        .map_err(|_| undecryptable())?;
    // Strip padding zeros, then the delimiter (2 = last record).
    while record.last() == Some(&0) {
        record.pop();
    }
    match record.pop() {
        Some(2) => Ok(record),
        _ => Err(undecryptable()),
    }
}

/// The server's VAPID identity: a long-lived P-256 key and the contact `sub`.
#[derive(Clone)]
pub struct Vapid {
    key: SecretKey,
    subject: String,
}

impl std::fmt::Debug for Vapid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vapid")
            .field("public_key", &self.public_key())
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

impl Vapid {
    /// The identity with private key `key` and contact `subject` (`mailto:` or `https:`).
    pub fn new(key: SecretKey, subject: impl Into<String>) -> Self {
        Self { key, subject: subject.into() }
    }

    /// Parses a private key given as base64url of the 32-byte scalar (the common VAPID format,
    /// e.g. what `web-push generate-vapid-keys` prints).
    pub fn parse_private(b64url: &str) -> Result<SecretKey> {
        let invalid = || {
            Error::invalid("vapid_private_key", "must be base64url of a 32-byte P-256 private key")
        };
        let bytes = unb64(b64url.trim()).ok_or_else(invalid)?;
        if bytes.len() != 32 {
            return Err(invalid());
        }
        SecretKey::from_slice(&bytes).map_err(|_| invalid())
    }

    /// The private key as base64url (for persisting a generated one).
    pub fn private_b64(&self) -> String {
        b64(&self.key.to_bytes())
    }

    /// The public key, base64url of the uncompressed point: the browser's
    /// `applicationServerKey` and the `k=` of the `Authorization` header.
    pub fn public_key(&self) -> String {
        b64(&public_bytes(&self.key.public_key()))
    }

    /// A signed ES256 JWT for the push service at `audience` (its origin), valid until
    /// `expires` (seconds since the epoch).
    pub fn jwt(&self, audience: &str, expires: u64) -> String {
        let header = b64(br#"{"typ":"JWT","alg":"ES256"}"#);
        let claims =
            serde_json::json!({ "aud": audience, "exp": expires, "sub": self.subject }).to_string();
        let signing_input = format!("{header}.{}", b64(claims.as_bytes()));
        let signature: p256::ecdsa::Signature =
            p256::ecdsa::SigningKey::from(&self.key).sign(signing_input.as_bytes());
        format!("{signing_input}.{}", b64(&signature.to_bytes()))
    }

    /// The `Authorization` header value for a push to `audience`.
    pub fn authorization(&self, audience: &str, expires: u64) -> String {
        format!("vapid t={}, k={}", self.jwt(audience, expires), self.public_key())
    }
}
