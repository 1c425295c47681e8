//! Where the `pgbouncer` program is and which version it is.

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::BouncerError;

/// Where Debian and Ubuntu install it (`apt-get install pgbouncer`).
const SYSTEM_PATHS: [&str; 2] = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"];

/// The `pgbouncer` program and its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BouncerBinary {
    pub path: PathBuf,
    /// E.g. `1.18.0`.
    pub version: String,
}

impl BouncerBinary {
    /// `override_path` if given; else `pgbouncer` on PATH, else
    /// `/usr/sbin/pgbouncer`, else `/usr/bin/pgbouncer`. The first that is
    /// a file wins; its version comes from `pgbouncer --version`.
    pub fn discover(override_path: Option<&Path>) -> Result<Self, BouncerError> {
        let candidates = match override_path {
            Some(p) => vec![p.to_path_buf()],
            None => default_candidates(),
        };
        match candidates.iter().find(|p| p.is_file()) {
            Some(path) => Self::at(path.clone()),
            None => Err(BouncerError::NotFound {
                looked: candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// The program at `path`, reading its version from `--version`.
    pub fn at(path: PathBuf) -> Result<Self, BouncerError> {
        let out = Command::new(&path)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .map_err(|source| BouncerError::Spawn {
                program: path.clone(),
                source,
            })?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        match parse_version(&text) {
            Some(version) if out.status.success() => Ok(Self { path, version }),
            _ => Err(BouncerError::Version {
                program: path,
                output: text.trim().to_string(),
            }),
        }
    }
}

fn default_candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(path) = env::var_os("PATH") {
        out.extend(env::split_paths(&path).map(|d| d.join("pgbouncer")));
    }
    for p in SYSTEM_PATHS {
        let p = PathBuf::from(p);
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

/// `PgBouncer 1.18.0\nlibevent ...` → `1.18.0`.
pub fn parse_version(output: &str) -> Option<String> {
    let line = output.lines().next()?;
    let version = line
        .trim()
        .strip_prefix("PgBouncer ")?
        .split_whitespace()
        .next()?;
    version
        .starts_with(|c: char| c.is_ascii_digit())
        .then(|| version.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_debian_version_output() {
        let out = "PgBouncer 1.18.0\nlibevent 2.1.12-stable\nadns: c-ares 1.18.1\n";
        assert_eq!(parse_version(out).as_deref(), Some("1.18.0"));
    }

    #[test]
    fn rejects_other_output() {
        assert_eq!(parse_version(""), None);
        assert_eq!(parse_version("bash: pgbouncer: command not found"), None);
        assert_eq!(parse_version("PgBouncer devel"), None);
    }

    #[test]
    fn missing_override_says_how_to_install() {
        let err = BouncerBinary::discover(Some(Path::new("/nonexistent/pgbouncer"))).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/nonexistent/pgbouncer"), "{msg}");
        assert!(msg.contains("apt-get install pgbouncer"), "{msg}");
    }
}
