//! Continuous protection, decided: which lineage (pgBackRest stanza) each
//! database archives into, which cluster needs its archive configured or
//! a base backup next, how a step's outcome changes the record, and the
//! rollback target a user asked for (`--to TIME` or `--by 2h`) and whether
//! it lies in the window.

use chrono::{DateTime, Duration, NaiveDateTime, Utc};
use pgfollow_types::api::DatabaseState;
use pgfollow_types::archive::{ArchiveInfo, ProtectionRecord};
use pgfollow_types::model::{DatabaseRecord, OperationRecord, State};

/// A protected primary gets a new full base backup this often.
pub fn base_backup_every() -> Duration {
    Duration::hours(24)
}

/// A member's archive configuration is written again this often (a
/// rejoined cluster has new files, a moved one a new port).
pub fn reconfigure_every() -> Duration {
    Duration::minutes(10)
}

/// How long a lineage waits after its `failures`-th failed step.
pub fn retry_after(failures: u32) -> Duration {
    Duration::seconds(30 * i64::from(failures.clamp(1, 60)))
}

/// The `subject` of a provision that restores a rollback.
pub fn rollback_subject(stanza: &str) -> String {
    format!("rollback:{stanza}")
}

/// Whether a provision operation restores a rollback instead of `initdb`.
pub fn is_rollback(op: &OperationRecord) -> bool {
    op.subject
        .as_deref()
        .is_some_and(|s| s.starts_with("rollback:"))
}

/// The stanza `db` should archive into: the one it has; an HA standby's
/// primary's (the lineage goes on after a failover); its own id and major
/// (`db-000001-3f9a-pg15`: an upgrade starts a new lineage) for a primary
/// on a plan with a rollback window. Followers, hobby databases
/// and databases being removed have none.
pub fn desired_stanza(state: &State, db: &DatabaseRecord) -> Option<String> {
    if !db.is_live() || db.plan.tier.rollback_days().is_none() {
        return None;
    }
    if let Some(s) = state.archive_of.get(&db.id) {
        return Some(s.clone());
    }
    if db.hidden {
        return db
            .following
            .as_ref()
            .and_then(|l| state.archive_of.get(l))
            .cloned();
    }
    (!db.is_follower()).then(|| format!("{}-pg{}", db.id, db.pg_major))
}

/// Gives every database the stanza it should have (a new lineage gets its
/// record, with its repository at `repo_path`) and forgets databases that
/// are gone. Returns a sentence per change.
pub fn assign_stanzas(state: &mut State, repo_path: &str, now: DateTime<Utc>) -> Vec<String> {
    let mut said = Vec::new();
    let gone: Vec<String> = state
        .archive_of
        .keys()
        .filter(|id| !state.databases.get(*id).is_some_and(|d| d.is_live()))
        .cloned()
        .collect();
    for id in gone {
        if let Some(stanza) = state.archive_of.remove(&id) {
            if let Some(p) = state.protection.get_mut(&stanza) {
                p.configured.remove(&id);
            }
            said.push(format!("{id} is gone: it no longer archives into {stanza}"));
        }
    }
    // Twice: an HA standby takes its primary's stanza, which the first
    // pass may have only just given.
    for _ in 0..2 {
        let wanted: Vec<(String, String)> = state
            .databases
            .values()
            .filter(|d| !state.archive_of.contains_key(&d.id))
            .filter_map(|d| desired_stanza(state, d).map(|s| (d.id.clone(), s)))
            .collect();
        for (id, stanza) in wanted {
            let d = &state.databases[&id];
            said.push(format!(
                "{} ({} of {}): continuous protection on, archiving into stanza {stanza}",
                d.color, d.name, d.app
            ));
            state
                .protection
                .entry(stanza.clone())
                .or_insert_with(|| ProtectionRecord {
                    stanza: stanza.clone(),
                    created_at: now,
                    repo_path: repo_path.to_string(),
                    repo_host: None,
                    configured: Default::default(),
                    last_full: None,
                    last_full_of: None,
                    info: None,
                    last_error: None,
                    failures: 0,
                    failed_at: None,
                });
            state.archive_of.insert(id, stanza);
        }
    }
    said
}

/// Stanzas no live database archives into and no rollback still restores
/// from: their archives go (a destroyed database's history goes with it).
pub fn orphaned_stanzas(state: &State) -> Vec<String> {
    let restoring = |stanza: &str| {
        state.rollbacks.iter().any(|(id, r)| {
            r.stanza == stanza
                && state
                    .databases
                    .get(id)
                    .is_some_and(|d| d.is_live() && d.state != DatabaseState::Available)
        })
    };
    state
        .protection
        .keys()
        .filter(|s| !state.archive_of.values().any(|a| a == *s))
        .filter(|s| !restoring(s))
        .cloned()
        .collect()
}

/// One step of continuous protection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtectAction {
    /// Write the cluster's pgBackRest configuration and `archive_command`
    /// (and create the stanza on a primary).
    Configure,
    /// A full base backup of the primary.
    BaseBackup,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtectStep {
    pub database: String,
    pub stanza: String,
    pub action: ProtectAction,
    pub sentence: String,
}

/// Whether an operation of its own (an unfollow, an upgrade, a failover)
/// is working on database `id`: protection waits for it.
fn is_busy(state: &State, id: &str) -> bool {
    state
        .operations
        .values()
        .any(|o| o.database == id && o.state.is_active() && !o.kind.runs_beside())
}

/// The next step for every protected database that needs one now.
pub fn protection_steps(state: &State, now: DateTime<Utc>) -> Vec<ProtectStep> {
    let mut steps = Vec::new();
    for (id, stanza) in &state.archive_of {
        let (Some(db), Some(p)) = (state.databases.get(id), state.protection.get(stanza)) else {
            continue;
        };
        if !db.is_live() || db.state != DatabaseState::Available || is_busy(state, id) {
            continue;
        }
        if p.failed_at
            .is_some_and(|t| now < t + retry_after(p.failures))
        {
            continue;
        }
        let who = format!("{} ({} of {})", db.color, db.name, db.app);
        let step = |action, sentence: String| ProtectStep {
            database: id.clone(),
            stanza: stanza.clone(),
            action,
            sentence,
        };
        let configured = p.configured.get(id);
        if configured.is_none_or(|t| now - *t >= reconfigure_every()) {
            let why = if configured.is_some() {
                "again"
            } else {
                "first"
            };
            steps.push(step(
                ProtectAction::Configure,
                format!("{who}: writing its archive configuration for stanza {stanza} ({why})"),
            ));
            continue;
        }
        if db.is_follower() {
            continue;
        }
        let why = match (p.last_full, p.last_full_of.as_deref()) {
            (None, _) => Some("its first base backup".to_string()),
            (Some(_), Some(of)) if of != id => {
                Some("a base backup of the new primary after a failover".to_string())
            }
            (Some(t), _) if now - t >= base_backup_every() => Some(format!(
                "its daily base backup (last {})",
                t.format("%Y-%m-%d %H:%M UTC")
            )),
            _ => None,
        };
        if let Some(why) = why {
            steps.push(step(
                ProtectAction::BaseBackup,
                format!("{who}: {why} into stanza {stanza}"),
            ));
        }
    }
    steps
}

/// A step's outcome, written into the lineage's record.
pub fn record_protection(
    p: &mut ProtectionRecord,
    step: &ProtectStep,
    outcome: Result<Option<ArchiveInfo>, String>,
    now: DateTime<Utc>,
) {
    match outcome {
        Ok(info) => {
            p.failures = 0;
            p.failed_at = None;
            p.last_error = None;
            match step.action {
                ProtectAction::Configure => {
                    p.configured.insert(step.database.clone(), now);
                }
                ProtectAction::BaseBackup => {
                    p.last_full = Some(info.as_ref().and_then(|i| i.newest).unwrap_or(now));
                    p.last_full_of = Some(step.database.clone());
                    p.info = info.or(p.info.take());
                }
            }
        }
        Err(e) => {
            p.failures += 1;
            p.failed_at = Some(now);
            p.last_error = Some(e);
        }
    }
}

/// `2h`, `90m`, `1d12h`, `45s`: how far back `--by` goes.
pub fn parse_by(s: &str) -> Result<Duration, String> {
    let bad = || format!("--by {s:?} is not a duration: write it like 2h, 90m, 1d12h or 30s");
    let mut total = Duration::zero();
    let mut digits = String::new();
    for c in s.trim().chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let n: i64 = digits.parse().map_err(|_| bad())?;
        digits.clear();
        total += match c {
            'd' => Duration::days(n),
            'h' => Duration::hours(n),
            'm' => Duration::minutes(n),
            's' => Duration::seconds(n),
            _ => return Err(bad()),
        };
    }
    if !digits.is_empty() || total <= Duration::zero() {
        return Err(bad());
    }
    Ok(total)
}

/// `--to`: RFC 3339 (`2026-12-02T01:50:00Z`), or `2026-12-02 01:50[:00[.123]]`
/// in UTC, optionally followed by ` UTC`.
pub fn parse_to(s: &str) -> Result<DateTime<Utc>, String> {
    let t = s.trim();
    if let Ok(at) = DateTime::parse_from_rfc3339(t) {
        return Ok(at.with_timezone(&Utc));
    }
    let plain = t.strip_suffix("UTC").unwrap_or(t).trim();
    for format in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%d %H:%M"] {
        if let Ok(at) = NaiveDateTime::parse_from_str(plain, format) {
            return Ok(at.and_utc());
        }
    }
    Err(format!(
        "--to {s:?} is not a time: write it like '2026-12-02 01:50:00 UTC' or 2026-12-02T01:50:00Z"
    ))
}

/// The moment a rollback restores: `--to`, or `--by` before `now`; exactly one.
pub fn rollback_target(
    to: Option<&str>,
    by: Option<&str>,
    now: DateTime<Utc>,
) -> Result<DateTime<Utc>, String> {
    match (to, by) {
        (Some(t), None) => parse_to(t),
        (None, Some(b)) => Ok(now - parse_by(b)?),
        (Some(_), Some(_)) => Err("give --to or --by, not both".into()),
        (None, None) => Err("--rollback needs --to TIME or --by DURATION (like --by 2h)".into()),
    }
}

/// Whether `target` lies in the window of `db`, whose lineage can be rolled
/// back to `earliest` at the soonest (none before its first base backup).
pub fn check_rollback_window(
    db: &str,
    target: DateTime<Utc>,
    earliest: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<(), String> {
    let minute = |t: DateTime<Utc>| t.format("%Y-%m-%d %H:%M:%S UTC").to_string();
    let Some(earliest) = earliest else {
        return Err(format!(
            "{db} has no base backup yet, so it cannot be rolled back; wait until `pgfollow pg:info` shows `Rollback: earliest from ...`"
        ));
    };
    if target < earliest {
        return Err(format!(
            "{} is before the earliest moment {db} can be rolled back to ({}); choose a later time",
            minute(target),
            minute(earliest)
        ));
    }
    if target > now {
        return Err(format!(
            "{} is in the future (now is {}); choose a time that has passed",
            minute(target),
            minute(now)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 2, h, m, 0).unwrap()
    }

    fn db(id: &str, tier_plan: &str) -> DatabaseRecord {
        let plan = pgfollow_types::PlanCatalog::default()
            .get(tier_plan)
            .unwrap()
            .clone();
        serde_json::from_value(serde_json::json!({
            "id": id, "name": format!("postgresql-calm-{id}"), "app": "sushi", "color": "WHITE",
            "plan": plan, "host": "local", "port": 5432, "database": "d1",
            "owner": {"name": "u", "password": "p"},
            "replication": {"name": "r", "password": "p"},
            "pg_major": 15, "created_at": at(1, 0), "desired": "running",
            "state": "available", "status_detail": null, "pg_version": null,
        }))
        .unwrap()
    }

    fn state(dbs: Vec<DatabaseRecord>) -> State {
        let mut s = State::default();
        for d in dbs {
            s.databases.insert(d.id.clone(), d);
        }
        s
    }

    #[test]
    fn which_databases_archive_into_which_stanza() {
        let primary = db("p", "premium-0");
        let mut standby = db("s", "premium-0");
        standby.following = Some("p".into());
        standby.hidden = true;
        let mut follower = db("f", "standard-0");
        follower.following = Some("p".into());
        let hobby = db("h", "hobby-dev");
        let mut gone = db("g", "standard-0");
        gone.desired = pgfollow_types::model::Desired::Absent;
        let mut st = state(vec![primary, standby, follower, hobby, gone]);
        st.archive_of.insert("g".into(), "g".into());
        let said = assign_stanzas(&mut st, "/repo", at(2, 0));
        let got: Vec<(&str, &str)> = st
            .archive_of
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        // The HA standby shares its primary's lineage; a plain follower,
        // a hobby database and a destroyed one archive nothing.
        assert_eq!(got, [("p", "p-pg15"), ("s", "p-pg15")], "{said:?}");
        assert_eq!(st.protection["p-pg15"].repo_path, "/repo");
        // After a failover the roles swap but the stanza stays.
        st.databases.get_mut("s").unwrap().hidden = false;
        st.databases.get_mut("s").unwrap().following = None;
        st.databases.get_mut("p").unwrap().hidden = true;
        st.databases.get_mut("p").unwrap().following = Some("s".into());
        assert!(assign_stanzas(&mut st, "/repo", at(3, 0)).is_empty());
        assert_eq!(st.archive_of["s"], "p-pg15");
        // An unfollowed follower (a fork) starts a lineage of its own.
        st.databases.get_mut("f").unwrap().following = None;
        assign_stanzas(&mut st, "/repo", at(3, 0));
        assert_eq!(st.archive_of["f"], "f-pg15");
    }

    #[test]
    fn a_lineage_nobody_archives_into_or_restores_from_is_orphaned() {
        let mut st = state(vec![db("p", "standard-0")]);
        assign_stanzas(&mut st, "/repo", at(1, 0));
        assert!(orphaned_stanzas(&st).is_empty());
        // Its database is gone, but a rollback from it is still restoring.
        st.databases.get_mut("p").unwrap().desired = pgfollow_types::model::Desired::Absent;
        let mut r = db("r", "standard-0");
        r.state = DatabaseState::Preparing;
        st.databases.insert("r".into(), r);
        st.rollbacks.insert(
            "r".into(),
            pgfollow_types::archive::RollbackRecord {
                stanza: "p-pg15".into(),
                source: "p".into(),
                target: at(1, 30),
            },
        );
        assign_stanzas(&mut st, "/repo", at(2, 0));
        assert!(!orphaned_stanzas(&st).contains(&"p-pg15".to_string()));
        st.databases.get_mut("r").unwrap().state = DatabaseState::Available;
        assert!(orphaned_stanzas(&st).contains(&"p-pg15".to_string()));
    }

    #[test]
    fn steps_configure_first_then_back_up_the_primary() {
        let primary = db("p", "premium-0");
        let mut standby = db("s", "premium-0");
        standby.following = Some("p".into());
        standby.hidden = true;
        let mut st = state(vec![primary, standby]);
        assign_stanzas(&mut st, "/repo", at(1, 0));
        let now = at(2, 0);
        let kinds = |st: &State, now| -> Vec<(String, ProtectAction)> {
            protection_steps(st, now)
                .into_iter()
                .map(|s| (s.database, s.action))
                .collect()
        };
        let configure = ProtectAction::Configure;
        let backup = ProtectAction::BaseBackup;
        assert_eq!(
            kinds(&st, now),
            [
                ("p".into(), configure.clone()),
                ("s".into(), configure.clone())
            ]
        );
        let p = st.protection.get_mut("p-pg15").unwrap();
        p.configured.insert("p".into(), now);
        p.configured.insert("s".into(), now);
        // An operation of its own (here an upgrade) comes first.
        let mut busy = st.clone();
        busy.operations.insert(
            "op-9".into(),
            pgfollow_types::model::OperationRecord::new(
                "op-9",
                pgfollow_types::model::OperationKind::Upgrade,
                "p",
                now,
            ),
        );
        assert!(kinds(&busy, now).is_empty());
        // Only the primary is backed up, and only once a day.
        assert_eq!(kinds(&st, now), [("p".into(), backup.clone())]);
        let step = protection_steps(&st, now).remove(0);
        let info = ArchiveInfo {
            earliest: Some(now),
            newest: Some(now),
            backups: 1,
            repo_bytes: 10,
            newest_bytes: 5,
        };
        record_protection(
            st.protection.get_mut("p-pg15").unwrap(),
            &step,
            Ok(Some(info)),
            now,
        );
        assert!(kinds(&st, now + Duration::minutes(5)).is_empty());
        let later = now + Duration::hours(24);
        // Configurations are written again first, then the daily backup.
        assert_eq!(
            kinds(&st, later),
            [
                ("p".into(), configure.clone()),
                ("s".into(), configure.clone())
            ]
        );
        let p = st.protection.get_mut("p-pg15").unwrap();
        p.configured.insert("p".into(), later);
        p.configured.insert("s".into(), later);
        assert_eq!(kinds(&st, later), [("p".into(), backup.clone())]);
        // A failure waits before the next try.
        let p = st.protection.get_mut("p-pg15").unwrap();
        record_protection(p, &step, Err("no".into()), later);
        assert!(kinds(&st, later + Duration::seconds(10)).is_empty());
        assert_eq!(st.protection["p-pg15"].last_error.as_deref(), Some("no"));
        // The new primary after a failover gets a base backup of its own.
        let mut st2 = st.clone();
        let p = st2.protection.get_mut("p-pg15").unwrap();
        p.failed_at = None;
        p.last_full = Some(now + Duration::hours(23));
        p.last_full_of = Some("s".into());
        p.configured.insert("p".into(), later);
        p.configured.insert("s".into(), later);
        assert_eq!(kinds(&st2, later), [("p".into(), backup)]);
    }

    #[test]
    fn rollback_targets_from_to_and_by() {
        let now = at(3, 0);
        type Row<'a> = (
            Option<&'a str>,
            Option<&'a str>,
            Result<DateTime<Utc>, &'a str>,
        );
        let rows: &[Row] = &[
            (None, Some("2h"), Ok(at(1, 0))),
            (None, Some("1h30m"), Ok(at(1, 30))),
            (None, Some("90s"), Ok(now - Duration::seconds(90))),
            (Some("2026-12-02 01:50 UTC"), None, Ok(at(1, 50))),
            (Some("2026-12-02 01:50:00"), None, Ok(at(1, 50))),
            (Some("2026-12-02T02:50:00+01:00"), None, Ok(at(1, 50))),
            (None, Some("2x"), Err("is not a duration")),
            (None, Some("h"), Err("is not a duration")),
            (None, Some("0h"), Err("is not a duration")),
            (Some("yesterday"), None, Err("is not a time")),
            (Some("2026-12-02 01:50"), Some("2h"), Err("not both")),
            (None, None, Err("needs --to TIME or --by")),
        ];
        for (to, by, want) in rows {
            let got = rollback_target(*to, *by, now);
            match (want, &got) {
                (Ok(w), Ok(g)) => assert_eq!(w, g, "{to:?} {by:?}"),
                (Err(w), Err(g)) => assert!(g.contains(w), "{to:?} {by:?}: {g}"),
                _ => panic!("{to:?} {by:?}: {got:?}"),
            }
        }
    }

    #[test]
    fn the_window_runs_from_the_oldest_base_backup_to_now() {
        let now = at(3, 0);
        type Row<'a> = (DateTime<Utc>, Option<DateTime<Utc>>, Option<&'a str>);
        let rows: &[Row] = &[
            (at(2, 0), Some(at(1, 0)), None),
            (at(1, 0), Some(at(1, 0)), None),
            (now, Some(at(1, 0)), None),
            (
                at(0, 30),
                Some(at(1, 0)),
                Some("is before the earliest moment WHITE"),
            ),
            (at(4, 0), Some(at(1, 0)), Some("is in the future")),
            (at(2, 0), None, Some("has no base backup yet")),
        ];
        for (target, earliest, want) in rows {
            let got = check_rollback_window("WHITE", *target, *earliest, now);
            match (want, &got) {
                (None, Ok(())) => {}
                (Some(w), Err(g)) => assert!(g.contains(w), "{target}: {g}"),
                _ => panic!("{target} {earliest:?}: {got:?}"),
            }
        }
    }
}
