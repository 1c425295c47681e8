//! `pg:backups`: capture, list, info, download, delete, cancel, restore and
//! daily schedules. Each capture and restore is an operation in the catalog
//! that the backups loop carries out; these handlers only validate and write.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::Response;
use axum::Json;
use chrono::Utc;
use pgfollow_types::backup::{
    backup_key, is_backup_name, parse_schedule_time, BackupInfo, BackupRecord, BackupSchedule,
    BackupStarted, CaptureBackup, RestoreBackup, ScheduleBackups, ScheduleInfo,
};
use pgfollow_types::model::{DatabaseRecord, OperationState, State as Catalog};

use super::apps::{check_confirm, ConfirmQuery};
use super::{changed, Shared};
use crate::backups::{self, add_backup, add_restore, info, latest_of, CANCELLED};
use crate::error::ApiErr;
use crate::resolve::{find_app, resolve_db};

fn db_or_main<'a>(
    state: &'a Catalog,
    app: &str,
    reference: Option<&str>,
) -> Result<&'a DatabaseRecord, ApiErr> {
    resolve_db(state, app, reference.unwrap_or("DATABASE_URL"))
}

/// `b001` or `OTHERAPP::b001` → (app, name).
fn backup_ref<'a>(app: &'a str, reference: &'a str) -> (&'a str, &'a str) {
    match reference.split_once("::") {
        Some((other, name)) => (other, name),
        None => (app, reference),
    }
}

fn find_backup<'a>(
    state: &'a Catalog,
    app: &str,
    reference: &str,
) -> Result<&'a BackupRecord, ApiErr> {
    let (owner, name) = backup_ref(app, reference);
    find_app(state, owner)?;
    state.backups.get(&backup_key(owner, name)).ok_or_else(|| {
        ApiErr::not_found(format!(
            "app {owner} has no backup {name}; see `pgfollow pg:backups --app {owner}`"
        ))
    })
}

/// The newest backup of `app` (for `info`/`download` without a name).
fn newest<'a>(state: &'a Catalog, app: &str) -> Result<&'a BackupRecord, ApiErr> {
    state
        .backups
        .values()
        .filter(|b| b.app.as_str() == app && backups::is_complete(state, b))
        .max_by_key(|b| b.created_at)
        .ok_or_else(|| {
            ApiErr::not_found(format!(
                "app {app} has no completed backup; capture one with `pgfollow pg:backups:capture --app {app}`"
            ))
        })
}

fn lookup<'a>(state: &'a Catalog, app: &str, name: &str) -> Result<&'a BackupRecord, ApiErr> {
    find_app(state, app)?;
    if name == "latest" {
        newest(state, app)
    } else {
        find_backup(state, app, name)
    }
}

/// Every backup of the app, newest first.
#[utoipa::path(get, path = "/v1/apps/{app}/backups", params(("app" = String, Path)),
    responses((status = 200, body = Vec<BackupInfo>), (status = 404, body = pgfollow_types::api::ApiError)))]
pub async fn list(
    State(ctx): Shared,
    Path(app): Path<String>,
) -> Result<Json<Vec<BackupInfo>>, ApiErr> {
    let state = ctx.store.read()?;
    find_app(&state, &app)?;
    let mut out: Vec<BackupInfo> = state
        .backups
        .values()
        .filter(|b| b.app.as_str() == app)
        .map(|b| info(&state, b))
        .collect();
    out.sort_by_key(|b| std::cmp::Reverse(b.created_at));
    Ok(Json(out))
}

/// Starts a backup of a database (default `DATABASE_URL`).
#[utoipa::path(post, path = "/v1/apps/{app}/backups", params(("app" = String, Path)), request_body = CaptureBackup,
    responses((status = 202, body = BackupStarted), (status = 400, body = pgfollow_types::api::ApiError), (status = 404, body = pgfollow_types::api::ApiError)))]
pub async fn capture(
    State(ctx): Shared,
    Path(app): Path<String>,
    Json(req): Json<CaptureBackup>,
) -> Result<(StatusCode, Json<BackupStarted>), ApiErr> {
    let key = changed(
        &ctx,
        ctx.store.update(|state| {
            find_app(state, &app)?;
            let db = db_or_main(state, &app, req.database.as_deref())?.clone();
            if db.app.as_str() != app {
                return Err(ApiErr::bad_request(format!(
                    "{} belongs to app {}; capture its backups there (--app {})",
                    db.color, db.app, db.app
                )));
            }
            if let Some(op) = backups::active_of_app(state, &app).into_iter().find(|o| o.database == db.id) {
                return Err(ApiErr::conflict(format!(
                    "a {} of {} is already running ({}); wait for it or `pgfollow pg:backups:cancel --app {app}`",
                    op.kind.as_str(),
                    db.color,
                    op.id
                )));
            }
            Ok(add_backup(state, &db, false))
        }),
    )?;
    ctx.backups.wake.notify_one();
    let state = ctx.store.read()?;
    let b = state
        .backups
        .get(&key)
        .ok_or_else(|| ApiErr::internal("the new backup vanished"))?;
    let message = format!(
        "Starting backup of {}... done\nBacking up {} to {}... started\nUse `pgfollow pg:backups:info {} --app {app}` to check progress.",
        b.database_name, b.color, b.name, b.name
    );
    Ok((
        StatusCode::ACCEPTED,
        Json(BackupStarted {
            backup: info(&state, b),
            operation: b.operation.clone(),
            message,
        }),
    ))
}

/// One backup (`latest` for the newest completed one).
#[utoipa::path(get, path = "/v1/apps/{app}/backups/{name}", params(("app" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = BackupInfo), (status = 404, body = pgfollow_types::api::ApiError)))]
pub async fn show(
    State(ctx): Shared,
    Path((app, name)): Path<(String, String)>,
) -> Result<Json<BackupInfo>, ApiErr> {
    let state = ctx.store.read()?;
    Ok(Json(info(&state, lookup(&state, &app, &name)?)))
}

/// The archive itself (pg_dump's custom format).
#[utoipa::path(get, path = "/v1/apps/{app}/backups/{name}/download", params(("app" = String, Path), ("name" = String, Path)),
    responses((status = 200, description = "the dump, application/octet-stream"), (status = 404, body = pgfollow_types::api::ApiError)))]
pub async fn download(
    State(ctx): Shared,
    Path((app, name)): Path<(String, String)>,
) -> Result<Response, ApiErr> {
    let (path, b) = {
        let state = ctx.store.read()?;
        let b = lookup(&state, &app, &name)?;
        if !backups::is_complete(&state, b) {
            return Err(ApiErr::conflict(format!(
                "backup {} is not complete ({}); wait for it",
                b.name,
                backups::status_of(&state, b).0
            )));
        }
        (ctx.backups.path(b), b.clone())
    };
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| ApiErr::internal(format!("cannot open the file of backup {}: {e}", b.name)))?;
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
    Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{}.dump\"", b.name),
        )
        .body(body)
        .map_err(|e| ApiErr::internal(e.to_string()))
}

/// Deletes a backup and its file.
#[utoipa::path(delete, path = "/v1/apps/{app}/backups/{name}", params(("app" = String, Path), ("name" = String, Path), ("confirm" = Option<String>, Query)),
    responses((status = 200, body = BackupInfo), (status = 400, body = pgfollow_types::api::ApiError), (status = 404, body = pgfollow_types::api::ApiError)))]
pub async fn delete(
    State(ctx): Shared,
    Path((app, name)): Path<(String, String)>,
    Query(q): Query<ConfirmQuery>,
) -> Result<Json<BackupInfo>, ApiErr> {
    let (removed, view) = ctx.store.update(|state| {
        find_app(state, &app)?;
        let b = find_backup(state, &app, &name)?.clone();
        check_confirm(&app, q.confirm.as_deref())?;
        let view = info(state, &b);
        if state.operations.get(&b.operation).is_some_and(|o| o.state.is_active()) {
            return Err(ApiErr::conflict(format!(
                "backup {} is still running; cancel it first (`pgfollow pg:backups:cancel --app {app}`)",
                b.name
            )));
        }
        if backups::active_of_app(state, &app)
            .iter()
            .any(|o| o.subject.as_deref() == Some(&b.key()))
        {
            return Err(ApiErr::conflict(format!(
                "backup {} is being restored; wait for the restore to finish",
                b.name
            )));
        }
        state.backups.remove(&b.key());
        Ok((b, view))
    })?;
    ctx.backups.remove_file(&removed);
    Ok(Json(view))
}

/// Cancels the app's running captures and restores.
#[utoipa::path(post, path = "/v1/apps/{app}/backups/cancel", params(("app" = String, Path)),
    responses((status = 200, body = Vec<String>), (status = 404, body = pgfollow_types::api::ApiError)))]
pub async fn cancel(
    State(ctx): Shared,
    Path(app): Path<String>,
) -> Result<Json<Vec<String>>, ApiErr> {
    let cancelled = ctx.store.update(|state| {
        find_app(state, &app)?;
        let ids: Vec<String> = backups::active_of_app(state, &app)
            .iter()
            .map(|o| o.id.clone())
            .collect();
        if ids.is_empty() {
            return Err(ApiErr::conflict(format!(
                "app {app} has no backup or restore running"
            )));
        }
        let mut what = Vec::new();
        for id in &ids {
            if let Some(o) = state.operations.get_mut(id) {
                o.state = OperationState::Failed;
                o.last_error = Some(format!("{CANCELLED} by pg:backups:cancel"));
                o.updated_at = Utc::now();
                what.push(format!(
                    "{} {}",
                    o.kind.as_str(),
                    o.subject
                        .as_deref()
                        .and_then(|k| k.split('/').nth(1))
                        .unwrap_or("")
                ));
            }
        }
        Ok(what)
    })?;
    ctx.backups.wake.notify_one();
    Ok(Json(cancelled))
}

/// Restores a backup (or a database's latest backup) into a database of
/// the app; needs `confirm=APP`.
#[utoipa::path(post, path = "/v1/apps/{app}/restores", params(("app" = String, Path), ("confirm" = Option<String>, Query)), request_body = RestoreBackup,
    responses((status = 202, body = BackupStarted), (status = 400, body = pgfollow_types::api::ApiError), (status = 404, body = pgfollow_types::api::ApiError)))]
pub async fn restore(
    State(ctx): Shared,
    Path(app): Path<String>,
    Query(q): Query<ConfirmQuery>,
    Json(req): Json<RestoreBackup>,
) -> Result<(StatusCode, Json<BackupStarted>), ApiErr> {
    let (key, op_id, target) = changed(
        &ctx,
        ctx.store.update(|state| {
            find_app(state, &app)?;
            let (_, name) = backup_ref(&app, &req.backup);
            let b = if is_backup_name(name) {
                find_backup(state, &app, &req.backup)?.clone()
            } else {
                let source = resolve_db(state, &app, &req.backup)?;
                latest_of(state, &source.id).cloned().ok_or_else(|| {
                    ApiErr::not_found(format!(
                        "{} has no completed backup; capture one with `pgfollow pg:backups:capture {} --app {}`",
                        source.color, source.color, source.app
                    ))
                })?
            };
            if !backups::is_complete(state, &b) {
                return Err(ApiErr::conflict(format!(
                    "backup {} is not complete ({}); wait for it or pick another",
                    b.name,
                    backups::status_of(state, &b).0
                )));
            }
            let target = db_or_main(state, &app, req.target.as_deref())?.clone();
            if target.app.as_str() != app {
                return Err(ApiErr::bad_request(format!(
                    "{} belongs to app {}; restore into it from there (--app {})",
                    target.color, target.app, target.app
                )));
            }
            if target.is_follower() {
                return Err(ApiErr::bad_request(format!(
                    "{} is a read-only follower; restore into a leader or fork",
                    target.color
                )));
            }
            if target.pg_major < b.pg_major {
                return Err(ApiErr::bad_request(format!(
                    "backup {} is of PostgreSQL {} and {} runs {}: restore into a database of PostgreSQL {} or newer",
                    b.name, b.pg_major, target.color, target.pg_major, b.pg_major
                )));
            }
            check_confirm(&app, q.confirm.as_deref())?;
            if let Some(op) = backups::active_of_app(state, &app).into_iter().find(|o| o.database == target.id) {
                return Err(ApiErr::conflict(format!(
                    "a {} of {} is already running ({}); wait for it or cancel it",
                    op.kind.as_str(),
                    target.color,
                    op.id
                )));
            }
            let op_id = add_restore(state, &b.key(), &target);
            Ok((b.key(), op_id, target))
        }),
    )?;
    ctx.backups.wake.notify_one();
    let state = ctx.store.read()?;
    let b = state
        .backups
        .get(&key)
        .ok_or_else(|| ApiErr::internal("the backup vanished"))?;
    let message = format!(
        "Restoring {} (PostgreSQL {}) into {} (PostgreSQL {}, {})... started",
        b.name, b.pg_major, target.color, target.pg_major, target.name
    );
    Ok((
        StatusCode::ACCEPTED,
        Json(BackupStarted {
            backup: info(&state, b),
            operation: op_id,
            message,
        }),
    ))
}

fn schedule_view(state: &Catalog, s: &BackupSchedule) -> ScheduleInfo {
    let database = state
        .databases
        .get(&s.database)
        .map(|d| format!("{}{}_URL", pgfollow_types::names::COLOR_VAR_PREFIX, d.color))
        .unwrap_or_else(|| s.database.clone());
    ScheduleInfo {
        database,
        at: format!("{:02}:{:02} UTC", s.hour, s.minute),
        last_run: s.last_run,
    }
}

/// The app's daily backup schedules.
#[utoipa::path(get, path = "/v1/apps/{app}/backup-schedules", params(("app" = String, Path)),
    responses((status = 200, body = Vec<ScheduleInfo>), (status = 404, body = pgfollow_types::api::ApiError)))]
pub async fn schedules(
    State(ctx): Shared,
    Path(app): Path<String>,
) -> Result<Json<Vec<ScheduleInfo>>, ApiErr> {
    let state = ctx.store.read()?;
    find_app(&state, &app)?;
    Ok(Json(
        state
            .backup_schedules
            .values()
            .filter(|s| s.app.as_str() == app)
            .map(|s| schedule_view(&state, s))
            .collect(),
    ))
}

/// Backs a database up every day at a UTC time (replacing its schedule).
#[utoipa::path(post, path = "/v1/apps/{app}/backup-schedules", params(("app" = String, Path)), request_body = ScheduleBackups,
    responses((status = 200, body = ScheduleInfo), (status = 400, body = pgfollow_types::api::ApiError), (status = 404, body = pgfollow_types::api::ApiError)))]
pub async fn schedule(
    State(ctx): Shared,
    Path(app): Path<String>,
    Json(req): Json<ScheduleBackups>,
) -> Result<Json<ScheduleInfo>, ApiErr> {
    let (hour, minute) = parse_schedule_time(&req.at).map_err(ApiErr::bad_request)?;
    let view = ctx.store.update(|state| {
        find_app(state, &app)?;
        let db = db_or_main(state, &app, req.database.as_deref())?.clone();
        if db.app.as_str() != app || db.is_follower() {
            return Err(ApiErr::bad_request(format!(
                "{} is {}; schedule backups of the app's own leaders",
                db.color,
                if db.is_follower() {
                    "a follower"
                } else {
                    "another app's database"
                }
            )));
        }
        let s = BackupSchedule {
            database: db.id.clone(),
            app: db.app.clone(),
            hour,
            minute,
            last_run: state.backup_schedules.get(&db.id).and_then(|s| s.last_run),
            created_at: Utc::now(),
        };
        state.backup_schedules.insert(db.id.clone(), s.clone());
        Ok(schedule_view(state, &s))
    })?;
    Ok(Json(view))
}

/// Stops a database's daily backups.
#[utoipa::path(delete, path = "/v1/apps/{app}/backup-schedules/{db}", params(("app" = String, Path), ("db" = String, Path)),
    responses((status = 200, body = ScheduleInfo), (status = 404, body = pgfollow_types::api::ApiError)))]
pub async fn unschedule(
    State(ctx): Shared,
    Path((app, db)): Path<(String, String)>,
) -> Result<Json<ScheduleInfo>, ApiErr> {
    let view = ctx.store.update(|state| {
        let d = resolve_db(state, &app, &db)?.clone();
        let s = state.backup_schedules.remove(&d.id).ok_or_else(|| {
            ApiErr::not_found(format!(
                "{} has no backup schedule; see `pgfollow pg:backups:schedules --app {app}`",
                d.color
            ))
        })?;
        Ok(schedule_view(state, &s))
    })?;
    Ok(Json(view))
}

/// `pg:info`'s `Last Backup`.
pub fn last_backup(
    state: &Catalog,
    db: &DatabaseRecord,
) -> Option<pgfollow_types::api::LastBackup> {
    latest_of(state, &db.id).and_then(|b| {
        Some(pgfollow_types::api::LastBackup {
            name: b.name.clone(),
            finished_at: b.finished_at?,
            size_bytes: b.size_bytes?,
        })
    })
}
