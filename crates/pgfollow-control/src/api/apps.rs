//! Apps and their config vars.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::Utc;
use pgfollow_types::api::{App, ConfigChange, ConfigVars, CreateApp};
use pgfollow_types::model::{AppRecord, State as Catalog};
use pgfollow_types::names::{check_config_var, COLOR_VAR_PREFIX};
use pgfollow_types::AppName;
use serde::Deserialize;

use super::{changed, Shared};
use crate::error::ApiErr;
use crate::provision::remove_database;
use crate::resolve::find_app;
use crate::views;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ConfirmQuery {
    /// The name of the app, typed back.
    pub confirm: Option<String>,
}

fn app_view(state: &Catalog, a: &AppRecord) -> App {
    App {
        name: a.name.to_string(),
        created_at: a.created_at,
        databases: state
            .databases
            .values()
            .filter(|d| {
                d.app == a.name && d.desired == pgfollow_types::model::Desired::Running && !d.hidden
            })
            .map(|d| d.name.clone())
            .collect(),
    }
}

/// Every app.
#[utoipa::path(get, path = "/v1/apps", responses((status = 200, body = Vec<App>)))]
pub async fn list(State(ctx): Shared) -> Result<Json<Vec<App>>, ApiErr> {
    let state = ctx.store.read()?;
    Ok(Json(
        state.apps.values().map(|a| app_view(&state, a)).collect(),
    ))
}

/// Creates an app.
#[utoipa::path(post, path = "/v1/apps", request_body = CreateApp,
    responses((status = 201, body = App), (status = 400, body = pgfollow_types::api::ApiError), (status = 409, body = pgfollow_types::api::ApiError)))]
pub async fn create(
    State(ctx): Shared,
    Json(req): Json<CreateApp>,
) -> Result<(StatusCode, Json<App>), ApiErr> {
    let name = AppName::parse(&req.name).map_err(|e| ApiErr::bad_request(e.to_string()))?;
    let app = ctx.store.update(|state| {
        if state.apps.contains_key(name.as_str()) {
            return Err(ApiErr::conflict(format!(
                "an app named {name} already exists; pick another name"
            )));
        }
        let rec = AppRecord {
            name: name.clone(),
            created_at: Utc::now(),
            config: Default::default(),
            attachments: Default::default(),
            endpoints: Vec::new(),
            maintenance: false,
            pool_mode: Default::default(),
            read: Default::default(),
        };
        let view = app_view(state, &rec);
        state.apps.insert(name.to_string(), rec);
        Ok(view)
    })?;
    tracing::info!("created app {name}");
    Ok((StatusCode::CREATED, Json(app)))
}

/// Checks a typed-back confirmation.
pub fn check_confirm(app: &str, confirm: Option<&str>) -> Result<(), ApiErr> {
    match confirm {
        Some(c) if c == app => Ok(()),
        Some(c) => Err(ApiErr::bad_request(format!(
            "confirmation {c:?} does not match the app {app}; nothing was done"
        ))),
        None => Err(ApiErr::bad_request(format!(
            "this is destructive: confirm with the app's name (--confirm {app})"
        ))),
    }
}

/// Destroys an app and every database it owns.
#[utoipa::path(delete, path = "/v1/apps/{app}", params(("app" = String, Path), ConfirmQuery),
    responses((status = 200, body = App), (status = 400, body = pgfollow_types::api::ApiError), (status = 404, body = pgfollow_types::api::ApiError)))]
pub async fn destroy(
    State(ctx): Shared,
    Path(app): Path<String>,
    Query(q): Query<ConfirmQuery>,
) -> Result<Json<App>, ApiErr> {
    let (view, endpoints, backups) = changed(
        &ctx,
        ctx.store.update(|state| {
            let rec = find_app(state, &app)?.clone();
            check_confirm(&app, q.confirm.as_deref())?;
            let view = app_view(state, &rec);
            let owned: Vec<String> = state
                .databases
                .values()
                .filter(|d| {
                    d.app == rec.name && d.desired == pgfollow_types::model::Desired::Running
                })
                .map(|d| d.id.clone())
                .collect();
            let now = Utc::now();
            for id in owned {
                remove_database(state, &id, now)?;
            }
            state.apps.remove(&app);
            // Its backups go with it (as Heroku's do): records, schedules,
            // running captures and restores, and numbering.
            let backups = crate::backups::forget_app(state, &app);
            let mut eps = rec.endpoints.clone();
            // The read endpoint's slots go too.
            for place in &rec.read.places {
                eps.extend(place.applied.keys().map(|slot| {
                    pgfollow_types::model::EndpointRecord {
                        id: crate::read_endpoint::slot_id(slot),
                        host: place.host.clone(),
                        port: place.port,
                        applied: None,
                        held_by: None,
                    }
                }));
            }
            Ok((view, eps, backups))
        }),
    )?;
    for ep in &endpoints {
        ctx.endpoints.destroy(ep).await;
    }
    for b in &backups {
        ctx.backups.remove_file(b);
    }
    tracing::info!(
        "destroyed app {app} and its {} databases",
        view.databases.len()
    );
    Ok(Json(view))
}

/// The app's config vars, with a URL for every attached database.
#[utoipa::path(get, path = "/v1/apps/{app}/config", params(("app" = String, Path)),
    responses((status = 200, body = ConfigVars), (status = 404, body = pgfollow_types::api::ApiError)))]
pub async fn config(
    State(ctx): Shared,
    Path(app): Path<String>,
) -> Result<Json<ConfigVars>, ApiErr> {
    let state = ctx.store.read()?;
    let a = find_app(&state, &app)?;
    Ok(Json(views::config_vars(&state, a)))
}

/// Whether `var` is managed by pgfollow (a database URL).
fn is_attachment_var(var: &str) -> bool {
    var == "DATABASE_URL"
        || var == crate::views::FOLLOWER_URL_VAR
        || (var.starts_with(COLOR_VAR_PREFIX) && var.ends_with("_URL"))
}

/// Sets and unsets config vars. Database URLs are managed by pgfollow.
#[utoipa::path(patch, path = "/v1/apps/{app}/config", params(("app" = String, Path)), request_body = ConfigChange,
    responses((status = 200, body = ConfigVars), (status = 400, body = pgfollow_types::api::ApiError)))]
pub async fn change_config(
    State(ctx): Shared,
    Path(app): Path<String>,
    Json(change): Json<ConfigChange>,
) -> Result<Json<ConfigVars>, ApiErr> {
    for var in change.set.keys().chain(change.unset.iter()) {
        check_config_var(var).map_err(|e| ApiErr::bad_request(e.to_string()))?;
        if is_attachment_var(var) {
            return Err(ApiErr::bad_request(format!(
                "{var} is managed by pgfollow; use `pgfollow pg:promote` or `addons:create` instead"
            )));
        }
    }
    let vars = ctx.store.update(|state| {
        find_app(state, &app)?;
        let a = state
            .apps
            .get_mut(&app)
            .ok_or_else(|| ApiErr::internal("app vanished"))?;
        for (k, v) in &change.set {
            a.config.insert(k.clone(), v.clone());
        }
        for k in &change.unset {
            a.config.remove(k);
        }
        let a = a.clone();
        Ok(views::config_vars(state, &a))
    })?;
    Ok(Json(vars))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirmation_must_match() {
        assert!(check_confirm("sushi", Some("sushi")).is_ok());
        let e = check_confirm("sushi", Some("sushy")).unwrap_err();
        assert!(e.message.contains("does not match"), "{e}");
        let e = check_confirm("sushi", None).unwrap_err();
        assert!(e.message.contains("--confirm sushi"), "{e}");
    }

    #[test]
    fn database_urls_are_not_for_config_set() {
        assert!(is_attachment_var("DATABASE_URL"));
        assert!(is_attachment_var("PGFOLLOW_POSTGRESQL_WHITE_URL"));
        assert!(!is_attachment_var("REDIS_URL"));
    }
}
