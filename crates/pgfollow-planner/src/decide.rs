//! One decision per call, built from small named predicates.

use pgfollow_types::agent::{ClusterStatus, SlotStatus};
use pgfollow_types::api::DatabaseState;
use pgfollow_types::api::Lag;
use pgfollow_types::model::{DatabaseRecord, Desired, OperationKind, OperationRecord};

/// The step recorded when `pg_rewind` failed and a fresh copy is needed.
pub const REWIND_FAILED: &str = "rewind-failed";

/// The step recorded when a slot could not be dropped because its leader's
/// host does not answer: it is left there (bounded by the plan's
/// `max_slot_wal_keep_size`) rather than holding the operation up.
pub const SLOT_LEFT: &str = "slot-left";

fn slot_handled(op: &OperationRecord) -> bool {
    op.has_done(Action::DropSlot.step()) || op.has_done(SLOT_LEFT)
}

/// A step gives up after failing this many times in a row.
pub const MAX_STEP_FAILURES: u32 = 3;

/// What the executor saw of a database's cluster this tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    /// The agent of the database's host did not answer.
    HostUnreachable(String),
    Cluster(ClusterStatus),
}

/// The next step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Create the data directory (initdb) and render its configuration.
    Initialize,
    /// Create the follower's replication slot on its leader.
    CreateSlot,
    /// Copy the leader with `pg_basebackup` and configure a standby.
    BaseBackup,
    /// A logical follower: the leader's schema (`pg_dump --schema-only`).
    CopySchema,
    /// A logical follower: a publication on the leader, a subscription
    /// (and its slot) on the follower.
    Subscribe,
    /// Measure the follower's lag; it is available once caught up.
    CheckCaughtUp,
    /// Drop a destroyed (or unfollowed) follower's slot on its leader.
    DropSlot,
    /// End recovery: the follower becomes writable.
    Promote,
    /// Render the configuration again (no upstream after an unfollow) and reload.
    Reconfigure,
    /// `CHECKPOINT`, so a fresh fork's new timeline is durable.
    Checkpoint,
    /// Check that a follower's leader still keeps the WAL it needs.
    CheckFollower,
    /// Wind an old primary back (`pg_rewind`) so it can follow its successor.
    Rewind,
    /// Rollback: commit, switch WAL and wait until the source's archive
    /// has everything up to now.
    SealArchive,
    /// Rollback: restore the source's archive as it was at the target into
    /// this database's cluster, and wait until it has recovered.
    RestoreArchive,
    /// `pg_upgrade` of the stopped cluster to the operation's major, in place.
    Upgrade,
    /// `pg_upgrade` of a throwaway copy, timed; the database keeps running.
    UpgradeDryRun,
    /// Start postgres.
    Start,
    /// Create the owner and replication roles and the app's database.
    Bootstrap,
    /// The provision is complete: the database is available.
    MarkAvailable,
    /// Stop postgres and remove the cluster's files.
    DestroyCluster,
    /// The cluster is gone: drop the database's records.
    Forget,
    /// Give up: remove what was created and show the reason.
    Fail(String),
    /// Give up on the operation, keep the database and its data, and show
    /// the reason.
    GiveUp(String),
    /// The operation no longer applies (its database is being destroyed).
    Cancel,
    /// Give the owner role its pending password (a rotation).
    SetPassword,
    /// The catalog takes the pending password as the owner's.
    CommitPassword,
    /// Endpoints that log in as the owner get its new password.
    SyncEndpoints,
    /// Nothing can be done this tick.
    Wait,
}

impl Action {
    /// The step name recorded in an operation once the action succeeded.
    pub fn step(&self) -> &'static str {
        match self {
            Action::Initialize => "initialize",
            Action::CreateSlot => "create-slot",
            Action::BaseBackup => "base-backup",
            Action::CopySchema => "copy-schema",
            Action::Subscribe => "subscribe",
            Action::CheckCaughtUp => "check-caught-up",
            Action::DropSlot => "drop-slot",
            Action::Promote => "promote",
            Action::Reconfigure => "reconfigure",
            Action::Checkpoint => "checkpoint",
            Action::CheckFollower => "check-follower",
            Action::Rewind => "rewind",
            Action::SealArchive => "seal-archive",
            Action::RestoreArchive => "restore-archive",
            Action::Upgrade => "upgrade",
            Action::UpgradeDryRun => "upgrade-dry-run",
            Action::Start => "start",
            Action::Bootstrap => "bootstrap",
            Action::MarkAvailable => "mark-available",
            Action::DestroyCluster => "destroy",
            Action::Forget => "forget",
            Action::Fail(_) => "fail",
            Action::GiveUp(_) => "give-up",
            Action::Cancel => "cancel",
            Action::SetPassword => "set-password",
            Action::CommitPassword => "commit-password",
            Action::SyncEndpoints => "sync-endpoints",
            Action::Wait => "wait",
        }
    }
}

/// A step and the sentence that explains it (logged once per tick).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub action: Action,
    pub sentence: String,
}

pub(crate) fn decision(db: &DatabaseRecord, action: Action, why: impl AsRef<str>) -> Decision {
    Decision {
        sentence: format!("{} ({} of {}): {}", db.color, db.name, db.app, why.as_ref()),
        action,
    }
}

fn has_given_up(op: &OperationRecord) -> bool {
    op.failures >= MAX_STEP_FAILURES
}

fn is_being_destroyed(db: &DatabaseRecord) -> bool {
    db.desired == Desired::Absent
}

/// The next step of `op` on `db`. `leader` is the database `db` follows,
/// when it is a follower and its leader still exists.
pub fn decide(
    db: &DatabaseRecord,
    op: &OperationRecord,
    observed: &Observed,
    leader: Option<&DatabaseRecord>,
) -> Decision {
    match op.kind {
        OperationKind::Provision if db.is_logical_follower() => {
            crate::logical::decide_logical_follower(db, op, observed, leader)
        }
        OperationKind::Provision if db.is_follower() => decide_follower(db, op, observed, leader),
        OperationKind::Provision if crate::protection::is_rollback(op) => {
            decide_rollback(db, op, observed)
        }
        OperationKind::Provision => decide_provision(db, op, observed),
        OperationKind::Destroy => decide_destroy(db, op, observed, leader),
        OperationKind::Unfollow => decide_unfollow(db, op, observed, leader),
        OperationKind::Rejoin => decide_rejoin(db, op, observed, leader),
        OperationKind::Repoint => decide_repoint(db, op, observed, leader),
        OperationKind::Failover => decision(
            db,
            Action::Wait,
            "failing over; the failover runner carries it out step by step",
        ),
        OperationKind::Rotate => decide_rotate(db, op, observed),
        OperationKind::Hold => decision(
            db,
            Action::Wait,
            "its endpoints hold new transactions while the HA monitor suspects it is lost",
        ),
        OperationKind::Changeover => decision(db, Action::Wait, "a changeover to it is under way"),
        OperationKind::Upgrade => decide_upgrade(db, op, observed),
        // backups branch: carried out by the control plane's backups loop.
        OperationKind::Backup | OperationKind::Restore => decision(
            db,
            Action::Wait,
            "a backup or restore runs in the backups loop",
        ),
    }
}

/// Rotate: the new password is in the catalog (pending) before the role
/// has it; then the role, then the catalog takes it, then the endpoints.
/// Every step is idempotent and the rotation never gives up: whatever
/// interrupts it, the role, the catalog and the endpoints end up agreeing.
fn decide_rotate(db: &DatabaseRecord, op: &OperationRecord, observed: &Observed) -> Decision {
    if is_being_destroyed(db) {
        return decision(
            db,
            Action::Cancel,
            "it is being destroyed; the rotation stops",
        );
    }
    if let Observed::HostUnreachable(host) = observed {
        return decision(
            db,
            Action::Wait,
            format!("host {host} does not answer; the rotation waits"),
        );
    }
    let next = [
        (
            Action::SetPassword,
            "giving the owner role its new password",
        ),
        (
            Action::CommitPassword,
            "recording the new password as the owner's",
        ),
        (
            Action::SyncEndpoints,
            "giving the endpoints the new password",
        ),
    ]
    .into_iter()
    .find(|(a, _)| !op.has_done(a.step()));
    match next {
        Some((action, why)) => decision(db, action, why),
        None => decision(db, Action::Wait, "the rotation is done"),
    }
}

/// The catalog's side of a rotation: the pending password becomes the
/// owner's, on the database and on its followers (they are copies).
pub fn commit_password(state: &mut pgfollow_types::model::State, id: &str) {
    let Some(new) = state
        .databases
        .get_mut(id)
        .and_then(|d| d.pending_owner.take())
    else {
        return;
    };
    for d in state.databases.values_mut() {
        if d.id == id || d.following.as_deref() == Some(id) {
            d.owner = new.clone();
        }
    }
}

/// Repoint: a follower whose leader failed over follows the new primary:
/// a slot on it, the new `primary_conninfo` (reloaded), then caught up.
fn decide_repoint(
    db: &DatabaseRecord,
    op: &OperationRecord,
    observed: &Observed,
    leader: Option<&DatabaseRecord>,
) -> Decision {
    let cluster = match preamble(db, op, observed, "repoint") {
        Ok(c) => c,
        Err(d) => return d,
    };
    let Some(l) = leader.filter(|l| l.is_live()) else {
        return decision(
            db,
            Action::Fail("its new leader is gone".into()),
            "its new leader is gone; giving up",
        );
    };
    if !op.has_done(Action::CreateSlot.step()) {
        return decision(
            db,
            Action::CreateSlot,
            format!(
                "its leader failed over: creating its slot on {} (the new primary)",
                l.color
            ),
        );
    }
    if !cluster.running {
        return decision(
            db,
            Action::Start,
            "not running; starting it as a hot standby",
        );
    }
    if !op.has_done(Action::Reconfigure.step()) {
        return decision(
            db,
            Action::Reconfigure,
            format!("pointing it at {} on host {}", l.color, l.host),
        );
    }
    decision(
        db,
        Action::CheckCaughtUp,
        format!(
            "streaming from the new primary {}; checking whether it has caught up",
            l.color
        ),
    )
}

/// Rejoin: an old primary comes back as the standby of the database that
/// replaced it. Its files are removed first, so it can never start as a
/// primary again, then it is copied afresh like any new follower.
fn decide_rejoin(
    db: &DatabaseRecord,
    op: &OperationRecord,
    observed: &Observed,
    leader: Option<&DatabaseRecord>,
) -> Decision {
    if is_being_destroyed(db) {
        return decision(
            db,
            Action::Cancel,
            "it is being destroyed; it will not rejoin",
        );
    }
    if let Observed::HostUnreachable(host) = observed {
        return decision(
            db,
            Action::Wait,
            format!("host {host} is still down; it rejoins as a standby when it is back"),
        );
    }
    let Observed::Cluster(cluster) = observed else {
        return decision(db, Action::Wait, "waiting for its host");
    };
    let rewound = op.has_done(Action::Rewind.step());
    let copy_afresh = op.has_done(REWIND_FAILED) || !cluster.initialized;
    if !rewound && !copy_afresh && op.has_done(Action::CreateSlot.step()) {
        return decision(
            db,
            Action::Rewind,
            "back after a failover: winding it back with pg_rewind to follow its successor",
        );
    }
    if !rewound && copy_afresh && cluster.initialized && !op.has_done(Action::DestroyCluster.step())
    {
        return decision(
            db,
            Action::DestroyCluster,
            "pg_rewind could not work: removing its old data to copy it afresh",
        );
    }
    decide_follower(db, op, observed, leader)
}

/// Unfollow: promote, drop the upstream from the configuration, drop the
/// slot on the old leader, checkpoint; then the fork can be followed.
/// `leader` is the database it followed.
fn decide_unfollow(
    db: &DatabaseRecord,
    op: &OperationRecord,
    observed: &Observed,
    leader: Option<&DatabaseRecord>,
) -> Decision {
    let cluster = match preamble(db, op, observed, "unfollow") {
        Ok(c) => c,
        Err(d) => return d,
    };
    if !cluster.running {
        return decision(
            db,
            Action::Start,
            "not running; starting it before it stops following",
        );
    }
    if !op.has_done(Action::Promote.step()) {
        return decision(
            db,
            Action::Promote,
            "promoting it: it stops following and becomes writable",
        );
    }
    if !op.has_done(Action::Reconfigure.step()) {
        return decision(
            db,
            Action::Reconfigure,
            "removing its leader from its configuration",
        );
    }
    if let Some(l) = leader.filter(|l| l.is_live()) {
        if !slot_handled(op) {
            return decision(
                db,
                Action::DropSlot,
                format!("dropping its replication slot on {}", l.color),
            );
        }
    }
    if !op.has_done(Action::Checkpoint.step()) {
        return decision(db, Action::Checkpoint, "checkpointing its new timeline");
    }
    decision(
        db,
        Action::MarkAvailable,
        "unfollowed: it is a fork that can be followed",
    )
}

pub(crate) fn leader_is_usable(leader: Option<&DatabaseRecord>) -> bool {
    leader.is_some_and(|l| l.is_live() && l.state == DatabaseState::Available)
}

fn decide_follower(
    db: &DatabaseRecord,
    op: &OperationRecord,
    observed: &Observed,
    leader: Option<&DatabaseRecord>,
) -> Decision {
    if is_being_destroyed(db) {
        return decision(
            db,
            Action::Cancel,
            "it is being destroyed; the provision stops",
        );
    }
    if let Some(d) = give_up(db, op) {
        return d;
    }
    let Some(l) = leader.filter(|l| l.is_live()) else {
        return decision(
            db,
            Action::Fail("its leader was destroyed before the follower was ready".into()),
            "its leader is gone; giving up",
        );
    };
    let cluster = match observed {
        Observed::HostUnreachable(host) => {
            return decision(
                db,
                Action::Wait,
                format!("host {host} does not answer; waiting"),
            )
        }
        Observed::Cluster(c) => c,
    };
    if !op.has_done(Action::CreateSlot.step()) {
        if !leader_is_usable(Some(l)) {
            return decision(
                db,
                Action::Wait,
                format!("waiting for its leader {} to be available", l.color),
            );
        }
        return decision(
            db,
            Action::CreateSlot,
            format!("creating its replication slot on {}", l.color),
        );
    }
    if !cluster.initialized {
        return decision(
            db,
            Action::BaseBackup,
            format!("copying {} with pg_basebackup", l.color),
        );
    }
    if !cluster.running {
        return decision(
            db,
            Action::Start,
            "copied but not running; starting it as a hot standby",
        );
    }
    decision(
        db,
        Action::CheckCaughtUp,
        format!(
            "streaming from {}; checking whether it has caught up",
            l.color
        ),
    )
}

/// What every operation that works on a running cluster checks first: the
/// database is being destroyed, the step failed too often, or its host does
/// not answer. Otherwise, the cluster it observed.
pub(crate) fn preamble<'a>(
    db: &DatabaseRecord,
    op: &OperationRecord,
    observed: &'a Observed,
    what: &str,
) -> Result<&'a ClusterStatus, Decision> {
    if is_being_destroyed(db) {
        return Err(decision(
            db,
            Action::Cancel,
            format!("it is being destroyed; the {what} stops"),
        ));
    }
    if let Some(d) = give_up(db, op) {
        return Err(d);
    }
    match observed {
        Observed::HostUnreachable(host) => Err(decision(
            db,
            Action::Wait,
            format!("host {host} does not answer; waiting"),
        )),
        Observed::Cluster(c) => Ok(c),
    }
}

fn give_up(db: &DatabaseRecord, op: &OperationRecord) -> Option<Decision> {
    if !has_given_up(op) {
        return None;
    }
    let reason = op
        .last_error
        .clone()
        .unwrap_or_else(|| format!("the {} failed", op.kind.as_str()));
    // Only what is being built may be removed: a database that already
    // holds data (an unfollow, a repoint) keeps it, and says why it is stuck.
    let action = match op.kind {
        OperationKind::Provision | OperationKind::Rejoin => Action::Fail(reason.clone()),
        _ => Action::GiveUp(reason.clone()),
    };
    Some(decision(
        db,
        action,
        format!("giving up after {} failed attempts: {reason}", op.failures),
    ))
}

fn decide_provision(db: &DatabaseRecord, op: &OperationRecord, observed: &Observed) -> Decision {
    let cluster = match preamble(db, op, observed, "provision") {
        Ok(c) => c,
        Err(d) => return d,
    };
    if !cluster.initialized {
        return decision(
            db,
            Action::Initialize,
            "no data directory yet; initializing one",
        );
    }
    if !cluster.running {
        return decision(
            db,
            Action::Start,
            "initialized but not running; starting postgres",
        );
    }
    if !op.has_done(Action::Bootstrap.step()) {
        return decision(
            db,
            Action::Bootstrap,
            "running; creating its roles and database",
        );
    }
    decision(
        db,
        Action::MarkAvailable,
        "running and bootstrapped; it is available",
    )
}

/// The major a `pg:upgrade` goes to, and whether it is a dry run.
pub fn upgrade_target(op: &OperationRecord) -> Option<(u32, bool)> {
    let subject = op.subject.as_deref()?;
    let (dry, major) = match subject.split_once(':')? {
        ("upgrade", m) => (false, m),
        ("dry-run", m) => (true, m),
        _ => return None,
    };
    Some((major.parse().ok()?, dry))
}

/// `pg:upgrade`: a dry run on a copy, or (once it follows nothing)
/// pg_upgrade in place, start on the new major, available.
fn decide_upgrade(db: &DatabaseRecord, op: &OperationRecord, observed: &Observed) -> Decision {
    let cluster = match preamble(db, op, observed, "upgrade") {
        Ok(c) => c,
        Err(d) => return d,
    };
    let Some((major, dry)) = upgrade_target(op) else {
        return decision(
            db,
            Action::GiveUp("the upgrade names no version".into()),
            "the upgrade names no version; giving up",
        );
    };
    if dry {
        if !cluster.running {
            return decision(db, Action::Wait, "waits for it to run before the dry run");
        }
        return decision(
            db,
            Action::UpgradeDryRun,
            format!("dry run: upgrading a throwaway copy to PostgreSQL {major}"),
        );
    }
    if db.is_follower() {
        return decision(db, Action::Wait, "waits until it has stopped following");
    }
    if !op.has_done(Action::Upgrade.step()) {
        return decision(
            db,
            Action::Upgrade,
            format!(
                "stopping it and upgrading it from PostgreSQL {} to {major} with pg_upgrade",
                db.pg_major
            ),
        );
    }
    if !cluster.running {
        return decision(
            db,
            Action::Start,
            format!("upgraded; starting it on PostgreSQL {major}"),
        );
    }
    decision(
        db,
        Action::MarkAvailable,
        format!("running PostgreSQL {major}; it is available"),
    )
}

/// A rollback: a new database made from another's archive as it was at a
/// moment, instead of `initdb`.
fn decide_rollback(db: &DatabaseRecord, op: &OperationRecord, observed: &Observed) -> Decision {
    let cluster = match preamble(db, op, observed, "rollback") {
        Ok(c) => c,
        Err(d) => return d,
    };
    if !op.has_done(Action::SealArchive.step()) {
        return decision(
            db,
            Action::SealArchive,
            "making sure the source's archive holds everything up to the rollback's moment",
        );
    }
    if !op.has_done(Action::RestoreArchive.step()) {
        return decision(
            db,
            Action::RestoreArchive,
            "restoring the source's archive as it was at the rollback's moment",
        );
    }
    if !cluster.running {
        return decision(
            db,
            Action::Start,
            "restored but not running; starting postgres",
        );
    }
    if !op.has_done(Action::Bootstrap.step()) {
        return decision(
            db,
            Action::Bootstrap,
            "recovered; checking its roles and database",
        );
    }
    decision(db, Action::MarkAvailable, "rolled back; it is available")
}

fn decide_destroy(
    db: &DatabaseRecord,
    op: &OperationRecord,
    observed: &Observed,
    leader: Option<&DatabaseRecord>,
) -> Decision {
    let cluster = match observed {
        Observed::HostUnreachable(host) => {
            return decision(
                db,
                Action::Wait,
                format!("host {host} does not answer; waiting to remove it"),
            )
        }
        Observed::Cluster(c) => c,
    };
    if cluster.running || cluster.initialized || !op.has_done(Action::DestroyCluster.step()) {
        return decision(
            db,
            Action::DestroyCluster,
            "stopping postgres and removing its files",
        );
    }
    if let Some(l) = leader.filter(|l| l.is_live()) {
        if !slot_handled(op) {
            return decision(
                db,
                Action::DropSlot,
                format!("dropping its replication slot on {}", l.color),
            );
        }
    }
    decision(db, Action::Forget, "its files are gone; forgetting it")
}

/// Why a follower can no longer follow, judged from its slot on the
/// leader: gone, or invalidated because it fell further behind than the
/// plan lets a slot hold WAL back (`max_slot_wal_keep_size`).
pub fn follower_fell_off(slot: Option<&SlotStatus>) -> Option<String> {
    match slot {
        None => Some("its replication slot on the leader is gone".to_string()),
        Some(s) if s.wal_status.as_deref() == Some("lost") => Some(
            "it fell further behind than its leader keeps WAL for (the plan's max_slot_wal_keep_size), and the leader removed WAL it still needed".to_string(),
        ),
        Some(_) => None,
    }
}

/// A follower this close to its leader counts as caught up.
pub const CAUGHT_UP_COMMITS: u64 = 100;

/// Whether a preparing follower may become available: it streams and is
/// within [`CAUGHT_UP_COMMITS`] commits of its leader (counted to the end).
pub fn is_caught_up(lag: &Lag) -> bool {
    lag.streaming && !lag.more_than && lag.commits <= CAUGHT_UP_COMMITS
}

/// What to do about a database no operation is working on, if anything:
/// a database that should run but does not is started again.
pub fn reconcile(db: &DatabaseRecord, observed: &Observed) -> Option<Decision> {
    let settled = matches!(
        db.state,
        DatabaseState::Available | DatabaseState::Unavailable
    );
    if db.desired != Desired::Running || !settled {
        return None;
    }
    match observed {
        Observed::HostUnreachable(_) => None,
        Observed::Cluster(c) if !c.initialized => None,
        Observed::Cluster(c) if !c.running => Some(decision(
            db,
            Action::Start,
            "should be running but is not; starting postgres",
        )),
        Observed::Cluster(_) if db.state == DatabaseState::Unavailable => Some(decision(
            db,
            Action::MarkAvailable,
            "running again; it is available",
        )),
        Observed::Cluster(_) if db.is_follower() && db.state == DatabaseState::Available => {
            Some(decision(
                db,
                Action::CheckFollower,
                "following; checking that its leader keeps the WAL it needs",
            ))
        }
        Observed::Cluster(_) => None,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use chrono::Utc;
    use pgfollow_types::agent::RoleSecret;
    use pgfollow_types::model::OperationState;
    use pgfollow_types::plan::builtin_plans;
    use pgfollow_types::{AppName, Color};

    pub(crate) fn db(state: DatabaseState, desired: Desired) -> DatabaseRecord {
        let role = RoleSecret {
            name: "u".into(),
            password: "p".into(),
        };
        DatabaseRecord {
            id: "db-1".into(),
            name: "postgresql-shiny-12345".into(),
            app: AppName::parse("sushi").unwrap(),
            color: Color::parse("WHITE").unwrap(),
            plan: builtin_plans()[2].clone(),
            host: "local".into(),
            port: 5432,
            database: "d".into(),
            owner: role.clone(),
            replication: role,
            pg_major: 15,
            created_at: Utc::now(),
            desired,
            state,
            status_detail: None,
            pg_version: None,
            following: None,
            fork_pending: false,
            ha_standby: None,
            hidden: false,
            sync: false,
            sync_applied: None,
            sync_strict: false,
            sync_suspended: false,
            standby_lag: None,
            timeline: None,
            pending_owner: None,
            ha_released: false,
            logical: false,
        }
    }

    pub(crate) fn op(kind: OperationKind, done: &[&str], failures: u32) -> OperationRecord {
        OperationRecord {
            id: "op-1".into(),
            kind,
            database: "db-1".into(),
            state: OperationState::Running,
            done: done.iter().map(|s| s.to_string()).collect(),
            failures,
            last_error: Some("initdb: boom".into()),
            progress_percent: None,
            created_at: Utc::now(),
            updated_at: Utc::now(),
            subject: None,
            reason: None,
        }
    }

    fn seen(initialized: bool, running: bool) -> Observed {
        Observed::Cluster(ClusterStatus {
            id: "db-1".into(),
            initialized,
            running,
            pid: running.then_some(42),
        })
    }

    #[test]
    fn provision_steps_follow_what_is_observed() {
        use Action::*;
        let preparing = db(DatabaseState::Preparing, Desired::Running);
        let unreachable = Observed::HostUnreachable("h2".into());
        let table: &[(&[&str], u32, Observed, Action)] = &[
            (&[], 0, seen(false, false), Initialize),
            (&["initialize"], 0, seen(true, false), Start),
            (&["initialize", "start"], 0, seen(true, true), Bootstrap),
            (
                &["initialize", "start", "bootstrap"],
                0,
                seen(true, true),
                MarkAvailable,
            ),
            // After a restart the record says bootstrapped, but postgres is down.
            (
                &["initialize", "start", "bootstrap"],
                0,
                seen(true, false),
                Start,
            ),
            // An interrupted initdb leaves nothing that counts as initialized.
            (&["initialize"], 0, seen(false, false), Initialize),
            (&[], 0, unreachable, Wait),
            (&[], 3, seen(false, false), Fail("initdb: boom".into())),
        ];
        for (done, failures, observed, want) in table {
            let got = decide(
                &preparing,
                &op(OperationKind::Provision, done, *failures),
                observed,
                None,
            );
            assert_eq!(
                &got.action, want,
                "done {done:?}, failures {failures}, {observed:?}"
            );
        }
    }

    #[test]
    fn an_upgrade_waits_for_the_unfollow_then_upgrades_starts_and_is_available() {
        use Action::*;
        let mut follower = db(DatabaseState::Preparing, Desired::Running);
        follower.following = Some("db-0".into());
        let fork = db(DatabaseState::Preparing, Desired::Running);
        let table: &[(&DatabaseRecord, &str, &[&str], Observed, Action)] = &[
            (&follower, "upgrade:18", &[], seen(true, true), Wait),
            (&fork, "upgrade:18", &[], seen(true, true), Upgrade),
            // Interrupted pg_upgrade: the step runs again (it starts over).
            (&fork, "upgrade:18", &[], seen(true, false), Upgrade),
            (&fork, "upgrade:18", &["upgrade"], seen(true, false), Start),
            (
                &fork,
                "upgrade:18",
                &["upgrade", "start"],
                seen(true, true),
                MarkAvailable,
            ),
            (&fork, "dry-run:18", &[], seen(true, true), UpgradeDryRun),
            (
                &follower,
                "dry-run:18",
                &[],
                seen(true, true),
                UpgradeDryRun,
            ),
            (&fork, "dry-run:18", &[], seen(true, false), Wait),
            (
                &fork,
                "sideways:18",
                &[],
                seen(true, true),
                GiveUp("the upgrade names no version".into()),
            ),
        ];
        for (d, subject, done, observed, want) in table {
            let mut o = op(OperationKind::Upgrade, done, 0);
            o.subject = Some(subject.to_string());
            let got = decide(d, &o, observed, None);
            assert_eq!(&got.action, want, "{subject} {done:?} {observed:?}");
        }
    }

    #[test]
    fn a_rollback_restores_instead_of_initdb() {
        use Action::*;
        let preparing = db(DatabaseState::Preparing, Desired::Running);
        let table: &[(&[&str], u32, Observed, Action)] = &[
            (&[], 0, seen(false, false), SealArchive),
            (&["seal-archive"], 0, seen(false, false), RestoreArchive),
            // Interrupted during recovery: the restore waits for it again.
            (&["seal-archive"], 0, seen(true, true), RestoreArchive),
            (
                &["seal-archive", "restore-archive"],
                0,
                seen(true, false),
                Start,
            ),
            (
                &["seal-archive", "restore-archive"],
                0,
                seen(true, true),
                Bootstrap,
            ),
            (
                &["seal-archive", "restore-archive", "bootstrap"],
                0,
                seen(true, true),
                MarkAvailable,
            ),
            (
                &["seal-archive"],
                3,
                seen(false, false),
                Fail("initdb: boom".into()),
            ),
        ];
        for (done, failures, observed, want) in table {
            let mut o = op(OperationKind::Provision, done, *failures);
            o.subject = Some(crate::rollback_subject("db-0"));
            let got = decide(&preparing, &o, observed, None);
            assert_eq!(&got.action, want, "done {done:?}, {observed:?}");
        }
    }

    #[test]
    fn a_provision_of_a_database_being_destroyed_is_cancelled() {
        let d = db(DatabaseState::Deprovisioning, Desired::Absent);
        let got = decide(
            &d,
            &op(OperationKind::Provision, &[], 0),
            &seen(true, true),
            None,
        );
        assert_eq!(got.action, Action::Cancel);
    }

    #[test]
    fn destroy_removes_then_forgets() {
        let d = db(DatabaseState::Deprovisioning, Desired::Absent);
        let table: &[(&[&str], Observed, Action)] = &[
            (&[], seen(true, true), Action::DestroyCluster),
            (&[], seen(false, false), Action::DestroyCluster),
            (&["destroy"], seen(true, false), Action::DestroyCluster),
            (&["destroy"], seen(false, false), Action::Forget),
            (&[], Observed::HostUnreachable("h".into()), Action::Wait),
        ];
        for (done, observed, want) in table {
            let got = decide(&d, &op(OperationKind::Destroy, done, 0), observed, None);
            assert_eq!(&got.action, want, "done {done:?}, {observed:?}");
        }
    }

    #[test]
    fn settled_databases_are_kept_running() {
        let available = db(DatabaseState::Available, Desired::Running);
        let down = db(DatabaseState::Unavailable, Desired::Running);
        let failed = db(DatabaseState::Failed, Desired::Running);
        assert_eq!(reconcile(&available, &seen(true, true)), None);
        assert_eq!(
            reconcile(&available, &seen(true, false)).map(|d| d.action),
            Some(Action::Start)
        );
        assert_eq!(
            reconcile(&down, &seen(true, true)).map(|d| d.action),
            Some(Action::MarkAvailable)
        );
        assert_eq!(reconcile(&failed, &seen(true, false)), None);
        assert_eq!(
            reconcile(&available, &Observed::HostUnreachable("h".into())),
            None
        );
    }

    #[test]
    fn the_sentence_names_the_database_and_the_reason() {
        let d = db(DatabaseState::Preparing, Desired::Running);
        let got = decide(
            &d,
            &op(OperationKind::Provision, &[], 0),
            &seen(false, false),
            None,
        );
        assert_eq!(
            got.sentence,
            "WHITE (postgresql-shiny-12345 of sushi): no data directory yet; initializing one"
        );
    }

    fn follower(leader: &DatabaseRecord) -> DatabaseRecord {
        let mut f = db(DatabaseState::Preparing, Desired::Running);
        f.id = "db-2".into();
        f.color = Color::parse("CHARCOAL").unwrap();
        f.following = Some(leader.id.clone());
        f
    }

    #[test]
    fn a_follower_is_slotted_copied_started_then_checked() {
        use Action::*;
        let leader = db(DatabaseState::Available, Desired::Running);
        let f = follower(&leader);
        let table: &[(&[&str], Observed, Action)] = &[
            (&[], seen(false, false), CreateSlot),
            (&["create-slot"], seen(false, false), BaseBackup),
            (&["create-slot", "base-backup"], seen(true, false), Start),
            (
                &["create-slot", "base-backup", "start"],
                seen(true, true),
                CheckCaughtUp,
            ),
            // Restarted mid-copy: the copy starts again.
            (&["create-slot"], seen(false, false), BaseBackup),
            (&[], Observed::HostUnreachable("h2".into()), Wait),
        ];
        for (done, observed, want) in table {
            let got = decide(
                &f,
                &op(OperationKind::Provision, done, 0),
                observed,
                Some(&leader),
            );
            assert_eq!(&got.action, want, "done {done:?}, {observed:?}");
        }
    }

    #[test]
    fn a_follower_waits_for_its_leader_and_fails_without_one() {
        let preparing_leader = db(DatabaseState::Preparing, Desired::Running);
        let f = follower(&preparing_leader);
        let provision = op(OperationKind::Provision, &[], 0);
        let got = decide(&f, &provision, &seen(false, false), Some(&preparing_leader));
        assert_eq!(got.action, Action::Wait);
        let got = decide(&f, &provision, &seen(false, false), None);
        assert!(matches!(got.action, Action::Fail(_)), "{got:?}");
        let gone = db(DatabaseState::Deprovisioning, Desired::Absent);
        let got = decide(&f, &provision, &seen(false, false), Some(&gone));
        assert!(matches!(got.action, Action::Fail(_)), "{got:?}");
    }

    #[test]
    fn destroying_a_follower_drops_its_slot_on_a_live_leader() {
        let leader = db(DatabaseState::Available, Desired::Running);
        let mut f = follower(&leader);
        f.desired = Desired::Absent;
        let destroy = |done: &[&str]| op(OperationKind::Destroy, done, 0);
        let got = decide(
            &f,
            &destroy(&["destroy"]),
            &seen(false, false),
            Some(&leader),
        );
        assert_eq!(got.action, Action::DropSlot);
        let got = decide(
            &f,
            &destroy(&["destroy", "drop-slot"]),
            &seen(false, false),
            Some(&leader),
        );
        assert_eq!(got.action, Action::Forget);
        let got = decide(&f, &destroy(&["destroy"]), &seen(false, false), None);
        assert_eq!(got.action, Action::Forget);
    }

    #[test]
    fn caught_up_means_streaming_and_close() {
        let lag = |commits, more_than, streaming| Lag {
            commits,
            more_than,
            bytes: 0,
            seconds: 0.0,
            streaming,
        };
        assert!(is_caught_up(&lag(0, false, true)));
        assert!(is_caught_up(&lag(CAUGHT_UP_COMMITS, false, true)));
        assert!(!is_caught_up(&lag(CAUGHT_UP_COMMITS + 1, false, true)));
        assert!(!is_caught_up(&lag(5, true, true)));
        assert!(!is_caught_up(&lag(0, false, false)));
    }

    #[test]
    fn unfollow_promotes_reconfigures_drops_the_slot_and_checkpoints() {
        use Action::*;
        let leader = db(DatabaseState::Available, Desired::Running);
        let mut f = follower(&leader);
        f.state = DatabaseState::Available;
        let steps = ["promote", "reconfigure", "drop-slot", "checkpoint"];
        let table: &[(usize, Observed, Action)] = &[
            (0, seen(true, false), Start),
            (0, seen(true, true), Promote),
            (1, seen(true, true), Reconfigure),
            (2, seen(true, true), DropSlot),
            (3, seen(true, true), Checkpoint),
            (4, seen(true, true), MarkAvailable),
        ];
        for (n, observed, want) in table {
            let got = decide(
                &f,
                &op(OperationKind::Unfollow, &steps[..*n], 0),
                observed,
                Some(&leader),
            );
            assert_eq!(&got.action, want, "after {:?}", &steps[..*n]);
        }
        // With its leader gone there is no slot to drop.
        let got = decide(
            &f,
            &op(OperationKind::Unfollow, &steps[..2], 0),
            &seen(true, true),
            None,
        );
        assert_eq!(got.action, Checkpoint);
    }

    #[test]
    fn a_follower_falls_off_when_its_slot_is_lost_or_gone() {
        let slot = |wal_status: &str| SlotStatus {
            active: false,
            wal_status: Some(wal_status.into()),
            restart_lsn: None,
            confirmed_flush_lsn: None,
            write_lsn: None,
        };
        assert_eq!(follower_fell_off(Some(&slot("reserved"))), None);
        assert_eq!(follower_fell_off(Some(&slot("extended"))), None);
        assert_eq!(follower_fell_off(Some(&slot("unreserved"))), None);
        assert!(follower_fell_off(Some(&slot("lost")))
            .unwrap()
            .contains("max_slot_wal_keep_size"));
        assert!(follower_fell_off(None).is_some());
        let leader = db(DatabaseState::Available, Desired::Running);
        let mut f = follower(&leader);
        f.state = DatabaseState::Available;
        assert_eq!(
            reconcile(&f, &seen(true, true)).map(|d| d.action),
            Some(Action::CheckFollower)
        );
    }

    #[test]
    fn an_old_primary_rejoins_by_rewind_or_else_a_fresh_copy() {
        let leader = db(DatabaseState::Available, Desired::Running);
        let old = follower(&leader);
        let rejoin = |done: &[&str]| op(OperationKind::Rejoin, done, 0);
        let unreachable = Observed::HostUnreachable("h".into());
        assert_eq!(
            decide(&old, &rejoin(&[]), &unreachable, Some(&leader)).action,
            Action::Wait
        );
        let table: &[(&[&str], Observed, Action)] = &[
            // Back: a slot on its successor, then pg_rewind, then start.
            (&[], seen(true, false), Action::CreateSlot),
            (&["create-slot"], seen(true, false), Action::Rewind),
            (&["create-slot", "rewind"], seen(true, false), Action::Start),
            // pg_rewind failed: its files go, and it is copied afresh.
            (
                &["create-slot", REWIND_FAILED],
                seen(true, false),
                Action::DestroyCluster,
            ),
            (
                &["create-slot", REWIND_FAILED, "destroy"],
                seen(false, false),
                Action::BaseBackup,
            ),
        ];
        for (done, observed, want) in table {
            let got = decide(&old, &rejoin(done), observed, Some(&leader));
            assert_eq!(&got.action, want, "after {done:?}");
        }
    }

    #[test]
    fn an_abandoned_rejoin_is_cancelled() {
        let leader = db(DatabaseState::Available, Desired::Running);
        let mut old = follower(&leader);
        old.desired = Desired::Absent;
        let got = decide(
            &old,
            &op(OperationKind::Rejoin, &[], 0),
            &Observed::HostUnreachable("h".into()),
            Some(&leader),
        );
        assert_eq!(got.action, Action::Cancel);
    }
}
