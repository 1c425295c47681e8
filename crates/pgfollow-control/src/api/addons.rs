//! Databases as add-ons of an app: list, create, destroy.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::Utc;
use pgfollow_types::api::{AddonSummary, CreateAddon, CreateAddonResponse, DestroyAddonResponse};
use pgfollow_types::model::{DatabaseRecord, Desired};
use pgfollow_types::{Plan, Tier};

use super::apps::{check_confirm, ConfirmQuery};
use super::{changed, Shared};
use crate::error::ApiErr;
use crate::provision::{
    add_database, add_database_of_major, choose_host, choose_host_for, choose_major,
    remove_database, NewDatabase, OFFERS_PER_HOST,
};
use crate::resolve::{find_app, resolve_db};
use crate::views;

/// The databases the app owns or has attached.
#[utoipa::path(get, path = "/v1/apps/{app}/addons", params(("app" = String, Path)),
    responses((status = 200, body = Vec<AddonSummary>), (status = 404, body = pgfollow_types::api::ApiError)))]
pub async fn list(
    State(ctx): Shared,
    Path(app): Path<String>,
) -> Result<Json<Vec<AddonSummary>>, ApiErr> {
    let state = ctx.store.read()?;
    let a = find_app(&state, &app)?;
    let dbs = state
        .databases
        .values()
        .filter(|d| d.desired == Desired::Running && !d.hidden)
        .filter(|d| d.app == a.name || a.attachments.values().any(|id| *id == d.id))
        .map(|d| views::addon_summary(&state, d))
        .collect();
    Ok(Json(dbs))
}

/// Provisions a database; answers at once, the work goes on in the background.
#[utoipa::path(post, path = "/v1/apps/{app}/addons", params(("app" = String, Path)), request_body = CreateAddon,
    responses((status = 202, body = CreateAddonResponse), (status = 400, body = pgfollow_types::api::ApiError), (status = 404, body = pgfollow_types::api::ApiError)))]
pub async fn create(
    State(ctx): Shared,
    Path(app): Path<String>,
    Json(req): Json<CreateAddon>,
) -> Result<(StatusCode, Json<CreateAddonResponse>), ApiErr> {
    let plan = ctx.plans.get(&req.plan).ok_or_else(|| {
        ApiErr::bad_request(format!(
            "unknown plan {:?}; see `pgfollow plans` for the plans there are",
            req.plan
        ))
    })?;
    if req.sync && !plan.tier.has_ha() {
        return Err(ApiErr::bad_request(format!(
            "--sync needs a plan with an HA standby (premium or enterprise); {} is {}",
            plan.name, plan.tier
        )));
    }
    if req.rollback.is_none() && (req.to.is_some() || req.by.is_some()) {
        return Err(ApiErr::bad_request(
            "--to and --by go with --rollback DB: name the database to roll back",
        ));
    }
    if req.rollback.is_some() && req.follow.is_some() {
        return Err(ApiErr::bad_request(
            "--rollback and --follow cannot be combined: roll back first, then follow the new database",
        ));
    }
    // Each host's agent chooses its own ports: asked first, picked from in
    // the change.
    let ports = ctx.hosts.port_offers(OFFERS_PER_HOST).await;
    let (id, op, mode_changed) = changed(
        &ctx,
        ctx.store.update(|state| {
            find_app(state, &app)?;
            let mut mode_changed = false;
            if let (Some(mode), Some(a)) = (req.pool_mode, state.apps.get_mut(&app)) {
                mode_changed = a.pool_mode != mode && a.has_endpoint();
                a.pool_mode = mode;
            }
            let leader = match &req.follow {
                Some(reference) => {
                    let l = resolve_db(state, &app, reference)?;
                    check_followable(l, plan)?;
                    Some(l.clone())
                }
                None => None,
            };
            let is_up = |h: &str| ctx.hosts.is_up(h);
            let rollback = match &req.rollback {
                Some(reference) => Some(rollback_source(state, &app, reference, &req)?),
                None => None,
            };
            if let (Some((source, ..)), Some(v)) = (&rollback, req.version) {
                if v != source.pg_major {
                    return Err(ApiErr::bad_request(format!(
                        "a rollback runs its source's PostgreSQL {}, not {v}; leave out --version (pg:upgrade changes the version)",
                        source.pg_major
                    )));
                }
            }
            let major = match &rollback {
                Some((source, ..)) => source.pg_major,
                None => choose_major(state, leader.as_ref(), req.version, &is_up)?,
            };
            let host = choose_host_for(state, leader.as_ref(), Some(major), &is_up)?;
            let now = Utc::now();
            let (id, op) = add_database_of_major(
                state,
                &NewDatabase {
                    app: &app,
                    plan,
                    host: &host,
                    ports: &ports,
                    now,
                    leader: leader.as_ref(),
                    sync: req.sync || req.sync_strict,
                    hidden: false,
                },
                Some(major),
            )?;
            if let Some((source, stanza, target)) = rollback {
                // A restored copy: its roles and database are the source's.
                if let Some(d) = state.databases.get_mut(&id) {
                    d.database = source.database.clone();
                    d.owner = source.owner.clone();
                    d.replication = source.replication.clone();
                }
                if let Some(o) = state.operations.get_mut(&op) {
                    o.subject = Some(pgfollow_planner::rollback_subject(&stanza));
                }
                state.rollbacks.insert(
                    id.clone(),
                    pgfollow_types::archive::RollbackRecord {
                        stanza,
                        source: source.id.clone(),
                        target,
                    },
                );
            }
            if req.sync_strict {
                if let Some(d) = state.databases.get_mut(&id) {
                    d.sync_strict = true;
                }
            }
            if plan.tier.has_ha() && leader.is_none() {
                // Its HA standby: a hidden follower, on another host when
                // there is one.
                let primary = state.databases[&id].clone();
                let standby_host = choose_host(state, Some(&primary), &is_up)?;
                add_database(
                    state,
                    &NewDatabase {
                        app: &app,
                        plan,
                        host: &standby_host,
                        ports: &ports,
                        now,
                        leader: Some(&primary),
                        sync: false,
                        hidden: true,
                    },
                )?;
            }
            Ok((id, op, mode_changed))
        }),
    )?;
    if mode_changed {
        // The running endpoint takes the new mode now (its sessions end).
        ctx.endpoints.sync(&app, true).await?;
    }
    let state = ctx.store.read()?;
    let db = state
        .databases
        .get(&id)
        .ok_or_else(|| ApiErr::internal("the new database vanished"))?;
    let summary = views::addon_summary(&state, db);
    let leader = db.following.as_ref().and_then(|id| state.databases.get(id));
    let what = match leader {
        Some(l) => {
            tracing::info!(
                "{} ({} of {app}): provisioning on plan {} on host {}, following {} on host {}",
                db.color,
                db.name,
                plan.name,
                db.host,
                l.color,
                l.host
            );
            "The follower will be available for read-only queries once it has caught up."
                .to_string()
        }
        None if state.rollbacks.contains_key(&db.id) => {
            let r = &state.rollbacks[&db.id];
            let source = state
                .databases
                .get(&r.source)
                .map_or_else(|| r.source.clone(), |s| s.color.to_string());
            tracing::info!(
                "{} ({} of {app}): provisioning on plan {} on host {}, as {source} was at {}",
                db.color,
                db.name,
                plan.name,
                db.host,
                r.target
            );
            format!(
                "The database is being created as {source} was at {}.",
                r.target.format("%Y-%m-%d %H:%M:%S UTC")
            )
        }
        None => {
            tracing::info!(
                "{} ({} of {app}): provisioning on plan {} on host {}",
                db.color,
                db.name,
                plan.name,
                db.host
            );
            "The database is being created and will be available shortly.".to_string()
        }
    };
    let message = format!(
        "Creating {plan} on {app}... {price}\n\
         {what}\n\
         Created {name} as {vars}\n\
         Use `pgfollow pg:wait --app {app}` to track status.",
        plan = plan.name,
        price = plan.price_label(),
        name = db.name,
        vars = summary.attachments.join(" and "),
    );
    Ok((
        StatusCode::ACCEPTED,
        Json(CreateAddonResponse {
            database: summary,
            operation: op,
            message,
        }),
    ))
}

/// Stops a database and removes its files and config vars.
#[utoipa::path(delete, path = "/v1/apps/{app}/addons/{db}", params(("app" = String, Path), ("db" = String, Path), ConfirmQuery),
    responses((status = 200, body = DestroyAddonResponse), (status = 400, body = pgfollow_types::api::ApiError), (status = 404, body = pgfollow_types::api::ApiError)))]
pub async fn destroy(
    State(ctx): Shared,
    Path((app, reference)): Path<(String, String)>,
    Query(q): Query<ConfirmQuery>,
) -> Result<Json<DestroyAddonResponse>, ApiErr> {
    let answer = changed(
        &ctx,
        ctx.store.update(|state| {
            let db = resolve_db(state, &app, &reference)?.clone();
            check_confirm(&app, q.confirm.as_deref())?;
            let followers = views::followers_of(state, &db.id);
            if !followers.is_empty() {
                return Err(ApiErr::conflict(format!(
                    "{} has followers ({}); destroy or unfollow them first",
                    db.color,
                    followers
                        .iter()
                        .map(|f| f.color.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            if db.app.as_str() != app {
                return Err(ApiErr::bad_request(format!(
                    "{} belongs to app {}; destroy it from there (--app {})",
                    db.name, db.app, db.app
                )));
            }
            let op = remove_database(state, &db.id, Utc::now())?;
            if let Some(standby) = db.ha_standby.clone() {
                if state.databases.get(&standby).is_some_and(|s| s.is_live()) {
                    remove_database(state, &standby, Utc::now())?;
                }
            }
            Ok(DestroyAddonResponse {
                name: db.name.clone(),
                color: db.color.clone(),
                operation: op,
                message: format!(
                    "Destroying {} ({}) on {app}... done; its cluster and files are being removed",
                    db.name, db.color
                ),
            })
        }),
    )?;
    tracing::info!(
        "{} ({} of {app}): destroy requested",
        answer.color,
        answer.name
    );
    Ok(Json(answer))
}

/// The database `reference` names, its stanza and the moment to restore,
/// checked against its rollback window.
fn rollback_source(
    state: &pgfollow_types::model::State,
    app: &str,
    reference: &str,
    req: &CreateAddon,
) -> Result<(DatabaseRecord, String, chrono::DateTime<Utc>), ApiErr> {
    let source = resolve_db(state, app, reference)?.clone();
    let now = Utc::now();
    let target = pgfollow_planner::rollback_target(req.to.as_deref(), req.by.as_deref(), now)
        .map_err(ApiErr::bad_request)?;
    let Some(stanza) = state.archive_of.get(&source.id).cloned() else {
        return Err(ApiErr::bad_request(format!(
            "{} has no continuous protection (only standard, premium and enterprise primaries have it); roll back a protected database",
            source.color
        )));
    };
    pgfollow_planner::check_rollback_window(
        source.color.as_str(),
        target,
        crate::protection::earliest_of(state, &source.id),
        now,
    )
    .map_err(ApiErr::bad_request)?;
    Ok((source, stanza, target))
}

/// The rules a leader and a new follower's plan must meet.
pub fn check_followable(leader: &DatabaseRecord, plan: &Plan) -> Result<(), ApiErr> {
    if leader.is_follower() {
        return Err(ApiErr::bad_request(format!(
            "{} is itself a follower and followers cannot be chained; follow its leader instead",
            leader.color
        )));
    }
    if leader.plan.tier == Tier::Hobby {
        return Err(ApiErr::bad_request(format!(
            "{} is on the hobby tier ({}), which cannot be followed; move it to a standard, premium or enterprise plan first",
            leader.color, leader.plan.name
        )));
    }
    if plan.tier == Tier::Hobby {
        return Err(ApiErr::bad_request(format!(
            "a follower cannot be on the hobby tier ({}); pick a standard, premium or enterprise plan from `pgfollow plans`",
            plan.name
        )));
    }
    let fork_follow = views::fork_follow(leader);
    if fork_follow != views::FORK_FOLLOW_AVAILABLE {
        return Err(ApiErr::conflict(format!(
            "{} cannot be followed yet (Fork/Follow: {fork_follow}); wait until `pgfollow pg:info` shows Available",
            leader.color
        )));
    }
    Ok(())
}
