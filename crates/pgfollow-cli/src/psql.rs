//! `pg:psql [DB] [-c SQL]`: runs `psql URL [-c SQL]` against a database with
//! the terminal handed over, and exits with psql's exit code.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use clap::Args;
use pgfollow_client::Client;
use tokio::process::Command;

use crate::args::{AppArg, DEFAULT_DB};
use crate::child::run_foreground;

/// Where distribution packages put each PostgreSQL version's programs.
const PG_LIB_DIR: &str = "/usr/lib/postgresql";

#[derive(Debug, Args)]
pub struct PsqlArgs {
    /// The database (default DATABASE_URL)
    #[arg(default_value = DEFAULT_DB)]
    pub db: String,
    #[command(flatten)]
    pub app: AppArg,
    /// Run this SQL and exit
    #[arg(short = 'c', long = "command", value_name = "SQL")]
    pub command: Option<String>,
}

pub async fn psql(client: &Client, args: PsqlArgs) -> anyhow::Result<std::process::ExitCode> {
    let psql = find_psql(std::env::var_os("PATH").as_deref(), Path::new(PG_LIB_DIR))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "psql is not on PATH nor in {PG_LIB_DIR}/*/bin: install the PostgreSQL client (postgresql-client)"
            )
        })?;
    let creds = client.credentials(&args.app.app, &args.db).await?;
    let mut cmd = Command::new(&psql);
    cmd.arg(&creds.url);
    if let Some(sql) = &args.command {
        cmd.arg("-c").arg(sql);
    }
    run_foreground(cmd, "psql").await
}

/// `psql` from `path` (a PATH value), else `<lib_dir>/<version>/bin/psql`
/// of the newest version there.
pub fn find_psql(path: Option<&OsStr>, lib_dir: &Path) -> Option<PathBuf> {
    if let Some(path) = path {
        for dir in std::env::split_paths(path) {
            let candidate = dir.join("psql");
            if is_executable(&candidate) {
                return Some(candidate);
            }
        }
    }
    let mut versions: Vec<(Vec<u64>, PathBuf)> = std::fs::read_dir(lib_dir)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let key: Option<Vec<u64>> = name.split('.').map(|p| p.parse().ok()).collect();
            let candidate = e.path().join("bin/psql");
            match key {
                Some(key) if is_executable(&candidate) => Some((key, candidate)),
                _ => None,
            }
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, p)| p)
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn fake_psql(dir: &Path) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        let p = dir.join("psql");
        std::fs::write(&p, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn path_first_then_the_newest_version() {
        let tmp = tempfile::tempdir().unwrap();
        let lib = tmp.path().join("lib");
        fake_psql(&lib.join("9/bin"));
        let newest = fake_psql(&lib.join("16/bin"));
        fake_psql(&lib.join("15/bin"));
        std::fs::create_dir_all(lib.join("17/bin")).unwrap(); // no psql in it
        let empty = tmp.path().join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        assert_eq!(find_psql(Some(empty.as_os_str()), &lib), Some(newest));
        let on_path = fake_psql(&tmp.path().join("bin"));
        let path = std::env::join_paths([empty, tmp.path().join("bin")]).unwrap();
        assert_eq!(find_psql(Some(&path), &lib), Some(on_path));
        assert_eq!(find_psql(None, &tmp.path().join("none")), None);
    }
}
