//! `pgfollow agent`: an agent on its own host. It serves its API, registers
//! with the control plane and keeps doing so as its heartbeat; on SIGTERM it
//! stops its databases.

use std::net::SocketAddr;
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
    /// The address apps use to reach this host's databases.
    pub pg_listen: String,
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
    let agent = Arc::new(Agent::new(AgentConfig {
        name: config.name.clone(),
        zone: config.zone.clone(),
        address: config.pg_listen.clone(),
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
    let url = format!("http://{}", listener.local_addr()?);
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
    let control =
        Client::new(config.control.clone(), config.token.clone()).with_connect_timeout(HEARTBEAT);
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

async fn heartbeat(
    control: Client,
    registration: AgentRegistration,
    agent: Arc<Agent>,
    shutdown: CancellationToken,
) {
    // When the last heartbeat that the control plane answered was sent.
    let mut last_ok = Instant::now();
    let mut failing = false;
    let mut fenced = false;
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
        let sent = Instant::now();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep_until(deadline), if !fenced => continue,
            beat = tokio::time::timeout(HEARTBEAT * 2, control.register_host(&registration)) => {
                match beat {
                    Ok(Ok(_)) => {
                        if failing {
                            tracing::info!("the control plane answers again");
                        }
                        last_ok = sent;
                        failing = false;
                        fenced = false;
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
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep_until(deadline), if !fenced && failing => {}
            _ = tokio::time::sleep(HEARTBEAT) => {}
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
