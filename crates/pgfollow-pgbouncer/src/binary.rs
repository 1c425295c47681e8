//! Where the `pgbouncer` program is, which version it is, and whether it is
//! new enough: pgfollow needs PgBouncer 1.21 or newer, the first release
//! that carries protocol-level prepared statements in transaction pooling
//! (`max_prepared_statements`). Debian 12 ships 1.18, so
//! `scripts/install-deps` builds Debian 13's release into
//! [`PGFOLLOW_PREFIX_BINARY`]'s prefix, which is looked at first.

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::BouncerError;

/// Where `scripts/install-deps` builds PgBouncer when the distribution's is
/// too old.
pub const PGFOLLOW_PREFIX_BINARY: &str = "/opt/pgfollow/pgbouncer/bin/pgbouncer";

/// Where Debian and Ubuntu install it (`apt-get install pgbouncer`).
const SYSTEM_PATHS: [&str; 2] = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"];

/// The oldest release that carries prepared statements in transaction mode.
pub const MIN_VERSION: Version = Version(1, 21, 0);

/// A PgBouncer release number, e.g. `1.24.1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32, pub u32, pub u32);

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

impl Version {
    /// `1.24.1` → `Version(1, 24, 1)`; `1.21` → `Version(1, 21, 0)`.
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.split('.').map(|p| p.parse::<u32>().ok());
        let major = parts.next()??;
        let minor = parts.next()??;
        let patch = match parts.next() {
            Some(p) => p?,
            None => 0,
        };
        if parts.next().is_some() {
            return None;
        }
        Some(Self(major, minor, patch))
    }
}

/// The signal that makes PgBouncer `version` shut down at once, cutting
/// its clients off: SIGQUIT since 1.23, whose SIGTERM waits for every
/// client to disconnect (`SHUTDOWN WAIT_FOR_CLIENTS`); SIGTERM before.
pub fn immediate_shutdown_signal(version: &str) -> nix::sys::signal::Signal {
    use nix::sys::signal::Signal;
    match Version::parse(version) {
        Some(v) if v < Version(1, 23, 0) => Signal::SIGTERM,
        _ => Signal::SIGQUIT,
    }
}

/// The `pgbouncer` program and its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BouncerBinary {
    pub path: PathBuf,
    /// E.g. `1.24.1`, as `pgbouncer --version` says it.
    pub version: String,
}

impl BouncerBinary {
    /// `override_path` if given; else the first new-enough program of
    /// [`PGFOLLOW_PREFIX_BINARY`], `pgbouncer` on PATH, `/usr/sbin/pgbouncer`
    /// and `/usr/bin/pgbouncer`. None there: [`BouncerError::NotFound`];
    /// only older ones: [`BouncerError::TooOld`] for the first of them.
    pub fn discover(override_path: Option<&Path>) -> Result<Self, BouncerError> {
        let candidates = match override_path {
            Some(p) => vec![p.to_path_buf()],
            None => default_candidates(),
        };
        let mut first_problem = None;
        for path in candidates.iter().filter(|p| p.is_file()) {
            match Self::at(path.clone()) {
                Ok(bin) => return Ok(bin),
                Err(e) => {
                    first_problem.get_or_insert(e);
                }
            }
        }
        Err(first_problem.unwrap_or_else(|| BouncerError::NotFound {
            looked: candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        }))
    }

    /// The program at `path`, if it is PgBouncer [`MIN_VERSION`] or newer
    /// (its version from `--version`).
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
        let version = match parse_version(&text) {
            Some(version) if out.status.success() => version,
            _ => {
                return Err(BouncerError::Version {
                    program: path,
                    output: text.trim().to_string(),
                })
            }
        };
        match Version::parse(&version) {
            Some(v) if v >= MIN_VERSION => Ok(Self { path, version }),
            _ => Err(BouncerError::TooOld {
                program: path,
                version,
            }),
        }
    }
}

fn default_candidates() -> Vec<PathBuf> {
    let mut out = vec![PathBuf::from(PGFOLLOW_PREFIX_BINARY)];
    if let Some(path) = env::var_os("PATH") {
        for p in env::split_paths(&path).map(|d| d.join("pgbouncer")) {
            if !out.contains(&p) {
                out.push(p);
            }
        }
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
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn the_immediate_shutdown_signal_follows_the_version() {
        use nix::sys::signal::Signal;
        for (version, want) in [
            ("1.21.0", Signal::SIGTERM),
            ("1.22.1", Signal::SIGTERM),
            ("1.23.0", Signal::SIGQUIT),
            ("1.24.1", Signal::SIGQUIT),
            ("2.0", Signal::SIGQUIT),
        ] {
            assert_eq!(immediate_shutdown_signal(version), want, "{version}");
        }
    }

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
    fn versions_compare_by_number() {
        let v = |s| Version::parse(s).unwrap();
        assert!(v("1.18.0") < MIN_VERSION);
        assert!(v("1.20.9") < MIN_VERSION);
        assert!(v("1.21.0") >= MIN_VERSION);
        assert!(v("1.21") >= MIN_VERSION);
        assert!(v("1.24.1") > v("1.9.0"));
        assert!(v("2.0.0") > v("1.24.1"));
        assert_eq!(v("1.24.1").to_string(), "1.24.1");
        for bad in ["", "1", "1.x", "1.24.1.2", "1.24.1rc1"] {
            assert_eq!(Version::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn missing_override_says_how_to_install() {
        let err = BouncerBinary::discover(Some(Path::new("/nonexistent/pgbouncer"))).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/nonexistent/pgbouncer"), "{msg}");
        assert!(msg.contains("scripts/install-deps"), "{msg}");
    }

    /// A program that answers `--version` like PgBouncer `version` does.
    fn fake_bouncer(dir: &Path, version: &str) -> PathBuf {
        let path = dir.join(format!("pgbouncer-{version}"));
        std::fs::write(
            &path,
            format!("#!/bin/sh\necho 'PgBouncer {version}'\necho 'libevent 2.1.12-stable'\n"),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[test]
    fn an_old_pgbouncer_is_refused_in_one_line_saying_what_to_install() {
        let dir = tempfile::tempdir().unwrap();
        let old = fake_bouncer(dir.path(), "1.18.0");
        let err = BouncerBinary::discover(Some(&old)).unwrap_err();
        assert!(matches!(err, BouncerError::TooOld { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(!msg.contains('\n'), "one line: {msg}");
        for part in [
            "1.18.0",
            "1.21",
            "scripts/install-deps",
            PGFOLLOW_PREFIX_BINARY,
        ] {
            assert!(msg.contains(part), "no {part:?} in: {msg}");
        }

        let new = fake_bouncer(dir.path(), "1.24.1");
        let bin = BouncerBinary::discover(Some(&new)).unwrap();
        assert_eq!((bin.path, bin.version.as_str()), (new, "1.24.1"));
    }
}
