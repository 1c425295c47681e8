//! `pg:unfollow` and `pg:promote`.

use axum::extract::{Path, State};
use axum::Json;
use chrono::Utc;
use pgfollow_types::api::{
    Confirm, DatabaseState, PromoteRequest, PromoteResponse, UnfollowResponse,
};
use pgfollow_types::model::{DatabaseRecord, OperationKind, State as Catalog};

use super::apps::check_confirm;
use super::{changed, Shared};
use crate::error::ApiErr;
use crate::executor::active_operation;
use crate::provision::new_operation;
use crate::resolve::{find_app, resolve_db};
use crate::views::MAIN_ATTACHMENT;

/// Starts an unfollow of `db` in `state`; returns the operation id and the
/// leader's colour.
pub(crate) fn start_unfollow(
    state: &mut Catalog,
    db: &DatabaseRecord,
) -> Result<(String, String), ApiErr> {
    let Some(leader_id) = db.following.clone() else {
        return Err(ApiErr::bad_request(format!(
            "{} is not a follower; it is already writable",
            db.color
        )));
    };
    if db.state != DatabaseState::Available {
        return Err(ApiErr::conflict(format!(
            "{} is {}: wait until it is available (`pgfollow pg:wait`), or destroy it",
            db.color, db.state
        )));
    }
    if let Some(op) = active_operation(state, &db.id) {
        return Err(ApiErr::conflict(format!(
            "{} is busy with a {} operation; try again when it is done",
            db.color,
            op.kind.as_str()
        )));
    }
    let leader_color = state
        .databases
        .get(&leader_id)
        .map(|l| l.color.to_string())
        .unwrap_or_else(|| "its leader".into());
    let now = Utc::now();
    state.next_serial += 1;
    let op_id = format!(
        "op-{:06}-{}",
        state.next_serial,
        hex::encode(rand::random::<[u8; 2]>())
    );
    let mut op = new_operation(&op_id, OperationKind::Unfollow, &db.id, now);
    op.subject = Some(leader_id);
    state.operations.insert(op_id.clone(), op);
    if let Some(d) = state.databases.get_mut(&db.id) {
        d.fork_pending = true;
    }
    Ok((op_id, leader_color))
}

/// Stops a follower following: it is promoted, keeps all it received, and
/// becomes a writable fork.
#[utoipa::path(post, path = "/v1/apps/{app}/databases/{db}/unfollow", params(("app" = String, Path), ("db" = String, Path)), request_body = Confirm,
    responses((status = 200, body = UnfollowResponse), (status = 400, body = pgfollow_types::api::ApiError), (status = 409, body = pgfollow_types::api::ApiError)))]
pub async fn unfollow(
    State(ctx): Shared,
    Path((app, reference)): Path<(String, String)>,
    Json(req): Json<Confirm>,
) -> Result<Json<UnfollowResponse>, ApiErr> {
    let answer = changed(
        &ctx,
        ctx.store.update(|state| {
            let db = resolve_db(state, &app, &reference)?.clone();
            check_confirm(&app, Some(&req.confirm))?;
            let (operation, leader) = start_unfollow(state, &db)?;
            Ok(UnfollowResponse {
                name: db.name.clone(),
                color: db.color.clone(),
                message: format!(
                    "Unfollowing {}... started: it stops following {leader} and becomes writable; `pgfollow pg:wait` waits for it",
                    db.color
                ),
                leader,
                operation,
            })
        }),
    )?;
    tracing::info!(
        "{} ({}): unfollow of {} requested",
        answer.color,
        answer.name,
        answer.leader
    );
    Ok(Json(answer))
}

/// Makes a database the one behind the app's `DATABASE_URL`.
#[utoipa::path(post, path = "/v1/apps/{app}/databases/{db}/promote", params(("app" = String, Path), ("db" = String, Path)), request_body = PromoteRequest,
    responses((status = 200, body = PromoteResponse), (status = 400, body = pgfollow_types::api::ApiError), (status = 409, body = pgfollow_types::api::ApiError)))]
pub async fn promote(
    State(ctx): Shared,
    Path((app, reference)): Path<(String, String)>,
    Json(req): Json<PromoteRequest>,
) -> Result<Json<PromoteResponse>, ApiErr> {
    let answer = changed(
        &ctx,
        ctx.store.update(|state| {
            let db = resolve_db(state, &app, &reference)?.clone();
            let a = find_app(state, &app)?.clone();
            let previous_id = a.attachments.get(MAIN_ATTACHMENT).cloned();
            if previous_id.as_deref() == Some(db.id.as_str()) {
                return Err(ApiErr::bad_request(format!(
                    "{} is already the database behind DATABASE_URL",
                    db.color
                )));
            }
            if db.state == DatabaseState::Preparing && !req.force {
                return Err(ApiErr::conflict(format!(
                    "{} is still preparing; wait with `pgfollow pg:wait`, or promote it anyway with --force",
                    db.color
                )));
            }
            if !matches!(db.state, DatabaseState::Available | DatabaseState::Preparing) {
                return Err(ApiErr::conflict(format!(
                    "{} is {}; only an available database can be promoted",
                    db.color, db.state
                )));
            }
            let mut lines = vec![format!("Promoting {} to DATABASE_URL on {app}... done", db.color)];
            let operation = match (&db.following, req.unfollow) {
                (Some(_), true) => {
                    let (op, leader) = start_unfollow(state, &db)?;
                    lines.push(format!(
                        "{} stops following {leader} and becomes writable (`pgfollow pg:wait` waits for it).",
                        db.color
                    ));
                    Some(op)
                }
                (Some(leader), false) => {
                    let leader = state
                        .databases
                        .get(leader)
                        .map(|l| l.color.to_string())
                        .unwrap_or_default();
                    if !req.force {
                        return Err(ApiErr::conflict(format!(
                            "{} is a read-only follower of {leader}: writes through DATABASE_URL would fail. Promote it with --unfollow (it stops following first), or run `pgfollow pg:unfollow {} --app {app}` first; --force routes DATABASE_URL to it as it is",
                            db.color, db.color
                        )));
                    }
                    lines.push(format!(
                        "Warning: {} is still a read-only follower of {leader}: writes through DATABASE_URL fail until `pgfollow pg:unfollow {} --app {app}`.",
                        db.color, db.color
                    ));
                    None
                }
                (None, _) => None,
            };
            let unfollowing = operation.is_some()
                || state.operations.values().any(|o| {
                    o.database == db.id && o.kind == OperationKind::Unfollow && o.state.is_active()
                        && !o.has_done("promote")
                });
            if unfollowing {
                lines.push(format!(
                    "DATABASE_URL routes to {} as soon as its unfollow has made it writable.",
                    db.color
                ));
            }
            let previous = previous_id
                .as_ref()
                .and_then(|id| state.databases.get(id))
                .map(|p| p.color.to_string());
            if let Some(p) = &previous {
                lines.push(format!("{p} stays reachable as PGFOLLOW_POSTGRESQL_{p}_URL."));
            }
            let app_rec = state
                .apps
                .get_mut(&app)
                .ok_or_else(|| ApiErr::internal("app vanished"))?;
            app_rec
                .attachments
                .insert(MAIN_ATTACHMENT.to_string(), db.id.clone());
            if let Some(d) = state.databases.get_mut(&db.id) {
                // Behind DATABASE_URL again: it gets a standby if it had
                // given its own away.
                d.ha_released = false;
            }
            Ok(PromoteResponse {
                name: db.name.clone(),
                color: db.color.clone(),
                previous,
                operation,
                message: lines.join("\n"),
            })
        }),
    )?;
    tracing::info!(
        "{} ({}): now behind DATABASE_URL of {app}",
        answer.color,
        answer.name
    );
    let mut answer = answer;
    // Connected apps follow without a restart: the endpoint is retargeted
    // (once the database is writable, unless forced).
    let synced = if req.force {
        ctx.endpoints.sync_read_only(&app).await
    } else {
        ctx.endpoints.sync(&app, false).await
    };
    match synced {
        Ok(Some(held)) => answer.message.push_str(&format!(
            "\nDATABASE_URL now routes to {} (connections held {:.0} ms, none dropped).",
            answer.color,
            held.as_secs_f64() * 1000.0
        )),
        Ok(None) => {}
        Err(e) => answer.message.push_str(&format!(
            "\nWarning: the endpoint still routes to the old database ({e}); pgfollow keeps trying."
        )),
    }
    Ok(Json(answer))
}
