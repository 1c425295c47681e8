//! The API file: `serve` writes its address and token into
//! `<data dir>/api.json` (mode 0600), and a CLI on the same machine reads it.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Name of the API file inside a data directory.
pub const API_FILE: &str = "api.json";

/// Where the API listens and the token it wants.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiFile {
    /// `http://127.0.0.1:7480`; empty until `serve` has started once.
    pub url: String,
    pub token: String,
}

impl std::fmt::Debug for ApiFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiFile")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("cannot read {path}: {source}; start `pgfollow serve`, or set PGFOLLOW_API and PGFOLLOW_TOKEN")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is not a pgfollow API file ({source}); remove it and restart `pgfollow serve`"
    )]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl ApiFile {
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(API_FILE)
    }

    /// Reads `<data_dir>/api.json`.
    pub fn load(data_dir: &Path) -> Result<Self, DiscoveryError> {
        let path = Self::path(data_dir);
        let text = std::fs::read_to_string(&path).map_err(|source| DiscoveryError::Read {
            path: path.clone(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| DiscoveryError::Parse { path, source })
    }

    /// Writes `<data_dir>/api.json` with mode 0600, replacing it atomically.
    pub fn store(&self, data_dir: &Path) -> Result<(), DiscoveryError> {
        let path = Self::path(data_dir);
        let tmp = data_dir.join(format!(".{API_FILE}.tmp"));
        let err = |source| DiscoveryError::Write {
            path: path.clone(),
            source,
        };
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err)?;
        let text = serde_json::to_string_pretty(self).map_err(|e| err(std::io::Error::other(e)))?;
        f.write_all(text.as_bytes()).map_err(err)?;
        f.sync_all().map_err(err)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
        std::fs::rename(&tmp, &path).map_err(err)
    }
}

/// The data directory when none is given: `/var/lib/pgfollow` for root,
/// else `$XDG_DATA_HOME/pgfollow` or `~/.local/share/pgfollow`.
pub fn default_data_dir() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/pgfollow");
    }
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(xdg).join("pgfollow");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
    PathBuf::from(home).join(".local/share/pgfollow")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_then_load_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let f = ApiFile {
            url: "http://127.0.0.1:7480".into(),
            token: "secret".into(),
        };
        f.store(dir.path()).unwrap();
        assert_eq!(ApiFile::load(dir.path()).unwrap(), f);
        let mode = std::fs::metadata(ApiFile::path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!format!("{f:?}").contains("secret"));
    }

    #[test]
    fn a_missing_file_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let e = ApiFile::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("pgfollow serve"), "{e}");
    }
}
