//! Keeps the state document bounded: finished operations pile up (every
//! suspicion of a primary records a `hold`), and etcd takes at most 1.5 MiB
//! in one request. Only the newest finished operations are kept; active
//! ones, and those a backup record names (its status is read from them),
//! always stay.

use std::collections::HashSet;

use crate::State;

/// Drops all but the `keep` most recently updated finished operations;
/// returns how many went.
pub fn prune_finished_operations(state: &mut State, keep: usize) -> usize {
    let named: HashSet<&str> = state
        .backups
        .values()
        .map(|b| b.operation.as_str())
        .collect();
    let mut finished: Vec<(chrono::DateTime<chrono::Utc>, String)> = state
        .operations
        .values()
        .filter(|o| !o.state.is_active() && !named.contains(o.id.as_str()))
        .map(|o| (o.updated_at, o.id.clone()))
        .collect();
    if finished.len() <= keep {
        return 0;
    }
    // Newest first; ids break ties so the choice never depends on order.
    finished.sort_by(|a, b| b.cmp(a));
    let gone = finished.split_off(keep);
    for (_, id) in &gone {
        state.operations.remove(id);
    }
    gone.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone, Utc};
    use pgfollow_types::model::{OperationKind, OperationRecord, OperationState};

    fn op(id: &str, state: OperationState, minute: i64) -> OperationRecord {
        let t = Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap() + Duration::minutes(minute);
        let mut o = OperationRecord::new(id, OperationKind::Hold, "db-1", t);
        o.state = state;
        o
    }

    fn with(ops: Vec<OperationRecord>) -> State {
        let mut s = State::default();
        for o in ops {
            s.operations.insert(o.id.clone(), o);
        }
        s
    }

    #[test]
    fn the_newest_finished_and_every_active_one_stay() {
        let mut s = with(vec![
            op("old-done", OperationState::Done, 1),
            op("old-failed", OperationState::Failed, 2),
            op("running", OperationState::Running, 0),
            op("pending", OperationState::Pending, 0),
            op("new-done", OperationState::Done, 9),
        ]);
        assert_eq!(prune_finished_operations(&mut s, 2), 1);
        let left: Vec<&str> = s.operations.keys().map(String::as_str).collect();
        assert_eq!(left, ["new-done", "old-failed", "pending", "running"]);
    }

    #[test]
    fn under_the_limit_nothing_goes() {
        let mut s = with(vec![
            op("a", OperationState::Done, 1),
            op("b", OperationState::Done, 2),
        ]);
        let before = s.clone();
        assert_eq!(prune_finished_operations(&mut s, 2), 0);
        assert_eq!(s, before);
    }

    #[test]
    fn an_operation_a_backup_names_stays() {
        let mut s = with(vec![
            op("backup-op", OperationState::Failed, 1),
            op("b", OperationState::Done, 2),
        ]);
        let backup: pgfollow_types::backup::BackupRecord =
            serde_json::from_value(serde_json::json!({
                "name": "b001", "app": "sushi", "database": "db-1", "color": "WHITE",
                "database_name": "postgresql-x", "pg_major": 15, "operation": "backup-op",
                "created_at": "2026-12-01T00:00:00Z", "file": "sushi/b001.dump",
            }))
            .unwrap();
        s.backups.insert("sushi/b001".into(), backup);
        assert_eq!(prune_finished_operations(&mut s, 0), 1);
        assert!(s.operations.contains_key("backup-op"));
    }

    #[test]
    fn pruned_operations_fit_many_times_in_an_etcd_request() {
        // A busy HA primary records a hold (with its reason) at every
        // suspicion: a thousand of them, pruned to the newest 200.
        let mut s = with(
            (0..1000)
                .map(|i| {
                    let mut o = op(&format!("op-{i:05}"), OperationState::Done, i);
                    o.done = vec!["hold".into(), "release".into()];
                    o.reason = Some("its host missed heartbeats for 0.8 s".into());
                    o
                })
                .collect(),
        );
        let before = crate::encode(&s).unwrap().len();
        assert_eq!(prune_finished_operations(&mut s, crate::KEEP_FINISHED), 800);
        let after = crate::encode(&s).unwrap().len();
        eprintln!("1000 finished operations: {before} bytes; pruned to 200: {after} bytes");
        assert!(after * 20 < 1_500_000, "{after} bytes (from {before})");
        assert!(s.operations.contains_key("op-00999"));
    }
}
