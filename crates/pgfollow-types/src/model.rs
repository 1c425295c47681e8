//! The control plane's state: what is wanted (spec) and what was last seen
//! (status) of every app, database, operation and host. The catalog stores
//! one [`State`] under a revision; every write is a compare-and-swap of it.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::agent::RoleSecret;
use crate::api::DatabaseState;
use crate::names::{AppName, Color};
use crate::plan::Plan;

/// Everything the control plane knows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub apps: BTreeMap<String, AppRecord>,
    /// By database id.
    pub databases: BTreeMap<String, DatabaseRecord>,
    /// By operation id.
    pub operations: BTreeMap<String, OperationRecord>,
    /// By host name.
    pub hosts: BTreeMap<String, HostRecord>,
    /// Every database ever provisioned, for pro-rata billing.
    pub billing: Vec<BillingRecord>,
    /// Counter for ids, so they never repeat.
    pub next_serial: u64,
    /// Logical backups, by `APP/NAME` (`sushi/b001`).
    #[serde(default)]
    pub backups: BTreeMap<String, crate::backup::BackupRecord>,
    /// Daily backup schedules, by database id.
    #[serde(default)]
    pub backup_schedules: BTreeMap<String, crate::backup::BackupSchedule>,
    /// The last backup number given per app and kind (`sushi/b` → 3).
    #[serde(default)]
    pub backup_numbers: BTreeMap<String, u32>,
    /// Continuous protection: each lineage's pgBackRest archive, by stanza.
    #[serde(default)]
    pub protection: BTreeMap<String, crate::archive::ProtectionRecord>,
    /// The stanza each protected database archives into, by database id.
    #[serde(default)]
    pub archive_of: BTreeMap<String, String>,
    /// Databases made by `--rollback`, by database id.
    #[serde(default)]
    pub rollbacks: BTreeMap<String, crate::archive::RollbackRecord>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppRecord {
    pub name: AppName,
    pub created_at: DateTime<Utc>,
    /// Config vars set by the user (database URLs are derived, not stored).
    pub config: BTreeMap<String, String>,
    /// Attachment name (`DATABASE`, `PGFOLLOW_POSTGRESQL_WHITE`) → database id.
    pub attachments: BTreeMap<String, String>,
    /// The stable addresses `DATABASE_URL` lists, once the app has them:
    /// a PgBouncer on each of up to [`ENDPOINTS_PER_APP`] hosts, in the
    /// order clients try them. (Catalogs written before there were several
    /// hold one, as `endpoint`.)
    #[serde(default, alias = "endpoint", deserialize_with = "one_or_more")]
    pub endpoints: Vec<EndpointRecord>,
    /// While on, the endpoint refuses connections: no writes reach the
    /// app's databases through `DATABASE_URL`.
    #[serde(default)]
    pub maintenance: bool,
    /// How the endpoint pools server connections.
    #[serde(default)]
    pub pool_mode: crate::api::PoolMode,
    /// `DATABASE_FOLLOWER_URL`'s settings and what it last did.
    #[serde(default)]
    pub read: crate::reads::ReadEndpointRecord,
}

/// Hosts an app's endpoints run on when there are that many.
pub const ENDPOINTS_PER_APP: usize = 2;

/// `null`, one endpoint (older catalogs) or a list of them.
fn one_or_more<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<EndpointRecord>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMore {
        One(EndpointRecord),
        More(Vec<EndpointRecord>),
    }
    Ok(match Option::<OneOrMore>::deserialize(d)? {
        None => Vec::new(),
        Some(OneOrMore::One(e)) => vec![e],
        Some(OneOrMore::More(v)) => v,
    })
}

impl AppRecord {
    /// Whether the app has its endpoints yet.
    pub fn has_endpoint(&self) -> bool {
        !self.endpoints.is_empty()
    }

    /// Its endpoint on `host`.
    pub fn endpoint_on(&self, host: &str) -> Option<&EndpointRecord> {
        self.endpoints.iter().find(|e| e.host == host)
    }

    pub fn endpoint_on_mut(&mut self, host: &str) -> Option<&mut EndpointRecord> {
        self.endpoints.iter_mut().find(|e| e.host == host)
    }
}

/// An app's endpoint: a PgBouncer on one host, run by its agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRecord {
    /// Its directory name on the host.
    pub id: String,
    pub host: String,
    pub port: u16,
    /// The database it was last pointed at (id), none before the first time.
    #[serde(default)]
    pub applied: Option<String>,
    /// The operation that holds (pauses) it, written before the PAUSE.
    /// An endpoint held by an operation that is no longer active is
    /// resumed by reconciliation.
    #[serde(default)]
    pub held_by: Option<String>,
}

/// Whether a database should exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Desired {
    Running,
    Absent,
}

/// One database: its spec (what it should be) and status (what it is).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatabaseRecord {
    /// Stable id, also the cluster's directory name: `db-000001-3f9a`.
    pub id: String,
    /// The add-on name users see: `postgresql-curved-48213`.
    pub name: String,
    /// The app that owns it.
    pub app: AppName,
    pub color: Color,
    /// The plan as it was when the database was created.
    pub plan: Plan,
    pub host: String,
    pub port: u16,
    /// The app's database inside the cluster.
    pub database: String,
    pub owner: RoleSecret,
    pub replication: RoleSecret,
    pub pg_major: u32,
    pub created_at: DateTime<Utc>,
    pub desired: Desired,
    pub state: DatabaseState,
    /// Why it failed, or what it waits for.
    pub status_detail: Option<String>,
    /// `server_version` last seen.
    pub pg_version: Option<String>,
    /// On a follower: the id of the leader it streams from.
    #[serde(default)]
    pub following: Option<String>,
    /// A fresh fork (an unfollowed follower) that cannot be followed yet.
    #[serde(default)]
    pub fork_pending: bool,
    /// On an HA leader (premium, enterprise): its standby's id.
    #[serde(default)]
    pub ha_standby: Option<String>,
    /// An HA standby: a follower attached to no app, shown in no list.
    #[serde(default)]
    pub hidden: bool,
    /// Commits wait for the HA standby (plan setting or `--sync`).
    #[serde(default)]
    pub sync: bool,
    /// The synchronous standby its running configuration names.
    #[serde(default)]
    pub sync_applied: Option<String>,
    /// Sync mode keeps waiting for a lost standby instead of letting
    /// commits go on without it (`--sync strict`, or the plan's setting).
    #[serde(default)]
    pub sync_strict: bool,
    /// The control plane told this primary to stop waiting for its lost
    /// synchronous standby; it waits again once the standby is back.
    #[serde(default)]
    pub sync_suspended: bool,
    /// On an HA primary: the last measurement of its standby's lag.
    #[serde(default)]
    pub standby_lag: Option<LagSample>,
    /// The WAL timeline it was last seen writing on, as a primary.
    #[serde(default)]
    pub timeline: Option<u32>,
    /// The owner's next password while a rotation rolls it out: set in the
    /// catalog before the role gets it, so no password is ever one that
    /// only the database knows.
    #[serde(default)]
    pub pending_owner: Option<RoleSecret>,
    /// A primary that gave its HA standby to the database that replaced it
    /// behind `DATABASE_URL` (a changeover): it gets no new one until it is
    /// behind `DATABASE_URL` again.
    #[serde(default)]
    pub ha_released: bool,
    /// Made as a logical follower (publication and subscription, possibly
    /// on a newer major than its leader) rather than a physical copy; it
    /// stays set after it stops following.
    #[serde(default)]
    pub logical: bool,
}

/// One time-stamped measurement of how far a standby is behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LagSample {
    /// WAL bytes between the standby's replay and the primary's position.
    pub bytes: u64,
    pub measured_at: DateTime<Utc>,
}

impl DatabaseRecord {
    pub fn is_follower(&self) -> bool {
        self.following.is_some()
    }

    /// A follower fed by logical replication (`logical` and following).
    pub fn is_logical_follower(&self) -> bool {
        self.logical && self.following.is_some()
    }

    pub fn is_live(&self) -> bool {
        self.desired == Desired::Running
    }

    /// The replication slot that keeps WAL on the leader for this follower.
    pub fn slot_name(&self) -> String {
        format!("pgfollow_{}", self.id.replace('-', "_"))
    }
}

/// What an operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OperationKind {
    Provision,
    Destroy,
    /// A follower stops following and becomes a writable fork.
    Unfollow,
    /// A failed-over primary comes back as its successor's standby.
    Rejoin,
    /// An HA standby replaces its lost primary (on the primary's record;
    /// `subject` is the standby). Run step by step by the failover runner.
    Failover,
    /// A follower whose leader was replaced follows the new one.
    Repoint,
    /// `pg:changeover`: the app moves to this follower (`subject` is the
    /// old primary) with writes held at the endpoint.
    Changeover,
    /// `pg:credentials:rotate`: the owner role gets a new password.
    Rotate,
    /// A logical backup (`pg:backups:capture`, or a schedule) of the
    /// database; `subject` is the backup's key.
    Backup,
    /// A backup (`subject`) restored into the database.
    Restore,
    /// The HA monitor suspects the primary is lost: its endpoints hold new
    /// transactions (so clients wait rather than fail) until it is judged
    /// healthy again or a failover takes the hold over.
    Hold,
    /// `pg:upgrade`: `pg_upgrade` to a newer major (`subject`:
    /// `upgrade:18`), or a dry run of it on a throwaway copy
    /// (`dry-run:18`; `reason` then says how long it took).
    Upgrade,
}

impl OperationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OperationKind::Provision => "provision",
            OperationKind::Destroy => "destroy",
            OperationKind::Unfollow => "unfollow",
            OperationKind::Rejoin => "rejoin",
            OperationKind::Failover => "failover",
            OperationKind::Repoint => "repoint",
            OperationKind::Changeover => "changeover",
            OperationKind::Rotate => "rotate",
            OperationKind::Backup => "backup",
            OperationKind::Restore => "restore",
            OperationKind::Upgrade => "upgrade",
            OperationKind::Hold => "hold",
        }
    }

    /// Backup and restore run beside a database's own operations, in the
    /// backups loop, not the executor's.
    pub fn is_backup(self) -> bool {
        matches!(self, OperationKind::Backup | OperationKind::Restore)
    }

    /// Operations that run beside a database's own, not through the
    /// executor's steps: backups, and an HA hold (a crashed primary under
    /// suspicion must still be restarted).
    pub fn runs_beside(self) -> bool {
        self.is_backup() || self == OperationKind::Hold
    }
}

/// Where an operation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OperationState {
    Pending,
    Running,
    Done,
    Failed,
}

impl OperationState {
    pub fn is_active(self) -> bool {
        matches!(self, OperationState::Pending | OperationState::Running)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OperationState::Pending => "pending",
            OperationState::Running => "running",
            OperationState::Done => "done",
            OperationState::Failed => "failed",
        }
    }
}

/// One durable, resumable piece of work on one database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperationRecord {
    pub id: String,
    pub kind: OperationKind,
    pub database: String,
    pub state: OperationState,
    /// Steps completed, in order (names from the planner's actions).
    pub done: Vec<String>,
    /// Consecutive failures of the current step.
    pub failures: u32,
    pub last_error: Option<String>,
    pub progress_percent: Option<u8>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The other database the operation concerns: for an unfollow, the
    /// leader the database followed; for a failover, the standby.
    #[serde(default)]
    pub subject: Option<String>,
    /// Why it was started (a failover: what the monitor saw).
    #[serde(default)]
    pub reason: Option<String>,
}

impl OperationRecord {
    /// A pending operation of `kind` on `database`, with nothing done yet.
    pub fn new(id: &str, kind: OperationKind, database: &str, now: DateTime<Utc>) -> Self {
        Self {
            id: id.to_string(),
            kind,
            database: database.to_string(),
            state: OperationState::Pending,
            done: Vec::new(),
            failures: 0,
            last_error: None,
            progress_percent: None,
            created_at: now,
            updated_at: now,
            subject: None,
            reason: None,
        }
    }

    pub fn has_done(&self, step: &str) -> bool {
        self.done.iter().any(|s| s == step)
    }
}

/// A host with an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    pub name: String,
    pub zone: Option<String>,
    /// The address apps use to reach this host's databases.
    pub address: String,
    /// The newest installation's bin directory, major and version.
    pub pg_bin: String,
    pub pg_major: u32,
    pub pg_version: String,
    /// Where a remote agent's API listens; none for the embedded agent.
    #[serde(default)]
    pub agent_url: Option<String>,
    /// Every major version installed on the host, newest first. Empty in
    /// records written before hosts had several: then only the fields above.
    #[serde(default)]
    pub majors: Vec<PgInstall>,
}

/// One PostgreSQL installation on a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PgInstall {
    pub major: u32,
    /// E.g. `18.6`.
    pub version: String,
    pub bin: String,
}

impl HostRecord {
    /// Every installation, newest first (the single one of an old record).
    pub fn installs(&self) -> Vec<PgInstall> {
        if self.majors.is_empty() {
            vec![PgInstall {
                major: self.pg_major,
                version: self.pg_version.clone(),
                bin: self.pg_bin.clone(),
            }]
        } else {
            self.majors.clone()
        }
    }

    pub fn has_major(&self, major: u32) -> bool {
        self.installs().iter().any(|i| i.major == major)
    }
}

/// The newest major version that every one of `hosts` has; none when they
/// share none (or there are none).
pub fn newest_common_major<'a>(hosts: impl IntoIterator<Item = &'a HostRecord>) -> Option<u32> {
    let mut common: Option<Vec<u32>> = None;
    for h in hosts {
        let majors: Vec<u32> = h.installs().iter().map(|i| i.major).collect();
        common = Some(match common {
            None => majors,
            Some(c) => c.into_iter().filter(|m| majors.contains(m)).collect(),
        });
    }
    common.and_then(|c| c.into_iter().max())
}

/// One database's life, for pro-rata billing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BillingRecord {
    pub app: AppName,
    pub database: String,
    pub color: Color,
    pub plan: String,
    pub price_per_month: u32,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_app_of_an_older_catalog_keeps_its_one_endpoint() {
        let app = |endpoint: &str| {
            format!(
                r#"{{"name":"sushi","created_at":"2026-01-01T00:00:00Z","config":{{}},"attachments":{{}}{endpoint}}}"#
            )
        };
        let ep = r#"{"id":"ep-sushi","host":"local","port":15400}"#;
        let read = |text: String| serde_json::from_str::<AppRecord>(&text).unwrap().endpoints;
        assert!(read(app("")).is_empty());
        assert!(read(app(r#","endpoint":null"#)).is_empty());
        assert_eq!(read(app(&format!(r#","endpoint":{ep}"#)))[0].port, 15400);
        let two = read(app(&format!(r#","endpoints":[{ep},{ep}]"#)));
        assert_eq!(two.len(), 2);
        // Before the read endpoint: its defaults.
        let old: AppRecord = serde_json::from_str(&app("")).unwrap();
        assert_eq!(old.read, crate::reads::ReadEndpointRecord::default());
    }

    fn host(name: &str, majors: &[u32]) -> HostRecord {
        HostRecord {
            name: name.into(),
            zone: None,
            address: "127.0.0.1".into(),
            pg_bin: format!("/pg/{}/bin", majors[0]),
            pg_major: majors[0],
            pg_version: format!("{}.1", majors[0]),
            agent_url: None,
            majors: majors
                .iter()
                .map(|m| PgInstall {
                    major: *m,
                    version: format!("{m}.1"),
                    bin: format!("/pg/{m}/bin"),
                })
                .collect(),
        }
    }

    #[test]
    fn newest_major_every_host_has() {
        let cases: &[(&[&[u32]], Option<u32>)] = &[
            (&[&[18, 15]], Some(18)),
            (&[&[18, 15], &[15]], Some(15)),
            (&[&[18, 15], &[18]], Some(18)),
            (&[&[18], &[15]], None),
            (&[], None),
        ];
        for (hosts, want) in cases {
            let hosts: Vec<HostRecord> = hosts
                .iter()
                .enumerate()
                .map(|(i, m)| host(&format!("h{i}"), m))
                .collect();
            assert_eq!(newest_common_major(&hosts), *want, "{hosts:?}");
        }
    }

    #[test]
    fn an_old_host_record_has_its_one_major() {
        let mut h = host("old", &[15]);
        h.majors.clear();
        let json = serde_json::to_value(&h).unwrap();
        let mut obj = json.as_object().unwrap().clone();
        obj.remove("majors");
        let back: HostRecord = serde_json::from_value(serde_json::Value::Object(obj)).unwrap();
        assert!(back.has_major(15));
        assert!(!back.has_major(18));
        assert_eq!(back.installs()[0].bin, "/pg/15/bin");
    }
}
