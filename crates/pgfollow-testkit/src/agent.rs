//! One `pgfollow agent` process: another host, on this machine, with its
//! own data directory, registered with a test's server.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::server::{
    kill_leftovers, postmaster_pids, print_postgres_logs, stop_bouncers, stop_postmasters,
    wait_for_listen_line, Server,
};

/// A running `pgfollow agent`.
pub struct AgentProcess {
    bin: PathBuf,
    /// The network namespace it runs in, if not the test's own.
    host: Option<crate::NetHost>,
    root: tempfile::TempDir,
    args: Vec<String>,
    child: Option<Child>,
    pub name: String,
    /// The agent's own API.
    pub url: String,
}

impl AgentProcess {
    /// Starts `bin agent --name NAME [--zone ZONE]` registered with `server`.
    pub fn start(
        bin: &Path,
        server: &Server,
        name: &str,
        zone: Option<&str>,
    ) -> anyhow::Result<Self> {
        let ports = server.ports();
        Self::start_full(
            bin,
            &server.url,
            &server.token(),
            Some(ports),
            name,
            zone_args(zone),
            None,
        )
    }

    /// [`AgentProcess::start`] with only the PostgreSQL of `pg_bin`
    /// (`--pg-bin`): a host that has one major.
    pub fn start_with_pg_bin(
        bin: &Path,
        server: &Server,
        name: &str,
        pg_bin: &Path,
    ) -> anyhow::Result<Self> {
        let ports = server.ports();
        Self::start_full(
            bin,
            &server.url,
            &server.token(),
            Some(ports),
            name,
            vec!["--pg-bin".into(), pg_bin.display().to_string()],
            None,
        )
    }

    /// Starts the agent on `host` (a network namespace), listening on every
    /// address there and advertising the one it reaches `server` from.
    pub fn start_on(
        bin: &Path,
        server: &Server,
        name: &str,
        zone: Option<&str>,
        host: &crate::NetHost,
    ) -> anyhow::Result<Self> {
        Self::start_full(
            bin,
            &server.url,
            &server.token(),
            None,
            name,
            zone_args(zone),
            Some(host.clone()),
        )
    }

    /// Starts `bin agent` registered with the control plane at `control`
    /// (several replicas: comma-separated).
    pub fn start_with_control(
        bin: &Path,
        control: &str,
        token: &str,
        name: &str,
        zone: Option<&str>,
    ) -> anyhow::Result<Self> {
        Self::start_full(bin, control, token, None, name, zone_args(zone), None)
    }

    /// [`AgentProcess::start_with_control`] on `host` (a network namespace).
    pub fn start_with_control_on(
        bin: &Path,
        control: &str,
        token: &str,
        name: &str,
        host: &crate::NetHost,
    ) -> anyhow::Result<Self> {
        Self::start_full(
            bin,
            control,
            token,
            None,
            name,
            Vec::new(),
            Some(host.clone()),
        )
    }

    /// `ports`: the agent's `--pg-ports` (agents on loopback share its
    /// ports: a test gives them its own range); `extra`: more arguments.
    fn start_full(
        bin: &Path,
        control: &str,
        token: &str,
        ports: Option<(u16, u16)>,
        name: &str,
        extra: Vec<String>,
        host: Option<crate::NetHost>,
    ) -> anyhow::Result<Self> {
        let root = tempfile::Builder::new()
            .prefix("pgfollow-agent-")
            .tempdir_in("/tmp")?;
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o711))?;
        let mut args = vec![
            "agent".to_string(),
            "--name".into(),
            name.into(),
            "--control".into(),
            control.to_string(),
            "--token".into(),
            token.to_string(),
            "--listen".into(),
            if host.is_some() {
                "0.0.0.0:0"
            } else {
                "127.0.0.1:0"
            }
            .into(),
        ];
        if let Some((lo, hi)) = ports {
            args.extend(["--pg-ports".to_string(), format!("{lo}-{hi}")]);
        }
        args.extend(extra);
        let mut agent = Self {
            bin: bin.to_path_buf(),
            host,
            root,
            args,
            child: None,
            name: name.to_string(),
            url: String::new(),
        };
        agent.spawn()?;
        Ok(agent)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    pub fn log_path(&self) -> PathBuf {
        self.root.path().join("agent.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let mut child = match &self.host {
            Some(h) => h.command(&self.bin),
            None => Command::new(&self.bin),
        };
        let mut child = child
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(&self.args)
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
                let _ = self.signal(Signal::SIGKILL);
                anyhow::bail!("agent {}: {e}; log:\n{}", self.name, self.log())
            }
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends `signal` and waits (bounded) for the agent to exit.
    pub fn signal(&mut self, signal: Signal) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let _ = kill(Pid::from_raw(child.id() as i32), signal);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Starts the agent again on the same data directory.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            self.signal(Signal::SIGTERM);
        }
        self.spawn()
    }

    /// Kills this host's endpoints (PgBouncer), as losing the host would.
    pub fn kill_bouncers(&self) {
        stop_bouncers(&self.data_dir());
    }

    /// Live postmasters of this agent's clusters.
    pub fn running_postmasters(&self) -> Vec<i32> {
        postmaster_pids(&self.data_dir())
            .into_iter()
            .filter(|pid| kill(Pid::from_raw(*pid), None).is_ok())
            .collect()
    }
}

/// `--zone ZONE`, when there is one.
fn zone_args(zone: Option<&str>) -> Vec<String> {
    zone.map(|z| vec!["--zone".to_string(), z.to_string()])
        .unwrap_or_default()
}

impl Drop for AgentProcess {
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
            eprintln!("--- agent {} log ---\n{}", self.name, self.log());
            print_postgres_logs(&self.data_dir());
        }
    }
}
