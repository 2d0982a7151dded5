//! Attachment bytes: the [`BlobStore`] port and its filesystem default.
//!
//! Metadata lives in the [`WorkLogStore`](crate::store::WorkLogStore); bytes live here under
//! opaque keys chosen by pm-core (never by the client, so no path traversal is possible).

use std::path::PathBuf;

use async_trait::async_trait;

use crate::{Error, Result};

/// Stores attachment bytes under opaque keys.
#[async_trait]
pub trait BlobStore: Send + Sync {
    /// Writes `bytes` under `key` (overwrites).
    async fn put(&self, key: &str, bytes: &[u8]) -> Result<()>;
    /// Reads the bytes under `key`.
    async fn get(&self, key: &str) -> Result<Vec<u8>>;
    /// Deletes `key`; deleting a missing key is not an error.
    async fn delete(&self, key: &str) -> Result<()>;
}

/// Blobs as files below a root directory; writes go to a temp file renamed into place so a crash
/// never leaves a half-written blob under a live key.
#[derive(Debug, Clone)]
pub struct FsBlobStore {
    root: PathBuf,
}

impl FsBlobStore {
    /// A store rooted at `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        let ok = !key.is_empty()
            && key.len() <= 128
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !ok {
            return Err(Error::invalid("blob_key", "must be 1-128 characters of [A-Za-z0-9_-]"));
        }
        Ok(self.root.join(key))
    }
}

#[async_trait]
impl BlobStore for FsBlobStore {
    async fn put(&self, key: &str, bytes: &[u8]) -> Result<()> {
        let path = self.path(key)?;
        let root = self.root.clone();
        let bytes = bytes.to_vec();
        blocking(move || {
            std::fs::create_dir_all(&root)?;
            let tmp = path.with_extension("partial");
            std::fs::write(&tmp, &bytes)?;
            std::fs::rename(&tmp, &path)
        })
        .await
    }

    async fn get(&self, key: &str) -> Result<Vec<u8>> {
        let path = self.path(key)?;
        match blocking(move || std::fs::read(path)).await {
            Err(Error::Storage(e))
                if e.downcast_ref::<std::io::Error>()
                    .is_some_and(|e| e.kind() == std::io::ErrorKind::NotFound) =>
            {
                Err(Error::not_found("blob"))
            }
            other => other,
        }
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key)?;
        blocking(move || match std::fs::remove_file(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        })
        .await
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(Error::storage)?.map_err(Error::storage)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn roundtrip_and_rejects_traversal() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsBlobStore::new(dir.path());
        s.put("abc", b"hello").await.unwrap();
        assert_eq!(s.get("abc").await.unwrap(), b"hello");
        s.delete("abc").await.unwrap();
        s.delete("abc").await.unwrap();
        assert!(matches!(s.get("abc").await, Err(Error::NotFound { .. })));
        assert!(matches!(s.put("../x", b"").await, Err(Error::Invalid { .. })));
    }
}
