//! Continuous protection with pgBackRest: what the catalog records of each
//! lineage's archive (a pgBackRest *stanza*), what an agent is told to
//! archive into, and what a rollback restores.
//!
//! A stanza belongs to a lineage, not to one cluster: a primary and its HA
//! standby share it (same system identifier), so after a failover the new
//! primary's timeline continues in the same stanza. A fork, a rollback and
//! an unfollowed follower start a stanza of their own.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Where a cluster archives its WAL and takes its base backups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveSpec {
    /// The pgBackRest stanza: the id of the database that began the lineage.
    pub stanza: String,
    /// The repository's directory on the repository's host.
    pub repo_path: String,
    /// The repository's host when it is not the cluster's own machine
    /// (pgBackRest's `repo1-host`, over SSH or its TLS server). None: the
    /// path is reached directly, which is only true on one machine.
    #[serde(default)]
    pub repo_host: Option<String>,
    /// Days of history kept (`repo1-retention-full-type=time`).
    pub retention_days: u32,
}

/// What `pgbackrest info` says of a stanza after a base backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveInfo {
    /// The end of the oldest base backup kept: the earliest moment a
    /// rollback can reach.
    pub earliest: Option<DateTime<Utc>>,
    /// The end of the newest base backup.
    pub newest: Option<DateTime<Utc>>,
    /// Base backups kept.
    pub backups: u32,
    /// Bytes the stanza takes in the repository (base backups and WAL).
    pub repo_bytes: u64,
    /// Bytes of the newest base backup in the repository.
    pub newest_bytes: u64,
}

/// One lineage's archive, by stanza.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProtectionRecord {
    pub stanza: String,
    pub created_at: DateTime<Utc>,
    /// Where its repository is (see [`ArchiveSpec`]).
    pub repo_path: String,
    #[serde(default)]
    pub repo_host: Option<String>,
    /// The databases whose agents archive into it, and when their
    /// configuration was last written (it is written again now and then: a
    /// rejoined or moved cluster has new files or a new port).
    #[serde(default)]
    pub configured: BTreeMap<String, DateTime<Utc>>,
    /// The last base backup: when it ended, and of which database.
    #[serde(default)]
    pub last_full: Option<DateTime<Utc>>,
    #[serde(default)]
    pub last_full_of: Option<String>,
    #[serde(default)]
    pub info: Option<ArchiveInfo>,
    /// The last step's error, while it keeps failing.
    #[serde(default)]
    pub last_error: Option<String>,
    #[serde(default)]
    pub failures: u32,
    /// When the last step failed (retries wait a while).
    #[serde(default)]
    pub failed_at: Option<DateTime<Utc>>,
}

/// A database created as another was at a moment (`--rollback`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackRecord {
    /// The source's stanza.
    pub stanza: String,
    /// The source database (id), which may since be gone.
    pub source: String,
    pub target: DateTime<Utc>,
}

/// pg:info's `Rollback` row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RollbackInfo {
    /// The earliest moment a rollback can reach; none until the first base
    /// backup is done.
    pub earliest: Option<DateTime<Utc>>,
    /// What it waits for.
    #[serde(default)]
    pub detail: Option<String>,
    /// Why its last step failed (it is tried again).
    #[serde(default)]
    pub error: Option<String>,
    /// The newest base backup's end and size.
    #[serde(default)]
    pub last_base_backup: Option<DateTime<Utc>>,
    #[serde(default)]
    pub last_base_backup_bytes: Option<u64>,
    /// Bytes the lineage's archive takes in the repository.
    #[serde(default)]
    pub repo_bytes: Option<u64>,
}
