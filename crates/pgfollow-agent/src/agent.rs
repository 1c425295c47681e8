//! The local agent: a directory of clusters, the PostgreSQL binaries and the
//! OS user they run as.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pgfollow_postgres::{Cluster, CommitCache, OsUser, PgBinaries, PgError, StopMode};
use pgfollow_types::agent::{
    AgentFailure, ClusterSpec, ClusterStats, ClusterStatus, CommitCount, Probe, Promotion,
    ReplayStatus, RoleSecret, SlotStatus,
};
use pgfollow_types::api::Backend;
use pgfollow_types::model::HostRecord;
use pgfollow_types::Lsn;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Postgres(#[from] PgError),
    #[error("invalid cluster id {0:?}")]
    InvalidId(String),
    #[error("cannot prepare {path}: {source}")]
    Directory {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Bouncer(#[from] pgfollow_pgbouncer::BouncerError),
    /// No PgBouncer that pgfollow can use (none, or one older than 1.21);
    /// the reason says which and what to install.
    #[error("no usable PgBouncer on this host for app endpoints: {0}; then restart pgfollow")]
    NoBouncer(String),
    /// An agent on another host answered with an error.
    #[error("{}", .0.error)]
    Remote(AgentFailure),
    /// An agent on another host did not answer.
    #[error("{0}")]
    HostDown(String),
    #[error("PostgreSQL {major} is not installed on host {host} (it has {have}): install it there and restart its agent with --pg-bin for it, or use another version")]
    NoSuchMajor {
        host: String,
        major: u32,
        have: String,
    },
    #[error("OS user {user} cannot reach {path}: make it and every parent directory traversable (chmod o+x), or choose a --data-dir under /var/lib")]
    Unreachable { user: String, path: PathBuf },
}

impl AgentError {
    /// A port conflict, which the control plane answers by moving the database.
    pub fn port_in_use(&self) -> Option<u16> {
        match self {
            AgentError::Postgres(PgError::PortInUse { port }) => Some(*port),
            AgentError::Remote(f) if f.code.as_deref() == Some(CODE_PORT_IN_USE) => f.port,
            _ => None,
        }
    }

    /// No such backend, for `pg:kill`.
    pub fn is_no_such_backend(&self) -> bool {
        match self {
            AgentError::Postgres(PgError::NoSuchBackend(_)) => true,
            AgentError::Remote(f) => f.code.as_deref() == Some(CODE_NO_SUCH_BACKEND),
            _ => false,
        }
    }

    /// Whether the agent could not be reached at all.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, AgentError::HostDown(_))
    }

    /// The error as an agent answers it over HTTP.
    pub fn to_failure(&self) -> AgentFailure {
        let (code, port) = match (self.port_in_use(), self.is_no_such_backend()) {
            (Some(p), _) => (Some(CODE_PORT_IN_USE.to_string()), Some(p)),
            (None, true) => (Some(CODE_NO_SUCH_BACKEND.to_string()), None),
            _ => (None, None),
        };
        match self {
            AgentError::Remote(f) => f.clone(),
            _ => AgentFailure {
                error: self.to_string(),
                code,
                port,
            },
        }
    }
}

use pgfollow_types::agent::{CODE_NO_SUCH_BACKEND, CODE_PORT_IN_USE};

/// How an agent is set up.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub name: String,
    pub zone: Option<String>,
    /// The address apps use to reach this host's databases.
    pub address: String,
    /// Every cluster lives in a directory below this one.
    pub clusters_dir: PathBuf,
    /// `--pg-bin`, once per major version; empty: find every installed one.
    pub pg_bin: Vec<PathBuf>,
    pub os_user: String,
    /// The ports its databases and endpoints get, inclusive.
    pub ports: (u16, u16),
}

pub struct Agent {
    /// Base backups in flight: cluster id → (bytes done, bytes total).
    progress: std::sync::Mutex<std::collections::HashMap<String, (u64, u64)>>,
    /// Commit counts of WAL already counted, for every leader on this host.
    commits: CommitCache,
    name: String,
    zone: Option<String>,
    address: String,
    clusters_dir: PathBuf,
    /// Every installed major, newest first (never empty).
    bins: Vec<Arc<PgBinaries>>,
    user: Arc<OsUser>,
    /// PgBouncer, for app endpoints; else why there is none to use.
    bouncer: Result<Arc<pgfollow_pgbouncer::BouncerBinary>, String>,
    ports: crate::ports::PortBook,
}

pub(crate) fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 40
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// The PgBouncer for app endpoints, logged once either way: databases work
/// without one, endpoints do not.
fn discover_bouncer() -> Result<Arc<pgfollow_pgbouncer::BouncerBinary>, String> {
    match pgfollow_pgbouncer::BouncerBinary::discover(None) {
        Ok(bin) => {
            tracing::info!(
                "app endpoints use PgBouncer {} at {}",
                bin.version,
                bin.path.display()
            );
            Ok(Arc::new(bin))
        }
        Err(e) => {
            tracing::warn!("app endpoints cannot start: {e}");
            Err(e.to_string())
        }
    }
}

impl Agent {
    /// Finds PostgreSQL and the OS user, and makes the clusters directory
    /// (reachable, not listable, by that user).
    pub fn new(config: AgentConfig) -> Result<Self, AgentError> {
        let bins = PgBinaries::discover_all(&config.pg_bin)?;
        let user = OsUser::resolve(&config.os_user)?;
        make_traversable_dir(&config.clusters_dir)?;
        if !user.can_reach(&config.clusters_dir) {
            return Err(AgentError::Unreachable {
                user: user.name.clone(),
                path: config.clusters_dir,
            });
        }
        Ok(Self {
            progress: Default::default(),
            commits: CommitCache::default(),
            name: config.name,
            zone: config.zone,
            address: config.address,
            clusters_dir: config.clusters_dir,
            bins: bins.into_iter().map(Arc::new).collect(),
            user: Arc::new(user),
            bouncer: discover_bouncer(),
            ports: crate::ports::PortBook::new(config.ports),
        })
    }

    /// Up to `count` free ports of this host for new databases and
    /// endpoints; none (with the reason logged) when the range is used up.
    pub fn offer_ports(&self, count: u16) -> Vec<u16> {
        let ports = self.ports.offer(&self.address, usize::from(count));
        if ports.is_empty() {
            let (lo, hi) = self.ports.range();
            tracing::warn!(
                "no free port left in {lo}-{hi} on {}: destroy unused databases or restart the agent with a wider --pg-ports",
                self.address
            );
        }
        ports
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn bouncer(&self) -> Result<Arc<pgfollow_pgbouncer::BouncerBinary>, AgentError> {
        self.bouncer.clone().map_err(AgentError::NoBouncer)
    }

    pub(crate) fn os_user(&self) -> Arc<OsUser> {
        self.user.clone()
    }

    /// Endpoints live beside the clusters.
    pub(crate) fn endpoints_dir(&self) -> PathBuf {
        self.clusters_dir
            .parent()
            .map(|p| p.join("endpoints"))
            .unwrap_or_else(|| self.clusters_dir.join("endpoints"))
    }

    /// The newest installed major version.
    pub fn pg_major(&self) -> u32 {
        self.newest().major
    }

    fn newest(&self) -> &Arc<PgBinaries> {
        &self.bins[0]
    }

    /// Every installed major, newest first.
    pub fn binaries(&self) -> &[Arc<PgBinaries>] {
        &self.bins
    }

    /// The installation of `major`, or an error naming what there is.
    pub fn binaries_of(&self, major: u32) -> Result<Arc<PgBinaries>, AgentError> {
        self.bins
            .iter()
            .find(|b| b.major == major)
            .cloned()
            .ok_or_else(|| AgentError::NoSuchMajor {
                host: self.name.clone(),
                major,
                have: self
                    .bins
                    .iter()
                    .map(|b| b.major.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// This host as the catalog records it.
    pub fn host_record(&self) -> HostRecord {
        let newest = self.newest();
        HostRecord {
            name: self.name.clone(),
            zone: self.zone.clone(),
            address: self.address.clone(),
            pg_bin: newest.bindir.display().to_string(),
            pg_major: newest.major,
            pg_version: newest.version.clone(),
            agent_url: None,
            majors: self
                .bins
                .iter()
                .map(|b| pgfollow_types::model::PgInstall {
                    major: b.major,
                    version: b.version.clone(),
                    bin: b.bindir.display().to_string(),
                })
                .collect(),
        }
    }

    /// The cluster `id` with the binaries of the major its data directory
    /// was made with (`PG_VERSION`), so a re-attached cluster keeps its
    /// version; the newest for a cluster with no data directory yet.
    pub(crate) fn cluster(&self, id: &str) -> Result<Cluster, AgentError> {
        self.cluster_of(id, None)
    }

    /// The cluster of `spec`, with the binaries of its `pg_major`.
    pub(crate) fn cluster_for(&self, spec: &ClusterSpec) -> Result<Cluster, AgentError> {
        self.cluster_of(&spec.id, spec.pg_major)
    }

    fn cluster_of(&self, id: &str, major: Option<u32>) -> Result<Cluster, AgentError> {
        if !valid_id(id) {
            return Err(AgentError::InvalidId(id.to_string()));
        }
        let root = self.clusters_dir.join(id);
        let on_disk = std::fs::read_to_string(root.join("pgdata").join("PG_VERSION"))
            .ok()
            .and_then(|v| v.trim().parse::<u32>().ok());
        let bin = match major.or(on_disk) {
            Some(m) => self.binaries_of(m)?,
            None => self.newest().clone(),
        };
        Ok(Cluster::new(root, bin, self.user.clone()))
    }

    /// What the cluster's files say, without connecting.
    pub fn status(&self, id: &str) -> Result<ClusterStatus, AgentError> {
        Ok(self.cluster(id)?.status(id))
    }

    pub async fn initialize(&self, spec: &ClusterSpec) -> Result<(), AgentError> {
        Ok(self.cluster_for(spec)?.initialize(spec).await?)
    }

    /// Renders the configuration from `spec` (port and plan may have
    /// changed) and starts postgres.
    pub async fn start(&self, spec: &ClusterSpec) -> Result<(), AgentError> {
        let cluster = self.cluster_for(spec)?;
        cluster.write_config(spec)?;
        Ok(cluster.start().await?)
    }

    pub async fn bootstrap(&self, spec: &ClusterSpec) -> Result<(), AgentError> {
        Ok(self.cluster_for(spec)?.bootstrap(spec).await?)
    }

    pub async fn stats(&self, id: &str, database: &str) -> Result<ClusterStats, AgentError> {
        Ok(self.cluster(id)?.stats(database).await?)
    }

    pub async fn backends(&self, id: &str, database: &str) -> Result<Vec<Backend>, AgentError> {
        Ok(self.cluster(id)?.backends(database).await?)
    }

    pub async fn kill(
        &self,
        id: &str,
        database: &str,
        pid: i32,
        force: bool,
    ) -> Result<bool, AgentError> {
        Ok(self.cluster(id)?.kill(database, pid, force).await?)
    }

    pub async fn kill_all(&self, id: &str, database: &str) -> Result<Vec<i32>, AgentError> {
        Ok(self.cluster(id)?.kill_all(database).await?)
    }

    pub async fn set_password(&self, id: &str, role: &RoleSecret) -> Result<(), AgentError> {
        Ok(self.cluster(id)?.set_password(role).await?)
    }

    /// Leader side: the follower's slot, created if missing.
    pub async fn create_slot(&self, id: &str, slot: &str) -> Result<(), AgentError> {
        Ok(self.cluster(id)?.create_slot(slot).await?)
    }

    /// Leader side: drops the slot if it is there.
    pub async fn drop_slot(&self, id: &str, slot: &str) -> Result<(), AgentError> {
        Ok(self.cluster(id)?.drop_slot(slot).await?)
    }

    pub async fn slot_status(
        &self,
        id: &str,
        slot: &str,
    ) -> Result<Option<SlotStatus>, AgentError> {
        Ok(self.cluster(id)?.slot_status(slot).await?)
    }

    /// Follower side: copies the leader named in `spec.upstream` and
    /// configures a standby; `progress(done, total)` in bytes.
    pub async fn basebackup(
        &self,
        spec: &ClusterSpec,
        progress: impl Fn(u64, u64) + Send + Sync,
    ) -> Result<(), AgentError> {
        let id = spec.id.clone();
        let result = self
            .cluster_for(spec)?
            .basebackup(spec, |done, total| {
                self.progress_map().insert(id.clone(), (done, total));
                progress(done, total)
            })
            .await;
        self.progress_map().remove(&spec.id);
        Ok(result?)
    }

    /// `(done, total)` bytes of the base backup running for `id`.
    pub fn basebackup_progress(&self, id: &str) -> Option<(u64, u64)> {
        self.progress_map().get(id).copied()
    }

    pub(crate) fn progress_map(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, (u64, u64)>> {
        self.progress.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub async fn replay_status(&self, id: &str) -> Result<ReplayStatus, AgentError> {
        Ok(self.cluster(id)?.replay_status().await?)
    }

    /// Leader side: commit records from `from` to the current WAL position
    /// (at most `max_bytes` past `from`), exact at any distance: WAL counted
    /// once is remembered per segment.
    pub async fn commits_since(
        &self,
        id: &str,
        from: Lsn,
        max_bytes: u64,
    ) -> Result<CommitCount, AgentError> {
        Ok(self
            .cluster(id)?
            .commits_since(from, max_bytes, &self.commits)
            .await?)
    }

    /// Winds an old primary back and makes it a standby of `spec.upstream`.
    pub async fn rewind(&self, spec: &ClusterSpec) -> Result<(), AgentError> {
        Ok(self.cluster_for(spec)?.rewind(spec).await?)
    }

    /// `CHECKPOINT`.
    pub async fn checkpoint(&self, id: &str) -> Result<(), AgentError> {
        Ok(self.cluster(id)?.checkpoint().await?)
    }

    /// Ends recovery: the follower becomes writable.
    pub async fn promote(&self, id: &str) -> Result<(), AgentError> {
        Ok(self.cluster(id)?.promote().await?)
    }

    /// Promotes as soon as the follower has replayed to `lsn`, if it gets
    /// there within `limit`.
    pub async fn promote_at(
        &self,
        id: &str,
        lsn: Lsn,
        limit: Duration,
    ) -> Result<Promotion, AgentError> {
        Ok(self.cluster(id)?.promote_when_replayed(lsn, limit).await?)
    }

    /// Re-renders the configuration (e.g. a new or no upstream) and reloads.
    pub async fn set_upstream(&self, spec: &ClusterSpec) -> Result<(), AgentError> {
        Ok(self.cluster_for(spec)?.set_upstream(spec).await?)
    }

    /// Kills the cluster at once (fencing): it can take no write after
    /// this answers.
    pub async fn fence(&self, id: &str) -> Result<(), AgentError> {
        if self.cluster(id)?.fence().await? {
            tracing::warn!("fenced cluster {id}: killed on the control plane's order");
        }
        Ok(())
    }

    /// One query within a short deadline.
    pub async fn probe(&self, id: &str) -> Result<Probe, AgentError> {
        Ok(self.cluster(id)?.probe().await?)
    }

    /// Stops postgres and removes the cluster's files.
    pub async fn destroy(&self, id: &str) -> Result<(), AgentError> {
        Ok(self.cluster(id)?.destroy().await?)
    }

    /// Kills (fences) every running cluster that is not a standby.
    pub async fn stop_primaries(&self) {
        let Ok(entries) = std::fs::read_dir(&self.clusters_dir) else {
            return;
        };
        for entry in entries.flatten() {
            let Some(id) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let Ok(cluster) = self.cluster(&id) else {
                continue;
            };
            let standby = cluster.pgdata().join("standby.signal").exists();
            if !standby && cluster.status(&id).running {
                match cluster.fence().await {
                    Ok(_) => tracing::warn!("fenced cluster {id}: stopped"),
                    Err(e) => tracing::error!("could not fence cluster {id}: {e}"),
                }
            }
        }
    }

    pub async fn stop_all(&self) {
        self.stop_endpoints().await;
        let entries = match std::fs::read_dir(&self.clusters_dir) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!("cannot list {}: {e}", self.clusters_dir.display());
                return;
            }
        };
        for entry in entries.flatten() {
            let Some(id) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let Ok(cluster) = self.cluster(&id) else {
                continue;
            };
            if cluster.status(&id).running {
                match cluster.stop(StopMode::Fast).await {
                    Ok(()) => tracing::info!("stopped cluster {id}"),
                    Err(e) => tracing::warn!("could not stop cluster {id}: {e}"),
                }
            }
        }
    }
}

/// Creates `dir` (and parents) and makes it mode 0711: the OS user postgres
/// runs as may pass through it but not list it.
fn make_traversable_dir(dir: &Path) -> Result<(), AgentError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |source| AgentError::Directory {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_plain_directory_names() {
        assert!(valid_id("db-000001-3f9a"));
        for bad in ["", "../etc", "a/b", "UPPER", ".", &"x".repeat(41)] {
            assert!(!valid_id(bad), "{bad}");
        }
    }
}
