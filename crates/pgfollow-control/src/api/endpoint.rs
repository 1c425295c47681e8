//! `pg:endpoint:mode`: how the app's endpoint pools server connections.

use axum::extract::{Path, State};
use axum::Json;
use pgfollow_types::api::EndpointMode;

use super::{changed, Shared};
use crate::error::ApiErr;
use crate::resolve::find_app;

/// The app's endpoint pool mode.
#[utoipa::path(get, path = "/v1/apps/{app}/endpoint/mode", params(("app" = String, Path)),
    responses((status = 200, body = EndpointMode), (status = 404, body = pgfollow_types::api::ApiError)))]
pub async fn show(
    State(ctx): Shared,
    Path(app): Path<String>,
) -> Result<Json<EndpointMode>, ApiErr> {
    let state = ctx.store.read()?;
    let a = find_app(&state, &app)?;
    Ok(Json(EndpointMode {
        app: app.clone(),
        pool_mode: a.pool_mode,
    }))
}

/// Sets the app's endpoint pool mode; a running endpoint is rewritten and
/// reloaded at once, which ends its open sessions (clients reconnect into
/// the new mode).
#[utoipa::path(put, path = "/v1/apps/{app}/endpoint/mode", params(("app" = String, Path)), request_body = EndpointMode,
    responses((status = 200, body = EndpointMode), (status = 404, body = pgfollow_types::api::ApiError), (status = 503, body = pgfollow_types::api::ApiError)))]
pub async fn set(
    State(ctx): Shared,
    Path(app): Path<String>,
    Json(req): Json<EndpointMode>,
) -> Result<Json<EndpointMode>, ApiErr> {
    let was = changed(
        &ctx,
        ctx.store.update(|state| {
            find_app(state, &app)?;
            let a = state
                .apps
                .get_mut(&app)
                .ok_or_else(|| ApiErr::internal("the app vanished"))?;
            Ok(std::mem::replace(&mut a.pool_mode, req.pool_mode))
        }),
    )?;
    if was != req.pool_mode {
        ctx.endpoints.sync(&app, true).await.map_err(|e| {
            ApiErr::unavailable(format!(
                "{app}'s endpoint pool mode is now {} but the running endpoint could not take it ({}); \
                 it does when it next starts, or run this command again",
                req.pool_mode, e.message
            ))
        })?;
        tracing::info!("{app}: endpoint pool mode {was} -> {}", req.pool_mode);
    }
    Ok(Json(EndpointMode {
        app,
        pool_mode: req.pool_mode,
    }))
}

/// `pg:endpoint:read`: the read endpoint (`DATABASE_FOLLOWER_URL`) of the
/// app, its lag limit and fallback, and which followers serve it now.
fn read_view(
    state: &pgfollow_types::model::State,
    app: &str,
    a: &pgfollow_types::model::AppRecord,
) -> pgfollow_types::reads::ReadEndpoint {
    let color = |id: &String| {
        state
            .databases
            .get(id)
            .map_or_else(|| id.clone(), |d| d.color.to_string())
    };
    let serving: Vec<String> = a.read.serving.iter().map(color).collect();
    pgfollow_types::reads::ReadEndpoint {
        app: app.to_string(),
        max_lag: a.read.limit(),
        fallback_to_leader: a.read.fallback_to_leader,
        on_leader: serving.is_empty() && a.read.fallback_to_leader && a.read.has_slots(),
        serving,
        out: a
            .read
            .out
            .iter()
            .map(|(k, v)| (color(k), v.clone()))
            .collect(),
    }
}

/// The app's read endpoint settings and which followers serve it.
#[utoipa::path(get, path = "/v1/apps/{app}/endpoint/read", params(("app" = String, Path)),
    responses((status = 200, body = pgfollow_types::reads::ReadEndpoint), (status = 404, body = pgfollow_types::api::ApiError)))]
pub async fn show_read(
    State(ctx): Shared,
    Path(app): Path<String>,
) -> Result<Json<pgfollow_types::reads::ReadEndpoint>, ApiErr> {
    let state = ctx.store.read()?;
    let a = find_app(&state, &app)?;
    Ok(Json(read_view(&state, &app, a)))
}

/// Sets the app's read endpoint lag limit and fallback; the read
/// endpoint's loop applies them within a second.
#[utoipa::path(put, path = "/v1/apps/{app}/endpoint/read", params(("app" = String, Path)), request_body = pgfollow_types::reads::ReadEndpointChange,
    responses((status = 200, body = pgfollow_types::reads::ReadEndpoint), (status = 404, body = pgfollow_types::api::ApiError)))]
pub async fn set_read(
    State(ctx): Shared,
    Path(app): Path<String>,
    Json(req): Json<pgfollow_types::reads::ReadEndpointChange>,
) -> Result<Json<pgfollow_types::reads::ReadEndpoint>, ApiErr> {
    let view = changed(
        &ctx,
        ctx.store.update(|state| {
            find_app(state, &app)?;
            let a = state
                .apps
                .get_mut(&app)
                .ok_or_else(|| ApiErr::internal("the app vanished"))?;
            if let Some(lag) = req.max_lag {
                a.read.max_lag = Some(lag);
            }
            if let Some(f) = req.fallback_to_leader {
                a.read.fallback_to_leader = f;
            }
            let a = a.clone();
            Ok(read_view(state, &app, &a))
        }),
    )?;
    tracing::info!(
        "{app}: read endpoint: max lag {}, fallback to the leader {}",
        view.max_lag,
        if view.fallback_to_leader { "on" } else { "off" }
    );
    Ok(Json(view))
}
