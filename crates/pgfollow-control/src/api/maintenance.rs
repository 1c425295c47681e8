//! `maintenance`, `maintenance:on|off`, and `pg:changeover`.

use axum::extract::{Path, State};
use axum::Json;
use pgfollow_types::api::{ChangeoverReport, ChangeoverRequest, Maintenance};

use super::{changed, Shared};
use crate::error::ApiErr;
use crate::resolve::find_app;

/// Whether the app is in maintenance.
#[utoipa::path(get, path = "/v1/apps/{app}/maintenance", params(("app" = String, Path)),
    responses((status = 200, body = Maintenance), (status = 404, body = pgfollow_types::api::ApiError)))]
pub async fn show(
    State(ctx): Shared,
    Path(app): Path<String>,
) -> Result<Json<Maintenance>, ApiErr> {
    let state = ctx.store.read()?;
    let a = find_app(&state, &app)?;
    Ok(Json(Maintenance {
        app: app.clone(),
        on: a.maintenance,
    }))
}

/// Turns maintenance on or off: while on, the app's endpoint refuses
/// connections and closes the open ones.
#[utoipa::path(put, path = "/v1/apps/{app}/maintenance", params(("app" = String, Path)), request_body = Maintenance,
    responses((status = 200, body = Maintenance), (status = 404, body = pgfollow_types::api::ApiError)))]
pub async fn set(
    State(ctx): Shared,
    Path(app): Path<String>,
    Json(req): Json<Maintenance>,
) -> Result<Json<Maintenance>, ApiErr> {
    changed(
        &ctx,
        ctx.store.update(|state| {
            find_app(state, &app)?;
            if let Some(a) = state.apps.get_mut(&app) {
                a.maintenance = req.on;
            }
            Ok(())
        }),
    )?;
    ctx.endpoints.set_maintenance(&app, req.on).await?;
    tracing::info!("{app}: maintenance {}", if req.on { "on" } else { "off" });
    Ok(Json(Maintenance { app, on: req.on }))
}

/// Moves the app to one of its followers with writes held for a moment:
/// freeze at the endpoint, wait until the follower is 0 commits behind,
/// promote it, route the endpoint to it, resume.
#[utoipa::path(post, path = "/v1/apps/{app}/databases/{db}/changeover", params(("app" = String, Path), ("db" = String, Path)), request_body = ChangeoverRequest,
    responses((status = 200, body = ChangeoverReport), (status = 400, body = pgfollow_types::api::ApiError), (status = 409, body = pgfollow_types::api::ApiError)))]
pub async fn changeover(
    State(ctx): Shared,
    Path((app, reference)): Path<(String, String)>,
    Json(req): Json<ChangeoverRequest>,
) -> Result<Json<ChangeoverReport>, ApiErr> {
    let limit = req
        .catch_up_timeout_secs
        .map(std::time::Duration::from_secs)
        .unwrap_or(crate::changeover::CATCH_UP_LIMIT);
    let report = if req.leader_lost {
        crate::changeover::run_leader_lost(ctx.clone(), &app, &reference, req.dry_run).await?
    } else {
        crate::changeover::run(
            ctx.clone(),
            &app,
            &reference,
            req.dry_run,
            limit,
            req.no_kill,
        )
        .await?
    };
    if !report.dry_run && !req.leader_lost {
        crate::metrics::record_write_pause(
            "changeover",
            std::time::Duration::from_secs_f64(report.write_pause_ms.max(0.0) / 1000.0),
        );
    }
    ctx.wake.notify_one();
    Ok(Json(report))
}
