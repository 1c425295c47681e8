//! `agent`: runs an agent for another host in the foreground: it serves the
//! agent API, registers with the control plane (`--control`, `--token`) and
//! heartbeats until SIGTERM or SIGINT, when it stops its databases.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use pgfollow_agent::RunConfig;
use pgfollow_client::default_data_dir;

use pgfollow_agent::DEFAULT_PORTS;

use crate::serve::{init_tracing, shutdown_on_signals, PortRange};

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// This host's name, unique among the control plane's hosts
    #[arg(long, value_name = "NAME")]
    pub name: String,
    /// The zone this host is in; followers go to another zone when they can
    #[arg(long, value_name = "ZONE")]
    pub zone: Option<String>,
    /// The control plane's API, e.g. http://127.0.0.1:7480
    #[arg(long, value_name = "URL", env = "PGFOLLOW_API")]
    pub control: String,
    /// The control plane's API token (from its api.json)
    #[arg(
        long,
        value_name = "TOKEN",
        env = "PGFOLLOW_TOKEN",
        hide_env_values = true
    )]
    pub token: String,
    /// Address of this agent's own API
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// A PostgreSQL bin directory, once per major version (every installed
    /// major is found by itself when none is given)
    #[arg(long, value_name = "DIR")]
    pub pg_bin: Vec<PathBuf>,
    /// OS user that runs PostgreSQL when pgfollow runs as root
    #[arg(long, value_name = "NAME", default_value = "postgres")]
    pub os_user: String,
    /// The address the control plane, the other hosts and apps reach this
    /// host at (its API's and its databases' URLs). Default: the address
    /// this host reaches the control plane from
    #[arg(long, value_name = "ADDR")]
    pub advertise: Option<std::net::IpAddr>,
    /// `listen_addresses` of this host's databases and endpoints (default:
    /// the advertised address)
    #[arg(long, value_name = "ADDR")]
    pub pg_listen: Option<String>,
    /// Ports this host gives its databases and endpoints, inclusive
    #[arg(long, value_name = "FIRST-LAST", default_value_t = PortRange(DEFAULT_PORTS.0, DEFAULT_PORTS.1))]
    pub pg_ports: PortRange,
}

pub async fn agent(args: AgentArgs, data_dir: Option<PathBuf>) -> anyhow::Result<()> {
    init_tracing();
    let data_dir = data_dir.unwrap_or_else(|| default_data_dir().join("agents").join(&args.name));
    let config = RunConfig {
        name: args.name,
        zone: args.zone,
        control: args.control,
        token: args.token,
        data_dir,
        listen: args.listen,
        pg_bin: args.pg_bin,
        os_user: args.os_user,
        advertise: args.advertise,
        pg_listen: args.pg_listen,
        pg_ports: (args.pg_ports.0, args.pg_ports.1),
    };
    let shutdown = shutdown_on_signals()?;
    let result = pgfollow_agent::run(config, shutdown.clone()).await;
    shutdown.cancel();
    result
}
