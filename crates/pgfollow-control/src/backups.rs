//! Logical backups, carried out: the backups loop starts the scheduled
//! captures that are due, asks the planner for the next step of every
//! backup and restore operation, and runs it through the control plane's
//! embedded agent (`pg_dump`/`pg_restore` over TCP with the owner's
//! credentials). Archives live under `<data dir>/backups/<app>/`, mode 0600,
//! on the control plane's host: losing a database's host does not lose them.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use pgfollow_planner::{decide_backup, decide_restore, schedule_due, to_prune, BackupAction};
use pgfollow_types::backup::{backup_key, backup_name, BackupInfo, BackupRecord, DumpTarget};
use pgfollow_types::model::{
    DatabaseRecord, OperationKind, OperationRecord, OperationState, State,
};
use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;

use crate::error::ApiErr;
use crate::hosts::Hosts;
use crate::provision::{host_address, new_operation};
use crate::store::Store;

/// How often the loop looks when nothing wakes it.
const TICK: Duration = Duration::from_millis(500);

pub struct Backups {
    pub(crate) store: Store,
    /// The embedded agent (on the control plane's host) runs every dump.
    pub(crate) hosts: Hosts,
    dir: PathBuf,
    pub wake: Arc<Notify>,
    /// Steps in flight, by operation id.
    running: Mutex<HashMap<String, AbortHandle>>,
    /// Continuous protection steps in flight, by stanza.
    pub(crate) protecting: Mutex<HashMap<String, AbortHandle>>,
    last_sentence: Mutex<HashMap<String, String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A backup's status, from its operation.
pub fn status_of(state: &State, b: &BackupRecord) -> (&'static str, Option<String>) {
    match state.operations.get(&b.operation) {
        Some(op) => match op.state {
            OperationState::Pending => ("pending", None),
            OperationState::Running => ("running", None),
            OperationState::Done => ("completed", None),
            OperationState::Failed
                if op
                    .last_error
                    .as_deref()
                    .is_some_and(|e| e.starts_with(CANCELLED)) =>
            {
                ("cancelled", op.last_error.clone())
            }
            OperationState::Failed => ("failed", op.last_error.clone()),
        },
        None => ("completed", None),
    }
}

pub const CANCELLED: &str = "cancelled";

pub fn is_complete(state: &State, b: &BackupRecord) -> bool {
    status_of(state, b).0 == "completed" && b.size_bytes.is_some()
}

pub fn info(state: &State, b: &BackupRecord) -> BackupInfo {
    let (status, error) = status_of(state, b);
    BackupInfo {
        name: b.name.clone(),
        app: b.app.to_string(),
        database: b.color.to_string(),
        database_name: b.database_name.clone(),
        status: status.to_string(),
        scheduled: b.is_scheduled(),
        pg_major: b.pg_major,
        created_at: b.created_at,
        finished_at: b.finished_at,
        size_bytes: b.size_bytes,
        error,
        operation: b.operation.clone(),
    }
}

/// The newest completed backup of database `id`.
pub fn latest_of<'a>(state: &'a State, id: &str) -> Option<&'a BackupRecord> {
    state
        .backups
        .values()
        .filter(|b| b.database == id && is_complete(state, b))
        .max_by_key(|b| (b.finished_at, b.created_at))
}

/// Adds a backup of `db` and its operation to the state. Returns its key.
pub fn add_backup(state: &mut State, db: &DatabaseRecord, scheduled: bool) -> String {
    let kind = if scheduled { 'a' } else { 'b' };
    let counter = state
        .backup_numbers
        .entry(format!("{}/{kind}", db.app))
        .or_insert(0);
    *counter += 1;
    let name = backup_name(scheduled, *counter);
    state.next_serial += 1;
    let op_id = format!(
        "op-{:06}-{}",
        state.next_serial,
        hex::encode(rand::random::<[u8; 2]>())
    );
    let now = Utc::now();
    let mut op = new_operation(&op_id, OperationKind::Backup, &db.id, now);
    let key = backup_key(db.app.as_str(), &name);
    op.subject = Some(key.clone());
    state.operations.insert(op_id.clone(), op);
    state.backups.insert(
        key.clone(),
        BackupRecord {
            name: name.clone(),
            app: db.app.clone(),
            database: db.id.clone(),
            color: db.color.clone(),
            database_name: db.name.clone(),
            pg_major: db.pg_major,
            operation: op_id,
            created_at: now,
            finished_at: None,
            size_bytes: None,
            file: format!("{}/{name}.dump", db.app),
        },
    );
    key
}

/// Removes every backup of `app` from the state (its schedules, running
/// captures and restores are cancelled) and returns them, so that their
/// files can be removed once the change is written.
pub fn forget_app(state: &mut State, app: &str) -> Vec<BackupRecord> {
    let prefix = format!("{app}/");
    for o in state.operations.values_mut() {
        let of_app = o.subject.as_deref().is_some_and(|k| k.starts_with(&prefix));
        if o.kind.is_backup() && o.state.is_active() && of_app {
            o.state = OperationState::Failed;
            o.last_error = Some(format!("{CANCELLED}: app {app} was destroyed"));
        }
    }
    state.backup_schedules.retain(|_, s| s.app.as_str() != app);
    state.backup_numbers.retain(|k, _| !k.starts_with(&prefix));
    let keys: Vec<String> = state
        .backups
        .keys()
        .filter(|k| k.starts_with(&prefix))
        .cloned()
        .collect();
    keys.iter()
        .filter_map(|k| state.backups.remove(k))
        .collect()
}

/// Adds a restore of backup `key` into `target`. Returns the operation id.
pub fn add_restore(state: &mut State, key: &str, target: &DatabaseRecord) -> String {
    state.next_serial += 1;
    let op_id = format!(
        "op-{:06}-{}",
        state.next_serial,
        hex::encode(rand::random::<[u8; 2]>())
    );
    let mut op = new_operation(&op_id, OperationKind::Restore, &target.id, Utc::now());
    op.subject = Some(key.to_string());
    state.operations.insert(op_id.clone(), op);
    op_id
}

/// The active backup or restore operations of `app`'s databases.
pub fn active_of_app<'a>(state: &'a State, app: &str) -> Vec<&'a OperationRecord> {
    state
        .operations
        .values()
        .filter(|o| o.kind.is_backup() && o.state.is_active())
        .filter(|o| {
            o.subject
                .as_deref()
                .is_some_and(|k| k.starts_with(&format!("{app}/")))
                || state
                    .databases
                    .get(&o.database)
                    .is_some_and(|d| d.app.as_str() == app)
        })
        .collect()
}

fn owner_target(state: &State, db: &DatabaseRecord) -> DumpTarget {
    DumpTarget {
        host: host_address(state, &db.host),
        port: db.port,
        database: db.database.clone(),
        user: db.owner.name.clone(),
        password: db.owner.password.clone(),
    }
}

impl Backups {
    /// `data_dir` is serve's: the embedded agent keeps the archives in its
    /// `backups/`.
    pub fn new(store: Store, hosts: Hosts, data_dir: &std::path::Path) -> Self {
        Self {
            store,
            hosts,
            dir: data_dir.join("backups"),
            wake: Arc::new(Notify::new()),
            running: Mutex::default(),
            protecting: Mutex::default(),
            last_sentence: Mutex::default(),
        }
    }

    /// The pgBackRest repository of continuous protection.
    pub fn repo_dir(&self) -> PathBuf {
        self.dir.with_file_name("pgbackrest")
    }

    /// The file of a backup.
    pub fn path(&self, b: &BackupRecord) -> PathBuf {
        self.dir.join(&b.file)
    }

    /// Removes a backup's file (and the record, in the caller's write).
    pub fn remove_file(&self, b: &BackupRecord) {
        let path = self.path(b);
        if let Err(e) = std::fs::remove_file(&path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("cannot remove backup file {}: {e}", path.display());
            }
        }
    }

    /// Runs until `cancel`; steps in flight are aborted then (their
    /// partial files are removed by the next try, their operations resume).
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(TICK) => {}
            }
            if let Err(e) = self.tick() {
                tracing::warn!("backups tick failed: {e}");
            }
            if let Err(e) = self.tick_protection() {
                tracing::warn!("continuous protection tick failed: {e}");
            }
        }
        for (_, h) in lock(&self.running).drain() {
            h.abort();
        }
        for (_, h) in lock(&self.protecting).drain() {
            h.abort();
        }
    }

    fn tick(self: &Arc<Self>) -> Result<(), ApiErr> {
        self.start_due_schedules()?;
        let state = self.store.read()?;
        // A cancelled operation's step is stopped (its child is killed on
        // drop) and a half-written archive removed.
        lock(&self.running).retain(|op_id, h| {
            let op = state.operations.get(op_id);
            let active = op.is_some_and(|o| o.state.is_active());
            if !active && !h.is_finished() {
                h.abort();
                let backup = op
                    .filter(|o| o.kind == OperationKind::Backup)
                    .and_then(|o| o.subject.as_ref())
                    .and_then(|k| state.backups.get(k));
                if let Some(b) = backup {
                    let partial = format!("{}.partial", self.path(b).display());
                    let _ = std::fs::remove_file(partial);
                    tracing::info!("{}: backup {} cancelled", b.app, b.name);
                }
            }
            active && !h.is_finished()
        });
        for op in state.operations.values() {
            if !op.kind.is_backup() || !op.state.is_active() {
                continue;
            }
            if lock(&self.running).contains_key(&op.id) {
                continue;
            }
            let key = op.subject.clone().unwrap_or_default();
            let backup = state.backups.get(&key);
            let db = state.databases.get(&op.database);
            let d = match op.kind {
                OperationKind::Backup => decide_backup(op, &key, db),
                _ => decide_restore(
                    op,
                    backup,
                    backup.is_some_and(|b| is_complete(&state, b)),
                    db,
                ),
            };
            self.log_once(&op.id, &d.sentence);
            if d.action == BackupAction::Wait {
                continue;
            }
            if op.state == OperationState::Pending {
                let id = op.id.clone();
                self.store.update(|st| {
                    if let Some(o) = st
                        .operations
                        .get_mut(&id)
                        .filter(|o| o.state == OperationState::Pending)
                    {
                        o.state = OperationState::Running;
                        o.updated_at = Utc::now();
                    }
                    Ok(())
                })?;
            }
            let me = self.clone();
            let (op_id, op, state2) = (op.id.clone(), op.clone(), state.clone());
            let task = tokio::spawn(async move {
                me.carry_out(&state2, &op, d.action).await;
                lock(&me.running).remove(&op.id);
                me.wake.notify_one();
            });
            lock(&self.running).insert(op_id, task.abort_handle());
        }
        Ok(())
    }

    fn log_once(&self, id: &str, sentence: &str) {
        let mut last = lock(&self.last_sentence);
        if last.get(id).map(String::as_str) != Some(sentence) {
            tracing::info!("{sentence}");
            last.insert(id.to_string(), sentence.to_string());
        }
    }

    /// Starts a capture for every schedule that is due.
    fn start_due_schedules(&self) -> Result<(), ApiErr> {
        let now = Utc::now();
        let state = self.store.read()?;
        let due: Vec<String> = state
            .backup_schedules
            .values()
            .filter(|s| schedule_due(s.hour, s.minute, s.last_run, s.created_at, now))
            .map(|s| s.database.clone())
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        self.store.update(|state| {
            for id in &due {
                let Some(db) = state.databases.get(id).filter(|d| d.is_live()).cloned() else {
                    state.backup_schedules.remove(id);
                    continue;
                };
                let key = add_backup(state, &db, true);
                tracing::info!(
                    "{} ({} of {}): scheduled backup {key} started",
                    db.color,
                    db.name,
                    db.app
                );
                if let Some(s) = state.backup_schedules.get_mut(id) {
                    s.last_run = Some(now);
                }
            }
            Ok(())
        })
    }

    async fn carry_out(&self, state: &State, op: &OperationRecord, action: BackupAction) {
        let result = self.act(state, op, &action).await;
        let now = Utc::now();
        let step = action.step();
        let outcome = self.store.update(|st| {
            let Some(o) = st.operations.get_mut(&op.id) else {
                return Ok(());
            };
            if !o.state.is_active() {
                return Ok(()); // cancelled meanwhile
            }
            o.updated_at = now;
            match (&result, &action) {
                (Ok(_), BackupAction::Finish) => {
                    o.state = OperationState::Done;
                    o.progress_percent = Some(100);
                }
                (Ok(_), BackupAction::Fail(why)) => {
                    o.state = OperationState::Failed;
                    o.last_error = Some(why.clone());
                }
                (Ok(size), _) => {
                    o.state = OperationState::Running;
                    o.failures = 0;
                    if let Some(s) = step {
                        o.done.push(s.to_string());
                    }
                    if let (BackupAction::Dump, Some(size)) = (&action, size) {
                        if let Some(b) = o.subject.clone().and_then(|k| st.backups.get_mut(&k)) {
                            b.size_bytes = Some(*size);
                            b.finished_at = Some(now);
                        }
                    }
                }
                (Err(e), _) => {
                    o.state = OperationState::Running;
                    o.failures += 1;
                    o.last_error = Some(e.to_string());
                }
            }
            Ok(())
        });
        if let Err(e) = &result {
            tracing::warn!("{} {}: {e}", op.kind.as_str(), op.id);
        }
        if let Err(e) = outcome {
            tracing::warn!("cannot record {} {}: {e}", op.kind.as_str(), op.id);
        }
    }

    /// Carries out one step; a dump answers the archive's size.
    async fn act(
        &self,
        state: &State,
        op: &OperationRecord,
        action: &BackupAction,
    ) -> Result<Option<u64>, String> {
        let key = op.subject.clone().unwrap_or_default();
        match action {
            BackupAction::Dump => {
                let db = state
                    .databases
                    .get(&op.database)
                    .ok_or("the database is gone")?;
                let b = state.backups.get(&key).ok_or("the backup was deleted")?;
                let size = self
                    .local_agent()?
                    .dump(db.pg_major, &owner_target(state, db), &b.file)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(Some(size))
            }
            BackupAction::Prune => {
                self.prune(op, &key).map_err(|e| e.to_string())?;
                Ok(None)
            }
            BackupAction::Restore => {
                let db = state
                    .databases
                    .get(&op.database)
                    .ok_or("the database is gone")?;
                let b = state.backups.get(&key).ok_or("the backup was deleted")?;
                let store = self.store.clone();
                let op_id = op.id.clone();
                let last = Mutex::new(None::<u8>);
                let progress = move |done: u64, total: u64| {
                    let pct = (done.saturating_mul(100) / total.max(1)).min(99) as u8;
                    let mut l = lock(&last);
                    if *l == Some(pct) {
                        return;
                    }
                    *l = Some(pct);
                    let _ = store.update(|st| {
                        if let Some(o) = st.operations.get_mut(&op_id) {
                            o.progress_percent = Some(pct);
                        }
                        Ok(())
                    });
                };
                self.local_agent()?
                    .restore(db.pg_major, &owner_target(state, db), &b.file, progress)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(None)
            }
            BackupAction::Finish | BackupAction::Fail(_) | BackupAction::Wait => Ok(None),
        }
    }

    /// The control plane's own agent, which keeps the archives.
    fn local_agent(&self) -> Result<crate::hosts::AgentHandle, String> {
        self.hosts
            .agent(crate::server::LOCAL_HOST)
            .map_err(|e| e.to_string())
    }

    /// Deletes the source database's oldest completed backups of the same
    /// kind beyond its plan's retention.
    fn prune(&self, op: &OperationRecord, key: &str) -> Result<(), ApiErr> {
        let removed = self.store.update(|state| {
            let Some(this) = state.backups.get(key).cloned() else {
                return Ok(Vec::new());
            };
            let Some(plan) = state.databases.get(&this.database).map(|d| d.plan.clone()) else {
                return Ok(Vec::new());
            };
            let (manual, scheduled) = plan.backup_retention();
            let keep = if this.is_scheduled() {
                scheduled
            } else {
                manual
            };
            let mut completed: Vec<&BackupRecord> = state
                .backups
                .values()
                .filter(|b| b.database == this.database && b.is_scheduled() == this.is_scheduled())
                .filter(|b| b.key() == key || is_complete(state, b))
                .collect();
            completed.sort_by_key(|b| b.created_at);
            let names = to_prune(&completed, keep);
            let mut removed = Vec::new();
            for name in names {
                if let Some(b) = state.backups.remove(&backup_key(this.app.as_str(), &name)) {
                    removed.push(b);
                }
            }
            Ok(removed)
        })?;
        for b in removed {
            tracing::info!(
                "{}: deleted backup {} (beyond its plan's retention), after {}",
                b.app,
                b.name,
                op.id
            );
            self.remove_file(&b);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgfollow_catalog::MemoryCatalog;
    use pgfollow_types::backup::BackupSchedule;

    fn db(id: &str, plan: &str) -> DatabaseRecord {
        let plan = pgfollow_types::PlanCatalog::default()
            .get(plan)
            .unwrap()
            .clone();
        serde_json::from_value(serde_json::json!({
            "id": id, "name": format!("postgresql-calm-{id}"), "app": "sushi", "color": "WHITE",
            "plan": plan, "host": "local", "port": 5432, "database": "d1",
            "owner": {"name": "u", "password": "p"},
            "replication": {"name": "r", "password": "p"},
            "pg_major": 15, "created_at": Utc::now(), "desired": "running",
            "state": "available", "status_detail": null, "pg_version": null,
        }))
        .unwrap()
    }

    /// A backups loop over an in-memory catalog and a temp data dir (no
    /// agent: these tests run no pg_dump).
    fn backups(dir: &std::path::Path) -> Backups {
        let store = Store::new(Arc::new(MemoryCatalog::new()));
        Backups::new(store, Hosts::new(None, "token".into()), dir)
    }

    #[test]
    fn names_count_per_app_and_kind() {
        let mut st = State::default();
        let d = db("db-1", "standard-0");
        st.databases.insert(d.id.clone(), d.clone());
        let keys: Vec<String> = [false, false, true, false]
            .iter()
            .map(|s| add_backup(&mut st, &d, *s))
            .collect();
        assert_eq!(
            keys,
            ["sushi/b001", "sushi/b002", "sushi/a001", "sushi/b003"]
        );
        let op = &st.operations[&st.backups["sushi/a001"].operation];
        assert_eq!(op.kind, OperationKind::Backup);
        assert_eq!(op.subject.as_deref(), Some("sushi/a001"));
        assert_eq!(status_of(&st, &st.backups["sushi/b001"]).0, "pending");
    }

    #[test]
    fn a_due_schedule_starts_one_scheduled_backup() {
        let dir = tempfile::tempdir().unwrap();
        let b = backups(dir.path());
        let two_days_ago = Utc::now() - chrono::Duration::days(2);
        b.store
            .update(|st| {
                let d = db("db-1", "standard-0");
                st.databases.insert(d.id.clone(), d);
                for id in ["db-1", "db-gone"] {
                    st.backup_schedules.insert(
                        id.into(),
                        BackupSchedule {
                            database: id.into(),
                            app: pgfollow_types::AppName::parse("sushi").unwrap(),
                            hour: 2,
                            minute: 0,
                            last_run: None,
                            created_at: two_days_ago,
                        },
                    );
                }
                Ok(())
            })
            .unwrap();
        b.start_due_schedules().unwrap();
        b.start_due_schedules().unwrap();
        let st = b.store.read().unwrap();
        let names: Vec<&str> = st.backups.values().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["a001"], "once, not once per tick");
        assert!(st.backup_schedules["db-1"].last_run.is_some());
        assert!(
            !st.backup_schedules.contains_key("db-gone"),
            "a destroyed database's schedule goes"
        );
    }

    #[test]
    fn retention_deletes_the_oldest_records_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let b = backups(dir.path());
        let keys = b
            .store
            .update(|st| {
                let d = db("db-1", "hobby-dev"); // keeps 2 manual backups
                st.databases.insert(d.id.clone(), d.clone());
                let keys: Vec<String> = (0..3).map(|_| add_backup(st, &d, false)).collect();
                for (i, k) in keys.iter().enumerate() {
                    let bk = st.backups.get_mut(k).unwrap();
                    bk.size_bytes = Some(10);
                    bk.created_at = Utc::now() - chrono::Duration::minutes(10 - i as i64);
                    let op = bk.operation.clone();
                    if i < 2 {
                        st.operations.get_mut(&op).unwrap().state = OperationState::Done;
                    }
                }
                Ok(keys)
            })
            .unwrap();
        let st = b.store.read().unwrap();
        for k in &keys {
            let path = b.path(&st.backups[k]);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, b"x").unwrap();
        }
        let first = b.path(&st.backups[&keys[0]]);
        let op = st.operations[&st.backups[&keys[2]].operation].clone();
        b.prune(&op, &keys[2]).unwrap();
        let st = b.store.read().unwrap();
        let left: Vec<&str> = st.backups.values().map(|b| b.name.as_str()).collect();
        assert_eq!(left, ["b002", "b003"]);
        assert!(!first.exists());
        assert!(b.path(&st.backups[&keys[1]]).exists());
    }
}
