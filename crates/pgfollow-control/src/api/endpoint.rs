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
