//! What the control plane asks of an agent about the clusters on its host:
//! the desired shape of one cluster and what the agent sees of it.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::plan::Plan;

/// A role and its password. `Debug` leaves the password out.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleSecret {
    pub name: String,
    pub password: String,
}

impl fmt::Debug for RoleSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RoleSecret")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// PostgreSQL settings that come from the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PgSettings {
    pub max_connections: u32,
    pub shared_buffers_mb: u32,
    pub work_mem_mb: u32,
    pub maintenance_work_mem_mb: u32,
    pub effective_cache_size_mb: u32,
    pub max_slot_wal_keep_mb: u32,
}

impl PgSettings {
    /// The settings of `plan`. A few connections on top of the plan's limit
    /// are kept for the agent and for replication.
    pub fn for_plan(plan: &Plan) -> Self {
        Self {
            max_connections: plan.connection_limit + RESERVED_CONNECTIONS,
            shared_buffers_mb: plan.shared_buffers_mb,
            work_mem_mb: plan.work_mem_mb,
            maintenance_work_mem_mb: plan.maintenance_work_mem_mb,
            effective_cache_size_mb: plan.effective_cache_size_mb,
            max_slot_wal_keep_mb: plan.max_slot_wal_keep_mb,
        }
    }
}

/// Connections beyond the plan's limit, for superuser and replication use.
pub const RESERVED_CONNECTIONS: u32 = 5;

/// The desired shape of one PostgreSQL cluster on an agent's host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSpec {
    /// Directory name under the agent's cluster root: `[a-z0-9-]+`.
    pub id: String,
    /// TCP port postgres listens on.
    pub port: u16,
    /// `listen_addresses`.
    pub listen_address: String,
    pub settings: PgSettings,
    /// The app's database.
    pub database: String,
    /// Owns `database`; what apps log in as.
    pub owner: RoleSecret,
    /// Used by followers to stream WAL.
    pub replication: RoleSecret,
}

/// What an agent sees of one cluster, cheaply (no connection).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub id: String,
    /// Its data directory is complete (initdb or base backup finished).
    pub initialized: bool,
    /// A postmaster from `postmaster.pid` is alive.
    pub running: bool,
    pub pid: Option<u32>,
}

/// What the database itself reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStats {
    /// `server_version`, e.g. `15.18`.
    pub server_version: String,
    /// Client backends connected to the app's database.
    pub connections_used: u32,
    pub data_size_bytes: u64,
    /// User tables in the app's database.
    pub tables: u64,
    pub in_recovery: bool,
}
