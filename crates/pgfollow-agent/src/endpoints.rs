//! The app endpoints this agent runs: one PgBouncer per app, under the
//! agent's `endpoints` directory, through pgfollow-pgbouncer.

use std::time::{Duration, Instant};

use pgfollow_pgbouncer::{Endpoint, EndpointSpec, EndpointStatus};
use pgfollow_types::agent::RouteTimings;

use crate::agent::{Agent, AgentError};

impl Agent {
    /// The endpoint `id` itself, for callers that drive its admin console
    /// through several steps (a changeover).
    pub fn endpoint(&self, id: &str) -> Result<Endpoint, AgentError> {
        if !crate::agent::valid_id(id) {
            return Err(AgentError::InvalidId(id.to_string()));
        }
        let bin = self.bouncer()?;
        Ok(Endpoint::new(
            self.endpoints_dir().join(id),
            bin,
            self.os_user(),
        ))
    }

    pub fn endpoint_status(&self, id: &str) -> Result<EndpointStatus, AgentError> {
        Ok(self.endpoint(id)?.status())
    }

    /// Makes the endpoint match `spec`: starts it if it is not running,
    /// else retargets it (PAUSE, new config, RELOAD, RESUME) and returns how
    /// long clients were held.
    pub async fn endpoint_apply(
        &self,
        spec: &EndpointSpec,
    ) -> Result<Option<Duration>, AgentError> {
        let ep = self.endpoint(&spec.id)?;
        if ep.status().running {
            return Ok(Some(ep.retarget(spec).await?));
        }
        ep.write_config(spec)?;
        ep.start().await?;
        Ok(None)
    }

    /// Holds new transactions (waits for those in flight to end).
    pub async fn endpoint_pause(&self, id: &str, dbname: &str) -> Result<(), AgentError> {
        Ok(self.endpoint(id)?.pause(dbname).await?)
    }

    /// Holds new transactions; past `limit` ends every connection instead
    /// of waiting (or giving up). Returns whether connections were killed.
    pub async fn endpoint_hold(
        &self,
        id: &str,
        dbname: &str,
        limit: Duration,
    ) -> Result<bool, AgentError> {
        let ep = self.endpoint(id)?;
        let admin = ep.admin().await?;
        Ok(admin.pause_or_kill(dbname, limit).await?)
    }

    /// PAUSE within `limit`: whether it finished (if not, the database
    /// stays paused while what held it up goes on).
    pub async fn endpoint_pause_within(
        &self,
        id: &str,
        dbname: &str,
        limit: Duration,
    ) -> Result<bool, AgentError> {
        let ep = self.endpoint(id)?;
        let admin = ep.admin().await?;
        Ok(admin.pause_within(dbname, limit).await?)
    }

    /// Server connections of `dbname` still in a transaction.
    pub async fn endpoint_active_servers(&self, id: &str, dbname: &str) -> Result<u32, AgentError> {
        let ep = self.endpoint(id)?;
        let admin = ep.admin().await?;
        Ok(admin.active_servers(dbname).await?)
    }

    /// Whether `dbname` is paused now; none when PgBouncer does not know it.
    pub async fn endpoint_paused(
        &self,
        id: &str,
        dbname: &str,
    ) -> Result<Option<bool>, AgentError> {
        let ep = self.endpoint(id)?;
        let admin = ep.admin().await?;
        Ok(admin.database(dbname).await?.map(|d| d.paused))
    }

    /// Ends every connection of `dbname`; it stays paused.
    pub async fn endpoint_kill(&self, id: &str, dbname: &str) -> Result<(), AgentError> {
        Ok(self.endpoint(id)?.kill_clients(dbname).await?)
    }

    /// Routes the endpoint as `spec` says (with `rewrite`, a new
    /// configuration and RELOAD first), then RESUME.
    pub async fn endpoint_route(
        &self,
        spec: &EndpointSpec,
        rewrite: bool,
    ) -> Result<RouteTimings, AgentError> {
        let ep = self.endpoint(&spec.id)?;
        let mut t = Instant::now();
        let mut lap = || {
            let (now, since) = (Instant::now(), t);
            t = now;
            (now - since).as_secs_f64() * 1000.0
        };
        let admin = ep.admin().await?;
        let mut took = RouteTimings {
            admin_ms: lap(),
            ..RouteTimings::default()
        };
        if rewrite {
            ep.write_config_unsynced(spec)?;
            took.config_ms = lap();
            admin.reload().await?;
            took.reload_ms = lap();
        }
        admin.resume(&spec.dbname).await?;
        took.resume_ms = lap();
        // Flushed once writes flow: the files are in place either way.
        if rewrite {
            if let Err(e) = ep.sync_config() {
                tracing::warn!(
                    "endpoint {}: flushing its configuration failed: {e}",
                    spec.id
                );
            }
        }
        Ok(took)
    }

    pub async fn endpoint_resume(&self, id: &str, dbname: &str) -> Result<(), AgentError> {
        Ok(self.endpoint(id)?.resume(dbname).await?)
    }

    /// Refuses new connections and closes the open ones.
    pub async fn endpoint_block(&self, id: &str, dbname: &str) -> Result<(), AgentError> {
        let ep = self.endpoint(id)?;
        ep.disable(dbname).await?;
        ep.kill_clients(dbname).await?;
        Ok(())
    }

    /// Takes connections again after [`Agent::endpoint_block`].
    pub async fn endpoint_unblock(&self, id: &str, dbname: &str) -> Result<(), AgentError> {
        let ep = self.endpoint(id)?;
        ep.enable(dbname).await?;
        ep.resume(dbname).await?;
        Ok(())
    }

    pub async fn endpoint_destroy(&self, id: &str) -> Result<(), AgentError> {
        Ok(self.endpoint(id)?.destroy().await?)
    }

    /// Stops every running endpoint, for an orderly stop of the agent.
    pub async fn stop_endpoints(&self) {
        let Ok(entries) = std::fs::read_dir(self.endpoints_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let Some(id) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let Ok(ep) = self.endpoint(&id) else { continue };
            if ep.status().running {
                match ep.stop().await {
                    Ok(()) => tracing::info!("stopped endpoint {id}"),
                    Err(e) => tracing::warn!("could not stop endpoint {id}: {e}"),
                }
            }
        }
    }
}
