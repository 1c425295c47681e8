//! What the control plane asks of an agent about the clusters on its host:
//! the desired shape of one cluster and what the agent sees of it.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::lsn::Lsn;
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
    /// Set on a follower: where it streams WAL from. Rendered as
    /// `primary_conninfo` and `primary_slot_name`, with `standby.signal`.
    #[serde(default)]
    pub upstream: Option<Upstream>,
    /// Set on a leader whose commits wait for a standby: that standby's
    /// `application_name` (`synchronous_standby_names`).
    #[serde(default)]
    pub synchronous_standby: Option<String>,
    /// The PostgreSQL major version whose binaries run the cluster. None:
    /// the major its data directory was made with (`PG_VERSION`), else the
    /// agent's newest.
    #[serde(default)]
    pub pg_major: Option<u32>,
}

/// The leader a follower streams from.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upstream {
    pub host: String,
    pub port: u16,
    /// The leader's replication role.
    pub user: String,
    pub password: String,
    /// The physical replication slot on the leader that keeps WAL for it.
    pub slot: String,
    /// `application_name` the follower connects with (its cluster id), so
    /// the leader's `pg_stat_replication` names it.
    pub application_name: String,
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("slot", &self.slot)
            .finish_non_exhaustive()
    }
}

/// How far a follower has replayed, seen from the follower.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayStatus {
    pub in_recovery: bool,
    /// `pg_last_wal_replay_lsn()`.
    pub replay_lsn: Option<Lsn>,
    /// `pg_last_wal_receive_lsn()`.
    pub receive_lsn: Option<Lsn>,
    /// `pg_last_xact_replay_timestamp()`, as Unix milliseconds.
    pub last_replay_unix_ms: Option<i64>,
    /// A WAL receiver is streaming from the leader.
    pub streaming: bool,
}

/// What a `PromoteAt` did on the follower: how long it took to replay up
/// to the position asked for, and then to leave recovery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Promotion {
    /// It left recovery (or had left it before the call). False: the
    /// position was not reached within the limit and nothing was changed.
    pub promoted: bool,
    /// `pg_last_wal_replay_lsn()` at the last look before the promotion.
    pub replayed: Option<Lsn>,
    pub catch_up_ms: f64,
    /// Looks at the replay position.
    pub catch_up_polls: u32,
    /// From `pg_promote()` to `pg_is_in_recovery()` false.
    pub promote_ms: f64,
    /// Looks at `pg_is_in_recovery()` after `pg_promote()`.
    pub promote_polls: u32,
}

/// How long each part of an endpoint's route took on its agent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RouteTimings {
    /// Opening the admin console connection.
    pub admin_ms: f64,
    /// Writing `pgbouncer.ini` (0 without a rewrite).
    pub config_ms: f64,
    /// `RELOAD` (0 without a rewrite).
    pub reload_ms: f64,
    /// `RESUME`.
    pub resume_ms: f64,
}

/// Commit records on a leader between a position and its current one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitCount {
    /// `pg_current_wal_flush_lsn()` when counted.
    pub current: Lsn,
    /// Commit records counted.
    pub commits: u64,
    /// False when the count stopped before `current` (the bound asked for,
    /// or the agent's time budget for WAL it had not counted before): then
    /// there may be more than `commits`.
    pub complete: bool,
    /// Where the count stopped: `min(from + max_bytes, current)`, or before
    /// when the agent's time budget ran out. None from an agent that
    /// predates it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counted_to: Option<Lsn>,
    /// Milliseconds since the first commit record counted was written (its
    /// commit timestamp, read on the leader's clock): how old the oldest
    /// commit the follower lacks is. None when nothing was counted, or from
    /// an agent that predates it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_commit_age_ms: Option<u64>,
}

/// What one query to a cluster found: whether it is a standby, and the
/// WAL timeline it writes on when it is not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    pub in_recovery: bool,
    pub timeline: Option<u32>,
}

/// The server an endpoint routes to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointTarget {
    pub host: String,
    pub port: u16,
    /// The database's name on that server.
    pub dbname: String,
}

/// What one app endpoint (a PgBouncer run by an agent) should be.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointSpec {
    /// Directory name: `[a-z0-9-]+`.
    pub id: String,
    /// Where PgBouncer listens for the app, e.g. `127.0.0.1`.
    pub listen_addr: String,
    pub port: u16,
    /// The database name clients use.
    pub dbname: String,
    /// None: no database yet; clients get "no such database".
    pub target: Option<EndpointTarget>,
    /// The app's role name.
    pub user: String,
    /// The app's password: clients log in to PgBouncer with it, and
    /// PgBouncer logs in to PostgreSQL with it.
    pub password: String,
    /// Server connections per (database, user) pair.
    pub pool_size: u32,
    pub max_client_conn: u32,
    #[serde(default)]
    pub pool_mode: crate::api::PoolMode,
    /// Listen with `SO_REUSEPORT`, so several PgBouncers share the port
    /// and the kernel spreads new connections over them (the read
    /// endpoint: one per follower).
    #[serde(default)]
    pub so_reuseport: bool,
}

impl fmt::Debug for EndpointSpec {
    // The password never reaches a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointSpec")
            .field("id", &self.id)
            .field("listen_addr", &self.listen_addr)
            .field("port", &self.port)
            .field("dbname", &self.dbname)
            .field("target", &self.target)
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("pool_size", &self.pool_size)
            .field("max_client_conn", &self.max_client_conn)
            .field("pool_mode", &self.pool_mode)
            .field("so_reuseport", &self.so_reuseport)
            .finish()
    }
}

/// What can be seen of an endpoint without connecting to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointStatus {
    /// `pgbouncer.ini` exists.
    pub configured: bool,
    /// The pidfile names a live PgBouncer started with this endpoint's ini.
    pub running: bool,
    pub pid: Option<u32>,
}

/// A physical replication slot on a leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotStatus {
    pub active: bool,
    /// `reserved`, `extended`, `unreserved` or `lost`.
    pub wal_status: Option<String>,
    pub restart_lsn: Option<Lsn>,
    /// A logical slot's `confirmed_flush_lsn`: everything before it is
    /// applied (and durable) on the subscriber. None on a physical slot.
    #[serde(default)]
    pub confirmed_flush_lsn: Option<Lsn>,
    /// `pg_stat_replication.write_lsn` of the walsender holding the slot,
    /// if one does. From a logical subscriber: the end of the last commit
    /// it has applied (not yet necessarily flushed there).
    #[serde(default)]
    pub write_lsn: Option<Lsn>,
}

/// What logical replication of one database depends on, read from its
/// catalogs (`LogicalFacts`); compared across leader and follower before a
/// changeover.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogicalFacts {
    /// One sorted line per table, sequence and column (`table public.t`,
    /// `column public.t.id bigint not null`): the shape logical
    /// replication needs both sides to agree on (it carries no DDL).
    pub schema: Vec<String>,
    /// Tables with neither a primary key nor a replica identity: their
    /// UPDATEs and DELETEs cannot be replicated.
    pub no_identity: Vec<String>,
    /// Large objects (`pg_largeobject_metadata`): never replicated.
    pub large_objects: u64,
    /// On a subscriber: whether the subscription asked about exists.
    pub subscribed: bool,
    /// On a subscriber: tables that its subscription does not carry yet
    /// (not in it, or their first copy is not finished).
    pub not_ready: Vec<String>,
}

/// Where a logical follower subscribes: its leader's database, as the
/// leader's replication role, through publication and slot `name`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionSpec {
    /// The subscription's, publication's and slot's name.
    pub name: String,
    pub host: String,
    pub port: u16,
    pub database: String,
    pub user: String,
    pub password: String,
}

impl fmt::Debug for SubscriptionSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscriptionSpec")
            .field("name", &self.name)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("database", &self.database)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// A sequence's position, carried from leader to logical follower.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SequenceValue {
    /// Schema-qualified and quoted (`public."Items_id_seq"`).
    pub name: String,
    pub last_value: i64,
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

/// One call to an agent over HTTP (`POST /agent/v1/call`). The answer is the
/// result as JSON, or an [`AgentFailure`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "call", rename_all = "snake_case")]
pub enum AgentCall {
    Status {
        id: String,
    },
    Initialize {
        spec: ClusterSpec,
    },
    Start {
        spec: ClusterSpec,
    },
    Bootstrap {
        spec: ClusterSpec,
    },
    Stats {
        id: String,
        database: String,
    },
    Backends {
        id: String,
        database: String,
    },
    Kill {
        id: String,
        database: String,
        pid: i32,
        force: bool,
    },
    KillAll {
        id: String,
        database: String,
    },
    SetPassword {
        id: String,
        role: RoleSecret,
    },
    Destroy {
        id: String,
    },
    CreateSlot {
        id: String,
        slot: String,
    },
    DropSlot {
        id: String,
        slot: String,
    },
    SlotStatus {
        id: String,
        slot: String,
    },
    /// Long: answers when the copy is complete; poll `Progress` meanwhile.
    BaseBackup {
        spec: ClusterSpec,
    },
    /// `(done, total)` bytes of the base backup running for `id`, if any.
    Progress {
        id: String,
    },
    ReplayStatus {
        id: String,
    },
    CommitsSince {
        id: String,
        from: Lsn,
        max_bytes: u64,
    },
    Promote {
        id: String,
    },
    /// Waits up to `limit_ms` until the follower has replayed to `lsn`,
    /// then promotes it; answers a [`Promotion`] (not promoted when the
    /// position was not reached in time).
    PromoteAt {
        id: String,
        lsn: Lsn,
        limit_ms: u64,
    },
    Checkpoint {
        id: String,
    },
    Rewind {
        spec: ClusterSpec,
    },
    SetUpstream {
        spec: ClusterSpec,
    },
    /// Stops the cluster at once, whatever state its processes are in
    /// (SIGKILL of the postmaster and every backend), so it can take no
    /// write; answers once nothing of it runs.
    Fence {
        id: String,
    },
    /// Asks the cluster one query within a short deadline.
    Probe {
        id: String,
    },
    /// Up to `count` ports of the agent's range that nothing on its host
    /// listens on and that it has not offered in the last few seconds: the
    /// agent owns its host's ports, the control plane picks among these.
    OfferPorts {
        count: u16,
    },
    EndpointStatus {
        id: String,
    },
    /// Starts the endpoint, or retargets a running one (PAUSE, config,
    /// RELOAD, RESUME); answers how long clients were held (ms), if they were.
    EndpointApply {
        spec: EndpointSpec,
    },
    /// PAUSE; past `limit_ms` ends every connection instead. Answers
    /// whether connections were ended.
    EndpointHold {
        id: String,
        dbname: String,
        limit_ms: u64,
    },
    /// PAUSE within `limit_ms`; answers whether it finished (if not, the
    /// database stays paused while what held it up goes on).
    EndpointPauseWithin {
        id: String,
        dbname: String,
        limit_ms: u64,
    },
    /// Server connections of `dbname` still in a transaction.
    EndpointActiveServers {
        id: String,
        dbname: String,
    },
    /// Ends every client and server connection of `dbname` (it stays paused).
    EndpointKill {
        id: String,
        dbname: String,
    },
    /// Routes the endpoint as `spec` says (new configuration and RELOAD,
    /// when `rewrite`) and RESUMEs it.
    EndpointRoute {
        spec: EndpointSpec,
        rewrite: bool,
    },
    EndpointResume {
        id: String,
        dbname: String,
    },
    /// Refuses new connections and closes the open ones (maintenance).
    EndpointBlock {
        id: String,
        dbname: String,
    },
    EndpointUnblock {
        id: String,
        dbname: String,
    },
    EndpointDestroy {
        id: String,
    },
    /// Whether `dbname` is paused now (none: PgBouncer does not know it).
    EndpointPaused {
        id: String,
        dbname: String,
    },
    /// What logical replication of `database` depends on; `subscription`
    /// (on a subscriber) also says which tables it carries.
    LogicalFacts {
        id: String,
        database: String,
        #[serde(default)]
        subscription: Option<String>,
    },
    /// Leader side, idempotent: publication `name` FOR ALL TABLES, and
    /// role `reader` (the replication role a subscription connects as)
    /// may connect to `database` and read every table.
    Publish {
        id: String,
        database: String,
        name: String,
        reader: String,
    },
    /// Leader side, idempotent: drops publication `name`.
    Unpublish {
        id: String,
        database: String,
        name: String,
    },
    /// Long. Follower side: the leader's schema (`pg_dump --schema-only`
    /// of `from`, by `spec`'s major) restored into `spec`'s database.
    CopySchema {
        spec: ClusterSpec,
        from: crate::backup::DumpTarget,
    },
    /// Follower side, idempotent: a subscription to `sub` (creating its
    /// slot on the leader and copying every table's rows).
    Subscribe {
        id: String,
        database: String,
        sub: SubscriptionSpec,
    },
    /// Follower side, idempotent: the subscription stops and is dropped
    /// (its data stays; the leader's slot is left for the leader's side).
    Unsubscribe {
        id: String,
        database: String,
        name: String,
    },
    /// Every sequence's last value (those never used are left out).
    Sequences {
        id: String,
        database: String,
    },
    /// `setval` of each sequence, in one transaction.
    SetSequences {
        id: String,
        database: String,
        values: Vec<SequenceValue>,
    },
    // backups branch: logical backups, run by the control plane's embedded
    // agent; `file` is relative to the agent's backups directory.
    /// Long: `pg_dump -Fc` of `target` (PostgreSQL `major`) into `file`,
    /// mode 0600. Answers its size in bytes.
    Dump {
        major: u32,
        target: crate::backup::DumpTarget,
        file: String,
    },
    /// Long: `pg_restore` of `file` into `target` (PostgreSQL `major`);
    /// poll `RestoreProgress` meanwhile.
    Restore {
        major: u32,
        target: crate::backup::DumpTarget,
        file: String,
    },
    /// `(done, total)` bytes of `file` read by its running restore, if any.
    RestoreProgress {
        file: String,
    },
    // observe branch
    /// One read-only report (`pg:locks`, a check of `pg:diagnose`, ...) of
    /// `database`.
    Extras {
        id: String,
        database: String,
        report: crate::api::ExtrasReport,
    },
    /// Continuous protection: writes the cluster's pgBackRest configuration
    /// and its `archive_command` for `archive` (reloading a running
    /// server), and creates the stanza when the cluster is a primary.
    ArchiveConfigure {
        id: String,
        archive: crate::archive::ArchiveSpec,
    },
    /// Long: a full base backup of the primary `id` into its stanza
    /// (pgBackRest then expires what retention no longer needs). Answers
    /// the stanza's [`crate::archive::ArchiveInfo`].
    ArchiveBackup {
        id: String,
        archive: crate::archive::ArchiveSpec,
    },
    /// Commits a transaction on the primary `id`, switches WAL and waits
    /// until the segment is archived: everything up to now can be restored.
    ArchiveSeal {
        id: String,
        archive: crate::archive::ArchiveSpec,
    },
    /// Long: makes cluster `spec` from `archive` as it was at `target`
    /// (`pgbackrest restore --type=time`), starts it, and waits until it
    /// has recovered to that moment and is writable. Idempotent.
    ArchiveRestore {
        spec: ClusterSpec,
        archive: crate::archive::ArchiveSpec,
        target: chrono::DateTime<chrono::Utc>,
    },
    /// Long: upgrades cluster `id` in place to PostgreSQL `major` with
    /// `pg_upgrade --copy` and leaves it stopped. Idempotent. Answers the
    /// milliseconds pg_upgrade took.
    Upgrade {
        id: String,
        major: u32,
    },
    /// Long: the same on a throwaway copy (`pg_basebackup` as
    /// `replication` from `host`); the cluster keeps running. Answers
    /// [`UpgradeReport`].
    UpgradeDryRun {
        id: String,
        major: u32,
        host: String,
        replication: RoleSecret,
    },
}

/// How long a dry-run upgrade's parts took.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpgradeReport {
    pub copy_ms: u64,
    pub upgrade_ms: u64,
}

impl AgentCall {
    /// Its name, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            AgentCall::Status { .. } => "status",
            AgentCall::Initialize { .. } => "initialize",
            AgentCall::Start { .. } => "start",
            AgentCall::Bootstrap { .. } => "bootstrap",
            AgentCall::Stats { .. } => "stats",
            AgentCall::Backends { .. } => "backends",
            AgentCall::Kill { .. } => "kill",
            AgentCall::KillAll { .. } => "kill_all",
            AgentCall::SetPassword { .. } => "set_password",
            AgentCall::Destroy { .. } => "destroy",
            AgentCall::CreateSlot { .. } => "create_slot",
            AgentCall::DropSlot { .. } => "drop_slot",
            AgentCall::SlotStatus { .. } => "slot_status",
            AgentCall::BaseBackup { .. } => "base_backup",
            AgentCall::Progress { .. } => "progress",
            AgentCall::ReplayStatus { .. } => "replay_status",
            AgentCall::CommitsSince { .. } => "commits_since",
            AgentCall::Promote { .. } => "promote",
            AgentCall::PromoteAt { .. } => "promote_at",
            AgentCall::Checkpoint { .. } => "checkpoint",
            AgentCall::Rewind { .. } => "rewind",
            AgentCall::SetUpstream { .. } => "set_upstream",
            AgentCall::Fence { .. } => "fence",
            AgentCall::Probe { .. } => "probe",
            AgentCall::OfferPorts { .. } => "offer_ports",
            AgentCall::EndpointStatus { .. } => "endpoint_status",
            AgentCall::EndpointApply { .. } => "endpoint_apply",
            AgentCall::EndpointHold { .. } => "endpoint_hold",
            AgentCall::EndpointPauseWithin { .. } => "endpoint_pause_within",
            AgentCall::EndpointActiveServers { .. } => "endpoint_active_servers",
            AgentCall::EndpointKill { .. } => "endpoint_kill",
            AgentCall::EndpointRoute { .. } => "endpoint_route",
            AgentCall::EndpointResume { .. } => "endpoint_resume",
            AgentCall::EndpointBlock { .. } => "endpoint_block",
            AgentCall::EndpointUnblock { .. } => "endpoint_unblock",
            AgentCall::EndpointDestroy { .. } => "endpoint_destroy",
            AgentCall::EndpointPaused { .. } => "endpoint_paused",
            AgentCall::LogicalFacts { .. } => "logical_facts",
            AgentCall::Publish { .. } => "publish",
            AgentCall::Unpublish { .. } => "unpublish",
            AgentCall::CopySchema { .. } => "copy_schema",
            AgentCall::Subscribe { .. } => "subscribe",
            AgentCall::Unsubscribe { .. } => "unsubscribe",
            AgentCall::Sequences { .. } => "sequences",
            AgentCall::SetSequences { .. } => "set_sequences",
            AgentCall::Dump { .. } => "dump",
            AgentCall::Restore { .. } => "restore",
            AgentCall::RestoreProgress { .. } => "restore_progress",
            AgentCall::Extras { .. } => "extras",
            AgentCall::ArchiveConfigure { .. } => "archive_configure",
            AgentCall::ArchiveBackup { .. } => "archive_backup",
            AgentCall::ArchiveSeal { .. } => "archive_seal",
            AgentCall::ArchiveRestore { .. } => "archive_restore",
            AgentCall::Upgrade { .. } => "upgrade",
            AgentCall::UpgradeDryRun { .. } => "upgrade_dry_run",
        }
    }
}

/// [`AgentFailure::code`] of a port taken by another program.
pub const CODE_PORT_IN_USE: &str = "port_in_use";
/// [`AgentFailure::code`] of a backend that does not exist (`pg:kill`).
pub const CODE_NO_SUCH_BACKEND: &str = "no_such_backend";

/// An agent's error answer: the message, and a code for the errors the
/// control plane acts on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentFailure {
    pub error: String,
    /// `port_in_use`, `no_such_backend`, or none.
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
}

/// What an agent tells the control plane when it starts, and again as its
/// heartbeat (`POST /v1/hosts`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AgentRegistration {
    pub name: String,
    pub zone: Option<String>,
    /// Where the agent's own API listens.
    pub url: String,
    /// The address apps use to reach its databases.
    pub address: String,
    pub pg_bin: String,
    pub pg_major: u32,
    pub pg_version: String,
    /// Every major version installed on the host, newest first (the fields
    /// above are the newest one's; older agents send only those).
    #[serde(default)]
    pub majors: Vec<crate::model::PgInstall>,
}
