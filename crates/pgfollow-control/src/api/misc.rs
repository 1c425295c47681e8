//! Server status, plans, billing and operations.

use axum::extract::{Path, State};
use axum::Json;
use chrono::Utc;
use pgfollow_types::api::{Billing, HostSummary, Operation, ServerStatus};
use pgfollow_types::Plan;

use super::Shared;
use crate::error::ApiErr;
use crate::resolve::find_app;
use crate::views;

/// The server's version and its hosts.
#[utoipa::path(get, path = "/v1/status", responses((status = 200, body = ServerStatus)))]
pub async fn status(State(ctx): Shared) -> Result<Json<ServerStatus>, ApiErr> {
    let state = ctx.store.read()?;
    let hosts = state
        .hosts
        .values()
        .map(|h| HostSummary {
            name: h.name.clone(),
            zone: h.zone.clone(),
            pg_bin: h.pg_bin.clone(),
            pg_version: h.pg_version.clone(),
            databases: state
                .databases
                .values()
                .filter(|d| d.host == h.name)
                .map(|d| d.name.clone())
                .collect(),
        })
        .collect();
    Ok(Json(ServerStatus {
        version: env!("CARGO_PKG_VERSION").to_string(),
        hosts,
    }))
}

/// Every plan a database can be created on.
#[utoipa::path(get, path = "/v1/plans", responses((status = 200, body = Vec<Plan>)))]
pub async fn plans(State(ctx): Shared) -> Json<Vec<Plan>> {
    Json(ctx.plans.all().to_vec())
}

/// What each of the app's databases has cost so far.
#[utoipa::path(get, path = "/v1/apps/{app}/billing", params(("app" = String, Path)),
    responses((status = 200, body = Billing), (status = 404, body = pgfollow_types::api::ApiError)))]
pub async fn billing(State(ctx): Shared, Path(app): Path<String>) -> Result<Json<Billing>, ApiErr> {
    let state = ctx.store.read()?;
    find_app(&state, &app)?;
    Ok(Json(views::billing(&state, &app, Utc::now())))
}

/// One operation.
#[utoipa::path(get, path = "/v1/operations/{id}", params(("id" = String, Path)),
    responses((status = 200, body = Operation), (status = 404, body = pgfollow_types::api::ApiError)))]
pub async fn operation(
    State(ctx): Shared,
    Path(id): Path<String>,
) -> Result<Json<Operation>, ApiErr> {
    let state = ctx.store.read()?;
    let op = state
        .operations
        .get(&id)
        .ok_or_else(|| ApiErr::not_found(format!("no operation {id}")))?;
    let database = state
        .databases
        .get(&op.database)
        .map(|d| d.name.clone())
        .unwrap_or_else(|| op.database.clone());
    Ok(Json(Operation {
        id: op.id.clone(),
        kind: op.kind.as_str().to_string(),
        database,
        state: op.state.as_str().to_string(),
        step: op.done.last().cloned().unwrap_or_else(|| "pending".into()),
        progress_percent: op.progress_percent,
        error: op.last_error.clone(),
        created_at: op.created_at,
        updated_at: op.updated_at,
    }))
}
