//! `pg:upgrade`: a major-version upgrade with `pg_upgrade`, as Heroku's flow
//! has it: a follower is unfollowed first and upgraded on its own copy, then
//! can be promoted; `--dry-run` upgrades a throwaway copy and says how long
//! it took. The work is an `upgrade` operation (planner decides, executor
//! acts), so a killed serve resumes it.

use axum::extract::{Path, State};
use axum::Json;
use chrono::Utc;
use pgfollow_types::api::{UpgradeRequest, UpgradeResponse};
use pgfollow_types::model::{OperationKind, State as Catalog};

use super::apps::check_confirm;
use super::promotion::start_unfollow;
use super::{changed, Shared};
use crate::error::ApiErr;
use crate::executor::active_operation;
use crate::provision::{new_operation, next_operation_id};
use crate::resolve::resolve_db;
use crate::views;

/// Why `db` cannot be upgraded to `version` (in place unless `dry_run`).
fn refusal(
    state: &Catalog,
    db: &pgfollow_types::model::DatabaseRecord,
    version: u32,
    dry_run: bool,
) -> Option<String> {
    if version <= db.pg_major {
        return Some(format!(
            "{} runs PostgreSQL {}; pg_upgrade only goes to a newer major (--version {} or later)",
            db.color,
            db.pg_major,
            db.pg_major + 1
        ));
    }
    let host = state.hosts.get(&db.host)?;
    if !host.has_major(version) {
        return Some(format!(
            "PostgreSQL {version} is not installed on host {} ({}'s host): install it there and restart its agent, or choose another --version",
            db.host, db.color
        ));
    }
    if dry_run {
        return None;
    }
    if db.ha_standby.is_some() {
        return Some(format!(
            "{} has an HA standby, which must run its major: upgrade a follower of it (`pgfollow pg:upgrade FOLLOWER --version {version}`) and promote that",
            db.color
        ));
    }
    let followers = views::followers_of(state, &db.id);
    if !followers.is_empty() {
        return Some(format!(
            "{} has followers ({}), which must run its major: upgrade a follower of it instead and promote that, or destroy its followers first",
            db.color,
            followers.iter().map(|f| f.color.to_string()).collect::<Vec<_>>().join(", ")
        ));
    }
    None
}

/// Starts an upgrade (or a dry run) of a database.
#[utoipa::path(post, path = "/v1/apps/{app}/databases/{db}/upgrade", params(("app" = String, Path), ("db" = String, Path)), request_body = UpgradeRequest,
    responses((status = 200, body = UpgradeResponse), (status = 400, body = pgfollow_types::api::ApiError), (status = 409, body = pgfollow_types::api::ApiError)))]
pub async fn upgrade(
    State(ctx): Shared,
    Path((app, reference)): Path<(String, String)>,
    Json(req): Json<UpgradeRequest>,
) -> Result<Json<UpgradeResponse>, ApiErr> {
    let answer = changed(
        &ctx,
        ctx.store.update(|state| {
            let db = resolve_db(state, &app, &reference)?.clone();
            if !req.dry_run {
                check_confirm(&app, req.confirm.as_deref())?;
            }
            if let Some(why) = refusal(state, &db, req.version, req.dry_run) {
                return Err(ApiErr::bad_request(why));
            }
            if let Some(op) = active_operation(state, &db.id) {
                return Err(ApiErr::conflict(format!(
                    "{} is busy with a {} operation; try again when it is done",
                    db.color,
                    op.kind.as_str()
                )));
            }
            let unfollow = if db.is_follower() && !req.dry_run {
                Some(start_unfollow(state, &db)?)
            } else {
                None
            };
            let op_id = next_operation_id(state);
            let mut op = new_operation(&op_id, OperationKind::Upgrade, &db.id, Utc::now());
            let kind = if req.dry_run { "dry-run" } else { "upgrade" };
            op.subject = Some(format!("{kind}:{}", req.version));
            state.operations.insert(op_id.clone(), op);
            let message = match (&unfollow, req.dry_run) {
                (_, true) => format!(
                    "Dry run: upgrading a copy of {} from PostgreSQL {} to {}...",
                    db.color, db.pg_major, req.version
                ),
                (Some((_, leader)), false) => format!(
                    "Upgrading {} to PostgreSQL {}: it stops following {leader}, then pg_upgrade runs on its own copy...",
                    db.color, req.version
                ),
                (None, false) => format!(
                    "Upgrading {} from PostgreSQL {} to {} (it is stopped while pg_upgrade runs)...",
                    db.color, db.pg_major, req.version
                ),
            };
            Ok(UpgradeResponse {
                name: db.name.clone(),
                color: db.color.clone(),
                operation: op_id,
                message,
            })
        }),
    )?;
    tracing::info!("{} ({}): {}", answer.color, answer.name, answer.message);
    Ok(Json(answer))
}
