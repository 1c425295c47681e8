//! Where the API is and which token it wants: the PGFOLLOW_API and
//! PGFOLLOW_TOKEN environment variables, else the API file `serve` wrote in
//! its data directory.

use std::path::{Path, PathBuf};

use crate::discovery::{default_data_dir, ApiFile};
use crate::error::ClientError;

/// Environment variable naming the API's base URL.
pub const ENV_API: &str = "PGFOLLOW_API";
/// Environment variable holding the API token.
pub const ENV_TOKEN: &str = "PGFOLLOW_TOKEN";
/// Environment variable naming the data directory.
pub const ENV_DATA_DIR: &str = "PGFOLLOW_DATA_DIR";

/// The data directory a client reads: `given`, else `$PGFOLLOW_DATA_DIR`,
/// else [`default_data_dir`].
pub fn data_dir(given: Option<PathBuf>) -> PathBuf {
    given
        .or_else(|| non_empty_env(ENV_DATA_DIR).map(PathBuf::from))
        .unwrap_or_else(default_data_dir)
}

/// Picks the URL and token: each of `env_api` and `env_token` overrides the
/// API file's value; the file in `data_dir` is read only when one is missing.
pub fn resolve_endpoint(
    env_api: Option<String>,
    env_token: Option<String>,
    data_dir: &Path,
) -> Result<ApiFile, ClientError> {
    if let (Some(url), Some(token)) = (&env_api, &env_token) {
        return Ok(ApiFile {
            url: url.clone(),
            token: token.clone(),
        });
    }
    let file = ApiFile::load(data_dir)?;
    let url = match env_api {
        Some(url) => url,
        None if file.url.is_empty() => {
            return Err(ClientError::NotStarted {
                path: ApiFile::path(data_dir),
            })
        }
        None => file.url,
    };
    Ok(ApiFile {
        url,
        token: env_token.unwrap_or(file.token),
    })
}

/// An environment variable, when set and not empty.
pub(crate) fn non_empty_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(dir: &Path, url: &str) {
        ApiFile {
            url: url.into(),
            token: "file-token".into(),
        }
        .store(dir)
        .unwrap();
    }

    #[test]
    fn both_variables_need_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let e = resolve_endpoint(Some("http://h:1".into()), Some("t".into()), dir.path()).unwrap();
        assert_eq!(e.url, "http://h:1");
        assert_eq!(e.token, "t");
    }

    #[test]
    fn each_variable_overrides_its_half_of_the_file() {
        let dir = tempfile::tempdir().unwrap();
        stored(dir.path(), "http://127.0.0.1:7480");
        let e = resolve_endpoint(None, None, dir.path()).unwrap();
        assert_eq!(
            (e.url.as_str(), e.token.as_str()),
            ("http://127.0.0.1:7480", "file-token")
        );
        let e = resolve_endpoint(Some("http://other:9".into()), None, dir.path()).unwrap();
        assert_eq!(
            (e.url.as_str(), e.token.as_str()),
            ("http://other:9", "file-token")
        );
        let e = resolve_endpoint(None, Some("env-token".into()), dir.path()).unwrap();
        assert_eq!(
            (e.url.as_str(), e.token.as_str()),
            ("http://127.0.0.1:7480", "env-token")
        );
    }

    #[test]
    fn missing_or_unstarted_files_say_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let e = resolve_endpoint(Some("http://h:1".into()), None, dir.path()).unwrap_err();
        assert!(e.to_string().contains("PGFOLLOW_TOKEN"), "{e}");
        stored(dir.path(), "");
        let e = resolve_endpoint(None, None, dir.path()).unwrap_err();
        assert!(e.to_string().contains("start `pgfollow serve`"), "{e}");
    }

    #[test]
    fn a_given_data_dir_wins() {
        assert_eq!(data_dir(Some("/x".into())), PathBuf::from("/x"));
    }
}
