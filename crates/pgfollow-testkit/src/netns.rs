//! Test hosts with addresses of their own: Linux network namespaces on a
//! bridge this test made. A [`Network`] holds one `/24` of 10.231.0.0/16
//! (a slot locked for as long as it lives, so concurrent tests never
//! share one); the bridge is `.1`, seen from the test's own namespace, and
//! every [`NetHost`] gets the next address on a veth pair. A partition is
//! the host's link taken down ([`Network::cut`]). On drop every process
//! inside the namespaces is killed and the namespaces, veths and bridge
//! are removed, also when the test fails; a slot left behind by a killed
//! test is cleaned when it is next taken. Only addresses inside namespaces
//! made here are ever used.

use std::fs::File;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Networks that can exist at once on one machine.
const SLOTS: u8 = 200;
/// The first slot's third octet: 10.231.<FIRST + n>.0/24.
const FIRST_OCTET: u8 = 20;

/// One host: a network namespace with one address.
#[derive(Debug, Clone)]
pub struct NetHost {
    /// The namespace's name (`ip netns exec NAME ...`).
    pub netns: String,
    /// Its address on the bridge.
    pub address: String,
    /// The veth end in the test's namespace: down is a partition.
    link: String,
}

impl NetHost {
    /// Moves the calling thread (only it) into this host's namespace: its
    /// connections from then on are made from the host's address, as a
    /// client running on that host would.
    pub fn enter(&self) -> anyhow::Result<()> {
        let path = format!("/var/run/netns/{}", self.netns);
        let file = File::open(&path).with_context(|| format!("cannot open {path}"))?;
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("cannot enter network namespace {}", self.netns))
    }

    /// `program` to be run inside this host's namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns]).arg(program);
        cmd
    }
}

/// A bridge and the hosts on it.
pub struct Network {
    _lock: Flock<File>,
    prefix: String,
    bridge: String,
    /// `10.231.N`.
    net: String,
    hosts: Vec<NetHost>,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("cannot run `ip` (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Namespaces whose names start with `prefix`.
fn namespaces_with(prefix: &str) -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output();
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

/// Kills every process in `netns` (bounded), then removes it.
fn remove_namespace(netns: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pids: Vec<i32> = Command::new("ip")
            .args(["netns", "pids", netns])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        if pids.is_empty() || Instant::now() >= deadline {
            break;
        }
        for pid in pids {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = ip(&["netns", "del", netns]);
}

impl Network {
    /// Takes a free slot and makes its bridge, cleaning whatever a killed
    /// test left in it.
    pub fn new() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join("pgfollow-testkit-nets");
        std::fs::create_dir_all(&dir)?;
        for n in 0..SLOTS {
            let file = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(dir.join(format!("net-{n}")))?;
            let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) else {
                continue;
            };
            let prefix = format!("pgf{n}");
            let bridge = format!("{prefix}br");
            for stale in namespaces_with(&format!("{prefix}-")) {
                remove_namespace(&stale);
            }
            let _ = ip(&["link", "del", &bridge]);
            let net = format!("10.231.{}", FIRST_OCTET + n);
            ip(&["link", "add", &bridge, "type", "bridge"])?;
            let network = Self {
                _lock: lock,
                prefix,
                bridge: bridge.clone(),
                net: net.clone(),
                hosts: Vec::new(),
            };
            ip(&["addr", "add", &format!("{net}.1/24"), "dev", &bridge])?;
            ip(&["link", "set", &bridge, "up"])?;
            return Ok(network);
        }
        bail!("all {SLOTS} test network slots are taken")
    }

    /// The test's own address on the bridge (where the CLI and the app's
    /// clients connect from).
    pub fn gateway(&self) -> String {
        format!("{}.1", self.net)
    }

    /// Adds a host `label` (letters and digits, short) with the next
    /// address.
    pub fn add_host(&mut self, label: &str) -> anyhow::Result<NetHost> {
        let i = self.hosts.len() + 2;
        let netns = format!("{}-{label}", self.prefix);
        let link = format!("{}v{i}", self.prefix);
        let peer = format!("{}p{i}", self.prefix);
        let address = format!("{}.{i}", self.net);
        ip(&["netns", "add", &netns])?;
        let host = NetHost {
            netns: netns.clone(),
            address: address.clone(),
            link: link.clone(),
        };
        // Recorded before the rest, so that drop removes a half-made host.
        self.hosts.push(host.clone());
        ip(&["link", "add", &link, "type", "veth", "peer", "name", &peer])?;
        ip(&["link", "set", &peer, "netns", &netns])?;
        ip(&["-n", &netns, "link", "set", &peer, "name", "eth0"])?;
        ip(&[
            "-n",
            &netns,
            "addr",
            "add",
            &format!("{address}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &netns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &netns, "link", "set", "lo", "up"])?;
        ip(&["link", "set", &link, "master", &self.bridge])?;
        ip(&["link", "set", &link, "up"])?;
        Ok(host)
    }

    /// Cuts `host` off from every other host and from the test: its link
    /// goes down (packets are dropped, connections hang as on a real
    /// partition).
    pub fn cut(&self, host: &NetHost) -> anyhow::Result<()> {
        ip(&["link", "set", &host.link, "down"])
    }

    /// Brings `host`'s link back.
    pub fn heal(&self, host: &NetHost) -> anyhow::Result<()> {
        ip(&["link", "set", &host.link, "up"])
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for host in &self.hosts {
            remove_namespace(&host.netns);
            let _ = ip(&["link", "del", &host.link]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
    }
}
