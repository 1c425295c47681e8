//! Interrupted changeovers: finished or undone at the next look.

use pgfollow_planner::{recover_changeover, ChangeoverRecovery, CHANGEOVER_SWITCH};
use pgfollow_types::model::OperationState;

use super::job::{finish, switch};
use crate::error::ApiErr;

/// Finishes or undoes changeover `op_id`, which no task carries out any
/// more (the control plane that ran it died). Returns a sentence.
pub async fn recover(
    store: &crate::store::Store,
    hosts: &crate::hosts::Hosts,
    endpoints: &crate::endpoints::Endpoints,
    op_id: &str,
) -> Result<Option<String>, ApiErr> {
    let state = store.read()?;
    let Some(op) = state.operations.get(op_id).cloned() else {
        return Ok(None);
    };
    let (Some(target), Some(old)) = (
        state.databases.get(&op.database).cloned(),
        op.subject
            .as_ref()
            .and_then(|id| state.databases.get(id))
            .cloned(),
    ) else {
        store.update(|s| {
            if let Some(o) = s.operations.get_mut(op_id) {
                o.state = OperationState::Failed;
                o.last_error = Some("a database vanished during the changeover".into());
            }
            Ok(())
        })?;
        return Ok(Some(format!(
            "changeover {op_id}: a database vanished; it failed"
        )));
    };
    let app = target.app.to_string();
    // A logical follower is never in recovery: before the switch is
    // recorded it counts as not handed over, and writes resume on the old
    // primary.
    let in_recovery = match hosts.get(&target.host) {
        _ if target.logical => Some(true),
        Some(a) => a.probe(&target.id).await.ok().map(|p| p.in_recovery),
        None => None,
    };
    let verdict = recover_changeover(op.has_done(CHANGEOVER_SWITCH), in_recovery);
    let sentence = match verdict {
        ChangeoverRecovery::Wait => return Ok(None),
        ChangeoverRecovery::Abort => {
            finish(
                store,
                op_id,
                &app,
                OperationState::Failed,
                Some("interrupted before the promotion"),
            )?;
            format!(
                "{app}: the changeover to {} was interrupted before the promotion; writes resume on {}",
                target.color, old.color
            )
        }
        ChangeoverRecovery::Switch | ChangeoverRecovery::Reroute => {
            if verdict == ChangeoverRecovery::Switch {
                store.update(|s| switch(s, op_id, &app, &target.id, &old.id))?;
            }
            endpoints.reroute_held(&app).await?;
            finish(store, op_id, &app, OperationState::Done, None)?;
            format!(
                "{app}: the interrupted changeover to {} is finished: the endpoint routes to it and writes flow again",
                target.color
            )
        }
    };
    Ok(Some(sentence))
}
