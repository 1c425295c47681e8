//! How `pgfollow serve` is configured.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

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
    /// etcd's client URLs: the catalog is there and this is one replica
    /// of the control plane (no embedded agent). Empty: SQLite.
    pub etcd: Vec<String>,
    /// Where in etcd the control plane's keys are.
    pub etcd_prefix: String,
    /// This replica's name among the replicas (default `<hostname>:<port>`).
    pub name: Option<String>,
    /// TTL of the leader lease: how long the replicas are without a leader
    /// when the leader dies.
    pub leader_ttl: Duration,
}

/// `127.0.0.1:7480`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7480";
/// Ports handed to databases unless told otherwise.
pub const DEFAULT_PG_PORTS: (u16, u16) = (15400, 15999);
/// Keys of the control plane in etcd go under this prefix.
pub const DEFAULT_ETCD_PREFIX: &str = "/pgfollow";
/// The leader lease's TTL: see docs/architecture.md for why 2 s.
pub const DEFAULT_LEADER_TTL: Duration = Duration::from_secs(2);
