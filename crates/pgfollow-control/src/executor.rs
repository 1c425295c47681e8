//! The executor: each tick it reads the state, asks the planner for every
//! database's next step, logs the decision as a sentence, carries the step
//! out through the database's agent and records the result. Steps run
//! concurrently across databases, one at a time per database; every step is
//! idempotent, so a control plane killed at any point resumes where it was.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use pgfollow_planner::{
    decide, follower_fell_off, is_caught_up, reconcile, step_done, Action, Decision, Observed,
    REWIND_FAILED, SLOT_LEFT,
};
use pgfollow_types::api::DatabaseState;
use pgfollow_types::model::{DatabaseRecord, OperationRecord, State};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::endpoints::{main_database, needs_sync, Endpoints};
use crate::error::ApiErr;
use crate::ha::{self, HaMemory};
use crate::hosts::Hosts;
use crate::provision::{cluster_spec, pick_port};
use crate::store::Store;

/// How often the executor looks, when nothing wakes it sooner.
const TICK: Duration = Duration::from_millis(250);
/// How long a database that failed to start waits before the next try.
const RESTART_BACKOFF: Duration = Duration::from_millis(500);
/// A pause between ticks this long means the control plane itself stalled.
const STALL: Duration = Duration::from_millis(1000);
/// How often a follower's slot on its leader is checked.
const FOLLOWER_CHECK_EVERY: Duration = Duration::from_secs(2);
/// How long a follower's check may wait for its leader's answer.
const LEADER_GLANCE: Duration = Duration::from_millis(1000);
/// How long shutdown waits for steps in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

pub struct Executor {
    pub(crate) store: Store,
    pub(crate) hosts: Hosts,
    pub(crate) endpoints: Arc<Endpoints>,
    pub(crate) wake: Arc<Notify>,
    pub(crate) ha: HaMemory,
    pub(crate) ha_max_lag_bytes: u64,
    busy: Arc<Mutex<HashSet<String>>>,
    backoff: Mutex<HashMap<String, Instant>>,
    pub(crate) last_sentence: Mutex<HashMap<String, String>>,
    /// On etcd: whether this replica's leadership is still confirmed; a
    /// tick that finds it is not starts nothing (the process may have been
    /// frozen past its lease and not know it yet).
    still_leads: Option<Arc<dyn Fn() -> bool + Send + Sync>>,
}

/// Keys (database ids, `ha:<id>`, `endpoint:<app>`, ...) that a task is
/// working on; they are free again when the guard is dropped, also when
/// the task panics.
pub(crate) struct Busy {
    set: Arc<Mutex<HashSet<String>>>,
    keys: Vec<String>,
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut set = lock(&self.set);
        for k in &self.keys {
            set.remove(k);
        }
    }
}

impl Executor {
    pub fn new(store: Store, hosts: Hosts, endpoints: Arc<Endpoints>, wake: Arc<Notify>) -> Self {
        Self {
            store,
            hosts,
            endpoints,
            wake,
            ha: HaMemory::default(),
            ha_max_lag_bytes: ha::HA_MAX_LAG_BYTES,
            busy: Arc::default(),
            backoff: Mutex::default(),
            last_sentence: Mutex::default(),
            still_leads: None,
        }
    }

    /// Ticks only while `check` says this replica still leads.
    pub fn with_leadership(mut self, check: Arc<dyn Fn() -> bool + Send + Sync>) -> Self {
        self.still_leads = Some(check);
        self
    }

    /// Refuse failovers to a standby more than `bytes` behind.
    pub fn with_ha_max_lag(mut self, bytes: u64) -> Self {
        self.ha_max_lag_bytes = bytes;
        self
    }

    /// Claims `keys` for a task, unless one of them is taken.
    pub(crate) fn claim(&self, keys: Vec<String>) -> Option<Busy> {
        let mut set = lock(&self.busy);
        if keys.iter().any(|k| set.contains(k)) {
            return None;
        }
        set.extend(keys.iter().cloned());
        Some(Busy {
            set: self.busy.clone(),
            keys,
        })
    }

    pub(crate) fn is_busy(&self, key: &str) -> bool {
        lock(&self.busy).contains(key)
    }

    /// Runs until `cancel`, then waits (bounded) for steps in flight.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let mut tasks = JoinSet::new();
        let mut last_tick = Instant::now();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(TICK) => {}
            }
            while tasks.try_join_next().is_some() {}
            // A control plane that was itself frozen (or starved) has not
            // heard the agents: that is no reason to fail anything over.
            if last_tick.elapsed() > STALL {
                tracing::warn!(
                    "the executor did not run for {:.1} s; giving every host a fresh lease",
                    last_tick.elapsed().as_secs_f64()
                );
                self.hosts.forgive_silence();
            }

            if let Err(e) = self.tick(&mut tasks).await {
                tracing::warn!("executor tick failed: {e}");
            }
            // Measured from the end of a tick: a slow tick is no stall.
            last_tick = Instant::now();
        }
        if tokio::time::timeout(SHUTDOWN_GRACE, async {
            while tasks.join_next().await.is_some() {}
        })
        .await
        .is_err()
        {
            tracing::warn!("steps still running after {SHUTDOWN_GRACE:?}; abandoning them (they resume at the next start)");
            tasks.abort_all();
        }
    }

    async fn tick(self: &Arc<Self>, tasks: &mut JoinSet<()>) -> Result<(), ApiErr> {
        if self.still_leads.as_ref().is_some_and(|leads| !leads()) {
            return Ok(());
        }
        let state = Arc::new(self.store.read()?);
        // Failovers first: their runs claim the primary and the standby
        // before anything else here may touch them.
        self.run_failovers(&state, tasks);
        for db in state.databases.values() {
            if self.is_busy(&db.id) || is_failover_subject(&state, &db.id) {
                continue;
            }
            let op = active_operation(&state, &db.id);
            // A step that just failed is tried again after a pause, not at
            // once (the executor wakes itself after every step).
            if op.is_some() && self.backing_off(&format!("op:{}", db.id)) {
                continue;
            }
            let observed = self.observe(db).await;
            let leader = related_leader(&state, db, op);
            let decision = match &op {
                Some(op) => Some(decide(db, op, &observed, leader)),
                None if self.backing_off(&db.id) => None,
                None => reconcile(db, &observed),
            };
            let Some(decision) = decision else { continue };
            self.log_once(&db.id, &decision);
            if decision.action == Action::Wait {
                continue;
            }
            let Some(busy) = self.claim(vec![db.id.clone()]) else {
                continue;
            };
            let me = self.clone();
            let (db, op, state) = (db.clone(), op.cloned(), state.clone());
            tasks.spawn(async move {
                let _busy = busy;
                me.carry_out(&state, &db, op.as_ref(), decision.action)
                    .await;
                me.wake.notify_one();
            });
        }
        self.tick_endpoints(&state, tasks).await;
        self.tick_ha(&state, tasks).await;
        Ok(())
    }

    /// Starts or retargets every endpoint that does not match the catalog.
    async fn tick_endpoints(self: &Arc<Self>, state: &State, tasks: &mut JoinSet<()>) {
        self.add_missing_endpoints(state).await;
        for app in state.apps.values() {
            let key = format!("endpoint:{}", app.name);
            // A held endpoint is its operation's to release.
            let held = app.endpoints.iter().any(|e| e.held_by.is_some());
            if held || self.is_busy(&key) || self.backing_off(&key) {
                continue;
            }
            let mut stale = false;
            for ep in app
                .endpoints
                .iter()
                .filter(|e| self.hosts.is_answering(&e.host))
            {
                stale = stale || needs_sync(state, app, ep, self.endpoints.is_running(ep).await);
            }
            if !stale {
                continue;
            }
            let Some(busy) = self.claim(vec![key.clone()]) else {
                continue;
            };
            let me = self.clone();
            let name = app.name.to_string();
            tasks.spawn(async move {
                let _busy = busy;
                if let Err(e) = me.endpoints.sync(&name, false).await {
                    tracing::warn!("{name}: endpoint: {e}");
                    lock(&me.backoff).insert(key.clone(), Instant::now() + RESTART_BACKOFF);
                }
            });
        }
    }

    /// Gives each app with endpoints the ones it lacks when a host that is
    /// up has none of them (a second host joined): `DATABASE_URL` then
    /// lists both.
    async fn add_missing_endpoints(&self, state: &State) {
        const KEY: &str = "endpoints:add";
        let up = self.hosts.up();
        let lacking: Vec<String> = state
            .apps
            .values()
            .filter(|a| {
                a.has_endpoint()
                    && a.endpoints.len() < pgfollow_types::model::ENDPOINTS_PER_APP
                    && a.endpoints.iter().all(|e| e.held_by.is_none())
                    && up.iter().any(|h| a.endpoint_on(h).is_none())
            })
            .map(|a| a.name.to_string())
            .collect();
        if lacking.is_empty() || self.backing_off(KEY) {
            return;
        }
        let offers = self
            .hosts
            .port_offers(crate::provision::OFFERS_PER_HOST)
            .await;
        for app in lacking {
            match self
                .store
                .update(|s| crate::provision::add_endpoints(s, &app, &offers))
            {
                Ok(0) => {
                    lock(&self.backoff).insert(KEY.to_string(), Instant::now() + RESTART_BACKOFF);
                }
                Ok(n) => tracing::info!(
                    "{app}: {n} more endpoint(s) on another host; DATABASE_URL lists every one"
                ),
                Err(e) => {
                    tracing::warn!("{app}: cannot add an endpoint on another host: {e}");
                    lock(&self.backoff).insert(KEY.to_string(), Instant::now() + RESTART_BACKOFF);
                }
            }
        }
    }

    async fn observe(&self, db: &DatabaseRecord) -> Observed {
        // A host that has missed heartbeats is not asked (a frozen one
        // would hold the whole tick for the call's timeout): it either
        // answers again soon or is failed over.
        let quiet = !self.hosts.is_answering(&db.host);
        match self.hosts.get(&db.host).filter(|_| !quiet) {
            None => Observed::HostUnreachable(db.host.clone()),
            Some(agent) => match agent.status(&db.id).await {
                Ok(s) => Observed::Cluster(s),
                Err(_) => Observed::HostUnreachable(db.host.clone()),
            },
        }
    }

    fn backing_off(&self, id: &str) -> bool {
        lock(&self.backoff)
            .get(id)
            .is_some_and(|until| Instant::now() < *until)
    }

    fn log_once(&self, id: &str, d: &Decision) {
        let mut last = lock(&self.last_sentence);
        if last.get(id) != Some(&d.sentence) {
            tracing::info!("{}", d.sentence);
            last.insert(id.to_string(), d.sentence.clone());
        }
    }

    async fn carry_out(
        &self,
        state: &State,
        db: &DatabaseRecord,
        op: Option<&OperationRecord>,
        action: Action,
    ) {
        let step = action.step();
        let result = self.act(state, db, op, &action).await;
        if action == Action::CheckFollower {
            lock(&self.backoff).insert(db.id.clone(), Instant::now() + FOLLOWER_CHECK_EVERY);
        }
        let recorded = match (&result, op) {
            (Ok(Outcome::Done), Some(op)) => self.record_success(db, op, &action),
            (Ok(Outcome::NotYet(detail)), Some(_)) => self.record_detail(db, detail),
            (Ok(Outcome::Fallback(step, why)), Some(op)) => {
                tracing::warn!("{} ({}): {why}", db.color, db.name);
                self.record_step(op, step)
            }
            (Ok(Outcome::Broken(reason)), _) => {
                tracing::warn!("{} ({}): {reason}", db.color, db.name);
                self.record_broken(db, reason)
            }
            (Ok(_), None) => {
                if action == Action::Start {
                    self.ha.start_failed(&db.id, false);
                }
                self.record_reconciled(db, &action)
            }
            (Err(e), Some(op)) => {
                tracing::warn!("{} ({}): step {step} failed: {e}", db.color, db.name);
                lock(&self.backoff)
                    .insert(format!("op:{}", db.id), Instant::now() + RESTART_BACKOFF);
                self.record_failure(db, op, &e.message)
            }
            (Err(e), None) => {
                if action == Action::Start {
                    self.ha.start_failed(&db.id, true);
                }
                tracing::warn!("{} ({}): {step} failed: {e}", db.color, db.name);
                lock(&self.backoff).insert(db.id.clone(), Instant::now() + RESTART_BACKOFF);
                self.record_unavailable(db, &e.message)
            }
        };
        if let Err(e) = recorded {
            tracing::warn!("could not record step {step} of {}: {e}", db.name);
        }
    }

    /// Carries one step out through the agents.
    async fn act(
        &self,
        state: &State,
        db: &DatabaseRecord,
        op: Option<&OperationRecord>,
        action: &Action,
    ) -> Result<Outcome, ApiErr> {
        // What only changes the catalog needs no agent (its host may be gone).
        if matches!(
            action,
            Action::Forget
                | Action::Cancel
                | Action::Wait
                | Action::CommitPassword
                | Action::GiveUp(_)
        ) {
            return Ok(Outcome::Done);
        }
        let agent = self.hosts.agent(&db.host)?;
        let spec = cluster_spec(state, db);
        let leader = related_leader(state, db, op);
        match action {
            Action::Initialize => agent.initialize(&spec).await?,
            Action::Start => {
                if let Err(e) = agent.start(&spec).await {
                    if let Some(port) = e.port_in_use() {
                        let moved = self.move_port(db).await?;
                        return Err(ApiErr::unavailable(format!(
                            "port {port} was taken by another program; moved the database to port {moved}"
                        )));
                    }
                    return Err(e.into());
                }
            }
            Action::Bootstrap => agent.bootstrap(&spec).await?,
            Action::SealArchive => self.seal_archive(state, db).await?,
            Action::Upgrade | Action::UpgradeDryRun => {
                let op = op.ok_or_else(|| ApiErr::internal("an upgrade without its operation"))?;
                let (major, _) = pgfollow_planner::upgrade_target(op)
                    .ok_or_else(|| ApiErr::bad_request("the upgrade names no version"))?;
                let report = if *action == Action::Upgrade {
                    let ms = agent.upgrade(&db.id, major).await?;
                    format!(
                        "upgraded from PostgreSQL {} to {major}: pg_upgrade took {:.1} s",
                        db.pg_major,
                        ms as f64 / 1000.0
                    )
                } else {
                    let host = crate::provision::host_address(state, &db.host);
                    let r = agent
                        .upgrade_dry_run(&db.id, major, &host, &db.replication)
                        .await?;
                    format!(
                        "a copy of {} upgraded from PostgreSQL {} to {major} in {:.1} s (copying it took {:.1} s more); {} itself was not touched",
                        db.color,
                        db.pg_major,
                        r.upgrade_ms as f64 / 1000.0,
                        r.copy_ms as f64 / 1000.0,
                        db.color
                    )
                };
                tracing::info!("{} ({}): {report}", db.color, db.name);
                let id = op.id.clone();
                self.store.update(|st| {
                    if let Some(o) = st.operations.get_mut(&id) {
                        o.reason = Some(report.clone());
                    }
                    Ok(())
                })?;
            }
            Action::RestoreArchive => {
                let (rollback, archive) = rollback_of(state, db)?;
                agent
                    .archive_restore(&spec, &archive, rollback.target)
                    .await?
            }
            Action::CreateSlot => {
                let l = leader.ok_or_else(|| ApiErr::not_found("its leader is gone"))?;
                self.hosts
                    .agent(&l.host)?
                    .create_slot(&l.id, &db.slot_name())
                    .await?
            }
            Action::BaseBackup => {
                let progress = self.progress_reporter(op);
                agent.basebackup(&spec, progress).await?
            }
            Action::CopySchema => {
                let l = leader.ok_or_else(|| ApiErr::not_found("its leader is gone"))?;
                crate::logical::copy_schema(&self.hosts, state, db, l).await?
            }
            Action::Subscribe => {
                let l = leader.ok_or_else(|| ApiErr::not_found("its leader is gone"))?;
                crate::logical::subscribe(&self.hosts, state, db, l).await?
            }
            Action::CheckCaughtUp => {
                if db.is_logical_follower() {
                    let copying = crate::logical::tables_not_ready(&self.hosts, db).await?;
                    if !copying.is_empty() {
                        return Ok(Outcome::NotYet(format!(
                            "copying the rows of {} table(s) ({})",
                            copying.len(),
                            copying.join(", ")
                        )));
                    }
                }
                // Not being able to measure yet is no failure of the copy.
                let lag = match crate::lag::measure(&self.hosts, state, db).await {
                    Ok(lag) => lag,
                    Err(e) => {
                        return Ok(Outcome::NotYet(format!("cannot measure its lag yet: {e}")))
                    }
                };
                // The caught-up check is a lag measurement too: an HA
                // standby may be failed over to before the monitor's own
                // first measurement.
                if let Some(primary) = db.following.as_ref().filter(|_| db.hidden) {
                    ha::record_lag(&self.store, primary, lag.bytes)?;
                }
                if !is_caught_up(&lag) {
                    return Ok(Outcome::NotYet(format!(
                        "catching up: {} behind",
                        lag.commits_label()
                    )));
                }
            }
            Action::DropSlot => {
                if let Some(l) = leader {
                    let left = || {
                        Outcome::Fallback(
                            SLOT_LEFT,
                            format!(
                                "{}'s host {} does not answer: its slot for this database stays there (WAL it keeps is bounded by the plan)",
                                l.color, l.host
                            ),
                        )
                    };
                    let Some(leader_agent) = self.hosts.get(&l.host) else {
                        return Ok(left());
                    };
                    match leader_agent.drop_slot(&l.id, &db.slot_name()).await {
                        Err(e) if e.is_unreachable() => return Ok(left()),
                        other => other?,
                    }
                    if db.logical && l.is_live() {
                        crate::logical::unpublish(&self.hosts, db, l).await?;
                    }
                }
            }
            Action::CheckFollower => {
                // A follower that left recovery by itself would be a second
                // writable cluster of the data: it is stopped at once.
                // (A logical follower is never in recovery.)
                if !db.logical && agent.probe(&db.id).await.is_ok_and(|p| !p.in_recovery) {
                    agent.fence(&db.id).await?;
                    let why = format!(
                        "it left recovery while it should follow {}: a second writable copy, so it was stopped; destroy it (`pgfollow addons:destroy {} --app {} --confirm {}`) and create a new follower",
                        leader.map_or("its leader", |l| l.color.as_str()),
                        db.color,
                        db.app,
                        db.app
                    );
                    tracing::error!("{} ({}): {why}", db.color, db.name);
                    return Ok(Outcome::Broken(why));
                }
                let Some(l) = leader.filter(|l| l.is_live()) else {
                    return Ok(Outcome::Done);
                };
                // A leader that cannot be asked says nothing about the
                // follower: that is the HA monitor's business.
                let Ok(leader_agent) = self.hosts.agent(&l.host) else {
                    return Ok(Outcome::Done);
                };
                // Briefly: a leader that hangs must not keep this follower
                // (perhaps the standby a failover needs) busy.
                let slot_name = db.slot_name();
                let asked = tokio::time::timeout(
                    LEADER_GLANCE,
                    leader_agent.slot_status(&l.id, &slot_name),
                );
                let Ok(Ok(slot)) = asked.await else {
                    return Ok(Outcome::Done);
                };
                if let Some(why) = follower_fell_off(slot.as_ref()) {
                    return Ok(Outcome::Broken(format!(
                        "{why}. Rebuild it: `pgfollow addons:destroy {color} --app {app} --confirm {app}`, then `pgfollow addons:create {plan} --follow {leader} --app {app}`",
                        color = db.color,
                        app = db.app,
                        plan = db.plan.name,
                        leader = l.color,
                    )));
                }
            }
            Action::Rewind => {
                // A just-promoted source shows its new timeline in its
                // control file only after a checkpoint; without it
                // pg_rewind would find nothing to rewind.
                let l = leader.ok_or_else(|| ApiErr::not_found("its new primary is gone"))?;
                self.hosts.agent(&l.host)?.checkpoint(&l.id).await?;
                if let Err(e) = agent.rewind(&spec).await {
                    return Ok(Outcome::Fallback(
                        REWIND_FAILED,
                        format!("pg_rewind failed ({e}); copying it afresh"),
                    ));
                }
            }
            // A logical follower stops following by its sequences and
            // the end of its subscription.
            Action::Promote if db.logical => {
                crate::logical::hand_over(&self.hosts, db, leader).await?;
            }
            Action::Promote => agent.promote(&db.id).await?,
            Action::Reconfigure => agent.set_upstream(&spec).await?,
            Action::Checkpoint => agent.checkpoint(&db.id).await?,
            Action::DestroyCluster => agent.destroy(&db.id).await?,
            Action::Fail(_) => {
                if let Err(e) = agent.destroy(&db.id).await {
                    tracing::warn!("could not remove the files of failed {}: {e}", db.name);
                }
                if let Some(l) = leader.filter(|l| l.is_live()) {
                    if let Ok(a) = self.hosts.agent(&l.host) {
                        if let Err(e) = a.drop_slot(&l.id, &db.slot_name()).await {
                            tracing::warn!(
                                "could not drop the slot of failed {} on {}: {e}",
                                db.name,
                                l.color
                            );
                        }
                        if db.logical {
                            if let Err(e) = crate::logical::unpublish(&self.hosts, db, l).await {
                                tracing::warn!(
                                    "could not drop the publication of failed {} on {}: {e}",
                                    db.name,
                                    l.color
                                );
                            }
                        }
                    }
                }
            }
            Action::MarkAvailable => {
                // DATABASE_URL must work once the database shows available.
                for app in state.apps.values() {
                    if main_database(state, app).is_some_and(|m| m.id == db.id) {
                        self.endpoints.sync(app.name.as_str(), false).await?;
                    }
                }
            }
            Action::SetPassword => {
                if let Some(role) = &db.pending_owner {
                    agent.set_password(&db.id, role).await?;
                }
            }
            Action::SyncEndpoints => {
                for app in crate::endpoints::sharing_credentials(state, &db.id) {
                    self.endpoints.sync(&app, true).await?;
                }
            }
            Action::Forget
            | Action::Cancel
            | Action::Wait
            | Action::CommitPassword
            | Action::GiveUp(_) => {}
        }
        Ok(Outcome::Done)
    }

    /// Before a rollback restores: the source's archive holds every commit
    /// up to now (when the source still runs; else what was archived is
    /// all there is).
    async fn seal_archive(&self, state: &State, db: &DatabaseRecord) -> Result<(), ApiErr> {
        let (rollback, archive) = rollback_of(state, db)?;
        let source = state
            .databases
            .get(&rollback.source)
            .filter(|s| s.is_live() && !s.is_follower() && s.state == DatabaseState::Available);
        let Some(source) = source else {
            tracing::info!(
                "{} ({}): its source is not running; restoring from what its archive holds",
                db.color,
                db.name
            );
            return Ok(());
        };
        self.hosts
            .agent(&source.host)?
            .archive_seal(&source.id, &archive)
            .await?;
        Ok(())
    }

    /// A callback that records a base backup's progress on the operation,
    /// once per percent.
    fn progress_reporter(
        &self,
        op: Option<&OperationRecord>,
    ) -> impl Fn(u64, u64) + Send + Sync + 'static {
        let store = self.store.clone();
        let op_id = op.map(|o| o.id.clone());
        let last = Arc::new(std::sync::atomic::AtomicU8::new(u8::MAX));
        move |done: u64, total: u64| {
            let Some(op_id) = &op_id else { return };
            let percent = (done.min(total) * 100).checked_div(total).unwrap_or(0) as u8;
            if last.swap(percent, std::sync::atomic::Ordering::Relaxed) == percent {
                return;
            }
            let _ = store.update(|state| {
                if let Some(o) = state.operations.get_mut(op_id) {
                    o.progress_percent = Some(percent);
                    o.updated_at = Utc::now();
                }
                Ok(())
            });
        }
    }

    /// Moves `db` to a port its host's agent offers now.
    async fn move_port(&self, db: &DatabaseRecord) -> Result<u16, ApiErr> {
        let ports: Vec<u16> = self
            .hosts
            .agent(&db.host)?
            .call(pgfollow_types::agent::AgentCall::OfferPorts {
                count: crate::provision::OFFERS_PER_HOST,
            })
            .await?;
        let offers = crate::provision::PortOffers([(db.host.clone(), ports)].into());
        self.store.update(|state| {
            let port = pick_port(state, &offers, &db.host)?;
            if let Some(d) = state.databases.get_mut(&db.id) {
                d.port = port;
            }
            Ok(port)
        })
    }

    fn record_success(
        &self,
        db: &DatabaseRecord,
        op: &OperationRecord,
        action: &Action,
    ) -> Result<(), ApiErr> {
        let now = Utc::now();
        let sentence = self
            .store
            .update(|state| Ok(step_done(state, &db.id, &op.id, action, now)))?;
        if let Some(sentence) = sentence {
            tracing::info!("{sentence}");
        }
        if matches!(action, Action::Bootstrap) {
            self.record_version(db);
        }
        crate::failover::crash_point(&format!("{}:{}", op.kind.as_str(), action.step()));
        Ok(())
    }

    fn record_version(&self, db: &DatabaseRecord) {
        let Some(agent) = self.hosts.get(&db.host) else {
            return;
        };
        let (store, id, database) = (self.store.clone(), db.id.clone(), db.database.clone());
        tokio::spawn(async move {
            if let Ok(stats) = agent.stats(&id, &database).await {
                let _ = store.update(|state| {
                    if let Some(d) = state.databases.get_mut(&id) {
                        d.pg_version = Some(stats.server_version.clone());
                    }
                    Ok(())
                });
            }
        });
    }

    fn record_failure(
        &self,
        db: &DatabaseRecord,
        op: &OperationRecord,
        message: &str,
    ) -> Result<(), ApiErr> {
        let _ = db;
        self.store.update(|state| {
            if let Some(o) = state.operations.get_mut(&op.id) {
                o.failures += 1;
                o.last_error = Some(message.to_string());
                o.updated_at = Utc::now();
            }
            Ok(())
        })
    }

    /// Marks `step` done on `op` without anything else.
    fn record_step(&self, op: &OperationRecord, step: &str) -> Result<(), ApiErr> {
        self.store.update(|state| {
            if let Some(o) = state.operations.get_mut(&op.id) {
                o.done.push(step.to_string());
                o.updated_at = Utc::now();
            }
            Ok(())
        })
    }

    fn record_broken(&self, db: &DatabaseRecord, reason: &str) -> Result<(), ApiErr> {
        self.store.update(|state| {
            if let Some(d) = state.databases.get_mut(&db.id) {
                d.state = DatabaseState::Failed;
                d.status_detail = Some(reason.to_string());
            }
            Ok(())
        })
    }

    fn record_detail(&self, db: &DatabaseRecord, detail: &str) -> Result<(), ApiErr> {
        if db.status_detail.as_deref() == Some(detail) {
            return Ok(());
        }
        self.store.update(|state| {
            if let Some(d) = state.databases.get_mut(&db.id) {
                d.status_detail = Some(detail.to_string());
            }
            Ok(())
        })
    }

    fn record_reconciled(&self, db: &DatabaseRecord, action: &Action) -> Result<(), ApiErr> {
        if *action != Action::MarkAvailable {
            return Ok(());
        }
        self.store.update(|state| {
            if let Some(d) = state.databases.get_mut(&db.id) {
                d.state = DatabaseState::Available;
                d.status_detail = None;
            }
            Ok(())
        })
    }

    fn record_unavailable(&self, db: &DatabaseRecord, message: &str) -> Result<(), ApiErr> {
        self.store.update(|state| {
            if let Some(d) = state.databases.get_mut(&db.id) {
                d.state = DatabaseState::Unavailable;
                d.status_detail = Some(message.to_string());
            }
            Ok(())
        })
    }
}

/// What a step came to.
enum Outcome {
    Done,
    /// Nothing went wrong, but the step is not complete yet (why).
    NotYet(String),
    /// The database can no longer work as it should (why, and what to do).
    Broken(String),
    /// The step could not work; the operation goes on another way, marked
    /// by this step name.
    Fallback(&'static str, String),
}

/// The rollback that makes `db`, and its source's archive.
fn rollback_of(
    state: &State,
    db: &DatabaseRecord,
) -> Result<
    (
        pgfollow_types::archive::RollbackRecord,
        pgfollow_types::archive::ArchiveSpec,
    ),
    ApiErr,
> {
    let r = state
        .rollbacks
        .get(&db.id)
        .ok_or_else(|| ApiErr::not_found("the rollback's record is gone"))?;
    let archive = crate::protection::archive_spec(state, &r.stanza)
        .ok_or_else(|| ApiErr::not_found(format!("the archive {} is gone", r.stanza)))?;
    Ok((r.clone(), archive))
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The leader an operation on `db` concerns: the one an unfollow leaves,
/// else the one `db` follows.
fn related_leader<'a>(
    state: &'a State,
    db: &DatabaseRecord,
    op: Option<&OperationRecord>,
) -> Option<&'a DatabaseRecord> {
    op.and_then(|o| o.subject.as_ref())
        .or(db.following.as_ref())
        .and_then(|id| state.databases.get(id))
}

/// Whether `id` is the standby an active failover promotes: the failover
/// runner alone works on it.
fn is_failover_subject(state: &State, id: &str) -> bool {
    state.operations.values().any(|o| {
        o.kind == pgfollow_types::model::OperationKind::Failover
            && o.state.is_active()
            && o.subject.as_deref() == Some(id)
    })
}

/// The oldest unfinished operation on database `id`.
pub fn active_operation<'a>(state: &'a State, id: &str) -> Option<&'a OperationRecord> {
    state
        .operations
        .values()
        .filter(|o| o.database == id && o.state.is_active())
        .filter(|o| !o.kind.runs_beside())
        .min_by_key(|o| (o.created_at, o.id.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_that_panics_frees_the_keys_it_claimed() {
        let set: Arc<Mutex<HashSet<String>>> = Arc::default();
        let busy = Busy {
            set: set.clone(),
            keys: vec!["db-1".into(), "ha:db-1".into()],
        };
        lock(&set).extend(busy.keys.iter().cloned());
        let task = std::thread::spawn(move || {
            let _busy = busy;
            panic!("a step panicked");
        });
        assert!(task.join().is_err());
        assert!(lock(&set).is_empty(), "keys left behind: {:?}", lock(&set));
    }
}
