//! Fencing and probing: stop a cluster so that it can take no write, even
//! when its processes are frozen (SIGKILL works on stopped processes), and
//! ask it one query within a short deadline to tell a hung server from a
//! healthy one.

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use pgfollow_types::agent::Probe;

use crate::cluster::Cluster;
use crate::error::PgError;

/// How long a probe may take before the server counts as not answering.
pub const PROBE_DEADLINE: Duration = Duration::from_millis(1000);
/// How long fencing waits for the killed postmaster to be gone.
const FENCE_WAIT: Duration = Duration::from_secs(3);

/// The pids whose parent is `parent`, from `/proc`.
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| parent_of(*pid) == Some(parent))
        .collect()
}

/// The parent pid in `/proc/PID/stat` (the field after the command name,
/// which may itself hold spaces and parentheses).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_parent(&stat)
}

fn parse_parent(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

impl Cluster {
    /// Kills the postmaster and every one of its processes with SIGKILL:
    /// the postmaster is stopped first so it forks nothing new, then its
    /// children and itself are killed. Answers once the postmaster is gone
    /// (nothing of the cluster can commit any more). A cluster that does
    /// not run is already fenced.
    pub async fn fence(&self) -> Result<bool, PgError> {
        let Some(pm) = self.postmaster() else {
            return Ok(false);
        };
        let postmaster = Pid::from_raw(pm.pid as i32);
        let _ = kill(postmaster, Signal::SIGSTOP);
        for child in children_of(pm.pid) {
            let _ = kill(Pid::from_raw(child as i32), Signal::SIGKILL);
        }
        let _ = kill(postmaster, Signal::SIGKILL);
        let started = Instant::now();
        while self.postmaster().is_some() {
            if started.elapsed() > FENCE_WAIT {
                return Err(PgError::Unexpected(format!(
                    "postmaster {} still runs {} s after SIGKILL",
                    pm.pid,
                    FENCE_WAIT.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(true)
    }

    /// One query within [`PROBE_DEADLINE`]: whether it is in recovery, and
    /// the timeline it writes on when it is not.
    pub async fn probe(&self) -> Result<Probe, PgError> {
        let ask = async {
            let client = self.connect("postgres").await?;
            let row = client
                .query_one(
                    "SELECT pg_is_in_recovery(), CASE WHEN pg_is_in_recovery() THEN NULL \
                     ELSE pg_walfile_name(pg_current_wal_lsn()) END",
                    &[],
                )
                .await
                .map_err(|source| PgError::Sql {
                    what: "probing the server",
                    source,
                })?;
            let in_recovery: bool = row.get(0);
            let walfile: Option<String> = row.get(1);
            Ok(Probe {
                in_recovery,
                timeline: walfile
                    .as_deref()
                    .and_then(|w| w.get(..8))
                    .and_then(|t| u32::from_str_radix(t, 16).ok()),
            })
        };
        tokio::time::timeout(PROBE_DEADLINE, ask)
            .await
            .map_err(|_| {
                PgError::Unexpected(format!(
                    "the server answered no query within {} ms",
                    PROBE_DEADLINE.as_millis()
                ))
            })?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parent_comes_after_a_command_name_with_spaces() {
        assert_eq!(parse_parent("123 (postgres) S 77 123 123"), Some(77));
        assert_eq!(
            parse_parent("123 (postgres: walwriter (x) ) S 1 123"),
            Some(1)
        );
        assert_eq!(parse_parent("garbage"), None);
    }
}
