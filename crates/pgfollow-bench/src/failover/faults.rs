//! The faults the failover benchmark injects into host h2, which runs the
//! HA primary and nothing else: SIGKILL of the whole host (agent and
//! postmaster) or of the postmaster alone, and SIGSTOP of the postmaster
//! with every process it started (a hung postgres), or of those and the
//! agent for a while (a paused VM). Stopped processes are held by a
//! [`Frozen`] guard that continues them when dropped, so none stays
//! stopped when a run fails or is interrupted.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use pgfollow_testkit::AgentProcess;
use tokio::task::JoinHandle;

/// At most this many passes over `/proc` while stopping a process tree
/// (a process forking when it was stopped shows its child a moment later).
const STOP_PASSES: u32 = 5;
/// Between two such passes.
const STOP_PASS_PAUSE: Duration = Duration::from_millis(10);

/// SIGKILL to h2's agent and every postmaster it runs, at once; reaps the
/// agent. Returns when the signals were sent.
pub fn lose_host(h2: &mut AgentProcess) -> anyhow::Result<Instant> {
    let agent = h2.pid().context("agent h2 is not running")?;
    let postmasters = h2.running_postmasters();
    let at = Instant::now();
    let _ = kill(Pid::from_raw(agent as i32), Signal::SIGKILL);
    for pid in postmasters {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    tokio::task::block_in_place(|| h2.signal(Signal::SIGKILL));
    Ok(at)
}

/// The primary's postmaster: h2 runs only the primary.
fn primary_postmaster(h2: &AgentProcess) -> anyhow::Result<i32> {
    let pids = h2.running_postmasters();
    let [pid] = pids[..] else {
        bail!(
            "h2 runs {} postmasters, expected the primary only",
            pids.len()
        );
    };
    Ok(pid)
}

/// SIGKILL to the primary's postmaster only.
pub fn crash_postgres(h2: &mut AgentProcess) -> anyhow::Result<Instant> {
    let pid = primary_postmaster(h2)?;
    let at = Instant::now();
    kill(Pid::from_raw(pid), Signal::SIGKILL).context("killing the primary's postmaster")?;
    Ok(at)
}

/// SIGSTOP to the primary's postmaster and every process under it; the
/// agent runs on. Returns the guard and when the first signal was sent.
pub fn freeze_postgres(h2: &AgentProcess) -> anyhow::Result<(Frozen, Instant)> {
    let postmaster = primary_postmaster(h2)?;
    let frozen = Frozen::default();
    let at = Instant::now();
    frozen.stop(&[postmaster], &[]);
    Ok((frozen, at))
}

/// SIGSTOP to everything of host h2: its agent, the primary's postmaster,
/// every process under either, and any other process working in h2's data
/// directory (a daemonized helper). Returns the guard and when the first
/// signal was sent.
pub fn freeze_host(h2: &AgentProcess) -> anyhow::Result<(Frozen, Instant)> {
    let agent = h2.pid().context("agent h2 is not running")? as i32;
    let mut roots = vec![agent];
    roots.extend(h2.running_postmasters());
    let frozen = Frozen::default();
    let at = Instant::now();
    frozen.stop(&roots, &[h2.data_dir().as_path()]);
    // The agent is not fenced: it runs on after the thaw.
    lock(&frozen.inner).spared.push(agent);
    Ok((frozen, at))
}

/// Processes stopped by the benchmark; dropping the guard continues them
/// (SIGCONT), also when a run fails or is interrupted.
#[derive(Default)]
pub struct Frozen {
    inner: Arc<Mutex<FrozenState>>,
    timer: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct FrozenState {
    /// In the order they were stopped; emptied by the thaw.
    pids: Vec<i32>,
    /// Every pid ever stopped, for [`Frozen::survivors`].
    all: Vec<i32>,
    /// Those expected to outlive the fence (the agent).
    spared: Vec<i32>,
    thawed_at: Option<Instant>,
}

fn lock(m: &Mutex<FrozenState>) -> std::sync::MutexGuard<'_, FrozenState> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Frozen {
    /// Stops `roots`, then (a few passes, since a process being stopped
    /// may just have forked) every process under them and every process
    /// whose working directory is inside one of `dirs`.
    fn stop(&self, roots: &[i32], dirs: &[&Path]) {
        let mut state = lock(&self.inner);
        for &pid in roots {
            if kill(Pid::from_raw(pid), Signal::SIGSTOP).is_ok() {
                state.pids.push(pid);
            }
        }
        for pass in 0..STOP_PASSES {
            let more: Vec<i32> = processes_under(&state.pids, dirs)
                .into_iter()
                .filter(|p| !state.pids.contains(p))
                .collect();
            if more.is_empty() && pass > 0 {
                break;
            }
            for pid in more {
                if kill(Pid::from_raw(pid), Signal::SIGSTOP).is_ok() {
                    state.pids.push(pid);
                }
            }
            std::thread::sleep(STOP_PASS_PAUSE);
        }
        state.all = state.pids.clone();
    }

    /// How many processes were stopped.
    pub fn count(&self) -> usize {
        lock(&self.inner).all.len()
    }

    /// Continues them all in `after` (on the current tokio runtime).
    pub fn thaw_after(&mut self, after: Duration) {
        let inner = self.inner.clone();
        self.timer = Some(tokio::spawn(async move {
            tokio::time::sleep(after).await;
            thaw(&inner);
        }));
    }

    /// When they were continued, if they were.
    pub fn thawed_at(&self) -> Option<Instant> {
        lock(&self.inner).thawed_at
    }

    /// The stopped processes that still exist (not gone, not zombies),
    /// the agent left out: what the fence did not kill.
    pub fn survivors(&self) -> usize {
        let state = lock(&self.inner);
        state
            .all
            .iter()
            .filter(|p| !state.spared.contains(p) && is_alive(**p))
            .count()
    }
}

/// SIGCONT to every process still held, the last stopped first.
fn thaw(inner: &Mutex<FrozenState>) {
    let mut state = lock(inner);
    if state.pids.is_empty() {
        return;
    }
    for pid in state.pids.drain(..).rev() {
        let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
    }
    state.thawed_at = Some(Instant::now());
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if let Some(t) = self.timer.take() {
            t.abort();
        }
        thaw(&self.inner);
    }
}

/// Whether `pid` exists and is not a zombie.
fn is_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| stat_fields(&s).map(|(state, _)| state != 'Z' && state != 'X'))
        .unwrap_or(false)
}

/// The state letter and parent pid in a `/proc/<pid>/stat` line (the
/// command name, in parentheses, may hold spaces).
fn stat_fields(stat: &str) -> Option<(char, i32)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    let ppid = f.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Every process under one of `roots` (children, their children, ...),
/// and every process whose working directory is inside one of `dirs`.
fn processes_under(roots: &[i32], dirs: &[&Path]) -> Vec<i32> {
    let mut parent = HashMap::new();
    let mut in_dirs = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Some((_, ppid)) = std::fs::read_to_string(entry.path().join("stat"))
            .ok()
            .and_then(|s| stat_fields(&s))
        else {
            continue;
        };
        parent.insert(pid, ppid);
        if !dirs.is_empty() {
            if let Ok(cwd) = std::fs::read_link(entry.path().join("cwd")) {
                if dirs.iter().any(|d| cwd.starts_with(d)) {
                    in_dirs.push(pid);
                }
            }
        }
    }
    let me = std::process::id() as i32;
    let mut out: Vec<i32> = Vec::new();
    for (&pid, _) in parent.iter() {
        // Walk up (bounded: a pid table has no cycles, but be safe).
        let mut p = pid;
        for _ in 0..64 {
            match parent.get(&p) {
                Some(&pp) if roots.contains(&pp) => {
                    out.push(pid);
                    break;
                }
                Some(&pp) if pp > 1 => p = pp,
                _ => break,
            }
        }
    }
    out.extend(in_dirs);
    out.retain(|p| *p != me && !roots.contains(p));
    out.sort_unstable();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_skip_a_name_with_spaces() {
        let stat = "4242 (postgres: bench bench 127.0.0.1(5) idle) T 4100 4100 0";
        assert_eq!(stat_fields(stat), Some(('T', 4100)));
        assert_eq!(stat_fields("garbage"), None);
    }

    #[test]
    fn the_children_of_this_process_are_found() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .expect("sleep");
        let me = std::process::id() as i32;
        let under = processes_under(&[me], &[]);
        let pid = child.id() as i32;
        let _ = child.kill();
        let _ = child.wait();
        assert!(under.contains(&pid), "{under:?} lacks {pid}");
    }
}
