//! The public HTTP API under `/v1`, its token check and its OpenAPI
//! document (generated from the handlers and types, served at
//! `/openapi.json`).

mod addons;
mod apps;
mod backups;
pub(crate) mod databases;
mod diagnose;
mod endpoint;
mod maintenance;
pub(crate) mod misc;
pub(crate) mod promotion;
mod upgrade;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use pgfollow_types::PlanCatalog;
use tokio::sync::Notify;
use utoipa::OpenApi;

use crate::error::ApiErr;
use crate::hosts::Hosts;
use crate::store::Store;

/// What every handler may use.
pub struct Ctx {
    pub store: Store,
    pub hosts: Hosts,
    pub plans: PlanCatalog,
    pub token: String,
    /// The read-only token of `GET /metrics`.
    pub metrics_token: String,
    /// Wakes the executor after a write that gives it work.
    pub wake: Arc<Notify>,
    pub endpoints: Arc<crate::endpoints::Endpoints>,
    /// HA's lag limit, for `HA Status`.
    pub ha_max_lag_bytes: u64,
    /// Logical backups: their directory and loop.
    pub backups: Arc<crate::backups::Backups>,
    /// This replica, when the catalog is in etcd (`serve --etcd`).
    pub replica: Option<Arc<crate::replica::Replica>>,
    /// Behind By of every follower over the last hour.
    pub lag_samples: Arc<crate::history::LagSamples>,
    /// Who is logged in to the web dashboard.
    pub dashboard_sessions: crate::dashboard::Sessions,
}

pub type Shared = State<Arc<Ctx>>;

#[derive(OpenApi)]
#[openapi(
    info(title = "pgfollow", description = "Follower databases on your own machines: the control plane API. Every request carries `Authorization: Bearer <token>`."),
    paths(
        misc::status, misc::register_host, misc::plans, misc::billing, misc::operation,
        misc::lag_history,
        apps::list, apps::create, apps::destroy, apps::config, apps::change_config,
        addons::list, addons::create, addons::destroy,
        databases::info_all, databases::info, databases::ps, databases::kill,
        databases::kill_all, databases::credentials, databases::rotate,
        promotion::unfollow, promotion::promote, diagnose::diagnose, diagnose::extras,
        upgrade::upgrade,
        maintenance::show, maintenance::set, maintenance::changeover,
        endpoint::show, endpoint::set, endpoint::show_read, endpoint::set_read,
        backups::list, backups::capture, backups::show, backups::download, backups::delete,
        backups::cancel, backups::restore, backups::schedules, backups::schedule,
        backups::unschedule,
    ),
    components(schemas(pgfollow_types::api::ApiError)),
    modifiers(&BearerAuth),
    security(("token" = []))
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI document as JSON.
pub fn openapi_json() -> serde_json::Value {
    serde_json::to_value(ApiDoc::openapi()).unwrap_or_default()
}

pub fn router(ctx: Arc<Ctx>) -> Router {
    let v1 = Router::new()
        .route("/status", get(misc::status))
        .route("/hosts", post(misc::register_host))
        .route("/plans", get(misc::plans))
        .route("/operations/{id}", get(misc::operation))
        .route("/apps", get(apps::list).post(apps::create))
        .route("/apps/{app}", axum::routing::delete(apps::destroy))
        .route(
            "/apps/{app}/config",
            get(apps::config).patch(apps::change_config),
        )
        .route("/apps/{app}/billing", get(misc::billing))
        .route("/apps/{app}/lag-history", get(misc::lag_history))
        .route("/apps/{app}/addons", get(addons::list).post(addons::create))
        .route(
            "/apps/{app}/addons/{db}",
            axum::routing::delete(addons::destroy),
        )
        .route("/apps/{app}/info", get(databases::info_all))
        .route("/apps/{app}/databases/{db}", get(databases::info))
        .route("/apps/{app}/databases/{db}/ps", get(databases::ps))
        .route("/apps/{app}/databases/{db}/kill", post(databases::kill))
        .route(
            "/apps/{app}/databases/{db}/killall",
            post(databases::kill_all),
        )
        .route(
            "/apps/{app}/databases/{db}/credentials",
            get(databases::credentials),
        )
        .route(
            "/apps/{app}/databases/{db}/credentials/rotate",
            post(databases::rotate),
        )
        .route(
            "/apps/{app}/databases/{db}/diagnose",
            get(diagnose::diagnose),
        )
        .route(
            "/apps/{app}/databases/{db}/extras/{report}",
            get(diagnose::extras),
        )
        .route(
            "/apps/{app}/databases/{db}/unfollow",
            post(promotion::unfollow),
        )
        .route(
            "/apps/{app}/databases/{db}/promote",
            post(promotion::promote),
        )
        .route("/apps/{app}/databases/{db}/upgrade", post(upgrade::upgrade))
        .route(
            "/apps/{app}/databases/{db}/changeover",
            post(maintenance::changeover),
        )
        .route(
            "/apps/{app}/maintenance",
            get(maintenance::show).put(maintenance::set),
        )
        .route(
            "/apps/{app}/endpoint/mode",
            get(endpoint::show).put(endpoint::set),
        )
        .route(
            "/apps/{app}/endpoint/read",
            get(endpoint::show_read).put(endpoint::set_read),
        )
        .route(
            "/apps/{app}/backups",
            get(backups::list).post(backups::capture),
        )
        .route("/apps/{app}/backups/cancel", post(backups::cancel))
        .route(
            "/apps/{app}/backups/{name}",
            get(backups::show).delete(backups::delete),
        )
        .route(
            "/apps/{app}/backups/{name}/download",
            get(backups::download),
        )
        .route("/apps/{app}/restores", post(backups::restore))
        .route(
            "/apps/{app}/backup-schedules",
            get(backups::schedules).post(backups::schedule),
        )
        .route(
            "/apps/{app}/backup-schedules/{db}",
            axum::routing::delete(backups::unschedule),
        );
    Router::new()
        .nest("/v1", v1)
        .route("/openapi.json", get(|| async { Json(openapi_json()) }))
        .layer(axum::middleware::from_fn_with_state(
            ctx.clone(),
            crate::replica::forward_writes,
        ))
        .layer(axum::middleware::from_fn_with_state(
            ctx.clone(),
            require_token,
        ))
        .route("/health", get(|| async { "ok" }))
        // Its own, read-only token: not behind the admin token's check.
        .route("/metrics", get(crate::metrics::serve))
        // Its own login and session cookie; read-only.
        .merge(crate::dashboard::routes())
        .with_state(ctx)
}

/// Refuses every request whose bearer token is not the server's.
async fn require_token(State(ctx): Shared, req: Request, next: Next) -> Result<Response, ApiErr> {
    let given = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(t) if constant_time_eq(t.as_bytes(), ctx.token.as_bytes()) => Ok(next.run(req).await),
        Some(_) => Err(ApiErr::unauthorized(
            "the API token is wrong; use the one in the data directory's api.json (or PGFOLLOW_TOKEN)",
        )),
        None => Err(ApiErr::unauthorized(
            "this API needs a token: send `Authorization: Bearer <token>` (the CLI reads it from the data directory's api.json)",
        )),
    }
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Runs a change and wakes the executor.
pub fn changed<T>(ctx: &Ctx, r: Result<T, ApiErr>) -> Result<T, ApiErr> {
    if r.is_ok() {
        ctx.wake.notify_one();
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }

    #[test]
    fn the_document_lists_every_route() {
        let doc = openapi_json();
        let paths = doc["paths"].as_object().unwrap();
        for p in [
            "/v1/apps",
            "/v1/apps/{app}/addons",
            "/v1/apps/{app}/databases/{db}/credentials/rotate",
            "/v1/plans",
        ] {
            assert!(paths.contains_key(p), "{p} missing from {:?}", paths.keys());
        }
        assert!(doc["components"]["schemas"]["DatabaseInfo"].is_object());
    }
}
