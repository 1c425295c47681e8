//! `pgfollow agent`: an agent on its own host. It serves its API, registers
//! with the control plane and keeps doing so as its heartbeat; on SIGTERM it
//! stops its databases.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use pgfollow_client::Client;
use pgfollow_types::agent::AgentRegistration;
use tokio_util::sync::CancellationToken;

use crate::agent::{Agent, AgentConfig};

pub use pgfollow_types::timing::{FENCE_AFTER, HEARTBEAT};

/// Everything `pgfollow agent` takes from its command line.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub name: String,
    pub zone: Option<String>,
    /// The control plane's API (several replicas: comma-separated).
    pub control: String,
    pub token: String,
    pub data_dir: PathBuf,
    /// Where this agent's API listens.
    pub listen: SocketAddr,
    /// `--pg-bin`, once per major version; empty: find every installed one.
    pub pg_bin: Vec<PathBuf>,
    pub os_user: String,
    /// The address everyone else reaches this host at; none: the address
    /// this host reaches the control plane from.
    pub advertise: Option<IpAddr>,
    /// `listen_addresses` of the databases; none: the advertised address.
    pub pg_listen: Option<String>,
    /// The ports of this host's databases and endpoints, inclusive.
    pub pg_ports: (u16, u16),
}

/// The address this host reaches the control plane from: the local end of
/// a TCP connection to the first of `control`'s replicas (a
/// comma-separated list) that accepts one.
async fn address_towards(control: &str) -> anyhow::Result<IpAddr> {
    let mut last = None;
    for one in control.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        match address_towards_one(one).await {
            Ok(ip) => return Ok(ip),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("--control is empty; give the control plane's URL")))
}

async fn address_towards_one(control: &str) -> anyhow::Result<IpAddr> {
    let url = url::Url::parse(control)
        .with_context(|| format!("--control {control:?} is not a URL; write http://HOST:PORT"))?;
    let host = url
        .host_str()
        .with_context(|| format!("--control {control:?} names no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = url.port_or_known_default().unwrap_or(80);
    let stream = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    .map_err(|_| anyhow::anyhow!("the control plane at {control} did not answer within 5 s"))?
    .with_context(|| format!("cannot reach the control plane at {control}"))?;
    Ok(stream.local_addr()?.ip())
}

/// The address to advertise: `asked`, else the listening address when it
/// is a specific one, else the one the control plane is reached from.
fn advertised(asked: Option<IpAddr>, listen: SocketAddr, towards_control: IpAddr) -> IpAddr {
    asked.unwrap_or(if listen.ip().is_unspecified() {
        towards_control
    } else {
        listen.ip()
    })
}

fn valid_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 40
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

/// Runs the agent until `shutdown`.
pub async fn run(config: RunConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    if !valid_host_name(&config.name) {
        anyhow::bail!(
            "invalid host name {:?}: use letters, digits, '-', '_' and '.'",
            config.name
        );
    }
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create {}", config.data_dir.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&config.data_dir, std::fs::Permissions::from_mode(0o711))?;
    }
    let advertise = match config.advertise {
        Some(a) => a,
        None => advertised(None, config.listen, address_towards(&config.control).await?),
    };
    if advertise.is_unspecified() {
        anyhow::bail!(
            "--advertise {advertise} is not an address others can reach; give this host's own address"
        );
    }
    let agent = Arc::new(Agent::new(AgentConfig {
        name: config.name.clone(),
        zone: config.zone.clone(),
        address: config
            .pg_listen
            .clone()
            .unwrap_or_else(|| advertise.to_string()),
        ports: config.pg_ports,
        clusters_dir: config.data_dir.join("clusters"),
        pg_bin: config.pg_bin.clone(),
        os_user: config.os_user.clone(),
    })?);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot listen on {}: {e}; pass --listen with a free address",
                config.listen
            )
        })?;
    let url = format!(
        "http://{}",
        SocketAddr::new(advertise, listener.local_addr()?.port())
    );
    let host = agent.host_record();
    let registration = AgentRegistration {
        name: host.name.clone(),
        zone: host.zone.clone(),
        url: url.clone(),
        address: host.address.clone(),
        pg_bin: host.pg_bin.clone(),
        pg_major: host.pg_major,
        pg_version: host.pg_version.clone(),
        majors: host.majors.clone(), // backups branch: every installed major
    };
    // Several replicas (comma-separated): a heartbeat must get past a dead
    // one well within its own timeout.
    let control = Client::new(config.control.clone(), config.token.clone())
        .with_connect_timeout(HEARTBEAT)
        .with_attempt_timeout(HEARTBEAT);
    control
        .register_host(&registration)
        .await
        .with_context(|| {
            format!(
                "cannot register with the control plane at {}",
                config.control
            )
        })?;
    println!(
        "pgfollow agent {}: API listening on {url}, registered with {} (PostgreSQL {})",
        host.name,
        config.control,
        versions_line(&host)
    );
    tracing::info!("agent {} listening on {url}", host.name);

    let beat = tokio::spawn(heartbeat(
        control,
        registration,
        agent.clone(),
        shutdown.clone(),
    ));
    let served = axum::serve(
        listener,
        crate::http::router(agent.clone(), config.token.clone()),
    )
    .with_graceful_shutdown(shutdown.clone().cancelled_owned())
    .await;
    beat.abort();
    tracing::info!("stopping databases");
    agent.stop_all().await;
    tracing::info!("stopped");
    served.context("the agent API failed")
}

/// Heartbeats that may be unanswered at once: a new one leaves every
/// [`HEARTBEAT`] whatever became of the last, so one that hangs (a control
/// plane waiting on a cut-off etcd member's connection until its pings fail)
/// does not hold back the next.
const BEATS_IN_FLIGHT: usize = 4;

async fn heartbeat(
    control: Client,
    registration: AgentRegistration,
    agent: Arc<Agent>,
    shutdown: CancellationToken,
) {
    use futures_util::stream::{FuturesUnordered, StreamExt};
    // When the newest heartbeat that the control plane answered was sent.
    let mut last_ok = Instant::now();
    let mut failing = false;
    let mut fenced = false;
    let mut in_flight = FuturesUnordered::new();
    let mut next_beat = tokio::time::Instant::now();
    loop {
        // First the deadline, before anything else: a host that was frozen
        // (SIGSTOP, a paused VM) wakes here, and its primaries may have
        // been replaced meanwhile even if the next heartbeat succeeds.
        if !fenced && last_ok.elapsed() >= FENCE_AFTER {
            tracing::warn!(
                "no heartbeat answered for {:.1} s: fencing this host's primaries",
                last_ok.elapsed().as_secs_f64()
            );
            agent.stop_primaries().await;
            fenced = true;
        }
        let deadline = tokio::time::Instant::from_std(last_ok + FENCE_AFTER);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep_until(deadline), if !fenced => {}
            _ = tokio::time::sleep_until(next_beat), if in_flight.len() < BEATS_IN_FLIGHT => {
                let sent = Instant::now();
                // An answer later than FENCE_AFTER after sending could
                // not keep the host from fencing anyway.
                let beat = tokio::time::timeout(FENCE_AFTER, control.register_host(&registration));
                in_flight.push(async move { (sent, beat.await) });
                next_beat = tokio::time::Instant::now() + HEARTBEAT;
            }
            Some((sent, beat)) = in_flight.next() => match beat {
                Ok(Ok(_)) => {
                    if failing {
                        tracing::info!("the control plane answers again");
                    }
                    last_ok = last_ok.max(sent);
                    failing = false;
                    // A late answer to a beat sent before the deadline
                    // does not undo the fence.
                    fenced = fenced && last_ok.elapsed() >= FENCE_AFTER;
                }
                Ok(Err(e)) if !failing => {
                    tracing::warn!("heartbeat to the control plane failed: {e}");
                    failing = true;
                }
                Err(_) if !failing => {
                    tracing::warn!("heartbeat to the control plane timed out");
                    failing = true;
                }
                _ => {}
            },
        }
    }
}

/// `18.6, 15.18`: the versions a host has, newest first.
pub fn versions_line(host: &pgfollow_types::model::HostRecord) -> String {
    host.installs()
        .iter()
        .map(|i| i.version.clone())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_advertised_address_is_asked_listened_on_or_towards_the_control_plane() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let sock = |s: &str| s.parse::<SocketAddr>().unwrap();
        let towards = ip("10.231.0.5");
        let cases = [
            (
                "asked wins",
                Some(ip("10.0.0.9")),
                sock("0.0.0.0:0"),
                "10.0.0.9",
            ),
            ("wildcard listen", None, sock("0.0.0.0:7000"), "10.231.0.5"),
            ("specific listen", None, sock("127.0.0.1:0"), "127.0.0.1"),
            ("v6 wildcard", None, sock("[::]:0"), "10.231.0.5"),
        ];
        for (name, asked, listen, want) in cases {
            assert_eq!(advertised(asked, listen, towards), ip(want), "{name}");
        }
    }

    #[tokio::test]
    async fn the_address_towards_a_listener_is_the_local_end() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        assert_eq!(
            address_towards(&url).await.unwrap(),
            "127.0.0.1".parse::<IpAddr>().unwrap()
        );
        let e = address_towards("not a url").await.unwrap_err().to_string();
        assert!(e.contains("is not a URL"), "{e}");
        // A list: the first replica that accepts.
        let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead_url = format!("http://{}", dead.local_addr().unwrap());
        drop(dead);
        assert_eq!(
            address_towards(&format!("{dead_url},{url}")).await.unwrap(),
            "127.0.0.1".parse::<IpAddr>().unwrap()
        );
    }
}
