//! How `pgfollow serve` is configured.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Everything `pgfollow serve` takes from its command line.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Catalog, API file and the local agent's clusters live here.
    pub data_dir: PathBuf,
    /// Where the HTTP API listens; loopback by default.
    pub listen: SocketAddr,
    /// PostgreSQL bin directories, one per major; every installed major is
    /// found when empty.
    pub pg_bin: Vec<PathBuf>,
    /// The OS user postgres runs as when pgfollow runs as root.
    pub os_user: String,
    /// An operator's plan file (TOML).
    pub plans_file: Option<PathBuf>,
    /// `listen_addresses` of the databases.
    pub pg_listen: String,
    /// Ports handed to databases, inclusive.
    pub pg_ports: (u16, u16),
    /// HA refuses to fail over to a standby further behind than this (MiB).
    pub ha_max_lag_mb: u64,
}

/// `127.0.0.1:7480`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7480";
/// Ports handed to databases unless told otherwise.
pub const DEFAULT_PG_PORTS: (u16, u16) = (15400, 15999);
