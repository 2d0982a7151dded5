//! Passwords: the length rule, argon2id hashing and verification. Hashing is deliberately slow
//! (tens of milliseconds of CPU and ~19 MiB), so both run on the blocking pool, never on an async
//! worker.
//!
//! Hashes are PHC strings (`$argon2id$v=19$m=19456,t=2,p=1$salt$hash`); verification reads the
//! parameters from the string, so raising them later keeps old hashes working.

use std::sync::OnceLock;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use pm_core::{Error, Result};

/// Shortest accepted password, in characters.
pub const MIN_LEN: usize = 10;
/// Longest accepted password, in characters (bounds the hashing work a request can cause).
pub const MAX_LEN: usize = 1024;

/// Checks the length rule; the error names `field`.
pub fn validate(field: &'static str, password: &str) -> Result<()> {
    let n = password.chars().count();
    if n < MIN_LEN {
        return Err(Error::invalid(field, format!("must be at least {MIN_LEN} characters")));
    }
    if n > MAX_LEN {
        return Err(Error::invalid(field, format!("must be at most {MAX_LEN} characters")));
    }
    Ok(())
}

/// Hashes a password with argon2id (default parameters) and a random salt.
pub async fn hash(password: String) -> Result<String> {
    tokio::task::spawn_blocking(move || hash_blocking(&password)).await.map_err(Error::storage)?
}

fn hash_blocking(password: &str) -> Result<String> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| Error::storage(std::io::Error::other(e.to_string())))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| Error::storage(PhcError(e)))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::storage(PhcError(e)))
}

/// Whether `password` matches the PHC string `stored`. With `stored = None` (no such user, or no
/// password) a dummy hash is verified instead, so the answer takes as long either way and the
/// timing does not tell which accounts exist.
pub async fn verify(password: String, stored: Option<String>) -> Result<bool> {
    tokio::task::spawn_blocking(move || {
        let known = stored.is_some();
        let phc = match stored {
            Some(s) => s,
            None => dummy_hash()?.to_owned(),
        };
        let parsed = PasswordHash::new(&phc).map_err(|e| Error::storage(PhcError(e)))?;
        let ok = Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok();
        Ok(ok && known)
    })
    .await
    .map_err(Error::storage)?
}

fn dummy_hash() -> Result<&'static str> {
    static DUMMY: OnceLock<String> = OnceLock::new();
    if let Some(h) = DUMMY.get() {
        return Ok(h);
    }
    let h = hash_blocking("not the password of anybody")?;
    Ok(DUMMY.get_or_init(|| h))
}

/// A random password for `pm-server create-user` without `--password-stdin`: 24 base64url
/// characters (144 bits).
pub fn generate() -> Result<String> {
    super::token::random_text(18)
}

/// `password_hash::Error` as a `std::error::Error` (it implements one only with its `std`
/// feature).
#[derive(Debug)]
struct PhcError(argon2::password_hash::Error);

impl std::fmt::Display for PhcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "password hashing failed: {}", self.0)
    }
}

impl std::error::Error for PhcError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_rule_names_the_field() {
        let e = validate("password", "short").unwrap_err();
        assert!(matches!(&e, Error::Invalid { field, .. } if field == "password"), "{e:?}");
        assert!(validate("password", &"x".repeat(MAX_LEN + 1)).is_err());
        assert!(validate("password", "ten chars!").is_ok());
        // Characters, not bytes.
        assert!(validate("password", &"é".repeat(10)).is_ok());
    }

    #[tokio::test]
    async fn hashes_verify() {
        let h = hash("correct horse battery".into()).await.unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify("correct horse battery".into(), Some(h.clone())).await.unwrap());
        assert!(!verify("wrong horse battery".into(), Some(h)).await.unwrap());
        assert!(!verify("not the password of anybody".into(), None).await.unwrap());
    }
}
