//! `serve`: runs the control plane (with its embedded agent) in the
//! foreground until SIGTERM or SIGINT. Logs go to stderr (RUST_LOG, default
//! `info`); the control plane prints where its API listens.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use clap::Args;
use pgfollow_client::default_data_dir;
use pgfollow_control::config::{DEFAULT_LISTEN, DEFAULT_PG_PORTS};
use pgfollow_control::ServeConfig;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address of the HTTP API
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// A PostgreSQL bin directory, once per major version (every installed
    /// major is found by itself when none is given)
    #[arg(long, value_name = "DIR")]
    pub pg_bin: Vec<PathBuf>,
    /// OS user that runs PostgreSQL when pgfollow runs as root
    #[arg(long, value_name = "NAME", default_value = "postgres")]
    pub os_user: String,
    /// A TOML file of plans to add to (or replace) the built-in ones
    #[arg(long, value_name = "FILE")]
    pub plans: Option<PathBuf>,
    /// `listen_addresses` of the databases
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1")]
    pub pg_listen: String,
    /// HA fails over only to a standby at most this far behind (MiB of WAL)
    #[arg(long, value_name = "MB", default_value_t = 16)]
    pub ha_max_lag_mb: u64,
    /// Ports handed to databases, inclusive
    #[arg(long, value_name = "FIRST-LAST", default_value_t = PortRange(DEFAULT_PG_PORTS.0, DEFAULT_PG_PORTS.1))]
    pub pg_ports: PortRange,
}

/// An inclusive port range, written `FIRST-LAST`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange(pub u16, pub u16);

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

impl FromStr for PortRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let Some((a, b)) = s.split_once('-') else {
            return Err(format!(
                "{s:?} is not a port range: write FIRST-LAST, such as 15400-15999"
            ));
        };
        let port = |p: &str| match p.parse::<u16>() {
            Ok(n) if n > 0 && p.chars().all(|c| c.is_ascii_digit()) => Ok(n),
            _ => Err(format!(
                "{p:?} in {s:?} is not a port: use numbers from 1 to 65535, such as 15400-15999"
            )),
        };
        let (first, last) = (port(a)?, port(b)?);
        if first > last {
            return Err(format!(
                "{s:?} is empty: the first port must not be above the last, as in 15400-15999"
            ));
        }
        Ok(PortRange(first, last))
    }
}

/// Logs to stderr, filtered by RUST_LOG (default `info`), in colour only on
/// a terminal.
pub fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// A token cancelled on the first SIGTERM or SIGINT.
pub fn shutdown_on_signals() -> anyhow::Result<CancellationToken> {
    let shutdown = CancellationToken::new();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
            _ = on_signal.cancelled() => return,
        };
        tracing::info!("received {name}, shutting down");
        on_signal.cancel();
    });
    Ok(shutdown)
}

pub async fn serve(args: ServeArgs, data_dir: Option<PathBuf>) -> anyhow::Result<()> {
    init_tracing();
    let config = ServeConfig {
        data_dir: data_dir.unwrap_or_else(default_data_dir),
        listen: args.listen,
        pg_bin: args.pg_bin,
        os_user: args.os_user,
        plans_file: args.plans,
        pg_listen: args.pg_listen,
        pg_ports: (args.pg_ports.0, args.pg_ports.1),
        ha_max_lag_mb: args.ha_max_lag_mb,
    };
    let agent_config = (
        config.pg_listen.clone(),
        config.pg_bin.clone(),
        config.os_user.clone(),
        config.pg_ports,
    );
    let make_agent: pgfollow_control::MakeAgent = Box::new(move |clusters_dir| {
        let (address, pg_bin, os_user, ports) = agent_config;
        let agent = pgfollow_agent::Agent::new(pgfollow_agent::AgentConfig {
            name: pgfollow_control::LOCAL_HOST.to_string(),
            zone: None,
            address,
            clusters_dir: clusters_dir.to_path_buf(),
            pg_bin,
            os_user,
            ports,
        })?;
        Ok(std::sync::Arc::new(agent)
            as std::sync::Arc<
                dyn pgfollow_client::agent::EmbeddedAgent,
            >)
    });
    let shutdown = shutdown_on_signals()?;
    let result = pgfollow_control::serve(config, make_agent, shutdown.clone()).await;
    shutdown.cancel();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges() {
        assert_eq!("15400-15999".parse(), Ok(PortRange(15400, 15999)));
        assert_eq!("5432-5432".parse(), Ok(PortRange(5432, 5432)));
        assert_eq!(
            PortRange(DEFAULT_PG_PORTS.0, DEFAULT_PG_PORTS.1).to_string(),
            format!("{}-{}", DEFAULT_PG_PORTS.0, DEFAULT_PG_PORTS.1)
        );
        for bad in [
            "",
            "15400",
            "15400-",
            "-15999",
            "a-b",
            "0-10",
            "1-70000",
            "16000-15999",
            "+1-2",
            "1 - 2",
            "1-2-3",
        ] {
            let e = bad.parse::<PortRange>().unwrap_err();
            assert!(e.contains("15400-15999"), "{bad}: {e}");
        }
    }
}
