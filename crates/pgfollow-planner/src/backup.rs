//! Decisions about logical backups, pure like the rest of the planner: the
//! next step of a backup or a restore operation, whether a daily schedule is
//! due, and which backups retention removes. The control plane's backups
//! loop carries the steps out (`pg_dump`/`pg_restore` through the agent).

use chrono::{DateTime, Duration, NaiveTime, Utc};
use pgfollow_types::api::DatabaseState;
use pgfollow_types::backup::BackupRecord;
use pgfollow_types::model::{DatabaseRecord, OperationRecord};

/// Tries of one step before the operation fails.
pub const MAX_BACKUP_FAILURES: u32 = 3;

/// What to do next for a backup or restore operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupAction {
    /// `pg_dump -Fc` of the database into the backup's file.
    Dump,
    /// Delete the database's oldest backups beyond its plan's retention.
    Prune,
    /// `pg_restore` the backup into the target database.
    Restore,
    /// Everything is done.
    Finish,
    /// Give up, saying why.
    Fail(String),
    /// Nothing to do this tick.
    Wait,
}

impl BackupAction {
    /// The step recorded once the action succeeded.
    pub fn step(&self) -> Option<&'static str> {
        match self {
            BackupAction::Dump => Some("dump"),
            BackupAction::Prune => Some("prune"),
            BackupAction::Restore => Some("restore"),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupDecision {
    pub action: BackupAction,
    pub sentence: String,
}

fn decision(action: BackupAction, sentence: String) -> BackupDecision {
    BackupDecision { action, sentence }
}

fn gave_up(op: &OperationRecord) -> Option<BackupDecision> {
    (op.failures >= MAX_BACKUP_FAILURES).then(|| {
        let why = format!(
            "gave up after {} tries: {}",
            op.failures,
            op.last_error.as_deref().unwrap_or("unknown error")
        );
        decision(BackupAction::Fail(why.clone()), why)
    })
}

/// The next step of the capture of `backup` from `source` (none when the
/// database is gone).
pub fn decide_backup(
    op: &OperationRecord,
    backup: &str,
    source: Option<&DatabaseRecord>,
) -> BackupDecision {
    if let Some(d) = gave_up(op) {
        return d;
    }
    if !op.has_done("dump") {
        let Some(db) = source.filter(|d| d.is_live()) else {
            let why = format!("{backup}: its database was destroyed before it was captured");
            return decision(BackupAction::Fail(why.clone()), why);
        };
        if db.state != DatabaseState::Available {
            return decision(
                BackupAction::Wait,
                format!(
                    "{backup}: waits for {} to be available ({})",
                    db.color, db.state
                ),
            );
        }
        return decision(
            BackupAction::Dump,
            format!("{backup}: dumping {} ({} of {})", db.color, db.name, db.app),
        );
    }
    if !op.has_done("prune") {
        return decision(
            BackupAction::Prune,
            format!("{backup}: captured; deleting backups beyond the plan's retention"),
        );
    }
    decision(BackupAction::Finish, format!("{backup}: complete"))
}

/// The next step of restoring `backup` (none when deleted; `complete`
/// when its capture finished) into `target` (none when gone).
pub fn decide_restore(
    op: &OperationRecord,
    backup: Option<&BackupRecord>,
    complete: bool,
    target: Option<&DatabaseRecord>,
) -> BackupDecision {
    if let Some(d) = gave_up(op) {
        return d;
    }
    if op.has_done("restore") {
        return decision(BackupAction::Finish, "restore complete".into());
    }
    let fail = |why: String| decision(BackupAction::Fail(why.clone()), why);
    let Some(b) = backup else {
        return fail("the backup was deleted before it was restored".into());
    };
    if !complete {
        return fail(format!("{} is not a completed backup", b.name));
    }
    let Some(t) = target.filter(|t| t.is_live()) else {
        return fail(format!(
            "the target database was destroyed before {} was restored",
            b.name
        ));
    };
    if t.is_follower() {
        return fail(format!("{} is a read-only follower", t.color));
    }
    if t.state != DatabaseState::Available {
        return decision(
            BackupAction::Wait,
            format!(
                "restore of {}: waits for {} to be available",
                b.name, t.color
            ),
        );
    }
    decision(
        BackupAction::Restore,
        format!(
            "restoring {} (PostgreSQL {}) into {} (PostgreSQL {})",
            b.name, b.pg_major, t.color, t.pg_major
        ),
    )
}

/// The latest moment at `hour:minute` UTC that is not after `now`.
pub fn latest_slot(hour: u8, minute: u8, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let time = NaiveTime::from_hms_opt(u32::from(hour), u32::from(minute), 0)?;
    let today = now.date_naive().and_time(time).and_utc();
    Some(if today <= now {
        today
    } else {
        today - Duration::days(1)
    })
}

/// Whether a daily schedule at `hour:minute` UTC should start a backup
/// now: its latest time slot has passed since it last ran (or, never run,
/// since it was set up). A control plane that was down at the slot catches
/// up once, not once per missed day.
pub fn schedule_due(
    hour: u8,
    minute: u8,
    last_run: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> bool {
    let Some(slot) = latest_slot(hour, minute, now) else {
        return false;
    };
    slot > last_run.unwrap_or(created_at).max(created_at)
}

/// Names of the completed backups that retention deletes: beyond the
/// newest `keep` (ordered by capture time).
pub fn to_prune(completed: &[&BackupRecord], keep: u32) -> Vec<String> {
    let mut sorted: Vec<&&BackupRecord> = completed.iter().collect();
    sorted.sort_by_key(|b| std::cmp::Reverse((b.created_at, b.name.clone())));
    sorted
        .into_iter()
        .skip(keep as usize)
        .map(|b| b.name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use pgfollow_types::model::{OperationKind, OperationState};

    fn at(h: u32, m: u32, day: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, day, h, m, 0).unwrap()
    }

    #[test]
    fn schedule_is_due_once_a_day_after_its_time() {
        let created = at(10, 0, 1);
        // (hour, minute, last run, now, due)
        type Row = (u8, u8, Option<DateTime<Utc>>, DateTime<Utc>, bool);
        let rows: &[Row] = &[
            // Set up at 10:00 for 02:00: not until the next day's 02:00.
            (2, 0, None, at(11, 0, 1), false),
            (2, 0, None, at(1, 59, 2), false),
            (2, 0, None, at(2, 0, 2), true),
            (2, 0, None, at(5, 0, 2), true),
            // Ran at 02:00: not again that day, again the next.
            (2, 0, Some(at(2, 0, 2)), at(2, 1, 2), false),
            (2, 0, Some(at(2, 0, 2)), at(23, 59, 2), false),
            (2, 0, Some(at(2, 0, 2)), at(2, 0, 3), true),
            // Set up at 10:00 for 22:10: the same day.
            (22, 10, None, at(22, 9, 1), false),
            (22, 10, None, at(22, 10, 1), true),
            // Down for three days: one catch-up backup, not three.
            (2, 0, Some(at(2, 0, 2)), at(9, 0, 5), true),
            (2, 0, Some(at(9, 0, 5)), at(23, 0, 5), false),
            // Midnight.
            (0, 0, Some(at(0, 0, 2)), at(0, 0, 3), true),
            (0, 0, Some(at(0, 0, 3)), at(23, 59, 3), false),
        ];
        for (i, (h, m, last, now, due)) in rows.iter().enumerate() {
            assert_eq!(
                schedule_due(*h, *m, *last, created, *now),
                *due,
                "row {i}: {h:02}:{m:02} last {last:?} now {now}"
            );
        }
    }

    #[test]
    fn an_impossible_time_is_never_due() {
        assert!(!schedule_due(25, 0, None, at(0, 0, 1), at(12, 0, 3)));
    }

    fn backup(name: &str, minute: u32) -> BackupRecord {
        BackupRecord {
            name: name.into(),
            app: pgfollow_types::AppName::parse("sushi").unwrap(),
            database: "db-1".into(),
            color: pgfollow_types::Color::parse("WHITE").unwrap(),
            database_name: "postgresql-calm-1".into(),
            pg_major: 15,
            operation: format!("op-{name}"),
            created_at: at(12, minute, 1),
            finished_at: Some(at(12, minute, 1)),
            size_bytes: Some(1000),
            file: format!("sushi/{name}.dump"),
        }
    }

    #[test]
    fn retention_deletes_the_oldest_beyond_the_plan() {
        let (b1, b2, b3) = (backup("b001", 1), backup("b002", 2), backup("b003", 3));
        let all = [&b2, &b3, &b1];
        let rows: &[(u32, &[&str])] = &[
            (0, &["b003", "b002", "b001"]),
            (1, &["b002", "b001"]),
            (2, &["b001"]),
            (3, &[]),
            (25, &[]),
        ];
        for (keep, want) in rows {
            assert_eq!(to_prune(&all, *keep), *want, "keep {keep}");
        }
    }

    fn op(kind: OperationKind, done: &[&str], failures: u32) -> OperationRecord {
        OperationRecord {
            id: "op-1".into(),
            kind,
            database: "db-1".into(),
            state: OperationState::Running,
            done: done.iter().map(|s| s.to_string()).collect(),
            failures,
            last_error: (failures > 0).then(|| "pg_dump failed".to_string()),
            progress_percent: None,
            created_at: at(12, 0, 1),
            updated_at: at(12, 0, 1),
            subject: Some("sushi/b001".into()),
            reason: None,
        }
    }

    fn db(state: DatabaseState, follower: bool) -> DatabaseRecord {
        let json = serde_json::json!({
            "id": "db-1", "name": "postgresql-calm-1", "app": "sushi", "color": "WHITE",
            "plan": pgfollow_types::plan::builtin_plans()[2],
            "host": "local", "port": 5432, "database": "d1",
            "owner": {"name": "u", "password": "p"},
            "replication": {"name": "r", "password": "p"},
            "pg_major": 15, "created_at": at(12, 0, 1), "desired": "running",
            "state": state.as_str(), "status_detail": null, "pg_version": null,
            "following": if follower { Some("db-0") } else { None },
        });
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn backup_steps() {
        use BackupAction::*;
        let avail = db(DatabaseState::Available, false);
        let preparing = db(DatabaseState::Preparing, false);
        let mut gone = avail.clone();
        gone.desired = pgfollow_types::model::Desired::Absent;
        let rows: Vec<(&[&str], u32, Option<&DatabaseRecord>, &str)> = vec![
            (&[], 0, Some(&avail), "Dump"),
            (&[], 0, Some(&preparing), "Wait"),
            (&[], 0, None, "Fail"),
            (&[], 0, Some(&gone), "Fail"),
            (&[], 3, Some(&avail), "Fail"),
            (&["dump"], 0, Some(&avail), "Prune"),
            // Once dumped, the database may go: the backup is kept.
            (&["dump"], 0, None, "Prune"),
            (&["dump", "prune"], 0, None, "Finish"),
        ];
        for (done, failures, source, want) in rows {
            let d = decide_backup(&op(OperationKind::Backup, done, failures), "b001", source);
            let got = match d.action {
                Dump => "Dump",
                Wait => "Wait",
                Fail(_) => "Fail",
                Prune => "Prune",
                Finish => "Finish",
                Restore => "Restore",
            };
            assert_eq!(got, want, "{done:?} {failures} -> {}", d.sentence);
        }
        let d = decide_backup(&op(OperationKind::Backup, &[], 3), "b001", Some(&avail));
        assert_eq!(d.sentence, "gave up after 3 tries: pg_dump failed");
    }

    #[test]
    fn restore_steps() {
        let b = backup("b001", 1);
        let avail = db(DatabaseState::Available, false);
        let follower = db(DatabaseState::Available, true);
        let preparing = db(DatabaseState::Preparing, false);
        let r = |done: &[&str], b: Option<&BackupRecord>, complete, t| {
            decide_restore(&op(OperationKind::Restore, done, 0), b, complete, t)
        };
        assert_eq!(
            r(&[], Some(&b), true, Some(&avail)).action,
            BackupAction::Restore
        );
        assert_eq!(
            r(&[], Some(&b), true, Some(&preparing)).action,
            BackupAction::Wait
        );
        assert_eq!(
            r(&["restore"], None, false, None).action,
            BackupAction::Finish
        );
        for (b, complete, t, why) in [
            (
                None,
                false,
                Some(&avail),
                "the backup was deleted before it was restored",
            ),
            (
                Some(&b),
                false,
                Some(&avail),
                "b001 is not a completed backup",
            ),
            (
                Some(&b),
                true,
                None,
                "the target database was destroyed before b001 was restored",
            ),
            (
                Some(&b),
                true,
                Some(&follower),
                "WHITE is a read-only follower",
            ),
        ] {
            assert_eq!(
                r(&[], b, complete, t).action,
                BackupAction::Fail(why.into())
            );
        }
    }
}
