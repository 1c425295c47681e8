//! `pg:diagnose` and the pg-extras reports (`pg:locks`, `pg:blocking`,
//! `pg:outliers`, `pg:bloat`, `pg:vacuum-stats`, `pg:index-usage`): read
//! only, run by the database's agent.

use axum::extract::{Path, State};
use axum::Json;
use pgfollow_types::api::{Diagnosis, ExtrasReport, ExtrasTable};

use super::Shared;
use crate::error::ApiErr;
use crate::resolve::resolve_db;

/// Every check of `pg:diagnose`, each green, yellow or red.
#[utoipa::path(get, path = "/v1/apps/{app}/databases/{db}/diagnose", params(("app" = String, Path), ("db" = String, Path)),
    responses((status = 200, body = Diagnosis), (status = 404, body = pgfollow_types::api::ApiError), (status = 409, body = pgfollow_types::api::ApiError)))]
pub async fn diagnose(
    State(ctx): Shared,
    Path((app, reference)): Path<(String, String)>,
) -> Result<Json<Diagnosis>, ApiErr> {
    let state = ctx.store.read()?;
    let db = resolve_db(&state, &app, &reference)?.clone();
    super::databases::available(&db)?;
    Ok(Json(crate::diagnose::diagnose(&ctx, &state, &db).await))
}

/// One read-only report on the database: `locks`, `blocking`, `outliers`,
/// `bloat`, `vacuum-stats`, `index-usage` (and the checks' own:
/// `connections`, `long-running`, `idle-in-transaction`, `unused-indexes`,
/// `invalid-indexes`, `cache-hit`, `sequences`, `wraparound`, `slots`).
#[utoipa::path(get, path = "/v1/apps/{app}/databases/{db}/extras/{report}", params(("app" = String, Path), ("db" = String, Path), ("report" = String, Path)),
    responses((status = 200, body = ExtrasTable), (status = 400, body = pgfollow_types::api::ApiError), (status = 404, body = pgfollow_types::api::ApiError)))]
pub async fn extras(
    State(ctx): Shared,
    Path((app, reference, report)): Path<(String, String, String)>,
) -> Result<Json<ExtrasTable>, ApiErr> {
    let Some(which) = ExtrasReport::parse(&report) else {
        let names: Vec<&str> = ExtrasReport::ALL.iter().map(|r| r.as_str()).collect();
        return Err(ApiErr::bad_request(format!(
            "there is no report {report:?}; use one of {}",
            names.join(", ")
        )));
    };
    let db = resolve_db(&ctx.store.read()?, &app, &reference)?.clone();
    super::databases::available(&db)?;
    Ok(Json(crate::diagnose::report(&ctx, &db, which).await?))
}
