//! What a finished step changes in the catalog: one pure function,
//! `(state, step done) -> new state`, next to the decisions that asked for
//! the step (Stolon's `updateCluster`). The executor only calls it inside
//! its compare-and-swap write.

use chrono::{DateTime, Utc};
use pgfollow_types::api::DatabaseState;
use pgfollow_types::model::{OperationState, State};

use crate::decide::{commit_password, Action};

/// Records that `action`, a step of operation `op_id` on database `db_id`,
/// is done. Returns a sentence worth logging, if any.
pub fn step_done(
    state: &mut State,
    db_id: &str,
    op_id: &str,
    action: &Action,
    now: DateTime<Utc>,
) -> Option<String> {
    let o = state.operations.get_mut(op_id)?;
    o.updated_at = now;
    o.failures = 0;
    o.last_error = None;
    o.state = OperationState::Running;
    o.done.push(action.step().to_string());
    let kind = o.kind;
    let label = state
        .databases
        .get(db_id)
        .map(|d| format!("{} ({} of {})", d.color, d.name, d.app))
        .unwrap_or_else(|| db_id.to_string());
    let end = |state: &mut State, to: OperationState, error: Option<String>| {
        if let Some(o) = state.operations.get_mut(op_id) {
            o.state = to;
            if error.is_some() {
                o.last_error = error;
            }
        }
    };
    match action {
        Action::MarkAvailable | Action::CheckCaughtUp => {
            end(state, OperationState::Done, None);
            if let Some(o) = state.operations.get_mut(op_id) {
                o.progress_percent = Some(100);
            }
            if let Some(d) = state.databases.get_mut(db_id) {
                d.state = DatabaseState::Available;
                d.status_detail = None;
                d.fork_pending = false;
            }
            Some(format!("{label}: available"))
        }
        Action::Upgrade => {
            // The new major's binaries run it from now on; its system
            // identifier is new, so it starts a lineage of its own.
            let major = state
                .operations
                .get(op_id)
                .and_then(crate::decide::upgrade_target)
                .map(|(m, _)| m);
            if let (Some(m), Some(d)) = (major, state.databases.get_mut(db_id)) {
                d.pg_major = m;
                d.pg_version = None;
            }
            state.archive_of.remove(db_id);
            major.map(|m| format!("{label}: upgraded to PostgreSQL {m}"))
        }
        Action::UpgradeDryRun => {
            end(state, OperationState::Done, None);
            None
        }
        Action::CommitPassword => {
            commit_password(state, db_id);
            Some(format!("{label}: rotated the owner's password"))
        }
        Action::SyncEndpoints => {
            end(state, OperationState::Done, None);
            None
        }
        Action::Promote => {
            // Writable now: it follows nothing any more.
            if let Some(d) = state.databases.get_mut(db_id) {
                d.following = None;
            }
            None
        }
        Action::Fail(reason) => {
            end(state, OperationState::Failed, Some(reason.clone()));
            let name = state.databases.get_mut(db_id).map(|d| {
                d.state = DatabaseState::Failed;
                d.status_detail = Some(reason.clone());
                d.name.clone()
            });
            if let Some(name) = name {
                end_billing(state, &name, now);
            }
            None
        }
        Action::GiveUp(reason) => {
            end(state, OperationState::Failed, Some(reason.clone()));
            if let Some(d) = state.databases.get_mut(db_id) {
                d.status_detail = Some(format!("its {} failed: {reason}", kind.as_str()));
            }
            None
        }
        Action::Cancel => {
            end(
                state,
                OperationState::Failed,
                Some("cancelled: the database is being destroyed".into()),
            );
            None
        }
        Action::Forget => {
            end(state, OperationState::Done, None);
            forget(state, db_id, now);
            None
        }
        _ => None,
    }
}

/// Ends the bill of the database called `name`.
pub fn end_billing(state: &mut State, name: &str, now: DateTime<Utc>) {
    for b in state.billing.iter_mut() {
        if b.database == name && b.ended_at.is_none() {
            b.ended_at = Some(now);
        }
    }
}

/// Drops a destroyed database's records; its operations stay as history.
pub fn forget(state: &mut State, id: &str, now: DateTime<Utc>) {
    if let Some(db) = state.databases.remove(id) {
        end_billing(state, &db.name, now);
    }
    for app in state.apps.values_mut() {
        app.attachments.retain(|_, d| d != id);
    }
    // How it was made no longer matters; its lineage's archive is
    // forgotten by the protection tick (`assign_stanzas`).
    state.rollbacks.remove(id);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::tests::db;
    use pgfollow_types::agent::RoleSecret;
    use pgfollow_types::model::{BillingRecord, Desired, OperationKind, OperationRecord};

    fn state(kind: OperationKind) -> State {
        let mut s = State::default();
        let mut d = db(DatabaseState::Preparing, Desired::Running);
        d.following = Some("leader".into());
        d.fork_pending = true;
        d.pending_owner = Some(RoleSecret {
            name: "u".into(),
            password: "new".into(),
        });
        s.billing.push(BillingRecord {
            app: d.app.clone(),
            database: d.name.clone(),
            color: d.color.clone(),
            plan: "standard-0".into(),
            price_per_month: 50,
            started_at: Utc::now(),
            ended_at: None,
        });
        s.databases.insert(d.id.clone(), d);
        s.operations.insert(
            "op".into(),
            OperationRecord::new("op", kind, "db-1", Utc::now()),
        );
        s
    }

    #[test]
    fn each_finished_step_changes_the_catalog_as_it_should() {
        use OperationKind::*;
        type Check = fn(&State) -> bool;
        let rows: Vec<(OperationKind, Action, Check)> = vec![
            (Provision, Action::Start, |s| {
                s.operations["op"].state == OperationState::Running
                    && s.operations["op"].done == ["start"]
            }),
            (Provision, Action::MarkAvailable, |s| {
                s.operations["op"].state == OperationState::Done
                    && s.databases["db-1"].state == DatabaseState::Available
                    && !s.databases["db-1"].fork_pending
            }),
            (Unfollow, Action::Promote, |s| {
                s.databases["db-1"].following.is_none()
            }),
            (Rotate, Action::CommitPassword, |s| {
                s.databases["db-1"].owner.password == "new"
                    && s.databases["db-1"].pending_owner.is_none()
            }),
            (Rotate, Action::SyncEndpoints, |s| {
                s.operations["op"].state == OperationState::Done
            }),
            (Provision, Action::Fail("boom".into()), |s| {
                s.databases["db-1"].state == DatabaseState::Failed
                    && s.billing[0].ended_at.is_some()
                    && s.operations["op"].last_error.as_deref() == Some("boom")
            }),
            (Unfollow, Action::GiveUp("stuck".into()), |s| {
                s.operations["op"].state == OperationState::Failed
                    && s.databases["db-1"].state == DatabaseState::Preparing
                    && s.databases["db-1"].status_detail.as_deref()
                        == Some("its unfollow failed: stuck")
            }),
            (Destroy, Action::Forget, |s| {
                s.databases.is_empty() && s.billing[0].ended_at.is_some()
            }),
            (Provision, Action::Cancel, |s| {
                s.operations["op"].state == OperationState::Failed
            }),
        ];
        for (kind, action, check) in rows {
            let mut s = state(kind);
            step_done(&mut s, "db-1", "op", &action, Utc::now());
            assert!(check(&s), "{kind:?} {action:?}: {s:#?}");
        }
    }
}
