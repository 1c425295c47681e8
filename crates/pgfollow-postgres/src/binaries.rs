//! Where PostgreSQL's programs are and which version they are.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::PgError;

/// The programs a cluster needs; a bin directory without one of them is skipped.
pub const REQUIRED_TOOLS: [&str; 4] = ["initdb", "pg_ctl", "postgres", "pg_basebackup"];

/// Where Debian and Ubuntu install each major version.
const DEBIAN_ROOT: &str = "/usr/lib/postgresql";

/// PostgreSQL's bin directory and version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgBinaries {
    pub bindir: PathBuf,
    pub major: u32,
    /// E.g. `15.18`.
    pub version: String,
}

impl PgBinaries {
    /// `override_dir` (from --pg-bin) if given; else the directory of
    /// `postgres`/`initdb` on PATH (following symlinks), else
    /// `pg_config --bindir`, else the newest `/usr/lib/postgresql/*/bin`.
    /// The first directory holding initdb, pg_ctl, postgres and pg_basebackup
    /// wins; its version comes from `postgres --version`.
    pub fn discover(override_dir: Option<&Path>) -> Result<Self, PgError> {
        let candidates = match override_dir {
            Some(dir) => vec![dir.to_path_buf()],
            None => default_candidates(),
        };
        let mut looked = Vec::new();
        for dir in candidates {
            if looked.contains(&dir) {
                continue;
            }
            if has_required_tools(&dir) {
                return Self::at(dir);
            }
            looked.push(dir);
        }
        let looked = if looked.is_empty() {
            "PATH, pg_config, /usr/lib/postgresql/*/bin: nothing found".to_string()
        } else {
            looked
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        Err(PgError::BinariesNotFound { looked })
    }

    /// The binaries in `bindir`, reading the version from `postgres --version`.
    pub fn at(bindir: PathBuf) -> Result<Self, PgError> {
        let program = bindir.join("postgres");
        let out = Command::new(&program)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .map_err(|source| PgError::Spawn {
                program: program.clone(),
                source,
            })?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (major, version) = match parse_version(&text) {
            Some(v) if out.status.success() => v,
            _ => {
                return Err(PgError::Version {
                    program,
                    output: text.trim().to_string(),
                })
            }
        };
        Ok(Self {
            bindir,
            major,
            version,
        })
    }

    /// The path of one of PostgreSQL's programs, e.g. `tool("pg_ctl")`.
    pub fn tool(&self, name: &str) -> PathBuf {
        self.bindir.join(name)
    }
}

fn has_required_tools(dir: &Path) -> bool {
    REQUIRED_TOOLS.iter().all(|t| dir.join(t).is_file())
}

/// Candidate directories in order of preference, without `--pg-bin`.
fn default_candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(path) = env::var_os("PATH") {
        for prog in ["postgres", "initdb"] {
            for dir in env::split_paths(&path) {
                let exe = dir.join(prog);
                if !exe.is_file() {
                    continue;
                }
                // /usr/local/bin/postgres is often a symlink into the real bin dir.
                if let Some(parent) = fs::canonicalize(&exe)
                    .ok()
                    .and_then(|p| p.parent().map(Path::to_path_buf))
                {
                    out.push(parent);
                }
                out.push(dir);
                break;
            }
        }
    }
    if let Ok(o) = Command::new("pg_config")
        .arg("--bindir")
        .stdin(Stdio::null())
        .output()
    {
        if o.status.success() {
            let dir = String::from_utf8_lossy(&o.stdout).trim().to_string();
            if !dir.is_empty() {
                out.push(PathBuf::from(dir));
            }
        }
    }
    if let Ok(entries) = fs::read_dir(DEBIAN_ROOT) {
        let names: Vec<String> = entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .collect();
        for name in versions_newest_first(&names) {
            out.push(Path::new(DEBIAN_ROOT).join(name).join("bin"));
        }
    }
    out
}

/// Directory names that look like versions (`15`, `9.6`), newest first.
pub fn versions_newest_first(names: &[String]) -> Vec<String> {
    let mut versions: Vec<(Vec<u32>, String)> = names
        .iter()
        .filter_map(|n| {
            let parts: Option<Vec<u32>> = n.split('.').map(|p| p.parse().ok()).collect();
            parts.map(|p| (p, n.clone()))
        })
        .collect();
    versions.sort_by(|a, b| b.0.cmp(&a.0));
    versions.into_iter().map(|(_, n)| n).collect()
}

/// `postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)` → `(15, "15.18")`.
pub fn parse_version(output: &str) -> Option<(u32, String)> {
    let line = output.lines().next()?;
    let rest = line.split_once("(PostgreSQL)")?.1.trim_start();
    let version = rest.split_whitespace().next()?.to_string();
    let digits: String = version.chars().take_while(char::is_ascii_digit).collect();
    let major = digits.parse().ok()?;
    Some((major, version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_debian_version() {
        assert_eq!(
            parse_version("postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n"),
            Some((15, "15.18".to_string()))
        );
    }

    #[test]
    fn parses_plain_and_beta_versions() {
        assert_eq!(
            parse_version("postgres (PostgreSQL) 16.4"),
            Some((16, "16.4".into()))
        );
        assert_eq!(
            parse_version("postgres (PostgreSQL) 17beta1"),
            Some((17, "17beta1".into()))
        );
    }

    #[test]
    fn rejects_other_output() {
        assert_eq!(parse_version(""), None);
        assert_eq!(parse_version("bash: postgres: command not found"), None);
        assert_eq!(parse_version("postgres (PostgreSQL) devel"), None);
    }

    #[test]
    fn newest_version_directory_first() {
        let names: Vec<String> = ["9.6", "15", "README", "13", "16"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(versions_newest_first(&names), vec!["16", "15", "13", "9.6"]);
    }

    #[test]
    fn override_without_tools_is_an_error_naming_the_dir() {
        let err = PgBinaries::discover(Some(Path::new("/nonexistent/pg/bin"))).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/nonexistent/pg/bin"), "{msg}");
        assert!(msg.contains("--pg-bin"), "{msg}");
    }
}
