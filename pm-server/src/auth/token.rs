//! Opaque tokens (refresh, personal API, invite): a type prefix plus 32 random bytes in
//! base64url, e.g. `pmat_…`. Only their SHA-256 is stored; a lookup hashes what the client
//! presents. The prefix tells the extractor which kind it holds and lets secret scanners
//! recognise leaked tokens.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use pm_core::{Error, Result};
use sha2::{Digest as _, Sha256};

use super::store::TokenHash;

/// Prefix of personal API tokens.
pub const API_TOKEN_PREFIX: &str = "pmat_";
/// Prefix of refresh tokens.
pub const REFRESH_TOKEN_PREFIX: &str = "pmrt_";
/// Prefix of invite tokens.
pub const INVITE_TOKEN_PREFIX: &str = "pmin_";

/// A fresh token with `prefix` and its hash.
pub fn generate(prefix: &str) -> Result<(String, TokenHash)> {
    let token = format!("{prefix}{}", random_text(32)?);
    let hash = sha256(&token);
    Ok((token, hash))
}

/// SHA-256 of a presented token.
pub fn sha256(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

/// `n` random bytes from the OS, base64url without padding.
pub fn random_text(n: usize) -> Result<String> {
    let mut bytes = vec![0u8; n];
    getrandom::fill(&mut bytes)
        .map_err(|e| Error::storage(std::io::Error::other(e.to_string())))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_prefixed_random_and_hashed() {
        let (a, ha) = generate(API_TOKEN_PREFIX).unwrap();
        let (b, _) = generate(API_TOKEN_PREFIX).unwrap();
        assert!(a.starts_with("pmat_") && a.len() == 5 + 43, "{a}");
        assert_ne!(a, b);
        assert_eq!(sha256(&a), ha);
    }
}
