//! App endpoints: `DATABASE_URL` points at a PgBouncer on the control
//! plane's host, which routes to whichever database is attached as
//! `DATABASE`. `sync` makes an endpoint match the catalog (start it, or
//! retarget it with PAUSE → new config → RELOAD → RESUME); maintenance mode
//! closes it. One sync at a time per app.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgfollow_agent::{Agent, EndpointSpec, EndpointTarget};
use pgfollow_types::api::PoolMode;
use pgfollow_types::model::{AppRecord, DatabaseRecord, State};

use crate::error::ApiErr;
use crate::provision::host_address;
use crate::store::Store;
use crate::views::MAIN_ATTACHMENT;

/// Client connections one endpoint accepts.
const MAX_CLIENT_CONN: u32 = 1000;

pub struct Endpoints {
    store: Store,
    agent: Arc<Agent>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
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
        pool_mode: match app.pool_mode {
            PoolMode::Transaction => pgfollow_pgbouncer::PoolMode::Transaction,
            PoolMode::Session => pgfollow_pgbouncer::PoolMode::Session,
        },
    })
}

/// Whether `app`'s endpoint must be synced: it routes elsewhere than the
/// catalog says, or is not running.
pub fn needs_sync(state: &State, app: &AppRecord, running: bool) -> bool {
    let (Some(ep), Some(db)) = (&app.endpoint, main_database(state, app)) else {
        return false;
    };
    !running || ep.applied.as_deref() != Some(db.id.as_str())
}

impl Endpoints {
    pub fn new(store: Store, agent: Arc<Agent>) -> Self {
        Self {
            store,
            agent,
            locks: Mutex::default(),
        }
    }

    pub fn agent(&self) -> &Arc<Agent> {
        &self.agent
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

    pub fn is_running(&self, app: &AppRecord) -> bool {
        app.endpoint
            .as_ref()
            .and_then(|ep| self.agent.endpoint_status(&ep.id).ok())
            .is_some_and(|s| s.running)
    }

    /// Makes `app`'s endpoint match the catalog. With `force`, rewrites its
    /// configuration even when it routes to the right database (new
    /// credentials). Returns how long clients were held, if they were.
    pub async fn sync(&self, app: &str, force: bool) -> Result<Option<Duration>, ApiErr> {
        let lock = self.lock(app);
        let _held = lock.lock().await;
        let state = self.store.read()?;
        let Some(rec) = state.apps.get(app) else {
            return Ok(None);
        };
        let Some(db) = main_database(&state, rec) else {
            return Ok(None);
        };
        let running = self.is_running(rec);
        if !force && !needs_sync(&state, rec, running) {
            return Ok(None);
        }
        let Some(spec) = endpoint_spec(&state, rec, db) else {
            return Ok(None);
        };
        let held = self.agent.endpoint_apply(&spec).await?;
        if held.is_none() && rec.maintenance {
            // A fresh PgBouncer forgets DISABLE: close it again.
            self.agent.endpoint_block(&spec.id, &spec.dbname).await?;
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
        if !self.is_running(rec) {
            // The next sync starts it, closed if maintenance is on.
            return Ok(());
        }
        if on {
            self.agent.endpoint_block(&ep.id, &db.database).await?;
        } else {
            self.agent.endpoint_unblock(&ep.id, &db.database).await?;
        }
        Ok(())
    }

    /// Stops and removes an endpoint (its app is gone).
    pub async fn destroy(&self, id: &str) {
        if let Err(e) = self.agent.endpoint_destroy(id).await {
            tracing::warn!("could not remove endpoint {id}: {e}");
        }
    }
}

impl Endpoints {
    /// Holds new transactions at every endpoint that routes to `db_id`
    /// (HA fencing: nothing reaches a lost primary through an endpoint).
    /// Returns the apps whose endpoints were held.
    pub async fn hold_routes_to(&self, db_id: &str) -> Vec<String> {
        let Ok(state) = self.store.read() else {
            return Vec::new();
        };
        let mut held = Vec::new();
        for app in state.apps.values() {
            let (Some(ep), Some(db)) = (&app.endpoint, main_database(&state, app)) else {
                continue;
            };
            if ep.applied.as_deref() != Some(db_id) || db.id != db_id {
                continue;
            }
            match self.agent.endpoint_pause(&ep.id, &db.database).await {
                Ok(()) => held.push(app.name.to_string()),
                Err(e) => tracing::warn!("{}: could not hold the endpoint: {e}", app.name),
            }
        }
        held
    }

    /// Points `app`'s held endpoint at the database now behind
    /// `DATABASE`, then lets transactions through.
    pub async fn reroute_held(&self, app: &str) -> Result<(), ApiErr> {
        let lock = self.lock(app);
        let _held = lock.lock().await;
        let state = self.store.read()?;
        let Some(rec) = state.apps.get(app) else {
            return Ok(());
        };
        let Some(db) = main_database(&state, rec) else {
            return Ok(());
        };
        let Some(spec) = endpoint_spec(&state, rec, db) else {
            return Ok(());
        };
        let ep = self.agent.endpoint(&spec.id)?;
        let fail = |e: pgfollow_pgbouncer::BouncerError| ApiErr::unavailable(e.to_string());
        ep.write_config(&spec).map_err(fail)?;
        let admin = ep.admin().await.map_err(fail)?;
        admin.reload().await.map_err(fail)?;
        admin.resume(&spec.dbname).await.map_err(fail)?;
        let db_id = db.id.clone();
        self.store.update(|state| {
            if let Some(e) = state.apps.get_mut(app).and_then(|a| a.endpoint.as_mut()) {
                e.applied = Some(db_id.clone());
            }
            Ok(())
        })?;
        Ok(())
    }
}
