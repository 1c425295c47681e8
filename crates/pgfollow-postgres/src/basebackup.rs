//! Building a follower's data directory with `pg_basebackup`
//! ([`Cluster::basebackup`]): a fast checkpoint on the leader, WAL streamed
//! through the follower's slot, progress parsed from stderr, and a data
//! directory that becomes `pgdata` only when complete.
//!
//! The replication password never appears on a command line or in a log:
//! `pg_basebackup` reads it from a temporary passfile (mode 0600, owned by
//! the OS user, removed afterwards), and it is masked in error messages.

use std::collections::VecDeque;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use pgfollow_types::agent::{ClusterSpec, Upstream};
use tokio::io::AsyncReadExt;
use tokio::process::ChildStderr;

use crate::cluster::{remove_tree, Cluster};
use crate::conf;
use crate::error::PgError;
use crate::files;
use crate::process;

/// `pg_basebackup` is stopped when it writes nothing for this long (it
/// reports progress every second while data flows).
const BASEBACKUP_STALL_LIMIT: Duration = Duration::from_secs(600);

/// Lines of `pg_basebackup`'s stderr carried by its error.
const BASEBACKUP_TAIL_LINES: usize = 20;

/// The file, in the cluster root, that gives `pg_basebackup` its password.
const PASSFILE: &str = "basebackup.pgpass";

/// The file whose presence makes PostgreSQL start as a standby.
pub const STANDBY_SIGNAL: &str = "standby.signal";

impl Cluster {
    /// Follower side. Idempotent like [`Cluster::initialize`]: when the data
    /// directory is complete, only writes the configuration. Otherwise copies
    /// the leader named by `spec.upstream` with `pg_basebackup` (fast
    /// checkpoint, WAL streamed through the upstream's slot, which must
    /// exist: [`Cluster::create_slot`] on the leader), calling
    /// `progress(done_bytes, total_bytes)` when the numbers change (at most
    /// once a second; a tiny database may report once, at the end). `total`
    /// is the leader's estimate, raised by `pg_basebackup` when `done`
    /// passes it.
    ///
    /// The copy is built in `pgdata.init`, marked with `standby.signal` and
    /// renamed to `pgdata` only when complete; then `pgfollow.conf` and
    /// `pg_hba.conf` (copied from the leader) are rewritten for `spec`. On
    /// failure nothing is left behind. Dropping the future kills
    /// `pg_basebackup`.
    pub async fn basebackup(
        &self,
        spec: &ClusterSpec,
        progress: impl Fn(u64, u64) + Send + Sync,
    ) -> Result<(), PgError> {
        conf::validate(spec)?;
        let up = spec.upstream.as_ref().ok_or_else(|| {
            PgError::InvalidSpec(format!(
                "cluster {} has no upstream to copy with a base backup",
                spec.id
            ))
        })?;
        conf::socket_path(&self.socket_dir(), spec.port)?;
        self.prepare_dirs()?;
        if self.is_initialized() {
            return self.write_config(spec);
        }
        self.clear_leftovers()?;
        let init = self.pgdata_init();
        let started = Instant::now();
        if let Err(e) = self.run_basebackup(up, &init, &progress).await {
            let _ = remove_tree(&init);
            return Err(e);
        }
        let finish = || -> Result<(), PgError> {
            files::ensure_dir(&init, 0o700, self.user())?;
            files::write_private(&init.join(STANDBY_SIGNAL), "", self.user())?;
            files::sync_dir(&init)?;
            fs::rename(&init, self.pgdata())
                .map_err(|e| PgError::io("renaming data directory to", self.pgdata(), e))?;
            files::sync_dir(self.root())
        };
        if let Err(e) = finish() {
            let _ = remove_tree(&init);
            return Err(e);
        }
        tracing::info!(
            root = %self.root().display(),
            leader = %format!("{}:{}", up.host, up.port),
            ms = started.elapsed().as_millis() as u64,
            "base backup complete"
        );
        self.write_config(spec)
    }

    /// Runs `pg_basebackup` into `target`, feeding its progress to `progress`.
    async fn run_basebackup(
        &self,
        up: &Upstream,
        target: &Path,
        progress: &(impl Fn(u64, u64) + Send + Sync),
    ) -> Result<(), PgError> {
        let passfile = TempPassfile::write(self, up)?;
        let mut cmd = process::command(self.binaries(), self.user(), "pg_basebackup", self.root());
        cmd.env("PGPASSFILE", &passfile.path)
            .env(
                "PGCONNECT_TIMEOUT",
                conf::UPSTREAM_CONNECT_TIMEOUT_SECS.to_string(),
            )
            .env("PGSSLMODE", conf::UPSTREAM_SSLMODE)
            .env("PGAPPNAME", &up.application_name)
            .arg("-h")
            .arg(&up.host)
            .arg("-p")
            .arg(up.port.to_string())
            .arg("-U")
            .arg(&up.user)
            .arg("-D")
            .arg(target)
            .args(["-X", "stream", "-S"])
            .arg(&up.slot)
            .args([
                "--checkpoint=fast",
                "--progress",
                "--verbose",
                "--no-password",
            ])
            .stdout(Stdio::null());
        let program = PathBuf::from(cmd.as_std().get_program());
        tracing::info!(
            root = %self.root().display(),
            leader = %format!("{}:{}", up.host, up.port),
            slot = %up.slot,
            "pg_basebackup"
        );
        let mut child = cmd.spawn().map_err(|source| PgError::Spawn {
            program: program.clone(),
            source,
        })?;
        let Some(stderr) = child.stderr.take() else {
            return Err(PgError::Spawn {
                program,
                source: std::io::Error::other("no stderr pipe"),
            });
        };
        let watched = watch_stderr(stderr, progress).await;
        let tail = scrub(&watched.tail(), &up.password);
        if watched.stalled {
            // kill_on_drop would do it too; do it now, and reap it.
            let _ = child.kill().await;
            return Err(PgError::BaseBackup {
                host: up.host.clone(),
                port: up.port,
                status: format!(
                    "no output for {} s, stopped",
                    BASEBACKUP_STALL_LIMIT.as_secs()
                ),
                stderr: tail,
            });
        }
        let status: ExitStatus = child
            .wait()
            .await
            .map_err(|source| PgError::Spawn { program, source })?;
        drop(passfile);
        if status.success() {
            Ok(())
        } else {
            Err(PgError::BaseBackup {
                host: up.host.clone(),
                port: up.port,
                status: status.to_string(),
                stderr: tail,
            })
        }
    }
}

/// The passfile `pg_basebackup` reads its password from; removed on drop.
struct TempPassfile {
    path: PathBuf,
}

impl TempPassfile {
    fn write(cluster: &Cluster, up: &Upstream) -> Result<Self, PgError> {
        let path = cluster.root().join(PASSFILE);
        files::write_private(
            &path,
            &passfile_line(&up.user, &up.password),
            cluster.user(),
        )?;
        Ok(Self { path })
    }
}

impl Drop for TempPassfile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// One `.pgpass` line for `user` on any host, port and database; `:` and
/// `\` are backslash-escaped.
pub fn passfile_line(user: &str, password: &str) -> String {
    let esc = |s: &str| s.replace('\\', "\\\\").replace(':', "\\:");
    format!("*:*:*:{}:{}\n", esc(user), esc(password))
}

/// `text` with every occurrence of `secret` masked.
fn scrub(text: &str, secret: &str) -> String {
    if secret.is_empty() {
        text.to_string()
    } else {
        text.replace(secret, "********")
    }
}

/// What `pg_basebackup` wrote on stderr.
struct Watched {
    /// Its last lines, progress lines excepted (but the last of them).
    lines: VecDeque<String>,
    last_progress: Option<String>,
    /// It wrote nothing for [`BASEBACKUP_STALL_LIMIT`].
    stalled: bool,
}

impl Watched {
    fn tail(&self) -> String {
        let mut out: Vec<&str> = self.lines.iter().map(String::as_str).collect();
        if let Some(p) = &self.last_progress {
            out.push(p);
        }
        if out.is_empty() {
            "(nothing on stderr)".into()
        } else {
            out.join("\n")
        }
    }
}

/// Reads stderr until it closes, splitting on `\r` (progress on a terminal)
/// and `\n`, calling `progress` whenever the reported numbers change.
async fn watch_stderr(
    mut stderr: ChildStderr,
    progress: &(impl Fn(u64, u64) + Send + Sync),
) -> Watched {
    let mut watched = Watched {
        lines: VecDeque::new(),
        last_progress: None,
        stalled: false,
    };
    let mut pending: Vec<u8> = Vec::new();
    let mut last: Option<(u64, u64)> = None;
    let mut buf = [0u8; 4096];
    loop {
        let n = match tokio::time::timeout(BASEBACKUP_STALL_LIMIT, stderr.read(&mut buf)).await {
            Err(_) => {
                watched.stalled = true;
                0
            }
            Ok(Ok(n)) => n,
            Ok(Err(_)) => 0,
        };
        if n == 0 {
            pending.push(b'\n');
        } else {
            pending.extend_from_slice(&buf[..n]);
        }
        while let Some(pos) = pending.iter().position(|b| *b == b'\r' || *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=pos).collect();
            let line = String::from_utf8_lossy(&line[..line.len() - 1])
                .trim()
                .to_string();
            if line.is_empty() {
                continue;
            }
            if let Some(p) = parse_progress(&line) {
                if last != Some(p) {
                    last = Some(p);
                    progress(p.0, p.1);
                }
                watched.last_progress = Some(line);
            } else {
                if watched.lines.len() == BASEBACKUP_TAIL_LINES {
                    watched.lines.pop_front();
                }
                watched.lines.push_back(line);
            }
        }
        if n == 0 {
            return watched;
        }
    }
}

/// `(done, total)` in bytes from a `pg_basebackup --progress` line such as
/// `12345/67890 kB (18%), 0/1 tablespace (pgdata.init/base/1/1259)`.
pub fn parse_progress(line: &str) -> Option<(u64, u64)> {
    let (before, _) = line.split_once(" kB (")?;
    let pair = before.split_whitespace().last()?;
    let (done, total) = pair.split_once('/')?;
    let done: u64 = done.parse().ok()?;
    let total: u64 = total.parse().ok()?;
    Some((done.saturating_mul(1024), total.saturating_mul(1024)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_are_parsed_to_bytes() {
        assert_eq!(
            parse_progress("  12345/67890 kB (18%), 0/1 tablespace"),
            Some((12345 * 1024, 67890 * 1024))
        );
        assert_eq!(
            parse_progress("30577/30577 kB (100%), 1/1 tablespace (...init/global/pg_control)"),
            Some((30577 * 1024, 30577 * 1024))
        );
        assert_eq!(
            parse_progress("    0/30567 kB (0%), 0/1 tablespace"),
            Some((0, 30567 * 1024))
        );
        assert_eq!(parse_progress("pg_basebackup: checkpoint completed"), None);
        assert_eq!(
            parse_progress("pg_basebackup: write-ahead log end point: 0/2000100"),
            None
        );
        assert_eq!(parse_progress("x/y kB (1%)"), None);
    }

    #[test]
    fn passfile_escapes_colons_and_backslashes() {
        assert_eq!(
            passfile_line("r_white", "a:b\\c 'd'"),
            "*:*:*:r_white:a\\:b\\\\c 'd'\n"
        );
    }

    #[test]
    fn secrets_are_masked() {
        assert_eq!(
            scrub("FATAL: pw s3cr3t here", "s3cr3t"),
            "FATAL: pw ******** here"
        );
        assert_eq!(scrub("nothing", ""), "nothing");
    }
}
