//! A three-member etcd cluster (Debian's `etcd-server`) on loopback, for
//! tests of the control plane on etcd: every member with its own free
//! client and peer port and a data directory in one temporary directory;
//! killed and removed on drop, also when the test fails. Every wait is
//! bounded.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// How long the cluster may take to elect a leader and answer.
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(30);
/// Members of the cluster.
const MEMBERS: usize = 3;

/// A running etcd cluster.
pub struct EtcdCluster {
    root: tempfile::TempDir,
    members: Vec<Member>,
}

struct Member {
    name: String,
    /// Its address: loopback, or its host's in a network namespace.
    address: String,
    client_port: u16,
    child: Option<Child>,
}

/// Two free loopback ports per member, chosen by the kernel; held only
/// until etcd binds them, which is soon after.
fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

impl EtcdCluster {
    /// Starts three members and waits until each answers `/health`.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_full(None)
    }

    /// Starts one member on each of three `hosts` (network namespaces), on
    /// the host's address and etcd's usual ports (2379, 2380).
    pub fn start_on(hosts: &[crate::NetHost]) -> anyhow::Result<Self> {
        anyhow::ensure!(
            hosts.len() == MEMBERS,
            "an etcd cluster takes {MEMBERS} hosts"
        );
        Self::start_full(Some(hosts))
    }

    fn start_full(hosts: Option<&[crate::NetHost]>) -> anyhow::Result<Self> {
        let bin = which_etcd()?;
        let root = tempfile::Builder::new()
            .prefix("pgfollow-etcd-")
            .tempdir_in("/tmp")?;
        let ports = match hosts {
            Some(_) => [vec![2379; MEMBERS], vec![2380; MEMBERS]].concat(),
            None => free_ports(MEMBERS * 2)?,
        };
        let address =
            |i: usize| hosts.map_or_else(|| "127.0.0.1".to_string(), |h| h[i].address.clone());
        let token = format!("pgfollow-test-{}", std::process::id());
        let initial: Vec<String> = (0..MEMBERS)
            .map(|i| format!("m{i}=http://{}:{}", address(i), ports[MEMBERS + i]))
            .collect();
        let mut cluster = Self {
            root,
            members: Vec::new(),
        };
        for i in 0..MEMBERS {
            let (client, peer) = (ports[i], ports[MEMBERS + i]);
            let name = format!("m{i}");
            let log = std::fs::File::create(cluster.log_path(&name))?;
            let a = address(i);
            let mut cmd = match hosts {
                Some(h) => h[i].command(&bin),
                None => Command::new(&bin),
            };
            let child = cmd
                .args(["--name", &name])
                .arg("--data-dir")
                .arg(cluster.root.path().join(&name))
                .arg(format!("--listen-client-urls=http://{a}:{client}"))
                .arg(format!("--advertise-client-urls=http://{a}:{client}"))
                .arg(format!("--listen-peer-urls=http://{a}:{peer}"))
                .arg(format!("--initial-advertise-peer-urls=http://{a}:{peer}"))
                .arg(format!("--initial-cluster={}", initial.join(",")))
                .arg(format!("--initial-cluster-token={token}"))
                .arg("--initial-cluster-state=new")
                .arg("--logger=zap")
                .arg("--log-outputs=stderr")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .with_context(|| format!("cannot run {}", bin.display()))?;
            cluster.members.push(Member {
                name,
                address: a,
                client_port: client,
                child: Some(child),
            });
        }
        cluster.wait_healthy()?;
        Ok(cluster)
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.root.path().join(format!("{name}.log"))
    }

    /// Client URLs of every member, dead or alive.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://{}:{}", m.address, m.client_port))
            .collect()
    }

    /// The endpoints as `--etcd` takes them: comma-separated.
    pub fn endpoints_arg(&self) -> String {
        self.endpoints().join(",")
    }

    /// Kills member `i` with SIGKILL and waits for it to exit.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members.get_mut(i).and_then(|m| m.child.take()) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits until every running member says it is healthy (the cluster
    /// has a leader and answers).
    pub fn wait_healthy(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + HEALTHY_TIMEOUT;
        for i in 0..self.members.len() {
            loop {
                let m = &mut self.members[i];
                let Some(child) = m.child.as_mut() else { break };
                if let Ok(Some(status)) = child.try_wait() {
                    m.child = None;
                    let log = std::fs::read_to_string(self.log_path(&self.members[i].name))
                        .unwrap_or_default();
                    bail!("etcd member m{i} exited ({status}); log:\n{log}");
                }
                if health(&m.address, m.client_port) {
                    break;
                }
                if Instant::now() >= deadline {
                    bail!("etcd member m{i} not healthy within {HEALTHY_TIMEOUT:?}");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }

    /// Which member leads the etcd cluster now (by its index), as the
    /// members themselves say.
    pub fn leader(&self) -> Option<usize> {
        self.members.iter().position(|m| {
            m.child.is_some()
                && post(&m.address, m.client_port, "/v3/maintenance/status", "{}")
                    .and_then(|a| serde_json::from_str::<serde_json::Value>(&a).ok())
                    .is_some_and(|v| {
                        v["leader"].is_string() && v["leader"] == v["header"]["member_id"]
                    })
        })
    }

    /// The state document as stored (bytes), read straight from a member
    /// with a range request: for measuring its size.
    pub fn value_len(&self, key: &str) -> Option<usize> {
        let body = format!("{{\"key\":\"{}\"}}", base64(key.as_bytes()));
        for m in self.members.iter().filter(|m| m.child.is_some()) {
            if let Some(answer) = post(&m.address, m.client_port, "/v3/kv/range", &body) {
                let v: serde_json::Value = serde_json::from_str(&answer).ok()?;
                let value = v["kvs"][0]["value"].as_str()?;
                let pad = value.chars().rev().take_while(|c| *c == '=').count();
                return Some(value.len() / 4 * 3 - pad);
            }
        }
        None
    }
}

fn which_etcd() -> anyhow::Result<PathBuf> {
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = PathBuf::from(dir).join("etcd");
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("etcd is not installed; run scripts/install-deps (Debian's etcd-server)")
}

/// `GET /health` on a member answers `{"health":"true"}` once it is part of
/// a cluster with a leader.
fn health(address: &str, port: u16) -> bool {
    request(address, port, "GET /health HTTP/1.0\r\n\r\n")
        .is_some_and(|a| a.contains("\"health\":\"true\""))
}

fn post(address: &str, port: u16, path: &str, body: &str) -> Option<String> {
    let req = format!(
        "POST {path} HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let answer = request(address, port, &req)?;
    answer.split("\r\n\r\n").nth(1).map(str::to_string)
}

fn request(address: &str, port: u16, text: &str) -> Option<String> {
    let ip: std::net::IpAddr = address.parse().ok()?;
    let addr = std::net::SocketAddr::new(ip, port);
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(text.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut c) = m.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if std::thread::panicking() {
            for m in &self.members {
                let log = std::fs::read_to_string(self.log_path(&m.name)).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                eprintln!("--- etcd {} (last lines) ---", m.name);
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_pads() {
        assert_eq!(base64(b"/pgfollow/state"), "L3BnZm9sbG93L3N0YXRl");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"a"), "YQ==");
    }
}
