//! The programs the benchmark runs: PostgreSQL's own tools (found like
//! `psql` is, on PATH or under `/usr/lib/postgresql/*/bin`), run as the OS
//! user PostgreSQL runs as when we are root, and the `pgfollow` CLI of the
//! server under test. Every run is bounded in time and its child is killed
//! when the run is dropped (Ctrl-C).

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use pgfollow_testkit::Server;
use tokio::process::Command;

/// The OS user the hand-made standby's tools run as when we are root.
const PG_OS_USER: &str = "postgres";

/// Where the distribution installs PostgreSQL's binaries.
const DEBIAN_ROOT: &str = "/usr/lib/postgresql";

/// Full path of PostgreSQL tool `name`: the newest
/// `/usr/lib/postgresql/*/bin/NAME` (server tools such as `pg_ctl` live only
/// there), else the one on PATH.
pub fn pg_tool(name: &str) -> anyhow::Result<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(DEBIAN_ROOT)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let major = e.file_name().to_str()?.parse().ok()?;
                    let path = e.path().join("bin").join(name);
                    path.is_file().then_some((major, path))
                })
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    if let Some((_, path)) = versions.pop() {
        return Ok(path);
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join(name))
        .find(|p| p.is_file());
    on_path.with_context(|| {
        format!("{name} not found on PATH or in {DEBIAN_ROOT}/*/bin: install PostgreSQL (scripts/install-deps)")
    })
}

/// The uid and gid to run PostgreSQL's server-side tools as: `postgres`
/// when we are root (PostgreSQL refuses root), else ourselves.
pub fn pg_os_user() -> anyhow::Result<Option<(u32, u32)>> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    let user = nix::unistd::User::from_name(PG_OS_USER)
        .context("looking up the postgres OS user")?
        .with_context(|| format!("no OS user {PG_OS_USER:?}: run scripts/install-deps"))?;
    Ok(Some((user.uid.as_raw(), user.gid.as_raw())))
}

/// A command for PostgreSQL tool `name`, run as the PostgreSQL OS user in
/// `cwd`, with output captured and killed on drop.
pub fn pg_command(name: &str, cwd: &Path) -> anyhow::Result<Command> {
    let mut cmd = Command::new(pg_tool(name)?);
    cmd.current_dir(cwd)
        .env_remove("PGPASSWORD")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some((uid, gid)) = pg_os_user()? {
        cmd.uid(uid).gid(gid).env("HOME", "/var/lib/postgresql");
    }
    Ok(cmd)
}

/// Runs `cmd` for at most `limit`; fails with its stderr unless it exits 0.
pub async fn run(mut cmd: Command, what: &str, limit: Duration) -> anyhow::Result<Output> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start {what}"))?;
    let out = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .with_context(|| format!("{what}: still running after {limit:?}; killed"))?
        .with_context(|| format!("{what}: waiting for it"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(out)
}

/// Runs `pgfollow ARGS...` against `server` as a user would, for at most
/// `limit`; its stdout when it succeeds.
pub async fn cli(
    server: &Server,
    bin: &Path,
    args: &[&str],
    limit: Duration,
) -> anyhow::Result<String> {
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .env("PGFOLLOW_DATA_DIR", server.data_dir())
        .env_remove("PGFOLLOW_API")
        .env_remove("PGFOLLOW_TOKEN")
        .env_remove("PGFOLLOW_APP");
    let what = format!("pgfollow {}", args.join(" "));
    let out = run(cmd, &what, limit).await?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `pgfollow ARGS... --json`, parsed.
pub async fn cli_json(
    server: &Server,
    bin: &Path,
    args: &[&str],
    limit: Duration,
) -> anyhow::Result<serde_json::Value> {
    let mut all = args.to_vec();
    all.push("--json");
    let text = cli(server, bin, &all, limit).await?;
    serde_json::from_str(&text)
        .with_context(|| format!("pgfollow {args:?} printed no JSON: {text}"))
}
