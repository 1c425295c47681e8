//! App endpoints: `DATABASE_URL` points at a PgBouncer that the agent of
//! the endpoint's host runs, which routes to whichever database is attached
//! as `DATABASE`. Everything here goes through that agent's interface
//! (`AgentCall`), like any other work on a host. `sync` makes an endpoint
//! match the catalog (start it, or retarget it with PAUSE → new config →
//! RELOAD → RESUME); maintenance mode closes it. One sync at a time per app.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgfollow_types::agent::{EndpointSpec, EndpointTarget};
use pgfollow_types::model::{AppRecord, DatabaseRecord, EndpointRecord, State};

use crate::error::ApiErr;
use crate::provision::host_address;
use crate::store::Store;
use crate::views::MAIN_ATTACHMENT;

/// Client connections one endpoint accepts.
const MAX_CLIENT_CONN: u32 = 1000;

pub struct Endpoints {
    store: Store,
    /// The agents: of the endpoints' hosts, and of the databases (asked
    /// whether they are out of recovery before an endpoint routes to them).
    hosts: crate::hosts::Hosts,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Operations a task of this process is carrying out right now (a
    /// changeover): an active one missing here was interrupted.
    running: Arc<Mutex<std::collections::HashSet<String>>>,
}

/// Marks an operation as being carried out until dropped.
pub struct RunningOp {
    set: Arc<Mutex<std::collections::HashSet<String>>>,
    id: String,
}

impl Drop for RunningOp {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

/// The database an app's endpoint should route to.
pub fn main_database<'a>(state: &'a State, app: &AppRecord) -> Option<&'a DatabaseRecord> {
    app.attachments
        .get(MAIN_ATTACHMENT)
        .and_then(|id| state.databases.get(id))
        .filter(|d| d.is_live())
}

/// The endpoint spec of `app`, routing to `db`.
pub fn endpoint_spec(state: &State, app: &AppRecord, db: &DatabaseRecord) -> Option<EndpointSpec> {
    let ep = app.endpoint.as_ref()?;
    Some(EndpointSpec {
        id: ep.id.clone(),
        listen_addr: host_address(state, &ep.host),
        port: ep.port,
        dbname: db.database.clone(),
        target: Some(EndpointTarget {
            host: host_address(state, &db.host),
            port: db.port,
            dbname: db.database.clone(),
        }),
        user: db.owner.name.clone(),
        password: db.owner.password.clone(),
        pool_size: db.plan.connection_limit.clamp(5, 100),
        max_client_conn: MAX_CLIENT_CONN,
        pool_mode: app.pool_mode,
    })
}

/// The apps whose endpoints log in with `db_id`'s owner password: those
/// routing to it or to one of its followers (they share it).
pub fn sharing_credentials(state: &State, db_id: &str) -> Vec<String> {
    state
        .apps
        .values()
        .filter(|a| {
            main_database(state, a)
                .is_some_and(|m| m.id == db_id || m.following.as_deref() == Some(db_id))
        })
        .map(|a| a.name.to_string())
        .collect()
}

/// Whether the endpoint may route to `db`: it is writable (it follows
/// nothing; an unfollow clears that once it has promoted it).
pub fn routable(db: &DatabaseRecord) -> bool {
    !db.is_follower()
}

/// Whether `app`'s endpoint must be synced: it routes elsewhere than the
/// catalog says (to a database it may route to), or is not running.
pub fn needs_sync(state: &State, app: &AppRecord, running: bool) -> bool {
    let (Some(ep), Some(db)) = (&app.endpoint, main_database(state, app)) else {
        return false;
    };
    let applied = ep.applied.as_deref() == Some(db.id.as_str());
    if !applied && !routable(db) {
        return false;
    }
    !running || !applied
}

impl Endpoints {
    pub fn new(store: Store, hosts: crate::hosts::Hosts) -> Self {
        Self {
            store,
            hosts,
            locks: Mutex::default(),
            running: Arc::default(),
        }
    }

    /// Whether `db` says it is in recovery (a standby). A database that
    /// cannot be asked is not judged here.
    async fn seen_in_recovery(&self, db: &DatabaseRecord) -> bool {
        match self.hosts.get(&db.host) {
            Some(agent) => agent.probe(&db.id).await.is_ok_and(|p| p.in_recovery),
            None => false,
        }
    }

    /// Records that this process carries operation `id` out now (call it
    /// before the operation is in the catalog: from the catalog write's
    /// closure), until the returned guard is dropped.
    pub fn run_op(&self, id: &str) -> RunningOp {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string());
        RunningOp {
            set: self.running.clone(),
            id: id.to_string(),
        }
    }

    pub fn is_op_running(&self, id: &str) -> bool {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(id)
    }

    /// The agent that runs endpoint `ep`.
    pub fn agent_of(&self, ep: &EndpointRecord) -> Result<crate::hosts::AgentHandle, ApiErr> {
        self.hosts.agent(&ep.host)
    }

    /// The lock that serializes work on `app`'s endpoint.
    pub fn lock(&self, app: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(app.to_string())
            .or_default()
            .clone()
    }

    pub async fn is_running(&self, app: &AppRecord) -> bool {
        let Some(ep) = &app.endpoint else {
            return false;
        };
        match self.hosts.get(&ep.host) {
            Some(agent) => agent.endpoint_status(&ep.id).await.is_ok_and(|s| s.running),
            None => false,
        }
    }

    /// Makes `app`'s endpoint match the catalog. With `force`, rewrites its
    /// configuration even when it routes to the right database (new
    /// credentials). Returns how long clients were held, if they were.
    pub async fn sync(&self, app: &str, force: bool) -> Result<Option<Duration>, ApiErr> {
        self.sync_inner(app, force, false).await
    }

    /// As [`Endpoints::sync`], routing to the database behind `DATABASE`
    /// even while it is read-only (`pg:promote --force`).
    pub async fn sync_read_only(&self, app: &str) -> Result<Option<Duration>, ApiErr> {
        self.sync_inner(app, false, true).await
    }

    async fn sync_inner(
        &self,
        app: &str,
        force: bool,
        read_only: bool,
    ) -> Result<Option<Duration>, ApiErr> {
        let lock = self.lock(app);
        let _held = lock.lock().await;
        let state = self.store.read()?;
        let Some(rec) = state.apps.get(app) else {
            return Ok(None);
        };
        let Some(db) = main_database(&state, rec) else {
            return Ok(None);
        };
        let running = self.is_running(rec).await;
        if !read_only
            && !routable(db)
            && rec.endpoint.as_ref().and_then(|e| e.applied.as_deref()) != Some(db.id.as_str())
        {
            // It becomes the target once it is writable.
            return Ok(None);
        }
        if !force && !read_only && !needs_sync(&state, rec, running) {
            return Ok(None);
        }
        let retarget =
            rec.endpoint.as_ref().and_then(|e| e.applied.as_deref()) != Some(db.id.as_str());
        if retarget && !read_only && self.seen_in_recovery(db).await {
            return Err(ApiErr::conflict(format!(
                "{} answers as a standby (in recovery); the endpoint keeps its route until it is writable",
                db.color
            )));
        }
        let Some(spec) = endpoint_spec(&state, rec, db) else {
            return Ok(None);
        };
        let Some(ep) = &rec.endpoint else {
            return Ok(None);
        };
        let agent = self.agent_of(ep)?;
        let held = agent.endpoint_apply(&spec).await?;
        if held.is_none() && rec.maintenance {
            // A fresh PgBouncer forgets DISABLE: close it again.
            agent.endpoint_block(&spec.id, &spec.dbname).await?;
        }
        let (db_id, was) = (
            db.id.clone(),
            rec.endpoint.as_ref().and_then(|e| e.applied.clone()),
        );
        self.store.update(|state| {
            if let Some(ep) = state.apps.get_mut(app).and_then(|a| a.endpoint.as_mut()) {
                ep.applied = Some(db_id.clone());
            }
            Ok(())
        })?;
        match (held, was.as_deref() == Some(db_id.as_str())) {
            (None, _) => tracing::info!(
                "{app}: endpoint started on port {}, routing to {}",
                spec.port,
                db.color
            ),
            (Some(h), false) => tracing::info!(
                "{app}: endpoint now routes to {} (clients held {} ms)",
                db.color,
                h.as_millis()
            ),
            (Some(_), true) => tracing::info!("{app}: endpoint configuration rewritten"),
        }
        Ok(held)
    }

    /// Turns maintenance on (new connections refused, open ones closed) or
    /// off for `app`'s endpoint.
    pub async fn set_maintenance(&self, app: &str, on: bool) -> Result<(), ApiErr> {
        let lock = self.lock(app);
        let _held = lock.lock().await;
        let state = self.store.read()?;
        let Some(rec) = state.apps.get(app) else {
            return Ok(());
        };
        let (Some(ep), Some(db)) = (&rec.endpoint, main_database(&state, rec)) else {
            return Ok(());
        };
        if !self.is_running(rec).await {
            // The next sync starts it, closed if maintenance is on.
            return Ok(());
        }
        let agent = self.agent_of(ep)?;
        if on {
            agent.endpoint_block(&ep.id, &db.database).await?;
        } else {
            agent.endpoint_unblock(&ep.id, &db.database).await?;
        }
        Ok(())
    }

    /// Stops and removes an endpoint (its app is gone).
    pub async fn destroy(&self, ep: &EndpointRecord) {
        let removed = match self.agent_of(ep) {
            Ok(agent) => agent.endpoint_destroy(&ep.id).await.map_err(ApiErr::from),
            Err(e) => Err(e),
        };
        if let Err(e) = removed {
            tracing::warn!("could not remove endpoint {}: {e}", ep.id);
        }
    }
}

impl Endpoints {
    /// The apps whose endpoints route to `db_id` (or are about to).
    pub fn routing_to(state: &State, db_id: &str) -> Vec<String> {
        state
            .apps
            .values()
            .filter(|app| {
                app.endpoint.as_ref().is_some_and(|ep| {
                    ep.applied.as_deref() == Some(db_id)
                        || main_database(state, app).is_some_and(|m| m.id == db_id)
                })
            })
            .map(|app| app.name.to_string())
            .collect()
    }

    /// Holds new transactions at `app`'s endpoint for operation `op_id`:
    /// the hold is recorded in the catalog first (so that whatever happens
    /// next, reconciliation resumes an endpoint whose operation ended),
    /// then PAUSE; past `limit` every connection is ended instead of
    /// waiting. Returns whether connections were killed. An endpoint that
    /// does not run holds nothing.
    pub async fn hold(&self, app: &str, op_id: &str, limit: Duration) -> Result<bool, ApiErr> {
        let lock = self.lock(app);
        let _held = lock.lock().await;
        let state = self.store.update(|state| {
            if let Some(ep) = state.apps.get_mut(app).and_then(|a| a.endpoint.as_mut()) {
                ep.held_by = Some(op_id.to_string());
            }
            Ok(state.clone())
        })?;
        let Some(rec) = state.apps.get(app) else {
            return Ok(false);
        };
        let (Some(ep), Some(db)) = (&rec.endpoint, main_database(&state, rec)) else {
            return Ok(false);
        };
        if !self.is_running(rec).await {
            return Ok(false);
        }
        let killed = self
            .agent_of(ep)?
            .endpoint_hold(&ep.id, &db.database, limit)
            .await?;
        if killed {
            tracing::warn!(
                "{app}: the endpoint could not pause within {} ms (a transaction stayed open or a server hung); its connections were ended",
                limit.as_millis()
            );
        }
        Ok(killed)
    }

    /// Holds new transactions at `app`'s endpoint for a suspicion (operation
    /// `op_id`): recorded first, then PAUSE, which may stay pending while
    /// transactions in flight go on; nothing is killed. Unless the endpoint
    /// is already held by something else.
    pub async fn pause_for(&self, app: &str, op_id: &str, limit: Duration) -> Result<(), ApiErr> {
        let lock = self.lock(app);
        let _held = lock.lock().await;
        let mut taken = false;
        let state = self.store.update(|state| {
            if let Some(ep) = state.apps.get_mut(app).and_then(|a| a.endpoint.as_mut()) {
                match &ep.held_by {
                    Some(other) if other != op_id => taken = true,
                    _ => ep.held_by = Some(op_id.to_string()),
                }
            }
            Ok(state.clone())
        })?;
        let Some(rec) = state.apps.get(app) else {
            return Ok(());
        };
        let (Some(ep), Some(db)) = (&rec.endpoint, main_database(&state, rec)) else {
            return Ok(());
        };
        // In session pooling a pause ends the sessions: not for a mere
        // suspicion.
        if taken
            || rec.pool_mode == pgfollow_types::api::PoolMode::Session
            || !self.is_running(rec).await
        {
            return Ok(());
        }
        self.agent_of(ep)?
            .endpoint_pause_within(&ep.id, &db.database, limit)
            .await?;
        Ok(())
    }

    /// Points `app`'s held endpoint at the database now behind
    /// `DATABASE`, lets transactions through, and clears the hold.
    pub async fn reroute_held(&self, app: &str) -> Result<(), ApiErr> {
        let lock = self.lock(app);
        let _held = lock.lock().await;
        self.reroute_held_locked(app).await
    }

    /// [`Endpoints::reroute_held`] for a caller that holds `app`'s lock.
    pub async fn reroute_held_locked(&self, app: &str) -> Result<(), ApiErr> {
        let state = self.store.read()?;
        let Some(rec) = state.apps.get(app) else {
            return Ok(());
        };
        // Never onto a read-only database: then it resumes where it routes.
        let db = main_database(&state, rec).filter(|d| routable(d));
        let spec = db.and_then(|db| endpoint_spec(&state, rec, db));
        let running = self.is_running(rec).await;
        if let (Some(spec), Some(db), Some(ep), true) = (spec, db, &rec.endpoint, running) {
            let rewrite = ep.applied.as_deref() != Some(db.id.as_str());
            self.agent_of(ep)?.endpoint_route(&spec, rewrite).await?;
        }
        let db_id = db.map(|d| d.id.clone());
        self.store.update(|state| {
            if let Some(e) = state.apps.get_mut(app).and_then(|a| a.endpoint.as_mut()) {
                if db_id.is_some() {
                    e.applied = db_id.clone();
                }
                e.held_by = None;
            }
            Ok(())
        })?;
        Ok(())
    }
}
