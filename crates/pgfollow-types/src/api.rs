//! Requests and responses of the control plane's public HTTP API
//! (`/v1/...`). The CLI prints these; `--json` prints them as they are.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::names::Color;

/// Every error answer: one line that says what is wrong and what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiError {
    pub error: String,
}

/// `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ServerStatus {
    pub version: String,
    pub hosts: Vec<HostSummary>,
}

/// A machine with an agent on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HostSummary {
    pub name: String,
    pub zone: Option<String>,
    /// The address the other hosts and apps reach it at.
    #[serde(default)]
    pub address: String,
    /// The PostgreSQL binaries the agent uses.
    pub pg_bin: String,
    /// Their major version, `15`.
    pub pg_version: String,
    /// Every installed version, newest first: `["18.6", "15.18"]`.
    #[serde(default)]
    pub pg_versions: Vec<String>,
    /// Add-on names of the databases on this host.
    pub databases: Vec<String>,
    /// Whether its agent answers (the embedded one always does).
    #[serde(default)]
    pub reachable: bool,
}

/// `POST /v1/apps`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateApp {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct App {
    pub name: String,
    pub created_at: DateTime<Utc>,
    /// Add-on names of the databases the app owns.
    pub databases: Vec<String>,
}

/// An app's config vars, database URLs included.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConfigVars {
    pub vars: BTreeMap<String, String>,
}

/// `PATCH /v1/apps/{app}/config`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConfigChange {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub unset: Vec<String>,
}

/// `POST /v1/apps/{app}/addons`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateAddon {
    /// A plan name from `GET /v1/plans`.
    pub plan: String,
    /// The database to follow, in any form a database can be named.
    #[serde(default)]
    pub follow: Option<String>,
    /// On premium and enterprise plans: commits wait for the HA standby, so
    /// a failover loses no acknowledged commit.
    #[serde(default)]
    pub sync: bool,
    /// With `sync`: commits keep waiting for a lost standby instead of
    /// going on without it after the grace (Patroni's strict mode).
    #[serde(default)]
    pub sync_strict: bool,
    /// Sets the app's endpoint pool mode (kept when not given).
    #[serde(default)]
    pub pool_mode: Option<PoolMode>,
    /// The PostgreSQL major version (`18`); default: the newest every host
    /// has, or a follower's leader's.
    #[serde(default)]
    pub version: Option<u32>,
    /// A rollback: the new database is this one (named in any form) as it
    /// was at `to` or `by` ago, restored from its continuous protection.
    #[serde(default)]
    pub rollback: Option<String>,
    /// With `rollback`: the moment (`2026-12-02 01:50:00 UTC`, RFC 3339).
    #[serde(default)]
    pub to: Option<String>,
    /// With `rollback`: how long ago (`2h`, `90m`, `1d12h`).
    #[serde(default)]
    pub by: Option<String>,
}

/// What a database is doing, as users see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum DatabaseState {
    /// Being created (or, for a follower, catching up).
    Preparing,
    Available,
    /// Expected to run but not answering.
    Unavailable,
    /// Gave up; `status_detail` says why.
    Failed,
    /// Being removed.
    Deprovisioning,
}

impl DatabaseState {
    pub fn as_str(self) -> &'static str {
        match self {
            DatabaseState::Preparing => "preparing",
            DatabaseState::Available => "available",
            DatabaseState::Unavailable => "unavailable",
            DatabaseState::Failed => "failed",
            DatabaseState::Deprovisioning => "deprovisioning",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            DatabaseState::Preparing,
            DatabaseState::Available,
            DatabaseState::Unavailable,
            DatabaseState::Failed,
            DatabaseState::Deprovisioning,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }
}

impl fmt::Display for DatabaseState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One database as `addons` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AddonSummary {
    /// The add-on name, `postgresql-curved-48213`.
    pub name: String,
    pub color: Color,
    /// The app that owns (and is billed for) the database.
    pub app: String,
    pub plan: String,
    /// `$50/mo` or `free`.
    pub price: String,
    pub state: DatabaseState,
    /// Config vars it is attached as, `DATABASE_URL` first.
    pub attachments: Vec<String>,
    pub created_at: DateTime<Utc>,
}

/// `POST /v1/apps/{app}/addons` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateAddonResponse {
    pub database: AddonSummary,
    pub operation: String,
    /// What to tell the user, several lines.
    pub message: String,
}

/// `DELETE /v1/apps/{app}/addons/{db}` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DestroyAddonResponse {
    pub name: String,
    pub color: Color,
    pub operation: String,
    pub message: String,
}

/// One database's `pg:info` block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DatabaseInfo {
    pub name: String,
    pub color: Color,
    pub app: String,
    /// Config vars it is attached as, `DATABASE_URL` first.
    pub attachments: Vec<String>,
    pub plan: String,
    pub state: DatabaseState,
    /// Why it failed, or what it is waiting for.
    pub status_detail: Option<String>,
    /// Progress of the current operation, when it reports one.
    pub progress_percent: Option<u8>,
    pub connections_used: Option<u32>,
    pub connection_limit: u32,
    /// Full server version, `15.18`.
    pub pg_version: String,
    pub created_at: DateTime<Utc>,
    pub data_size_bytes: Option<u64>,
    pub storage_limit_gb: u32,
    pub tables: Option<u64>,
    /// `Available`, `Temporarily Unavailable`, `Unavailable on followers`, ...
    pub fork_follow: String,
    pub host: String,
    /// The leader's colour, on a follower.
    #[serde(default)]
    pub following: Option<String>,
    /// Colours of this database's followers.
    #[serde(default)]
    pub followers: Vec<String>,
    /// On a logical follower: `logical (PostgreSQL 15 → 18)`; none on a
    /// physical one (streaming WAL, the leader's major).
    #[serde(default)]
    pub replication: Option<String>,
    /// On a follower: how far behind its leader it is.
    #[serde(default)]
    pub behind_by: Option<Lag>,
    /// On premium and enterprise plans: `Available`, or `Temporarily
    /// Unavailable` while the standby is built or too far behind.
    #[serde(default)]
    pub ha_status: Option<String>,
    /// The newest completed backup of this database:
    /// `b003 (2026-12-01 22:10 UTC, 1.2 MB)`.
    #[serde(default)]
    pub last_backup: Option<LastBackup>,
    /// Continuous protection (standard, premium, enterprise): how far back
    /// it can be rolled.
    #[serde(default)]
    pub rollback: Option<crate::archive::RollbackInfo>,
    /// While a follower's copy (`pg_basebackup`) runs: bytes copied of
    /// the total.
    #[serde(default)]
    pub copy: Option<CopyProgress>,
    /// On a leader with a read endpoint: colours of the followers serving
    /// `DATABASE_FOLLOWER_URL` (`LEADER` when reads fall back to it).
    #[serde(default)]
    pub serving_reads: Option<Vec<String>>,
    /// On a follower of a leader with a read endpoint: whether it serves.
    #[serde(default)]
    pub serves_reads: Option<crate::reads::ServesReads>,
}

/// How far a copy of a database's files has got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CopyProgress {
    pub done_bytes: u64,
    pub total_bytes: u64,
}

/// The newest completed backup of a database, for `pg:info`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LastBackup {
    pub name: String,
    pub finished_at: DateTime<Utc>,
    pub size_bytes: u64,
}

/// How far a follower is behind its leader.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Lag {
    /// Commit records between the follower's replay position and the
    /// leader's current WAL position.
    pub commits: u64,
    /// True when the gap was too large to count to its end: then the
    /// follower is *more than* `commits` behind.
    pub more_than: bool,
    /// Bytes of WAL between the two positions.
    pub bytes: u64,
    /// Seconds since the last transaction the follower replayed was
    /// committed on the leader; 0 when it has replayed everything.
    pub seconds: f64,
    /// Whether it is streaming from the leader right now.
    pub streaming: bool,
}

impl Lag {
    /// `125 commits`, `more than 100000 commits`.
    pub fn commits_label(&self) -> String {
        let unit = if self.commits == 1 && !self.more_than {
            "commit"
        } else {
            "commits"
        };
        if self.more_than {
            format!("more than {} {unit}", self.commits)
        } else {
            format!("{} {unit}", self.commits)
        }
    }
}

/// One backend in `pg:ps`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Backend {
    pub pid: i32,
    pub user: String,
    pub application_name: String,
    pub client_addr: Option<String>,
    pub state: String,
    pub waiting: bool,
    /// Seconds since the current query (or transaction) started.
    pub running_for_secs: f64,
    pub query: String,
}

/// `POST .../kill`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KillRequest {
    pub pid: i32,
    /// Terminate the connection instead of cancelling its query.
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KillResponse {
    pub pid: i32,
    pub force: bool,
    /// What PostgreSQL answered: true when the signal was sent.
    pub signalled: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KillAllResponse {
    pub terminated: Vec<i32>,
}

/// How to connect to a database.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Credentials {
    pub url: String,
    pub host: String,
    pub port: u16,
    pub database: String,
    pub user: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("database", &self.database)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// `POST .../credentials/rotate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Confirm {
    /// The app's name, typed back.
    pub confirm: String,
}

/// `POST .../unfollow` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UnfollowResponse {
    pub name: String,
    pub color: Color,
    /// The colour of the leader it stops following.
    pub leader: String,
    pub operation: String,
    pub message: String,
}

/// `POST .../promote`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PromoteRequest {
    /// Promote a database that is still preparing.
    #[serde(default)]
    pub force: bool,
    /// Unfollow a follower first, so that it becomes writable.
    #[serde(default)]
    pub unfollow: bool,
}

/// `POST .../promote` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PromoteResponse {
    pub name: String,
    pub color: Color,
    /// The colour of the database that held `DATABASE_URL` before, if any.
    pub previous: Option<String>,
    /// The unfollow started for it, with `unfollow`.
    pub operation: Option<String>,
    /// Several lines: what happened, and warnings.
    pub message: String,
}

/// How an app's endpoint pools server connections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// A client holds a server connection for one transaction (the
    /// default): more clients than server connections, prepared statements
    /// carried, no session state between transactions.
    #[default]
    Transaction,
    /// A client holds a server connection until it disconnects: SET,
    /// LISTEN/NOTIFY, advisory locks, temporary tables and WITH HOLD
    /// cursors work; at most the pool's size of clients at once; a
    /// changeover ends the open sessions.
    Session,
}

impl PoolMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PoolMode::Transaction => "transaction",
            PoolMode::Session => "session",
        }
    }
}

impl std::fmt::Display for PoolMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for PoolMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "transaction" => Ok(PoolMode::Transaction),
            "session" => Ok(PoolMode::Session),
            other => Err(format!(
                "pool mode {other:?} is neither `transaction` nor `session`"
            )),
        }
    }
}

/// `GET`/`PUT /v1/apps/{app}/endpoint/mode`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EndpointMode {
    pub app: String,
    pub pool_mode: PoolMode,
}

/// `GET`/`PUT /v1/apps/{app}/maintenance`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Maintenance {
    pub app: String,
    /// While on, the app's endpoint refuses connections (clients get an
    /// error) and closes the open ones: no write reaches the app's
    /// databases through `DATABASE_URL`.
    pub on: bool,
}

/// `POST .../changeover`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChangeoverRequest {
    /// Only check and say what would be done.
    #[serde(default)]
    pub dry_run: bool,
    /// How long the follower may take to catch up while writes are held
    /// (default 30 s); past it the changeover resumes on the old primary.
    #[serde(default)]
    pub catch_up_timeout_secs: Option<u64>,
    /// When a client keeps a transaction open past the pause deadline,
    /// give up (and resume) instead of ending its server connection.
    #[serde(default)]
    pub no_kill: bool,
    /// The leader is gone (its host does not answer): make the follower
    /// writable at once and route `DATABASE_URL` to it, keeping what it
    /// had received (the reference's manual failover, in one command).
    #[serde(default)]
    pub leader_lost: bool,
}

/// One step of a changeover.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChangeoverStep {
    pub name: String,
    pub millis: f64,
    pub detail: String,
}

/// `POST .../changeover` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChangeoverReport {
    /// The new primary's colour.
    pub promoted: String,
    /// The old primary's colour.
    pub previous: String,
    pub dry_run: bool,
    pub steps: Vec<ChangeoverStep>,
    /// How long new transactions were held at the endpoint.
    pub write_pause_ms: f64,
    pub message: String,
}

/// `GET /v1/apps/{app}/billing`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Billing {
    pub app: String,
    pub lines: Vec<BillingLine>,
    /// Sum of `cost_usd`.
    pub total_usd: f64,
    /// Backup storage per database: logical backups and its lineage's
    /// continuous-protection archive, against what its plan includes.
    #[serde(default)]
    pub backup_storage: Vec<BackupStorageLine>,
    /// Sum of `extra_usd_per_month`, charged from now on at this rate.
    #[serde(default)]
    pub backup_extra_usd_per_month: f64,
}

/// Backup storage of one database (its logical backups and, on a
/// protected primary, its lineage's archive).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BackupStorageLine {
    pub database: String,
    pub color: Color,
    /// Its plan, or `-` once the database is gone.
    pub plan: String,
    pub logical_bytes: u64,
    pub archive_bytes: u64,
    /// Backup storage the plan includes (as much as its data storage).
    pub included_bytes: u64,
    /// What the storage beyond that costs per month.
    pub extra_usd_per_month: f64,
}

/// What one database has cost so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BillingLine {
    pub database: String,
    pub color: Color,
    pub plan: String,
    pub price_per_month: u32,
    pub started_at: DateTime<Utc>,
    /// When it was destroyed; none while it runs.
    pub ended_at: Option<DateTime<Utc>>,
    pub seconds: i64,
    pub cost_usd: f64,
}

/// A durable piece of work.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Operation {
    pub id: String,
    /// `provision`, `destroy`, ...
    pub kind: String,
    /// Add-on name of the database it works on.
    pub database: String,
    /// `pending`, `running`, `done`, `failed`.
    pub state: String,
    /// The step it is at, or the last one it did.
    pub step: String,
    pub progress_percent: Option<u8>,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The app of the database it works on.
    #[serde(default)]
    pub app: Option<String>,
    /// The colour of the database it works on.
    #[serde(default)]
    pub color: Option<String>,
    /// While it copies a database's files: bytes copied of the total.
    #[serde(default)]
    pub copy: Option<CopyProgress>,
    /// What it found, when it reports something (a dry-run upgrade: how
    /// long it took).
    #[serde(default)]
    pub detail: Option<String>,
}

/// One measurement of a follower's Behind By.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LagPoint {
    pub at: DateTime<Utc>,
    pub commits: u64,
    pub seconds: f64,
    pub bytes: u64,
}

/// A follower's Behind By over the last hour, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FollowerLag {
    pub app: String,
    pub color: Color,
    /// Add-on name.
    pub name: String,
    /// The leader's colour.
    pub leader: String,
    pub points: Vec<LagPoint>,
}

/// A finished failover or changeover, drawn on the lag charts of its app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LagMarker {
    pub at: DateTime<Utc>,
    /// `failover` or `changeover`.
    pub kind: String,
    pub app: String,
    /// The colour of the database the operation was on.
    pub database: String,
    /// `done` or `failed`.
    pub state: String,
}

/// `GET /v1/apps/{app}/lag-history`: Behind By of each follower of the app,
/// sampled by the control plane every few seconds for the last hour, and
/// the failovers and changeovers of that hour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LagHistory {
    /// Seconds between two samples.
    pub interval_secs: u64,
    pub followers: Vec<FollowerLag>,
    pub markers: Vec<LagMarker>,
}

/// What `pg:locks`, `pg:blocking`, `pg:outliers`, `pg:bloat`,
/// `pg:vacuum-stats`, `pg:index-usage` and the checks of `pg:diagnose` read
/// from a database (one SQL query each, run by the database's agent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum ExtrasReport {
    /// Locks held or awaited by the database's sessions.
    Locks,
    /// Queries waiting for a lock, and the sessions holding it.
    Blocking,
    /// The statements that took the most time (pg_stat_statements).
    Outliers,
    /// Estimated table and index bloat.
    Bloat,
    /// Dead rows and (auto)vacuum per table.
    VacuumStats,
    /// How often each table is read through an index.
    IndexUsage,
    /// Client connections of the whole server.
    Connections,
    /// Active queries, oldest first.
    LongRunning,
    /// Sessions idle inside a transaction, oldest first.
    IdleInTransaction,
    /// Indexes never scanned (unique ones excepted), largest first.
    UnusedIndexes,
    /// Indexes left invalid (a failed `CREATE INDEX CONCURRENTLY`).
    InvalidIndexes,
    /// Buffer cache hit rates of tables and indexes.
    CacheHit,
    /// How much of each sequence's range is used.
    Sequences,
    /// Transaction ID age of each database.
    Wraparound,
    /// Replication slots and the WAL each holds.
    Slots,
}

impl ExtrasReport {
    pub const ALL: [ExtrasReport; 15] = [
        ExtrasReport::Locks,
        ExtrasReport::Blocking,
        ExtrasReport::Outliers,
        ExtrasReport::Bloat,
        ExtrasReport::VacuumStats,
        ExtrasReport::IndexUsage,
        ExtrasReport::Connections,
        ExtrasReport::LongRunning,
        ExtrasReport::IdleInTransaction,
        ExtrasReport::UnusedIndexes,
        ExtrasReport::InvalidIndexes,
        ExtrasReport::CacheHit,
        ExtrasReport::Sequences,
        ExtrasReport::Wraparound,
        ExtrasReport::Slots,
    ];

    /// Its name in URLs: `vacuum-stats`.
    pub fn as_str(self) -> &'static str {
        match self {
            ExtrasReport::Locks => "locks",
            ExtrasReport::Blocking => "blocking",
            ExtrasReport::Outliers => "outliers",
            ExtrasReport::Bloat => "bloat",
            ExtrasReport::VacuumStats => "vacuum-stats",
            ExtrasReport::IndexUsage => "index-usage",
            ExtrasReport::Connections => "connections",
            ExtrasReport::LongRunning => "long-running",
            ExtrasReport::IdleInTransaction => "idle-in-transaction",
            ExtrasReport::UnusedIndexes => "unused-indexes",
            ExtrasReport::InvalidIndexes => "invalid-indexes",
            ExtrasReport::CacheHit => "cache-hit",
            ExtrasReport::Sequences => "sequences",
            ExtrasReport::Wraparound => "wraparound",
            ExtrasReport::Slots => "slots",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// A report's answer: column names, then rows of text cells (`None` for
/// SQL NULL), as PostgreSQL printed each value.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExtrasTable {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<String>>>,
}

impl ExtrasTable {
    /// Cell `column` of row `row`, if the column exists and is not NULL.
    pub fn cell(&self, row: usize, column: &str) -> Option<&str> {
        let i = self.columns.iter().position(|c| c == column)?;
        self.rows.get(row)?.get(i)?.as_deref()
    }

    /// Cell `column` of row `row` as a number.
    pub fn number(&self, row: usize, column: &str) -> Option<f64> {
        self.cell(row, column)?.trim().parse().ok()
    }
}

/// A check's verdict, as `pg:diagnose` colours it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    Green,
    Yellow,
    Red,
    /// The check could not run (the reason is its message).
    Skipped,
}

impl CheckStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckStatus::Green => "green",
            CheckStatus::Yellow => "yellow",
            CheckStatus::Red => "red",
            CheckStatus::Skipped => "skipped",
        }
    }
}

/// One check of `pg:diagnose`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Check {
    /// `connections`, `idle-in-transaction`, ...
    pub name: String,
    pub status: CheckStatus,
    /// One sentence: what was found.
    pub message: String,
    /// What it found, one item per line (a session, an index, ...).
    #[serde(default)]
    pub details: Vec<String>,
}

/// `GET /v1/apps/{app}/databases/{db}/diagnose`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Diagnosis {
    /// The database's colour.
    pub database: String,
    pub checks: Vec<Check>,
}

/// `POST /v1/apps/{app}/databases/{db}/upgrade`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UpgradeRequest {
    /// The PostgreSQL major to upgrade to (`18`).
    pub version: u32,
    /// Upgrade a throwaway copy and report how long it took; the database
    /// is not touched.
    #[serde(default)]
    pub dry_run: bool,
    /// The app's name typed back (needed unless `dry_run`).
    #[serde(default)]
    pub confirm: Option<String>,
}

/// `POST .../upgrade` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UpgradeResponse {
    pub name: String,
    pub color: Color,
    /// The upgrade (or dry run) operation; a follower's unfollow runs first.
    pub operation: String,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_is_named_in_urls_as_in_json() {
        for r in ExtrasReport::ALL {
            let json = serde_json::to_value(r).unwrap();
            assert_eq!(json, r.as_str(), "{r:?}");
            assert_eq!(ExtrasReport::parse(r.as_str()), Some(r));
        }
        assert_eq!(ExtrasReport::parse("vacuum_stats"), None);
    }

    #[test]
    fn report_cells_are_read_by_column() {
        let t = ExtrasTable {
            columns: vec!["pid".into(), "secs".into()],
            rows: vec![vec![Some("42".into()), None]],
        };
        assert_eq!(t.cell(0, "pid"), Some("42"));
        assert_eq!(t.number(0, "pid"), Some(42.0));
        assert_eq!(t.cell(0, "secs"), None);
        assert_eq!(t.cell(0, "nope"), None);
        assert_eq!(t.cell(1, "pid"), None);
    }
}
