//! Secrets at rest: OAuth tokens, webhook secrets and API keys are sealed with an AEAD
//! (ChaCha20-Poly1305) under a key from a [`Keyring`] before any store sees them.
//!
//! Sealed form: `v1.<key id>.<base64url(nonce ‖ ciphertext ‖ tag)>`. The key id names the key
//! that sealed it, so keys rotate without a flag day: add a new current key, keep the old ones for
//! opening, re-seal lazily ([`Keyring::needs_reseal`]). Every seal binds a *context* string (for
//! example `credential:<integration id>:oauth_access`) as associated data, so a ciphertext copied
//! into another row does not open. Nonces are 96 random bits per seal.
//!
//! The keyring is a value: pm-server parses it from `PM_ENCRYPTION_KEY`; this crate never reads
//! the environment.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};

use crate::{Error, Result};

const VERSION: &str = "v1";
const NONCE_LEN: usize = 12;

/// A plaintext secret in memory. `Debug`/`Display` never show it; call [`Secret::expose`] where
/// the value is really needed (an `Authorization` header, an HMAC key).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The plaintext.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// A sealed secret as stored: safe to log by length only, useless without the keyring.
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed(String);

impl Sealed {
    /// Wraps a stored value (checked when opened).
    pub fn from_stored(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The stored form.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id of the key that sealed it, if the form is recognisable.
    pub fn key_id(&self) -> Option<&str> {
        let mut parts = self.0.splitn(3, '.');
        (parts.next() == Some(VERSION)).then(|| parts.next()).flatten()
    }
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sealed({:?}, {} bytes)", self.key_id(), self.0.len())
    }
}

/// One 256-bit key. `Debug` hides it.
#[derive(Clone)]
pub struct EncryptionKey([u8; 32]);

impl EncryptionKey {
    /// From raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// From standard or URL-safe base64 of exactly 32 bytes (what `openssl rand -base64 32`
    /// prints).
    pub fn from_base64(s: &str) -> Result<Self> {
        let s = s.trim();
        let bytes = STANDARD
            .decode(s)
            .or_else(|_| URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')))
            .map_err(|_| Error::invalid("encryption_key", "must be base64"))?;
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| Error::invalid("encryption_key", "must decode to exactly 32 bytes"))?;
        Ok(Self(arr))
    }

    /// A fresh random key.
    pub fn generate() -> Self {
        let mut k = [0u8; 32];
        getrandom::fill(&mut k).expect("the OS random source is available");
        Self(k)
    }

    /// Standard base64 of the key (to print once for an operator).
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }
}

impl fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EncryptionKey(…)")
    }
}

/// The keys secrets are sealed with: one current key (seals and opens) and any number of older
/// ones (open only).
#[derive(Clone)]
pub struct Keyring {
    current: String,
    keys: Vec<(String, ChaCha20Poly1305)>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("Keyring").field("current", &self.current).field("keys", &ids).finish()
    }
}

fn check_key_id(id: &str) -> Result<()> {
    if id.is_empty()
        || id.len() > 32
        || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(Error::invalid("key_id", "1-32 characters of [A-Za-z0-9_-]"));
    }
    Ok(())
}

impl Keyring {
    /// A keyring whose current key is `key`, named `id` (`[A-Za-z0-9_-]{1,32}`).
    pub fn new(id: &str, key: &EncryptionKey) -> Result<Self> {
        check_key_id(id)?;
        Ok(Self { current: id.to_owned(), keys: vec![(id.to_owned(), cipher(key))] })
    }

    /// Adds an older key that still opens what it sealed.
    pub fn with_previous(mut self, id: &str, key: &EncryptionKey) -> Result<Self> {
        check_key_id(id)?;
        if self.keys.iter().any(|(k, _)| k == id) {
            return Err(Error::invalid("key_id", format!("key id {id:?} appears twice")));
        }
        self.keys.push((id.to_owned(), cipher(key)));
        Ok(self)
    }

    /// The id new seals carry.
    pub fn current_id(&self) -> &str {
        &self.current
    }

    /// Seals `plaintext`, bound to `context` (which must be given again to open it).
    pub fn seal(&self, plaintext: &[u8], context: &str) -> Sealed {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).expect("the OS random source is available");
        let cipher = &self.keys[0].1;
        let ct = cipher
            .encrypt(&Nonce::from(nonce), Payload { msg: plaintext, aad: context.as_bytes() })
            .expect("ChaCha20-Poly1305 encryption of an in-memory buffer cannot fail");
        let mut blob = Vec::with_capacity(NONCE_LEN + ct.len());
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&ct);
        Sealed(format!("{VERSION}.{}.{}", self.current, URL_SAFE_NO_PAD.encode(blob)))
    }

    /// Seals a UTF-8 secret.
    pub fn seal_secret(&self, secret: &Secret, context: &str) -> Sealed {
        self.seal(secret.expose().as_bytes(), context)
    }

    /// Opens a sealed value; fails on an unknown key id, a wrong context or any tampering.
    pub fn open(&self, sealed: &Sealed, context: &str) -> Result<Vec<u8>> {
        let mut parts = sealed.0.splitn(3, '.');
        let (Some(VERSION), Some(kid), Some(b64)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(Error::Crypto("not a sealed value".into()));
        };
        let cipher = self
            .keys
            .iter()
            .find(|(id, _)| id == kid)
            .map(|(_, c)| c)
            .ok_or_else(|| Error::Crypto(format!("unknown key id {kid:?}")))?;
        let blob = URL_SAFE_NO_PAD.decode(b64).map_err(|_| Error::Crypto("not base64".into()))?;
        if blob.len() < NONCE_LEN + 16 {
            return Err(Error::Crypto("truncated".into()));
        }
        let (nonce, ct) = blob.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().expect("split at NONCE_LEN");
        cipher
            .decrypt(&Nonce::from(nonce), Payload { msg: ct, aad: context.as_bytes() })
            .map_err(|_| Error::Crypto("authentication failed (wrong key, context or data)".into()))
    }

    /// Opens a sealed UTF-8 secret.
    pub fn open_secret(&self, sealed: &Sealed, context: &str) -> Result<Secret> {
        let bytes = self.open(sealed, context)?;
        String::from_utf8(bytes)
            .map(Secret)
            .map_err(|_| Error::Crypto("sealed secret is not UTF-8".into()))
    }

    /// Whether `sealed` was made with an older key (re-seal it with the current one).
    pub fn needs_reseal(&self, sealed: &Sealed) -> bool {
        sealed.key_id() != Some(self.current.as_str())
    }
}

fn cipher(key: &EncryptionKey) -> ChaCha20Poly1305 {
    ChaCha20Poly1305::new((&key.0).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_rotate_and_bind_context() {
        let k1 = EncryptionKey::generate();
        let k2 = EncryptionKey::generate();
        let old = Keyring::new("k1", &k1).unwrap();
        let sealed = old.seal(b"gho_token", "credential:a");
        assert!(!sealed.as_str().contains("gho_token"));
        assert_eq!(sealed.key_id(), Some("k1"));
        assert_eq!(old.open(&sealed, "credential:a").unwrap(), b"gho_token");
        assert!(matches!(old.open(&sealed, "credential:b"), Err(Error::Crypto(_))));

        let rotated = Keyring::new("k2", &k2).unwrap().with_previous("k1", &k1).unwrap();
        assert_eq!(rotated.open(&sealed, "credential:a").unwrap(), b"gho_token");
        assert!(rotated.needs_reseal(&sealed));
        let resealed = rotated.seal(b"gho_token", "credential:a");
        assert!(!rotated.needs_reseal(&resealed));
        assert!(old.open(&resealed, "credential:a").is_err(), "old keyring lacks k2");

        let mut tampered = sealed.as_str().to_owned();
        let last = tampered.pop().unwrap();
        tampered.push(if last == 'A' { 'B' } else { 'A' });
        assert!(old.open(&Sealed::from_stored(tampered), "credential:a").is_err());
        assert!(old.open(&Sealed::from_stored("v1.k1.AAAA"), "credential:a").is_err());
    }

    #[test]
    fn keys_parse_from_base64() {
        let k = EncryptionKey::generate();
        assert_eq!(EncryptionKey::from_base64(&k.to_base64()).unwrap().0, k.0);
        assert!(EncryptionKey::from_base64("c2hvcnQ=").is_err());
        assert!(Keyring::new("bad id", &k).is_err());
        assert!(Keyring::new("a", &k).unwrap().with_previous("a", &k).is_err());
    }
}
