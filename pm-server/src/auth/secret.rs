//! Where the JWT signing secret comes from: `PM_JWT_SECRET` when set; otherwise one generated
//! once and persisted with the database, so restarts (and, on PostgreSQL, every instance) agree:
//!
//! - `sqlite://path/pm.db` → the file `path/pm.db.jwt-secret` (mode 0600), created if missing;
//! - `postgres://…` → the row `jwt` of the `server_secrets` table;
//! - an in-memory SQLite database → a random secret for this process only.
//!
//! A generated secret is logged as a warning: whoever can read that file or table can mint
//! tokens, and an operator may prefer to manage the secret themselves.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use pm_core::{Error, Result};

use super::store::{AuthStore, is_sqlite_memory};
use super::token::random_text;

/// Shortest accepted secret, in bytes.
pub const MIN_SECRET_LEN: usize = 32;

/// The name of the JWT secret in the `server_secrets` table.
pub const JWT_SECRET_NAME: &str = "jwt";

/// The JWT secret for the database at `database_url` (see the module docs).
pub async fn jwt_secret(
    configured: Option<&str>,
    database_url: &str,
    store: &dyn AuthStore,
) -> Result<Vec<u8>> {
    if let Some(s) = configured {
        return Ok(s.as_bytes().to_vec());
    }
    let candidate = random_text(48)?;
    if is_sqlite_memory(database_url) {
        tracing::warn!(
            "PM_JWT_SECRET is unset: using a random JWT secret for this in-memory database; \
             tokens stop working when the process exits"
        );
        return Ok(candidate.into_bytes());
    }
    if let Some(path) = sqlite_secret_path(database_url) {
        let path_for_task = path.clone();
        let (secret, created) =
            tokio::task::spawn_blocking(move || load_or_create_file(&path_for_task, &candidate))
                .await
                .map_err(Error::storage)??;
        if created {
            tracing::warn!(path = %path.display(), "PM_JWT_SECRET is unset: generated a JWT secret and stored it next to the database (mode 0600); set PM_JWT_SECRET to manage it yourself");
        } else {
            tracing::warn!(path = %path.display(), "PM_JWT_SECRET is unset: using the JWT secret stored next to the database");
        }
        return Ok(secret);
    }
    let secret = store.load_or_store_secret(JWT_SECRET_NAME, candidate.as_bytes()).await?;
    if secret.len() < MIN_SECRET_LEN {
        return Err(Error::Storage(
            "the stored JWT secret (server_secrets.jwt) is too short".into(),
        ));
    }
    tracing::warn!(
        "PM_JWT_SECRET is unset: using the JWT secret stored in the database table server_secrets \
         (generated on first start); set PM_JWT_SECRET to manage it yourself"
    );
    Ok(secret)
}

/// `path/pm.db.jwt-secret` for `sqlite://path/pm.db` (or `sqlite:path/pm.db?mode=rwc`); `None`
/// for other URLs.
pub fn sqlite_secret_path(database_url: &str) -> Option<PathBuf> {
    sqlite_file_next_to(database_url, ".jwt-secret")
}

/// `path/pm.db<suffix>` for `sqlite://path/pm.db`: where a secret generated for that database is
/// kept (the JWT secret, the VAPID key); `None` for other URLs and in-memory databases.
pub fn sqlite_file_next_to(database_url: &str, suffix: &str) -> Option<PathBuf> {
    let rest = database_url.strip_prefix("sqlite:")?;
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let path = rest.split('?').next().unwrap_or(rest);
    if path.is_empty() || is_sqlite_memory(database_url) {
        return None;
    }
    let mut name = Path::new(path).file_name()?.to_os_string();
    name.push(suffix);
    Some(Path::new(path).with_file_name(name))
}

/// Reads the secret file, or creates it with `candidate` (owner-only). Returns the secret and
/// whether it was created. Two processes starting at once agree: `create_new` lets one win.
pub(crate) fn load_or_create_file(path: &Path, candidate: &str) -> Result<(Vec<u8>, bool)> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    match opts.open(path) {
        Ok(mut f) => {
            f.write_all(candidate.as_bytes())
                .and_then(|()| f.write_all(b"\n"))
                .and_then(|()| f.sync_all())
                .map_err(Error::storage)?;
            Ok((candidate.as_bytes().to_vec(), true))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let text = std::fs::read_to_string(path).map_err(Error::storage)?;
            let secret = text.trim().as_bytes().to_vec();
            if secret.len() < MIN_SECRET_LEN {
                return Err(Error::Storage(
                    format!(
                        "the secret file {} holds fewer than {MIN_SECRET_LEN} bytes (a writer \
                         may have been interrupted); delete it to generate a new one",
                        path.display()
                    )
                    .into(),
                ));
            }
            Ok((secret, false))
        }
        Err(e) => Err(Error::storage(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_path_sits_next_to_the_database() {
        assert_eq!(
            sqlite_secret_path("sqlite://data/pm.db"),
            Some(PathBuf::from("data/pm.db.jwt-secret"))
        );
        assert_eq!(
            sqlite_secret_path("sqlite:///var/lib/pm/pm.db?mode=rwc"),
            Some(PathBuf::from("/var/lib/pm/pm.db.jwt-secret"))
        );
        assert_eq!(sqlite_secret_path("sqlite:pm.db"), Some(PathBuf::from("pm.db.jwt-secret")));
        assert_eq!(sqlite_secret_path("sqlite::memory:"), None);
        assert_eq!(sqlite_secret_path("postgres://db/pm"), None);
    }

    #[tokio::test]
    async fn file_secret_is_created_once_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("pm.db").display());
        let store = super::super::store::memory::MemoryAuthStore::default();
        let a = jwt_secret(None, &url, &store).await.unwrap();
        let b = jwt_secret(None, &url, &store).await.unwrap();
        assert_eq!(a, b);
        assert!(a.len() >= MIN_SECRET_LEN);
        let path = dir.path().join("pm.db.jwt-secret");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(jwt_secret(Some(&"k".repeat(32)), &url, &store).await.unwrap(), b"k".repeat(32));
    }
}
