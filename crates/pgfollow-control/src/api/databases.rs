//! One database: `pg:info`, `pg:ps`, `pg:kill`, `pg:killall` and credentials.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::Json;
use chrono::Utc;
use pgfollow_types::api::{
    Backend, Confirm, Credentials, DatabaseInfo, DatabaseState, KillAllResponse, KillRequest,
    KillResponse,
};
use pgfollow_types::model::{
    DatabaseRecord, Desired, OperationKind, OperationState, State as Catalog,
};

use super::apps::check_confirm;
use super::{Ctx, Shared};
use crate::error::ApiErr;
use crate::executor::active_operation;
use crate::provision::{new_operation, next_operation_id, secret};
use crate::resolve::{find_app, resolve_db};
use crate::views;

/// How long `pg:info` waits for a database's own numbers.
const STATS_TIMEOUT: Duration = Duration::from_secs(3);

/// `pg:info` of one database (also what the dashboard shows).
pub(crate) async fn info_of(ctx: &Ctx, state: &Catalog, db: &DatabaseRecord) -> DatabaseInfo {
    let agent = ctx.hosts.get(&db.host);
    let running = match &agent {
        Some(a) => a.status(&db.id).await.is_ok_and(|s| s.running),
        None => false,
    };
    let stats = match &agent {
        Some(a) if running && db.state != DatabaseState::Preparing => {
            tokio::time::timeout(STATS_TIMEOUT, a.stats(&db.id, &db.database))
                .await
                .ok()
                .and_then(Result::ok)
        }
        _ => None,
    };
    let mut status = db.state;
    let mut detail = db.status_detail.clone();
    if status == DatabaseState::Available && !running {
        status = DatabaseState::Unavailable;
        // What the HA monitor said (a refused failover, say) beats a guess.
        detail = detail.or_else(|| Some("postgres is not running; pgfollow is starting it".into()));
    }
    let op = active_operation(state, &db.id);
    if status == DatabaseState::Preparing {
        if let Some(e) = op.and_then(|o| o.last_error.clone()) {
            detail = Some(format!("retrying after: {e}"));
        }
    }
    let leader = db.following.as_ref().and_then(|id| state.databases.get(id));
    let behind_by = match leader {
        Some(_) if running && status != DatabaseState::Preparing => {
            tokio::time::timeout(STATS_TIMEOUT, crate::lag::measure(&ctx.hosts, state, db))
                .await
                .ok()
                .and_then(Result::ok)
        }
        _ => None,
    };
    let following = leader.map(|l| {
        if l.app == db.app {
            l.color.to_string()
        } else {
            format!("{}::{}", l.app, l.color)
        }
    });
    let followers = views::followers_of(state, &db.id)
        .into_iter()
        .map(|f| {
            if f.app == db.app {
                f.color.to_string()
            } else {
                format!("{}::{}", f.app, f.color)
            }
        })
        .collect();
    DatabaseInfo {
        name: db.name.clone(),
        color: db.color.clone(),
        app: db.app.to_string(),
        attachments: views::owner_attachment_vars(state, db),
        plan: db.plan.name.clone(),
        state: status,
        status_detail: detail,
        progress_percent: op.and_then(|o| o.progress_percent),
        connections_used: stats.as_ref().map(|s| s.connections_used),
        connection_limit: db.plan.connection_limit,
        pg_version: stats
            .as_ref()
            .map(|s| s.server_version.clone())
            .or_else(|| db.pg_version.clone())
            .unwrap_or_else(|| db.pg_major.to_string()),
        created_at: db.created_at,
        data_size_bytes: stats.as_ref().map(|s| s.data_size_bytes),
        storage_limit_gb: db.plan.storage_limit_gb,
        tables: stats.as_ref().map(|s| s.tables),
        fork_follow: views::fork_follow(db),
        host: db.host.clone(),
        following,
        followers,
        replication: leader
            .filter(|_| db.logical)
            .map(|l| format!("logical (PostgreSQL {} → {})", l.pg_major, db.pg_major)),
        behind_by,
        ha_status: ha_status(ctx, state, db).await,
        last_backup: super::backups::last_backup(state, db),
        copy: match op {
            Some(o) if status == DatabaseState::Preparing => copy_progress(ctx, &db.host, o).await,
            _ => None,
        },
        rollback: crate::protection::rollback_info(state, db),
        serving_reads: crate::read_endpoint::serving_reads(state, db),
        serves_reads: crate::read_endpoint::serves_reads(state, db),
    }
}

/// Bytes copied so far by the base backup of a follower's provision, as
/// its agent reports them.
pub(crate) async fn copy_progress(
    ctx: &Ctx,
    host: &str,
    op: &pgfollow_types::model::OperationRecord,
) -> Option<pgfollow_types::api::CopyProgress> {
    if op.kind != OperationKind::Provision {
        return None;
    }
    let agent = ctx.hosts.get(host)?;
    let call = pgfollow_types::agent::AgentCall::Progress {
        id: op.database.clone(),
    };
    let answer = tokio::time::timeout(STATS_TIMEOUT, agent.call::<Option<(u64, u64)>>(call));
    let (done, total) = answer.await.ok()?.ok()??;
    Some(pgfollow_types::api::CopyProgress {
        done_bytes: done.min(total),
        total_bytes: total,
    })
}

/// `HA Status` of a premium or enterprise primary.
async fn ha_status(ctx: &Ctx, state: &Catalog, db: &DatabaseRecord) -> Option<String> {
    if !db.plan.tier.has_ha() || db.is_follower() || db.hidden {
        return None;
    }
    let standby = db
        .ha_standby
        .as_ref()
        .and_then(|id| state.databases.get(id));
    let ready = match standby {
        Some(s) if s.is_live() && s.state == DatabaseState::Available => {
            tokio::time::timeout(STATS_TIMEOUT, crate::lag::measure(&ctx.hosts, state, s))
                .await
                .ok()
                .and_then(Result::ok)
                .is_some_and(|lag| lag.bytes <= ctx.ha_max_lag_bytes)
        }
        _ => false,
    };
    Some(
        if db.sync_suspended {
            "Temporarily Unavailable (synchronous standby lost; commits no longer wait)"
        } else if db.ha_released {
            "Temporarily Unavailable (its standby moved with DATABASE_URL at a changeover)"
        } else if ready {
            "Available"
        } else {
            "Temporarily Unavailable"
        }
        .to_string(),
    )
}

/// `pg:info` of every database of the app.
#[utoipa::path(get, path = "/v1/apps/{app}/info", params(("app" = String, Path)),
    responses((status = 200, body = Vec<DatabaseInfo>), (status = 404, body = pgfollow_types::api::ApiError)))]
pub async fn info_all(
    State(ctx): Shared,
    Path(app): Path<String>,
) -> Result<Json<Vec<DatabaseInfo>>, ApiErr> {
    let state = ctx.store.read()?;
    let a = find_app(&state, &app)?;
    let dbs = app_databases(&state, a);
    let mut out = Vec::with_capacity(dbs.len());
    for d in dbs {
        out.push(info_of(&ctx, &state, d).await);
    }
    Ok(Json(out))
}

/// The databases `pg:info` shows for app `a`: the main one first, then by
/// creation.
pub(crate) fn app_databases<'a>(
    state: &'a Catalog,
    a: &pgfollow_types::model::AppRecord,
) -> Vec<&'a DatabaseRecord> {
    let mut dbs: Vec<&DatabaseRecord> = state
        .databases
        .values()
        .filter(|d| d.desired == Desired::Running && !d.hidden)
        .filter(|d| d.app == a.name || a.attachments.values().any(|id| *id == d.id))
        .collect();
    let main = a.attachments.get(views::MAIN_ATTACHMENT).cloned();
    dbs.sort_by_key(|d| (Some(&d.id) != main.as_ref(), d.created_at));
    dbs
}

/// `pg:info` of one database.
#[utoipa::path(get, path = "/v1/apps/{app}/databases/{db}", params(("app" = String, Path), ("db" = String, Path)),
    responses((status = 200, body = DatabaseInfo), (status = 404, body = pgfollow_types::api::ApiError)))]
pub async fn info(
    State(ctx): Shared,
    Path((app, reference)): Path<(String, String)>,
) -> Result<Json<DatabaseInfo>, ApiErr> {
    let state = ctx.store.read()?;
    let db = resolve_db(&state, &app, &reference)?;
    Ok(Json(info_of(&ctx, &state, db).await))
}

pub(crate) fn available(db: &DatabaseRecord) -> Result<(), ApiErr> {
    if db.state == DatabaseState::Available {
        Ok(())
    } else {
        Err(ApiErr::conflict(format!(
            "{} is {}, not available; wait with `pgfollow pg:wait --app {}`",
            db.color, db.state, db.app
        )))
    }
}

/// The database's running queries.
#[utoipa::path(get, path = "/v1/apps/{app}/databases/{db}/ps", params(("app" = String, Path), ("db" = String, Path)),
    responses((status = 200, body = Vec<Backend>), (status = 404, body = pgfollow_types::api::ApiError)))]
pub async fn ps(
    State(ctx): Shared,
    Path((app, reference)): Path<(String, String)>,
) -> Result<Json<Vec<Backend>>, ApiErr> {
    let db = resolve_db(&ctx.store.read()?, &app, &reference)?.clone();
    available(&db)?;
    let agent = ctx.hosts.agent(&db.host)?;
    Ok(Json(agent.backends(&db.id, &db.database).await?))
}

/// Cancels a backend's query, or with `force` ends its connection.
#[utoipa::path(post, path = "/v1/apps/{app}/databases/{db}/kill", params(("app" = String, Path), ("db" = String, Path)), request_body = KillRequest,
    responses((status = 200, body = KillResponse), (status = 404, body = pgfollow_types::api::ApiError)))]
pub async fn kill(
    State(ctx): Shared,
    Path((app, reference)): Path<(String, String)>,
    Json(req): Json<KillRequest>,
) -> Result<Json<KillResponse>, ApiErr> {
    let db = resolve_db(&ctx.store.read()?, &app, &reference)?.clone();
    available(&db)?;
    let agent = ctx.hosts.agent(&db.host)?;
    match agent.kill(&db.id, &db.database, req.pid, req.force).await {
        Ok(signalled) => Ok(Json(KillResponse {
            pid: req.pid,
            force: req.force,
            signalled,
        })),
        Err(e) if e.is_no_such_backend() => Err(ApiErr::not_found(format!(
            "{} has no connection with pid {}; see `pgfollow pg:ps --app {app}`",
            db.color, req.pid
        ))),
        Err(e) => Err(e.into()),
    }
}

/// Ends every connection to the database.
#[utoipa::path(post, path = "/v1/apps/{app}/databases/{db}/killall", params(("app" = String, Path), ("db" = String, Path)),
    responses((status = 200, body = KillAllResponse), (status = 404, body = pgfollow_types::api::ApiError)))]
pub async fn kill_all(
    State(ctx): Shared,
    Path((app, reference)): Path<(String, String)>,
) -> Result<Json<KillAllResponse>, ApiErr> {
    let db = resolve_db(&ctx.store.read()?, &app, &reference)?.clone();
    available(&db)?;
    let agent = ctx.hosts.agent(&db.host)?;
    let terminated = agent.kill_all(&db.id, &db.database).await?;
    tracing::info!(
        "{} ({}): ended {} connections",
        db.color,
        db.name,
        terminated.len()
    );
    Ok(Json(KillAllResponse { terminated }))
}

/// How to connect to the database.
#[utoipa::path(get, path = "/v1/apps/{app}/databases/{db}/credentials", params(("app" = String, Path), ("db" = String, Path)),
    responses((status = 200, body = Credentials), (status = 404, body = pgfollow_types::api::ApiError)))]
pub async fn credentials(
    State(ctx): Shared,
    Path((app, reference)): Path<(String, String)>,
) -> Result<Json<Credentials>, ApiErr> {
    let state = ctx.store.read()?;
    let db = resolve_db(&state, &app, &reference)?;
    Ok(Json(views::credentials(&state, db)))
}

/// How long a rotation request waits for the rotation to finish.
const ROTATE_WAIT: Duration = Duration::from_secs(30);

/// Gives the owner role a new password; the old one stops working.
#[utoipa::path(post, path = "/v1/apps/{app}/databases/{db}/credentials/rotate", params(("app" = String, Path), ("db" = String, Path)), request_body = Confirm,
    responses((status = 200, body = Credentials), (status = 400, body = pgfollow_types::api::ApiError), (status = 404, body = pgfollow_types::api::ApiError)))]
pub async fn rotate(
    State(ctx): Shared,
    Path((app, reference)): Path<(String, String)>,
    Json(req): Json<Confirm>,
) -> Result<Json<Credentials>, ApiErr> {
    let db = resolve_db(&ctx.store.read()?, &app, &reference)?.clone();
    check_confirm(&app, Some(&req.confirm))?;
    if let Some(leader) = db.following.as_ref() {
        let state = ctx.store.read()?;
        let color = state
            .databases
            .get(leader)
            .map(|l| l.color.to_string())
            .unwrap_or_default();
        return Err(ApiErr::bad_request(format!(
            "{} is a follower and shares its leader's credentials; rotate those of {color} instead",
            db.color
        )));
    }
    available(&db)?;
    // The new password goes into the catalog first, with the operation
    // that rolls it out (role, catalog, endpoints); one at a time.
    let op_id = ctx.store.update(|state| {
        let busy = state
            .operations
            .values()
            .any(|o| o.database == db.id && o.kind == OperationKind::Rotate && o.state.is_active());
        let d = state
            .databases
            .get_mut(&db.id)
            .ok_or_else(|| ApiErr::not_found("the database was destroyed meanwhile"))?;
        if busy || d.pending_owner.is_some() {
            return Err(ApiErr::conflict(format!(
                "a rotation of {}'s credentials is under way; try again when it is done",
                db.color
            )));
        }
        let mut owner = d.owner.clone();
        owner.password = secret();
        d.pending_owner = Some(owner);
        let id = next_operation_id(state);
        state.operations.insert(
            id.clone(),
            new_operation(&id, OperationKind::Rotate, &db.id, Utc::now()),
        );
        Ok(id)
    })?;
    ctx.wake.notify_one();
    let deadline = std::time::Instant::now() + ROTATE_WAIT;
    loop {
        let state = ctx.store.read()?;
        let op = state.operations.get(&op_id);
        if op.is_some_and(|o| o.state == OperationState::Done) {
            let d = state
                .databases
                .get(&db.id)
                .ok_or_else(|| ApiErr::not_found("the database was destroyed meanwhile"))?;
            return Ok(Json(views::credentials(&state, d)));
        }
        if op.is_none_or(|o| !o.state.is_active()) {
            return Err(ApiErr::conflict(format!(
                "the rotation of {}'s credentials stopped: {}",
                db.color,
                op.and_then(|o| o.last_error.clone())
                    .unwrap_or_else(|| "the database is being destroyed".into())
            )));
        }
        if std::time::Instant::now() >= deadline {
            return Err(ApiErr::unavailable(format!(
                "the rotation of {}'s credentials is recorded and goes on by itself ({}); `pgfollow pg:credentials` shows the new password once it is done",
                db.color,
                op.and_then(|o| o.last_error.clone())
                    .unwrap_or_else(|| "still working".into())
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
