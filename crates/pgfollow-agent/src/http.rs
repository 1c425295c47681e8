//! The agent's own HTTP API (`POST /agent/v1/call`, token required), which
//! the control plane uses when the agent runs on another host.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use pgfollow_types::agent::{AgentCall, AgentFailure};
use serde::Serialize;

use crate::agent::{Agent, AgentError};

struct Ctx {
    agent: Arc<Agent>,
    token: String,
}

/// The agent API's routes.
pub fn router(agent: Arc<Agent>, token: String) -> Router {
    Router::new()
        .route("/agent/v1/call", post(call))
        .route("/health", axum::routing::get(|| async { "ok" }))
        .with_state(Arc::new(Ctx { agent, token }))
}

fn failure(status: StatusCode, error: impl Into<String>) -> Response {
    (
        status,
        Json(AgentFailure {
            error: error.into(),
            code: None,
            port: None,
        }),
    )
        .into_response()
}

fn authorized(headers: &HeaderMap, token: &str) -> bool {
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    given.len() == token.len()
        && given
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

async fn call(
    State(ctx): State<Arc<Ctx>>,
    headers: HeaderMap,
    Json(call): Json<AgentCall>,
) -> Response {
    if !authorized(&headers, &ctx.token) {
        return failure(
            StatusCode::UNAUTHORIZED,
            "the agent API needs the control plane's token",
        );
    }
    match dispatch(&ctx.agent, call).await {
        Ok(value) => Json(value).into_response(),
        Err(e) => (StatusCode::UNPROCESSABLE_ENTITY, Json(e.to_failure())).into_response(),
    }
}

fn json(v: impl Serialize) -> Result<serde_json::Value, AgentError> {
    serde_json::to_value(v)
        .map_err(|e| AgentError::HostDown(format!("cannot encode an answer: {e}")))
}

/// Carries out one call on the local agent.
pub async fn dispatch(agent: &Agent, call: AgentCall) -> Result<serde_json::Value, AgentError> {
    match call {
        AgentCall::Status { id } => json(agent.status(&id)?),
        AgentCall::Initialize { spec } => json(agent.initialize(&spec).await?),
        AgentCall::Start { spec } => json(agent.start(&spec).await?),
        AgentCall::Bootstrap { spec } => json(agent.bootstrap(&spec).await?),
        AgentCall::Stats { id, database } => json(agent.stats(&id, &database).await?),
        AgentCall::Backends { id, database } => json(agent.backends(&id, &database).await?),
        AgentCall::Kill {
            id,
            database,
            pid,
            force,
        } => json(agent.kill(&id, &database, pid, force).await?),
        AgentCall::KillAll { id, database } => json(agent.kill_all(&id, &database).await?),
        AgentCall::SetPassword { id, role } => json(agent.set_password(&id, &role).await?),
        AgentCall::Destroy { id } => json(agent.destroy(&id).await?),
        AgentCall::CreateSlot { id, slot } => json(agent.create_slot(&id, &slot).await?),
        AgentCall::DropSlot { id, slot } => json(agent.drop_slot(&id, &slot).await?),
        AgentCall::SlotStatus { id, slot } => json(agent.slot_status(&id, &slot).await?),
        AgentCall::BaseBackup { spec } => json(agent.basebackup(&spec, |_, _| {}).await?),
        AgentCall::Progress { id } => json(agent.basebackup_progress(&id)),
        AgentCall::ReplayStatus { id } => json(agent.replay_status(&id).await?),
        AgentCall::CommitsSince {
            id,
            from,
            max_bytes,
        } => json(agent.commits_since(&id, from, max_bytes).await?),
        AgentCall::Promote { id } => json(agent.promote(&id).await?),
        AgentCall::PromoteAt { id, lsn, limit_ms } => json(
            agent
                .promote_at(&id, lsn, Duration::from_millis(limit_ms))
                .await?,
        ),
        AgentCall::Checkpoint { id } => json(agent.checkpoint(&id).await?),
        AgentCall::Rewind { spec } => json(agent.rewind(&spec).await?),
        AgentCall::SetUpstream { spec } => json(agent.set_upstream(&spec).await?),
        AgentCall::Fence { id } => json(agent.fence(&id).await?),
        AgentCall::EndpointStatus { id } => json(agent.endpoint_status(&id)?),
        AgentCall::EndpointApply { spec } => json(
            agent
                .endpoint_apply(&spec)
                .await?
                .map(|held| held.as_millis() as u64),
        ),
        AgentCall::EndpointHold {
            id,
            dbname,
            limit_ms,
        } => json(
            agent
                .endpoint_hold(&id, &dbname, Duration::from_millis(limit_ms))
                .await?,
        ),
        AgentCall::EndpointPauseWithin {
            id,
            dbname,
            limit_ms,
        } => json(
            agent
                .endpoint_pause_within(&id, &dbname, Duration::from_millis(limit_ms))
                .await?,
        ),
        AgentCall::EndpointActiveServers { id, dbname } => {
            json(agent.endpoint_active_servers(&id, &dbname).await?)
        }
        AgentCall::EndpointKill { id, dbname } => json(agent.endpoint_kill(&id, &dbname).await?),
        AgentCall::EndpointRoute { spec, rewrite } => {
            json(agent.endpoint_route(&spec, rewrite).await?)
        }
        AgentCall::EndpointResume { id, dbname } => {
            json(agent.endpoint_resume(&id, &dbname).await?)
        }
        AgentCall::EndpointBlock { id, dbname } => json(agent.endpoint_block(&id, &dbname).await?),
        AgentCall::EndpointUnblock { id, dbname } => {
            json(agent.endpoint_unblock(&id, &dbname).await?)
        }
        AgentCall::EndpointDestroy { id } => json(agent.endpoint_destroy(&id).await?),
        AgentCall::EndpointPaused { id, dbname } => {
            json(agent.endpoint_paused(&id, &dbname).await?)
        }
        AgentCall::LogicalFacts {
            id,
            database,
            subscription,
        } => json(
            agent
                .logical_facts(&id, &database, subscription.as_deref())
                .await?,
        ),
        AgentCall::Publish {
            id,
            database,
            name,
            reader,
        } => json(agent.publish(&id, &database, &name, &reader).await?),
        AgentCall::Unpublish { id, database, name } => {
            json(agent.unpublish(&id, &database, &name).await?)
        }
        AgentCall::CopySchema { spec, from } => json(agent.copy_schema(&spec, &from).await?),
        AgentCall::Subscribe { id, database, sub } => {
            json(agent.subscribe(&id, &database, &sub).await?)
        }
        AgentCall::Unsubscribe { id, database, name } => {
            json(agent.unsubscribe(&id, &database, &name).await?)
        }
        AgentCall::Sequences { id, database } => json(agent.sequences(&id, &database).await?),
        AgentCall::SetSequences {
            id,
            database,
            values,
        } => json(agent.set_sequences(&id, &database, &values).await?),
        // backups branch
        AgentCall::Dump {
            major,
            target,
            file,
        } => json(agent.dump(major, &target, &file).await?),
        AgentCall::Restore {
            major,
            target,
            file,
        } => json(agent.restore(major, &target, &file).await?),
        AgentCall::RestoreProgress { file } => json(agent.restore_progress(&file)),
        AgentCall::ArchiveConfigure { id, archive } => {
            json(agent.archive_configure(&id, &archive).await?)
        }
        AgentCall::ArchiveBackup { id, archive } => {
            json(agent.archive_backup(&id, &archive).await?)
        }
        AgentCall::ArchiveSeal { id, archive } => json(agent.archive_seal(&id, &archive).await?),
        AgentCall::ArchiveRestore {
            spec,
            archive,
            target,
        } => json(agent.archive_restore(&spec, &archive, target).await?),
        AgentCall::Upgrade { id, major } => json(agent.upgrade(&id, major).await?),
        AgentCall::UpgradeDryRun {
            id,
            major,
            host,
            replication,
        } => json(
            agent
                .upgrade_dry_run(&id, major, &host, &replication)
                .await?,
        ),
        AgentCall::Probe { id } => json(agent.probe(&id).await?),
        AgentCall::OfferPorts { count } => json(agent.offer_ports(count)),
        // observe branch
        AgentCall::Extras {
            id,
            database,
            report,
        } => json(agent.cluster(&id)?.extras(&database, report).await?),
    }
}

impl pgfollow_client::agent::EmbeddedAgent for Agent {
    fn name(&self) -> &str {
        Agent::name(self)
    }

    fn host_record(&self) -> pgfollow_types::model::HostRecord {
        Agent::host_record(self)
    }

    fn call(
        &self,
        call: AgentCall,
    ) -> pgfollow_client::agent::AgentFuture<'_, Result<serde_json::Value, AgentFailure>> {
        Box::pin(async move { dispatch(self, call).await.map_err(|e| e.to_failure()) })
    }

    fn stop_all(&self) -> pgfollow_client::agent::AgentFuture<'_, ()> {
        Box::pin(Agent::stop_all(self))
    }
}
