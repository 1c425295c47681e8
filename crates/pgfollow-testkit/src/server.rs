//! One `pgfollow serve` process and its data directory.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::ports::PortSlot;

/// How long `serve` may take to say where it listens.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a CLI command may run before the test gives up on it.
const CLI_TIMEOUT: Duration = Duration::from_secs(180);
/// How long an orderly stop may take.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// What a CLI run printed.
#[derive(Debug, Clone)]
pub struct CliOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Panics with everything printed unless the command succeeded.
    #[track_caller]
    pub fn ok(self) -> Self {
        assert!(
            self.status.success(),
            "command failed ({}):\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }

    /// Panics unless the command failed; returns it for more checks.
    #[track_caller]
    pub fn failed(self) -> Self {
        assert!(
            !self.status.success(),
            "command should have failed:\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", self.stdout))
    }
}

/// A running `pgfollow serve` with its own data directory and ports.
pub struct Server {
    bin: PathBuf,
    root: tempfile::TempDir,
    ports: PortSlot,
    child: Option<Child>,
    /// The API's address, from the line `serve` printed.
    pub url: String,
    extra_args: Vec<String>,
    /// Extra environment of `serve` (fault injection), from the next start.
    env: Vec<(String, String)>,
    /// The network namespace `serve` runs in, if not the test's own.
    host: Option<crate::NetHost>,
}

impl Server {
    /// Starts `bin serve` (the `pgfollow` binary) in a fresh directory.
    pub fn start(bin: &Path) -> anyhow::Result<Self> {
        Self::start_with(bin, &[])
    }

    /// As [`Server::start_with`], with more environment for `serve`.
    pub fn start_with_env(
        bin: &Path,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        Self::start_inner(bin, extra_args, env)
    }

    /// As [`Server::start`], with more `serve` arguments.
    pub fn start_with(bin: &Path, extra_args: &[&str]) -> anyhow::Result<Self> {
        Self::start_inner(bin, extra_args, &[])
    }

    /// As [`Server::start_with`], on `host` (a network namespace): its API
    /// and its embedded agent's databases listen on the host's address.
    pub fn start_on(
        bin: &Path,
        host: &crate::NetHost,
        extra_args: &[&str],
    ) -> anyhow::Result<Self> {
        Self::start_full(bin, extra_args, &[], Some(host.clone()))
    }

    fn start_inner(bin: &Path, extra_args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Self> {
        Self::start_full(bin, extra_args, env, None)
    }

    fn start_full(
        bin: &Path,
        extra_args: &[&str],
        env: &[(&str, &str)],
        host: Option<crate::NetHost>,
    ) -> anyhow::Result<Self> {
        let root = tempfile::Builder::new()
            .prefix("pgfollow-test-")
            .tempdir_in("/tmp")?;
        // The OS user postgres runs as must pass through to the clusters.
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o711))?;
        let mut server = Self {
            bin: bin.to_path_buf(),
            root,
            ports: PortSlot::take()?,
            child: None,
            url: String::new(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            host,
        };
        server.spawn()?;
        Ok(server)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    /// The file `serve`'s log (stderr) goes to.
    pub fn log_path(&self) -> PathBuf {
        self.root.path().join("serve.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn ports(&self) -> (u16, u16) {
        (self.ports.first, self.ports.last)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let mut cmd = match &self.host {
            Some(h) => h.command(&self.bin),
            None => Command::new(&self.bin),
        };
        let address = self
            .host
            .as_ref()
            .map_or("127.0.0.1", |h| h.address.as_str());
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["--listen", &format!("{address}:0")]);
        // A replica on etcd runs no agent of its own: no databases to listen.
        let replica = self.extra_args.iter().any(|a| a == "--etcd");
        if self.host.is_some() && !replica && !self.extra_args.iter().any(|a| a == "--pg-listen") {
            cmd.args(["--pg-listen", address]);
        }
        if !self.extra_args.iter().any(|a| a == "--pg-ports") {
            cmd.args(["--pg-ports", &self.ports.arg()]);
        }
        let mut child = cmd
            .args(&self.extra_args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("RUST_LOG", "info")
            .env_remove("PGFOLLOW_API")
            .env_remove("PGFOLLOW_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot run {}", self.bin.display()))?;
        let url = wait_for_listen_line(&mut child, &self.log_path());
        self.child = Some(child);
        match url {
            Ok(url) => {
                self.url = url;
                Ok(())
            }
            Err(e) => {
                let status = self.wait_exit(Duration::from_secs(5));
                bail!("{e} ({status:?}); log:\n{}", self.log());
            }
        }
    }

    /// The API token from the data directory's API file.
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.data_dir().join("api.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["token"].as_str().map(str::to_string))
            .unwrap_or_default()
    }

    /// Sets (or with `None`, removes) an environment variable of `serve`
    /// for its next start.
    pub fn set_env(&mut self, key: &str, value: Option<&str>) {
        self.env.retain(|(k, _)| k != key);
        if let Some(v) = value {
            self.env.push((key.to_string(), v.to_string()));
        }
    }

    /// Waits at most `limit` for `serve` to exit by itself.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Sends `signal` to `serve` and waits (bounded) for it to exit.
    pub fn signal(&mut self, signal: Signal) -> Option<ExitStatus> {
        let pid = self.pid()?;
        let _ = kill(Pid::from_raw(pid as i32), signal);
        self.wait_exit(STOP_TIMEOUT)
    }

    /// Kills `serve` with SIGKILL: no chance to clean up.
    pub fn kill9(&mut self) {
        self.signal(Signal::SIGKILL);
    }

    /// Starts `serve` again on the same data directory.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            self.signal(Signal::SIGTERM);
        }
        self.spawn()
    }

    /// Runs the CLI against this server: `pgfollow ARGS...`.
    pub fn cli(&self, args: &[&str]) -> CliOutput {
        self.cli_env(args, &[])
    }

    /// Runs the CLI with extra environment variables.
    pub fn cli_env(&self, args: &[&str], env: &[(&str, &str)]) -> CliOutput {
        run_bounded(
            Command::new(&self.bin)
                .args(args)
                .env("PGFOLLOW_DATA_DIR", self.data_dir())
                .env_remove("PGFOLLOW_API")
                .env_remove("PGFOLLOW_TOKEN")
                .env_remove("PGFOLLOW_APP")
                .envs(env.iter().copied()),
            CLI_TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("pgfollow {args:?}: {e}"))
    }

    /// The PostgreSQL processes (postmasters) under this server's data
    /// directory that are alive.
    pub fn running_postmasters(&self) -> Vec<i32> {
        postmaster_pids(&self.data_dir())
            .into_iter()
            .filter(|pid| kill(Pid::from_raw(*pid), None).is_ok())
            .collect()
    }
}

/// Reads `child`'s stdout until a line says `API listening on URL` and
/// returns the URL; keeps draining stdout afterwards.
pub(crate) fn wait_for_listen_line(child: &mut Child, log: &Path) -> anyhow::Result<String> {
    let stdout = child.stdout.take().context("no stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left.min(Duration::from_millis(200))) {
            Ok(line) => {
                if let Some(rest) = line.split("API listening on ").nth(1) {
                    let url = rest.split([' ', ',']).next().unwrap_or_default();
                    return Ok(url.to_string());
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                bail!("exited before listening (log {})", log.display())
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "did not listen within {START_TIMEOUT:?} (log {})",
                log.display()
            );
        }
    }
}

/// Runs a command with stdin closed, killing it after `limit`.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> anyhow::Result<CliOutput> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut out = child.stdout.take().context("no stdout")?;
    let mut err = child.stderr.take().context("no stderr")?;
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("still running after {limit:?}; killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(CliOutput {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    })
}

/// Prints the last lines of every cluster's PostgreSQL log under
/// `data_dir`, for a failing test.
pub(crate) fn print_postgres_logs(data_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(data_dir.join("clusters")) else {
        return;
    };
    for e in entries.flatten() {
        let log = std::fs::read_to_string(e.path().join("log/postgresql.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        eprintln!("--- {} (last lines) ---", e.path().display());
        for line in tail.iter().rev() {
            eprintln!("{line}");
        }
    }
}

/// Pids in `clusters/*/pgdata/postmaster.pid` under `data_dir`.
pub(crate) fn postmaster_pids(data_dir: &Path) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir(data_dir.join("clusters")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("pgdata/postmaster.pid")).ok())
        .filter_map(|text| text.lines().next()?.trim().parse().ok())
        .collect()
}

/// Kills every endpoint's PgBouncer under `data_dir` (an agent killed with
/// SIGKILL leaves them running).
pub(crate) fn stop_bouncers(data_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(data_dir.join("endpoints")) else {
        return;
    };
    for e in entries.flatten() {
        let pid = std::fs::read_to_string(e.path().join("run/pgbouncer.pid"))
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok());
        if let Some(pid) = pid {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// Kills every process still running from under `root` (its command line
/// names a path there): a PgBouncer that was daemonizing while its agent
/// was stopped writes its pidfile too late for [`stop_bouncers`].
///
/// A process killed in the middle of daemonizing may have forked its child
/// after the scan passed it, so scans repeat until one finds nothing (at
/// most [`LEFTOVER_PASSES`]).
pub(crate) fn kill_leftovers(root: &Path) {
    let needle = root.to_string_lossy().into_owned();
    for _ in 0..LEFTOVER_PASSES {
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return;
        };
        let mut found = false;
        for p in procs.flatten() {
            let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
            if pid != std::process::id() as i32
                && String::from_utf8_lossy(&cmdline).contains(&needle)
            {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                found = true;
            }
        }
        if !found {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Scans of [`kill_leftovers`] at most.
const LEFTOVER_PASSES: u32 = 10;

/// Ends every postmaster under `data_dir`: immediate shutdown (SIGQUIT),
/// then SIGKILL for any still there after a few seconds.
pub(crate) fn stop_postmasters(data_dir: &Path) {
    let pids = postmaster_pids(data_dir);
    for pid in &pids {
        let _ = kill(Pid::from_raw(*pid), Signal::SIGQUIT);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for pid in pids {
        while kill(Pid::from_raw(pid), None).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.is_some() && self.signal(Signal::SIGTERM).is_none() {
            if let Some(mut c) = self.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        stop_postmasters(&self.data_dir());
        stop_bouncers(&self.data_dir());
        kill_leftovers(self.root.path());
        if std::thread::panicking() {
            eprintln!(
                "--- serve log ({}) ---\n{}",
                self.log_path().display(),
                self.log()
            );
            print_postgres_logs(&self.data_dir());
        }
    }
}
