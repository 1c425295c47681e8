//! App endpoints: `DATABASE_URL` lists PgBouncers on up to two hosts (a
//! libpq multi-host URL), each run by its host's agent and routing to
//! whichever database is attached as `DATABASE`. Everything here goes
//! through those agents' interface (`AgentCall`), like any other work on a
//! host, and to every endpoint of the app at once. `sync` makes the
//! endpoints match the catalog (start one, or retarget it with PAUSE → new
//! config → RELOAD → RESUME); maintenance mode closes them. One sync at a
//! time per app. An endpoint whose host does not answer is left as it is
//! and brought in line when it answers again.

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

/// The spec of `app`'s endpoint `ep`, routing to `db`.
pub fn endpoint_spec(
    state: &State,
    app: &AppRecord,
    ep: &EndpointRecord,
    db: &DatabaseRecord,
) -> EndpointSpec {
    EndpointSpec {
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
        so_reuseport: false,
    }
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

/// Whether `app`'s endpoint `ep` must be synced: it routes elsewhere than
/// the catalog says (to a database it may route to), or is not running.
pub fn needs_sync(state: &State, app: &AppRecord, ep: &EndpointRecord, running: bool) -> bool {
    let Some(db) = main_database(state, app) else {
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

    /// Whether endpoint `ep` runs (false when its host does not answer).
    pub async fn is_running(&self, ep: &EndpointRecord) -> bool {
        match self.hosts.get(&ep.host) {
            Some(agent) => agent.endpoint_status(&ep.id).await.is_ok_and(|s| s.running),
            None => false,
        }
    }

    /// Runs `work` on each of `eps` whose host answers, all at once; the
    /// others are left out (logged). Answers what each one came to.
    async fn on_each<T, F, Fut>(
        &self,
        app: &str,
        eps: &[EndpointRecord],
        work: F,
    ) -> Vec<(EndpointRecord, Result<T, ApiErr>)>
    where
        F: Fn(crate::hosts::AgentHandle, EndpointRecord) -> Fut,
        Fut: std::future::Future<Output = Result<T, ApiErr>>,
    {
        let runs = eps.iter().filter_map(|ep| match self.hosts.get(&ep.host) {
            Some(agent) => {
                let ep = ep.clone();
                let run = work(agent, ep.clone());
                Some(async move { (ep, run.await) })
            }
            None => {
                tracing::warn!(
                    "{app}: the endpoint on host {} is left as it is: its host does not answer",
                    ep.host
                );
                None
            }
        });
        futures_util::future::join_all(runs).await
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
        let mut todo = Vec::new();
        for ep in &rec.endpoints {
            if !self.hosts.is_up(&ep.host) {
                continue;
            }
            let running = self.is_running(ep).await;
            let applied = ep.applied.as_deref() == Some(db.id.as_str());
            // It becomes the target once it is writable.
            if !read_only && !routable(db) && !applied {
                continue;
            }
            if force || read_only || needs_sync(&state, rec, ep, running) {
                todo.push(ep.clone());
            }
        }
        if todo.is_empty() {
            return Ok(None);
        }
        let retarget = todo
            .iter()
            .any(|e| e.applied.as_deref() != Some(db.id.as_str()));
        if retarget && !read_only && self.seen_in_recovery(db).await {
            return Err(ApiErr::conflict(format!(
                "{} answers as a standby (in recovery); the endpoint keeps its route until it is writable",
                db.color
            )));
        }
        let maintenance = rec.maintenance;
        let done = self
            .on_each(app, &todo, |agent, ep| {
                let spec = endpoint_spec(&state, rec, &ep, db);
                async move {
                    let held = agent.endpoint_apply(&spec).await?;
                    if held.is_none() && maintenance {
                        // A fresh PgBouncer forgets DISABLE: close it again.
                        agent.endpoint_block(&spec.id, &spec.dbname).await?;
                    }
                    Ok(held)
                }
            })
            .await;
        let db_id = db.id.clone();
        let synced: Vec<String> = done
            .iter()
            .filter(|(_, r)| r.is_ok())
            .map(|(ep, _)| ep.host.clone())
            .collect();
        self.store.update(|state| {
            if let Some(a) = state.apps.get_mut(app) {
                for e in a.endpoints.iter_mut().filter(|e| synced.contains(&e.host)) {
                    e.applied = Some(db_id.clone());
                }
            }
            Ok(())
        })?;
        let mut longest: Option<Duration> = None;
        let mut failure = None;
        for (ep, result) in done {
            match result {
                Ok(held) => {
                    let was = ep.applied.as_deref() == Some(db_id.as_str());
                    log_synced(app, &ep, &db.color.to_string(), held, was);
                    longest = longest.max(held);
                }
                Err(e) => {
                    tracing::warn!(
                        "{app}: the endpoint on host {} could not be synced: {e}",
                        ep.host
                    );
                    failure = Some(e);
                }
            }
        }
        match (synced.is_empty(), failure) {
            (true, Some(e)) => Err(e),
            _ => Ok(longest),
        }
    }

    /// Turns maintenance on (new connections refused, open ones closed) or
    /// off for `app`'s endpoints.
    pub async fn set_maintenance(&self, app: &str, on: bool) -> Result<(), ApiErr> {
        let lock = self.lock(app);
        let _held = lock.lock().await;
        let state = self.store.read()?;
        let Some(rec) = state.apps.get(app) else {
            return Ok(());
        };
        let Some(db) = main_database(&state, rec) else {
            return Ok(());
        };
        let dbname = db.database.clone();
        let done = self
            .on_each(app, &rec.endpoints, |agent, ep| {
                let dbname = dbname.clone();
                async move {
                    if !agent.endpoint_status(&ep.id).await.is_ok_and(|s| s.running) {
                        // The next sync starts it, closed if maintenance is on.
                        return Ok(());
                    }
                    if on {
                        agent.endpoint_block(&ep.id, &dbname).await?;
                    } else {
                        agent.endpoint_unblock(&ep.id, &dbname).await?;
                    }
                    Ok(())
                }
            })
            .await;
        first_error(done)
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

/// Logs what a sync did to one endpoint.
fn log_synced(app: &str, ep: &EndpointRecord, color: &str, held: Option<Duration>, was: bool) {
    match (held, was) {
        (None, _) => tracing::info!(
            "{app}: endpoint started on host {} port {}, routing to {color}",
            ep.host,
            ep.port
        ),
        (Some(h), false) => tracing::info!(
            "{app}: endpoint on host {} now routes to {color} (clients held {} ms)",
            ep.host,
            h.as_millis()
        ),
        (Some(_), true) => tracing::info!(
            "{app}: endpoint on host {} has its configuration rewritten",
            ep.host
        ),
    }
}

/// The first failure among `done`, if any (each is logged by its caller).
fn first_error<T>(done: Vec<(EndpointRecord, Result<T, ApiErr>)>) -> Result<(), ApiErr> {
    match done.into_iter().find_map(|(_, r)| r.err()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

impl Endpoints {
    /// The apps whose endpoints route to `db_id` (or are about to).
    pub fn routing_to(state: &State, db_id: &str) -> Vec<String> {
        state
            .apps
            .values()
            .filter(|app| {
                app.has_endpoint()
                    && (app
                        .endpoints
                        .iter()
                        .any(|ep| ep.applied.as_deref() == Some(db_id))
                        || main_database(state, app).is_some_and(|m| m.id == db_id))
            })
            .map(|app| app.name.to_string())
            .collect()
    }

    /// Holds new transactions at `app`'s endpoints for operation `op_id`:
    /// the hold is recorded in the catalog first (so that whatever happens
    /// next, reconciliation resumes an endpoint whose operation ended),
    /// then PAUSE on each at once; past `limit` every connection of one is
    /// ended instead of waiting. Returns whether connections were killed.
    /// An endpoint that does not run, or whose host does not answer, holds
    /// nothing.
    pub async fn hold(&self, app: &str, op_id: &str, limit: Duration) -> Result<bool, ApiErr> {
        let lock = self.lock(app);
        let _held = lock.lock().await;
        let state = self.store.update(|state| {
            if let Some(a) = state.apps.get_mut(app) {
                for ep in &mut a.endpoints {
                    ep.held_by = Some(op_id.to_string());
                }
            }
            Ok(state.clone())
        })?;
        let Some(rec) = state.apps.get(app) else {
            return Ok(false);
        };
        let Some(db) = main_database(&state, rec) else {
            return Ok(false);
        };
        let dbname = db.database.clone();
        let done = self
            .on_each(app, &rec.endpoints, |agent, ep| {
                let dbname = dbname.clone();
                async move {
                    if !agent.endpoint_status(&ep.id).await.is_ok_and(|s| s.running) {
                        return Ok(false);
                    }
                    Ok(agent.endpoint_hold(&ep.id, &dbname, limit).await?)
                }
            })
            .await;
        let mut killed = false;
        let mut failure = None;
        for (ep, r) in done {
            match r {
                Ok(true) => {
                    killed = true;
                    tracing::warn!(
                        "{app}: the endpoint on host {} could not pause within {} ms (a transaction stayed open or a server hung); its connections were ended",
                        ep.host,
                        limit.as_millis()
                    );
                }
                Ok(false) => {}
                Err(e) => failure = Some(e),
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(killed),
        }
    }

    /// Holds new transactions at `app`'s endpoints for a suspicion
    /// (operation `op_id`): recorded first, then PAUSE, which may stay
    /// pending while transactions in flight go on; nothing is killed.
    /// Unless the endpoints are already held by something else.
    pub async fn pause_for(&self, app: &str, op_id: &str, limit: Duration) -> Result<(), ApiErr> {
        let lock = self.lock(app);
        let _held = lock.lock().await;
        let mut taken = false;
        let state = self.store.update(|state| {
            taken = false;
            if let Some(a) = state.apps.get_mut(app) {
                if a.endpoints
                    .iter()
                    .any(|ep| ep.held_by.as_deref().is_some_and(|o| o != op_id))
                {
                    taken = true;
                } else {
                    for ep in &mut a.endpoints {
                        ep.held_by = Some(op_id.to_string());
                    }
                }
            }
            Ok(state.clone())
        })?;
        let Some(rec) = state.apps.get(app) else {
            return Ok(());
        };
        let Some(db) = main_database(&state, rec) else {
            return Ok(());
        };
        // In session pooling a pause ends the sessions: not for a mere
        // suspicion.
        if taken || rec.pool_mode == pgfollow_types::api::PoolMode::Session {
            return Ok(());
        }
        let dbname = db.database.clone();
        let done = self
            .on_each(app, &rec.endpoints, |agent, ep| {
                let dbname = dbname.clone();
                async move {
                    if agent.endpoint_status(&ep.id).await.is_ok_and(|s| s.running) {
                        agent.endpoint_pause_within(&ep.id, &dbname, limit).await?;
                    }
                    Ok(())
                }
            })
            .await;
        first_error(done)
    }

    /// Points `app`'s held endpoints at the database now behind
    /// `DATABASE`, lets transactions through, and clears the hold.
    pub async fn reroute_held(&self, app: &str) -> Result<(), ApiErr> {
        let lock = self.lock(app);
        let _held = lock.lock().await;
        self.reroute_held_locked(app).await
    }

    /// [`Endpoints::reroute_held`] for a caller that holds `app`'s lock.
    /// The hold is cleared on every endpoint: one whose host did not
    /// answer is brought in line by reconciliation when it does.
    pub async fn reroute_held_locked(&self, app: &str) -> Result<(), ApiErr> {
        let state = self.store.read()?;
        let Some(rec) = state.apps.get(app) else {
            return Ok(());
        };
        // Never onto a read-only database: then it resumes where it routes.
        let db = main_database(&state, rec).filter(|d| routable(d));
        let mut routed = Vec::new();
        let mut failure = None;
        if let Some(db) = db {
            let done = self
                .on_each(app, &rec.endpoints, |agent, ep| {
                    let spec = endpoint_spec(&state, rec, &ep, db);
                    async move {
                        if !agent.endpoint_status(&ep.id).await.is_ok_and(|s| s.running) {
                            return Ok(false);
                        }
                        let rewrite = ep.applied.as_deref() != Some(db.id.as_str());
                        agent.endpoint_route(&spec, rewrite).await?;
                        Ok(true)
                    }
                })
                .await;
            for (ep, r) in done {
                match r {
                    Ok(true) => routed.push(ep.host.clone()),
                    Ok(false) => {}
                    Err(e) => failure = Some(e),
                }
            }
        }
        let db_id = db.map(|d| d.id.clone());
        self.store.update(|state| {
            if let Some(a) = state.apps.get_mut(app) {
                for e in &mut a.endpoints {
                    if routed.contains(&e.host) {
                        e.applied = db_id.clone();
                    }
                    e.held_by = None;
                }
            }
            Ok(())
        })?;
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
