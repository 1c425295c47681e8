//! `serve`: runs the control plane (with its embedded agent) in the
//! foreground until SIGTERM or SIGINT. Logs go to stderr (RUST_LOG, default
//! `info`); the control plane prints where its API listens. With `--etcd`
//! it is one replica of a control plane whose catalog is in etcd, and runs
//! no embedded agent.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use clap::Args;
use pgfollow_client::default_data_dir;
use pgfollow_control::config::{
    DEFAULT_ETCD_PREFIX, DEFAULT_LEADER_TTL, DEFAULT_LISTEN, DEFAULT_PG_PORTS,
};
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
    /// Keep the catalog in etcd (its client URLs, comma-separated) and run
    /// as one of several control plane replicas, without an embedded agent
    #[arg(long, value_name = "URLS")]
    pub etcd: Option<String>,
    /// Where in etcd this control plane's keys are
    #[arg(long, value_name = "PREFIX", default_value = DEFAULT_ETCD_PREFIX)]
    pub etcd_prefix: String,
    /// This replica's name, unique among the replicas (default HOSTNAME:PORT)
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// TTL of the leader lease in seconds: a dead leader is replaced within it
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_LEADER_TTL.as_secs())]
    pub leader_ttl: u64,
}

/// The etcd URLs of `--etcd`, or one line saying what is wrong: an empty
/// list, or a flag that configures the embedded agent, which a replica on
/// etcd does not run.
pub fn etcd_urls(args: &ServeArgs) -> Result<Vec<String>, String> {
    let Some(list) = &args.etcd else {
        return Ok(Vec::new());
    };
    let urls = pgfollow_client::client::parse_urls(list);
    if urls.is_empty() {
        return Err(format!(
            "--etcd {list:?} names no etcd member; give their client URLs, such as --etcd http://10.0.0.1:2379,http://10.0.0.2:2379"
        ));
    }
    let agent_flags = [
        ("--pg-bin", !args.pg_bin.is_empty()),
        ("--os-user", args.os_user != "postgres"),
        ("--pg-listen", args.pg_listen != "127.0.0.1"),
    ];
    if let Some((flag, _)) = agent_flags.iter().find(|(_, given)| *given) {
        return Err(format!(
            "{flag} configures serve's embedded agent, which does not run with --etcd; give it to `pgfollow agent` on each host instead"
        ));
    }
    if args.leader_ttl == 0 || args.leader_ttl > 60 {
        return Err(format!(
            "--leader-ttl {} is out of range; give 1 to 60 seconds (default {})",
            args.leader_ttl,
            DEFAULT_LEADER_TTL.as_secs()
        ));
    }
    Ok(urls)
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
    let etcd = etcd_urls(&args).map_err(anyhow::Error::msg)?;
    init_tracing();
    let config = ServeConfig {
        etcd,
        etcd_prefix: args.etcd_prefix,
        name: args.name,
        leader_ttl: std::time::Duration::from_secs(args.leader_ttl),
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

    fn args(line: &str) -> ServeArgs {
        #[derive(clap::Parser)]
        struct Cmd {
            #[command(flatten)]
            serve: ServeArgs,
        }
        use clap::Parser;
        Cmd::try_parse_from(std::iter::once("serve").chain(line.split_whitespace()))
            .unwrap()
            .serve
    }

    #[test]
    fn etcd_lists_and_what_they_refuse() {
        assert!(etcd_urls(&args("")).unwrap().is_empty());
        assert_eq!(
            etcd_urls(&args("--etcd http://a:2379,b:2379")).unwrap(),
            ["http://a:2379", "http://b:2379"]
        );
        let e = etcd_urls(&args("--etcd ,")).unwrap_err();
        assert!(e.contains("names no etcd member"), "{e}");
        let e = etcd_urls(&args(
            "--etcd http://a:2379 --pg-bin /usr/lib/postgresql/15/bin",
        ))
        .unwrap_err();
        assert!(
            e.starts_with("--pg-bin configures serve's embedded agent"),
            "{e}"
        );
        let e = etcd_urls(&args("--etcd http://a:2379 --leader-ttl 0")).unwrap_err();
        assert!(e.contains("1 to 60 seconds"), "{e}");
        // Without --etcd the agent's flags are the embedded agent's.
        assert!(etcd_urls(&args("--pg-bin /x")).unwrap().is_empty());
    }

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
