//! The read endpoint's loop: every [`INTERVAL`] it measures the followers
//! of every app's main database (Behind By, with `lag.rs`), asks
//! `reads.rs` which serve and where each PgBouncer slot routes, and applies
//! that at every place of the read endpoint (one on the host of each of the
//! app's endpoints), through the agent there: start a slot, move it to
//! another follower, or DISABLE + KILL it when no follower serves. A place
//! whose host does not answer keeps what it had until it answers again.
//! The catalog keeps what was applied where and which followers serve (for
//! `pg:info`); it is written only when that changes. Under `serve --etcd`
//! the leading replica runs it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgfollow_types::agent::{EndpointSpec, EndpointTarget};
use pgfollow_types::model::{AppRecord, DatabaseRecord, State};
use pgfollow_types::reads::ReadPlace;
use tokio_util::sync::CancellationToken;

use crate::hosts::{AgentError, AgentHandle, Hosts};
use crate::provision::host_address;
use crate::reads::{
    decide, gone_slots, layout, slot_step, Decision, FollowerSeen, LagSeen, Unmeasured,
};
use crate::reads::{Route, SlotStep, MOVE_HOLD};
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

/// The spec of a slot of `app`'s read endpoint at `place` routing to
/// `target`.
pub fn slot_spec(
    state: &State,
    app: &AppRecord,
    leader: &DatabaseRecord,
    place: &ReadPlace,
    slot: &str,
    target: &DatabaseRecord,
) -> EndpointSpec {
    EndpointSpec {
        id: slot_id(slot),
        listen_addr: host_address(state, &place.host),
        port: place.port,
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
    }
}

pub struct ReadEndpoints {
    store: Store,
    hosts: Hosts,
    /// The last sentence logged per app, so a change is logged once.
    said: Mutex<BTreeMap<String, String>>,
    /// Per app and place (host), what its slots were last written with
    /// besides their route (the owner's password, the pool mode): when it
    /// changes (a rotation, `pg:endpoint:mode`), or is unknown (after a
    /// restart, or a new term of leadership), every slot there is written
    /// again.
    written: Mutex<BTreeMap<(String, String), String>>,
}

/// What a slot's configuration holds besides its route.
fn fingerprint(app: &AppRecord, leader: &DatabaseRecord) -> String {
    format!("{}\n{}", app.pool_mode, leader.owner.password)
}

/// What became of one place in a tick: the slots it has now and where
/// each routes; none when its host did not answer (nothing changed there).
type PlaceOutcome = Option<BTreeMap<String, Option<String>>>;

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
        let leader = crate::endpoints::main_database(state, app);
        let followers = leader
            .map(|l| read_followers(state, &l.id))
            .unwrap_or_default();
        let (Some(leader), false) = (leader, followers.is_empty()) else {
            if app.read.has_slots() {
                self.remove_slots(app).await;
            }
            return;
        };
        let endpoint_hosts: Vec<String> = app.endpoints.iter().map(|e| e.host.clone()).collect();
        let (missing, retiring) = layout(&endpoint_hosts, &app.read.places);
        if !missing.is_empty() {
            self.give_places(app.name.as_str()).await;
            if app.read.places.is_empty() {
                return;
            }
        }
        let seen = self.measure(state, &followers).await;
        let d = decide(
            &seen,
            app.read.limit(),
            &leader.id,
            app.read.fallback_to_leader,
            &app.read.serving,
        );
        self.log_decision(state, app, &d);
        let runs = app.read.places.iter().map(|place| {
            self.apply_place(
                state,
                app,
                leader,
                &d,
                place,
                retiring.contains(&place.host),
            )
        });
        let outcomes = futures_util::future::join_all(runs).await;
        self.record(app, &d, &retiring, outcomes);
    }

    /// Gives the read endpoint a place (a port) on each host of the app's
    /// endpoints that lacks one.
    async fn give_places(&self, app: &str) {
        let offers = self
            .hosts
            .port_offers(crate::provision::OFFERS_PER_HOST)
            .await;
        match self
            .store
            .update(|s| crate::provision::add_read_places(s, app, &offers))
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                "{app}: the read endpoint (DATABASE_FOLLOWER_URL) has {n} more place(s), one beside each endpoint"
            ),
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
                    Ok(Err(e)) => Err(self.whose_silence(f, e.message).await),
                    Err(_) => {
                        let why = format!(
                            "Behind By not measured within {} s",
                            MEASURE_LIMIT.as_secs()
                        );
                        Err(self.whose_silence(f, why).await)
                    }
                }
            } else {
                Err(Unmeasured::Down("not measured".into()))
            };
            FollowerSeen {
                id: f.id.clone(),
                state: f.state,
                lag,
            }
        });
        futures_util::future::join_all(runs).await
    }

    /// Behind By of `f` failed (`why`): asks the follower alone whether it
    /// answers, which makes it the leader that did not.
    async fn whose_silence(&self, f: &DatabaseRecord, why: String) -> Unmeasured {
        let asked = async {
            let agent = self.hosts.agent(&f.host).map_err(|e| e.message)?;
            agent.replay_status(&f.id).await.map_err(|e| e.to_string())
        };
        match tokio::time::timeout(MEASURE_LIMIT, asked).await {
            Ok(Ok(_)) => Unmeasured::LeaderSilent(why),
            Ok(Err(_)) | Err(_) => Unmeasured::Down(why),
        }
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
        let key = format!(
            "{:?} {:?} {:?}",
            d.serving,
            d.unmeasured.keys().collect::<Vec<_>>(),
            d.out.keys().collect::<Vec<_>>()
        );
        let mut said = crate::executor::lock(&self.said);
        if said.get(app.name.as_str()) != Some(&key) {
            said.insert(app.name.to_string(), key);
            tracing::info!("{sentence}");
        }
    }

    /// Makes every slot at `place` route as `d` says and removes the slots
    /// of followers that are gone (every slot, when the place is
    /// `retiring`).
    async fn apply_place(
        &self,
        state: &State,
        app: &AppRecord,
        leader: &DatabaseRecord,
        d: &Decision,
        place: &ReadPlace,
        retiring: bool,
    ) -> PlaceOutcome {
        let name = app.name.to_string();
        let agent = self
            .hosts
            .get(&place.host)
            .filter(|_| self.hosts.is_up(&place.host))?;
        let mut applied = place.applied.clone();
        let key = (name.clone(), place.host.clone());
        let print = fingerprint(app, leader);
        let rewrite = crate::executor::lock(&self.written).get(&key) != Some(&print);
        let mut all_written = true;
        let routes = if retiring {
            BTreeMap::new()
        } else {
            d.routes.clone()
        };
        for (slot, route) in &routes {
            let id = slot_id(slot);
            let running = agent.endpoint_status(&id).await.is_ok_and(|s| s.running);
            let was = place.applied.get(slot);
            let step = slot_step(running, was, route, rewrite);
            if step == SlotStep::Keep {
                continue;
            }
            let target = match route {
                Route::To(db) => state.databases.get(db),
                // A slot started only to refuse routes to its own follower.
                Route::Refuse => state.databases.get(slot),
            };
            let Some(target) = target else {
                continue;
            };
            let spec = slot_spec(state, app, leader, place, slot, target);
            match take_step(&agent, &spec, step).await {
                Ok(()) => {
                    if was != Some(&route.applied()) {
                        let to = match route {
                            Route::To(_) => format!("routes to {}", target.color),
                            Route::Refuse => "refuses connections".into(),
                        };
                        tracing::info!("{name}: read endpoint slot {id} on {} {to}", place.host);
                    }
                    applied.insert(slot.clone(), route.applied());
                }
                Err(e) => {
                    all_written = false;
                    tracing::warn!("{name}: read endpoint slot {id} on {}: {e}", place.host);
                }
            }
        }
        if all_written {
            crate::executor::lock(&self.written).insert(key, print);
        }
        for slot in gone_slots(&applied, &routes) {
            match agent.endpoint_destroy(&slot_id(&slot)).await {
                Ok(()) => {
                    applied.remove(&slot);
                }
                Err(e) => tracing::warn!(
                    "{name}: read endpoint slot {} on {}: {e}",
                    slot_id(&slot),
                    place.host
                ),
            }
        }
        Some(applied)
    }

    /// Records what the places now run (a retiring place whose slots are
    /// all gone is dropped) and which followers serve, when that changed.
    fn record(
        &self,
        app: &AppRecord,
        d: &Decision,
        retiring: &[String],
        outcomes: Vec<PlaceOutcome>,
    ) {
        let name = app.name.to_string();
        let now: BTreeMap<String, BTreeMap<String, Option<String>>> = app
            .read
            .places
            .iter()
            .zip(outcomes)
            .filter_map(|(p, o)| o.map(|applied| (p.host.clone(), applied)))
            .collect();
        let r = &app.read;
        let unchanged = r.places.iter().all(|p| {
            now.get(&p.host)
                .is_none_or(|a| *a == p.applied && !retiring.contains(&p.host))
        });
        if unchanged && d.serving == r.serving && d.out == r.out && d.unmeasured == r.unmeasured {
            return;
        }
        let (serving, out, unmeasured) = (d.serving.clone(), d.out.clone(), d.unmeasured.clone());
        if let Err(e) = self.store.update(|s| {
            if let Some(a) = s.apps.get_mut(app.name.as_str()) {
                for p in &mut a.read.places {
                    if let Some(applied) = now.get(&p.host) {
                        p.applied = applied.clone();
                    }
                }
                a.read
                    .places
                    .retain(|p| !(retiring.contains(&p.host) && p.applied.is_empty()));
                a.read.serving = serving.clone();
                a.read.out = out.clone();
                a.read.unmeasured = unmeasured.clone();
            }
            Ok(())
        }) {
            tracing::warn!("{name}: could not record the read endpoint: {e}");
        }
    }

    /// Stops and removes every slot (the app's followers are gone).
    async fn remove_slots(&self, app: &AppRecord) {
        let mut removed: Vec<(String, String)> = Vec::new();
        for place in &app.read.places {
            let Some(agent) = self.hosts.get(&place.host) else {
                continue;
            };
            for slot in place.applied.keys() {
                if agent.endpoint_destroy(&slot_id(slot)).await.is_ok() {
                    removed.push((place.host.clone(), slot.clone()));
                }
            }
        }
        let _ = self.store.update(|s| {
            if let Some(a) = s.apps.get_mut(app.name.as_str()) {
                for p in &mut a.read.places {
                    p.applied
                        .retain(|k, _| !removed.contains(&(p.host.clone(), k.clone())));
                }
                if !a.read.has_slots() {
                    a.read.serving.clear();
                    a.read.out.clear();
                }
            }
            Ok(())
        });
    }
}

/// Carries out `step` for the slot of `spec`.
async fn take_step(
    agent: &AgentHandle,
    spec: &EndpointSpec,
    step: SlotStep,
) -> Result<(), AgentError> {
    match step {
        SlotStep::Keep => {}
        SlotStep::Apply => {
            agent.endpoint_apply(spec).await?;
        }
        SlotStep::Move { and_apply } => {
            let moved = async {
                agent
                    .endpoint_hold(&spec.id, &spec.dbname, MOVE_HOLD)
                    .await?;
                agent.endpoint_route(spec, true).await.map(|_| ())
            }
            .await;
            if moved.is_err() {
                // Never left paused: clients go on (to the old route) until
                // the next tick tries again.
                let _ = agent.endpoint_resume(&spec.id, &spec.dbname).await;
            }
            moved?;
            if and_apply {
                agent.endpoint_apply(spec).await?;
            }
        }
        SlotStep::ApplyAndUnblock => {
            agent.endpoint_apply(spec).await?;
            agent.endpoint_unblock(&spec.id, &spec.dbname).await?;
        }
        SlotStep::Refuse { apply_first } => {
            if apply_first {
                agent.endpoint_apply(spec).await?;
            }
            agent.endpoint_block(&spec.id, &spec.dbname).await?;
        }
    }
    Ok(())
}

/// The app whose read endpoint `leader_id`'s followers serve: the app
/// that has it as its main database, once its read endpoint has a place.
fn app_reading_from<'a>(state: &'a State, leader_id: &str) -> Option<&'a AppRecord> {
    state.apps.values().find(|a| {
        !a.read.places.is_empty()
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
    let why = match (app.read.out.get(&db.id), app.read.unmeasured.get(&db.id)) {
        (Some(w), _) => Some(w.clone()),
        (None, _) if !serves => Some("not judged yet".into()),
        (None, w) => w.cloned(),
    };
    Some(pgfollow_types::reads::ServesReads { serves, why })
}
