//! Server status, plans, billing and operations.

use axum::extract::{Path, State};
use axum::Json;
use chrono::Utc;
use pgfollow_types::agent::AgentRegistration;
use pgfollow_types::api::{Billing, HostSummary, LagHistory, Operation, ServerStatus};
use pgfollow_types::model::{HostRecord, OperationRecord, State as Catalog};
use pgfollow_types::Plan;

use super::Shared;
use crate::error::ApiErr;
use crate::resolve::find_app;
use crate::views;

/// The server's version and its hosts.
#[utoipa::path(get, path = "/v1/status", responses((status = 200, body = ServerStatus)))]
pub async fn status(State(ctx): Shared) -> Result<Json<ServerStatus>, ApiErr> {
    let state = ctx.store.read()?;
    Ok(Json(ServerStatus {
        version: env!("CARGO_PKG_VERSION").to_string(),
        hosts: host_summaries(&ctx, &state),
    }))
}

/// Every host, as `status` and `hosts` show them.
pub(crate) fn host_summaries(ctx: &super::Ctx, state: &Catalog) -> Vec<HostSummary> {
    state
        .hosts
        .values()
        .map(|h| HostSummary {
            name: h.name.clone(),
            zone: h.zone.clone(),
            address: h.address.clone(),
            pg_bin: h.pg_bin.clone(),
            pg_version: h.pg_version.clone(),
            pg_versions: h.installs().into_iter().map(|i| i.version).collect(),
            databases: state
                .databases
                .values()
                .filter(|d| d.host == h.name && d.is_live())
                .map(|d| d.name.clone())
                .collect(),
            reachable: ctx.hosts.is_up(&h.name),
        })
        .collect()
}

/// An agent on another host registers, and repeats it as its heartbeat.
#[utoipa::path(post, path = "/v1/hosts", request_body = AgentRegistration,
    responses((status = 200, body = HostSummary), (status = 400, body = pgfollow_types::api::ApiError), (status = 409, body = pgfollow_types::api::ApiError)))]
pub async fn register_host(
    State(ctx): Shared,
    Json(reg): Json<AgentRegistration>,
) -> Result<Json<HostSummary>, ApiErr> {
    let name_ok = !reg.name.is_empty()
        && reg.name.len() <= 40
        && reg
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !name_ok {
        return Err(ApiErr::bad_request(format!(
            "invalid host name {:?}: use letters, digits, '-', '_' and '.'",
            reg.name
        )));
    }
    let record = HostRecord {
        name: reg.name.clone(),
        zone: reg.zone.clone(),
        address: reg.address.clone(),
        pg_bin: reg.pg_bin.clone(),
        pg_major: reg.pg_major,
        pg_version: reg.pg_version.clone(),
        agent_url: Some(reg.url.clone()),
        majors: reg.majors.clone(),
    };
    let was_up = ctx.hosts.is_up(&reg.name);
    match &ctx.replica {
        // With etcd every replica answers heartbeats (so a leader change
        // silences no host): recorded in etcd, where all of them watch.
        Some(replica) => replica.heartbeat(&reg).await?,
        None => ctx.hosts.register(&reg)?,
    }
    if ctx.store.read()?.hosts.get(&reg.name) != Some(&record) {
        match &ctx.replica {
            // The leader writes the host's record, at a heartbeat it gets
            // (forwarded, or a later one when nobody leads right now).
            // In the background: the heartbeat is answered now, whatever
            // the leader does (a leader cut off would hold it past the
            // agent's fencing deadline).
            Some(replica) if !replica.is_leader() => {
                let (replica, reg) = (replica.clone(), reg.clone());
                tokio::spawn(async move { replica.forward_registration(&reg).await });
            }
            _ => ctx.store.update(|state| {
                state.hosts.insert(record.name.clone(), record.clone());
                Ok(())
            })?,
        }
    }
    if !was_up && ctx.replica.is_none() {
        tracing::info!(
            "host {} ({}) is up: agent at {}, PostgreSQL {}",
            reg.name,
            reg.zone.as_deref().unwrap_or("no zone"),
            reg.url,
            reg.pg_version
        );
        ctx.wake.notify_one();
    }
    let state = ctx.store.read()?;
    Ok(Json(HostSummary {
        name: record.name.clone(),
        zone: record.zone.clone(),
        address: record.address.clone(),
        pg_bin: record.pg_bin.clone(),
        pg_version: record.pg_version.clone(),
        pg_versions: record.installs().into_iter().map(|i| i.version).collect(),
        databases: state
            .databases
            .values()
            .filter(|d| d.host == record.name && d.is_live())
            .map(|d| d.name.clone())
            .collect(),
        reachable: true,
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
    Ok(Json(operation_view(&ctx, &state, op).await))
}

/// An operation as the API shows it; a follower's copy with its bytes.
pub(crate) async fn operation_view(
    ctx: &super::Ctx,
    state: &Catalog,
    op: &OperationRecord,
) -> Operation {
    let db = state.databases.get(&op.database);
    let copy = match db {
        Some(d) if op.state.is_active() && d.is_follower() => {
            super::databases::copy_progress(ctx, &d.host, op).await
        }
        _ => None,
    };
    Operation {
        id: op.id.clone(),
        kind: op.kind.as_str().to_string(),
        database: db
            .map(|d| d.name.clone())
            .unwrap_or_else(|| op.database.clone()),
        state: op.state.as_str().to_string(),
        step: op.done.last().cloned().unwrap_or_else(|| "pending".into()),
        progress_percent: op.progress_percent,
        error: op.last_error.clone(),
        created_at: op.created_at,
        updated_at: op.updated_at,
        app: db.map(|d| d.app.to_string()),
        color: db.map(|d| d.color.to_string()),
        copy,
        detail: op.reason.clone(),
    }
}

/// Behind By of the app's followers over the last hour, and the
/// failovers and changeovers of that hour.
#[utoipa::path(get, path = "/v1/apps/{app}/lag-history", params(("app" = String, Path)),
    responses((status = 200, body = LagHistory), (status = 404, body = pgfollow_types::api::ApiError)))]
pub async fn lag_history(
    State(ctx): Shared,
    Path(app): Path<String>,
) -> Result<Json<LagHistory>, ApiErr> {
    let state = ctx.store.read()?;
    let a = find_app(&state, &app)?;
    Ok(Json(ctx.lag_samples.history(
        &state,
        Some(a.name.as_str()),
        Utc::now(),
    )))
}
