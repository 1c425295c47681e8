//! The read endpoint's loop: every [`INTERVAL`] it measures the followers
//! of every app's main database (Behind By, with `lag.rs`), asks
//! `reads.rs` which serve and where each PgBouncer slot routes, and applies
//! that through the agent of the endpoint's host (start a slot, retarget it,
//! or DISABLE + KILL it when no follower serves). The catalog keeps what was
//! applied and which followers serve (for `pg:info`); it is written only
//! when that changes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgfollow_types::agent::{EndpointSpec, EndpointTarget};
use pgfollow_types::model::{AppRecord, DatabaseRecord, State};
use tokio_util::sync::CancellationToken;

use crate::hosts::Hosts;
use crate::provision::host_address;
use crate::reads::{decide, Decision, FollowerSeen, LagSeen, Route};
use crate::store::Store;

/// Time between two decisions.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// How long one follower's measurement may take; past it, it counts as down.
const MEASURE_LIMIT: Duration = Duration::from_secs(2);

/// Client connections one slot accepts.
const MAX_CLIENT_CONN: u32 = 1000;

/// The followers that may serve `leader_id`'s reads (HA standbys are
/// hidden and left out), oldest first: one slot each.
pub fn read_followers<'a>(state: &'a State, leader_id: &str) -> Vec<&'a DatabaseRecord> {
    let mut v: Vec<&DatabaseRecord> = state
        .databases
        .values()
        .filter(|d| d.is_live() && !d.hidden && d.following.as_deref() == Some(leader_id))
        .collect();
    v.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    v
}

/// The PgBouncer directory name of the slot of follower `id`.
pub fn slot_id(id: &str) -> String {
    format!("rd-{id}")
}

/// The spec of a slot of `app`'s read endpoint routing to `target`.
pub fn slot_spec(
    state: &State,
    app: &AppRecord,
    leader: &DatabaseRecord,
    slot: &str,
    target: &DatabaseRecord,
) -> Option<EndpointSpec> {
    let (host, port) = (app.read.host.as_ref()?, app.read.port?);
    Some(EndpointSpec {
        id: slot_id(slot),
        listen_addr: host_address(state, host),
        port,
        dbname: leader.database.clone(),
        target: Some(EndpointTarget {
            host: host_address(state, &target.host),
            port: target.port,
            dbname: target.database.clone(),
        }),
        // Followers log in with their leader's role.
        user: leader.owner.name.clone(),
        password: leader.owner.password.clone(),
        pool_size: target.plan.connection_limit.clamp(5, 100),
        max_client_conn: MAX_CLIENT_CONN,
        pool_mode: app.pool_mode,
        so_reuseport: true,
    })
}

pub struct ReadEndpoints {
    store: Store,
    hosts: Hosts,
    /// The last sentence logged per app, so a change is logged once.
    said: Mutex<BTreeMap<String, String>>,
    /// Per app, what its slots were last written with besides their route
    /// (the owner's password, the pool mode): when it changes (a rotation,
    /// `pg:endpoint:mode`), or is unknown (after a restart), every slot is
    /// written again.
    written: Mutex<BTreeMap<String, String>>,
}

/// What a slot's configuration holds besides its route.
fn fingerprint(app: &AppRecord, leader: &DatabaseRecord) -> String {
    format!("{}\n{}", app.pool_mode, leader.owner.password)
}

impl ReadEndpoints {
    pub fn new(store: Store, hosts: Hosts) -> Self {
        Self {
            store,
            hosts,
            said: Mutex::default(),
            written: Mutex::default(),
        }
    }

    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(INTERVAL) => {}
            }
            let Ok(state) = self.store.read() else {
                continue;
            };
            for app in state.apps.values() {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = self.tick_app(&state, app) => {}
                }
            }
        }
    }

    async fn tick_app(&self, state: &State, app: &AppRecord) {
        let name = app.name.to_string();
        let leader = crate::endpoints::main_database(state, app);
        let followers = leader
            .map(|l| read_followers(state, &l.id))
            .unwrap_or_default();
        let (Some(leader), false) = (leader, followers.is_empty()) else {
            if !app.read.applied.is_empty() {
                self.remove_slots(app, &app.read.applied.keys().cloned().collect::<Vec<_>>())
                    .await;
            }
            return;
        };
        if app.read.port.is_none() {
            self.give_port(&name).await;
            return;
        }
        let seen = self.measure(state, &followers).await;
        let d = decide(
            &seen,
            app.read.limit(),
            &leader.id,
            app.read.fallback_to_leader,
        );
        self.log_decision(state, app, &d);
        self.apply(state, app, leader, &d).await;
    }

    /// Gives the read endpoint its port on the host of the app's first
    /// endpoint.
    async fn give_port(&self, app: &str) {
        let offers = self
            .hosts
            .port_offers(crate::provision::OFFERS_PER_HOST)
            .await;
        match self
            .store
            .update(|s| crate::provision::add_read_endpoint(s, app, &offers))
        {
            Ok(true) => {
                tracing::info!("{app}: the read endpoint (DATABASE_FOLLOWER_URL) has its port")
            }
            Ok(false) => {}
            Err(e) => tracing::warn!("{app}: no port for the read endpoint yet: {e}"),
        }
    }

    /// Every follower's Behind By, side by side, each bounded.
    async fn measure(&self, state: &State, followers: &[&DatabaseRecord]) -> Vec<FollowerSeen> {
        let runs = followers.iter().map(|f| async move {
            let lag = if f.state == pgfollow_types::api::DatabaseState::Available {
                match tokio::time::timeout(
                    MEASURE_LIMIT,
                    crate::lag::measure(&self.hosts, state, f),
                )
                .await
                {
                    Ok(Ok(l)) => Ok(LagSeen {
                        commits: l.commits,
                        more_than: l.more_than,
                        seconds: l.seconds,
                    }),
                    Ok(Err(e)) => Err(e.message),
                    Err(_) => Err(format!(
                        "Behind By not measured within {} s",
                        MEASURE_LIMIT.as_secs()
                    )),
                }
            } else {
                Err("not measured".into())
            };
            FollowerSeen {
                id: f.id.clone(),
                state: f.state,
                lag,
            }
        });
        futures_util::future::join_all(runs).await
    }

    fn log_decision(&self, state: &State, app: &AppRecord, d: &Decision) {
        let names = |id: &str| {
            state
                .databases
                .get(id)
                .map_or_else(|| id.to_string(), |db| db.color.to_string())
        };
        let sentence =
            crate::reads::sentence(app.name.as_str(), d, &names, app.read.fallback_to_leader);
        // The same set with other numbers is no news.
        let key = format!("{:?} {:?}", d.serving, d.out.keys().collect::<Vec<_>>());
        let mut said = crate::executor::lock(&self.said);
        if said.get(app.name.as_str()) != Some(&key) {
            said.insert(app.name.to_string(), key);
            tracing::info!("{sentence}");
        }
    }

    /// Makes every slot route as `d` says, removes slots of followers that
    /// are gone, and records the outcome.
    async fn apply(&self, state: &State, app: &AppRecord, leader: &DatabaseRecord, d: &Decision) {
        let name = app.name.to_string();
        let Some(host) = app.read.host.as_deref() else {
            return;
        };
        let Some(agent) = self.hosts.get(host).filter(|_| self.hosts.is_up(host)) else {
            return;
        };
        let mut applied = app.read.applied.clone();
        let print = fingerprint(app, leader);
        let rewrite = crate::executor::lock(&self.written).get(&name) != Some(&print);
        let mut all_written = true;
        for (slot, route) in &d.routes {
            let id = slot_id(slot);
            let running = agent.endpoint_status(&id).await.is_ok_and(|s| s.running);
            let was = app.read.applied.get(slot);
            if running && was == Some(&route.applied()) && !rewrite {
                continue;
            }
            let target = match route {
                Route::To(db) => state.databases.get(db),
                // A slot started only to refuse routes to its own follower.
                Route::Refuse => state.databases.get(slot),
            };
            let Some(spec) = target.and_then(|t| slot_spec(state, app, leader, slot, t)) else {
                continue;
            };
            let done = async {
                match route {
                    Route::To(_) => {
                        agent.endpoint_apply(&spec).await?;
                        if running && was == Some(&None) {
                            agent.endpoint_unblock(&spec.id, &spec.dbname).await?;
                        }
                    }
                    Route::Refuse => {
                        if !running || rewrite {
                            agent.endpoint_apply(&spec).await?;
                        }
                        agent.endpoint_block(&spec.id, &spec.dbname).await?;
                    }
                }
                Ok::<_, crate::hosts::AgentError>(())
            };
            match done.await {
                Ok(()) => {
                    if was != Some(&route.applied()) {
                        let to = match route {
                            Route::To(db) => format!(
                                "routes to {}",
                                state
                                    .databases
                                    .get(db)
                                    .map_or_else(|| db.clone(), |d| d.color.to_string())
                            ),
                            Route::Refuse => "refuses connections".into(),
                        };
                        tracing::info!("{name}: read endpoint slot {id} {to}");
                    }
                    applied.insert(slot.clone(), route.applied());
                }
                Err(e) => {
                    all_written = false;
                    tracing::warn!("{name}: read endpoint slot {id}: {e}");
                }
            }
        }
        if all_written {
            crate::executor::lock(&self.written).insert(name.clone(), print);
        }
        let gone: Vec<String> = applied
            .keys()
            .filter(|s| !d.routes.contains_key(*s))
            .cloned()
            .collect();
        for slot in &gone {
            match agent.endpoint_destroy(&slot_id(slot)).await {
                Ok(()) => {
                    applied.remove(slot);
                }
                Err(e) => tracing::warn!("{name}: read endpoint slot {}: {e}", slot_id(slot)),
            }
        }
        let r = &app.read;
        if applied == r.applied && d.serving == r.serving && d.out == r.out {
            return;
        }
        let (serving, out) = (d.serving.clone(), d.out.clone());
        if let Err(e) = self.store.update(|s| {
            if let Some(a) = s.apps.get_mut(app.name.as_str()) {
                a.read.applied = applied.clone();
                a.read.serving = serving.clone();
                a.read.out = out.clone();
            }
            Ok(())
        }) {
            tracing::warn!("{name}: could not record the read endpoint: {e}");
        }
    }

    /// Stops and removes `slots` (their followers are gone).
    async fn remove_slots(&self, app: &AppRecord, slots: &[String]) {
        let Some(agent) = app.read.host.as_deref().and_then(|h| self.hosts.get(h)) else {
            return;
        };
        let mut removed = Vec::new();
        for slot in slots {
            if agent.endpoint_destroy(&slot_id(slot)).await.is_ok() {
                removed.push(slot.clone());
            }
        }
        let _ = self.store.update(|s| {
            if let Some(a) = s.apps.get_mut(app.name.as_str()) {
                a.read.applied.retain(|k, _| !removed.contains(k));
                if a.read.applied.is_empty() {
                    a.read.serving.clear();
                    a.read.out.clear();
                }
            }
            Ok(())
        });
    }
}

/// The app whose read endpoint `leader_id`'s followers serve: the app
/// that has it as its main database, once its read endpoint has a port.
fn app_reading_from<'a>(state: &'a State, leader_id: &str) -> Option<&'a AppRecord> {
    state.apps.values().find(|a| {
        a.read.port.is_some()
            && crate::endpoints::main_database(state, a).is_some_and(|m| m.id == leader_id)
    })
}

/// `pg:info`'s `Serving reads` of a leader: the colours of the followers
/// serving its app's `DATABASE_FOLLOWER_URL`; none when it has none.
pub fn serving_reads(state: &State, db: &DatabaseRecord) -> Option<Vec<String>> {
    let app = app_reading_from(state, &db.id)?;
    if read_followers(state, &db.id).is_empty() {
        return None;
    }
    let colors: Vec<String> = app
        .read
        .serving
        .iter()
        .filter_map(|id| state.databases.get(id))
        .map(|f| f.color.to_string())
        .collect();
    if colors.is_empty() && app.read.fallback_to_leader {
        return Some(vec![format!(
            "{} (the leader: no follower serves, --fallback-to-leader)",
            db.color
        )]);
    }
    Some(colors)
}

/// `pg:info`'s `Serves reads` of a follower.
pub fn serves_reads(
    state: &State,
    db: &DatabaseRecord,
) -> Option<pgfollow_types::reads::ServesReads> {
    let leader = db.following.as_deref()?;
    if db.hidden {
        return None;
    }
    let app = app_reading_from(state, leader)?;
    let serves = app.read.serving.contains(&db.id);
    let why = match app.read.out.get(&db.id) {
        Some(w) => Some(w.clone()),
        None if !serves => Some("not judged yet".into()),
        None => None,
    };
    Some(pgfollow_types::reads::ServesReads { serves, why })
}
