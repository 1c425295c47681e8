//! The HA part of the executor's tick: for every HA primary it logs the
//! planner's verdict (one sentence per kind of verdict), records a failover
//! operation when the verdict says so, probes the primary, measures its
//! standby's lag, keeps its synchronous standby setting current (and lets
//! commits go on without a lost standby unless strict); failover runs are
//! started for active failover operations; primaries without a standby get
//! one; endpoints held by an operation that ended are released.

use std::sync::Arc;

use pgfollow_planner::{ha_verdict, is_suspect, orphaned_holds, sync_suspension, HaVerdict};
use pgfollow_types::api::DatabaseState;
use pgfollow_types::model::{DatabaseRecord, OperationKind, State};
use tokio::task::JoinSet;

use crate::error::ApiErr;
use crate::executor::{lock, Executor};
use crate::failover::Runner;
use crate::ha::{self, SYNC_GRACE};
use crate::provision::{cluster_spec, synchronous_standby};

/// How long one measurement of a standby's lag may take.
const LAG_GLANCE: std::time::Duration = std::time::Duration::from_millis(1000);

/// How long a suspicion's PAUSE is waited for; past it the pause stays
/// pending (new transactions wait) while those in flight go on.
const SUSPECT_PAUSE: std::time::Duration = std::time::Duration::from_millis(200);

impl Executor {
    pub(crate) async fn tick_ha(self: &Arc<Self>, state: &Arc<State>, tasks: &mut JoinSet<()>) {
        self.recover_changeovers(state, tasks);
        self.release_orphaned_holds(state, tasks);
        self.add_missing_standbys(state).await;
        self.clear_stale_sync(state, tasks);
        for (primary, standby) in ha::primaries(state) {
            // Every primary is judged every tick: what measures or
            // configures it runs in tasks of its own, under keys of their
            // own, and never holds the verdict up.
            let key = format!("ha:{}", primary.id);
            if ha::rejoin_hopeless(state, &self.hosts, standby) {
                let ports = self
                    .hosts
                    .port_offers(crate::provision::OFFERS_PER_HOST)
                    .await;
                match ha::replace_standby(
                    &self.store,
                    &self.hosts,
                    &ports,
                    &primary.id,
                    &standby.id,
                ) {
                    Ok(sentence) => tracing::warn!("HA: {sentence}"),
                    Err(e) => {
                        tracing::warn!("HA: cannot build a new standby for {}: {e}", primary.color)
                    }
                }
                self.wake.notify_one();
                continue;
            }
            let o = ha::observe(&self.hosts, &self.ha, primary, standby).await;
            let v = ha_verdict(&o, &ha::limits(self.ha_max_lag_bytes));
            let fresh = self.log_verdict(&key, v.sentence(primary.color.as_str()));
            self.hold_while_suspected(state, primary, &v, is_suspect(&o, ha::SUSPECT_AFTER), tasks);
            match v {
                HaVerdict::Failover(why) => {
                    match ha::begin_failover(&self.store, &primary.id, &why) {
                        Ok(Some(op)) => {
                            tracing::warn!("HA: {}: failover {op} recorded", primary.color);
                            self.wake.notify_one();
                        }
                        Ok(None) => {}
                        Err(e) => tracing::error!(
                            "HA: cannot record the failover of {}: {e}",
                            primary.color
                        ),
                    }
                }
                HaVerdict::Refuse(why) => {
                    if fresh {
                        crate::metrics::record_failover("refused");
                    }
                    if primary.status_detail.as_deref() != Some(why.as_str()) {
                        let id = primary.id.clone();
                        let _ = self.store.update(|s| {
                            if let Some(d) = s.databases.get_mut(&id) {
                                d.status_detail = Some(why.clone());
                            }
                            Ok(())
                        });
                    }
                }
                HaVerdict::Healthy | HaVerdict::Watch(_) => {
                    self.probe(primary, o.running, tasks);
                    if matches!(v, HaVerdict::Healthy) {
                        self.keep_sync(state, primary, standby, tasks);
                    }
                }
            }
        }
    }

    /// While a primary is suspected (not yet failed over), the endpoints
    /// routing to it hold new transactions, so clients wait for the verdict
    /// instead of failing against a dead server; the hold ends when it is
    /// healthy again or the failover is refused, and a failover takes it
    /// over.
    fn hold_while_suspected(
        self: &Arc<Self>,
        state: &State,
        primary: &DatabaseRecord,
        verdict: &HaVerdict,
        suspect: bool,
        tasks: &mut JoinSet<()>,
    ) {
        let held = ha::active_hold(state, &primary.id).is_some();
        let hold = suspect && matches!(verdict, HaVerdict::Watch(_) | HaVerdict::Healthy);
        if held && !hold && !matches!(verdict, HaVerdict::Failover(_)) {
            match ha::end_hold(&self.store, &primary.id) {
                Ok(true) => {
                    tracing::info!(
                        "HA: {} is no longer suspected; its endpoints resume",
                        primary.color
                    );
                    self.wake.notify_one();
                }
                Ok(false) => {}
                Err(e) => tracing::warn!("HA: cannot end the hold of {}: {e}", primary.color),
            }
            return;
        }
        if !hold || held {
            return;
        }
        let why = match verdict {
            HaVerdict::Watch(w) => w.clone(),
            _ => "its host missed heartbeats".to_string(),
        };
        let op = match ha::begin_hold(&self.store, &primary.id, &why) {
            Ok(Some(op)) => op,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!("HA: cannot hold the endpoints of {}: {e}", primary.color);
                return;
            }
        };
        tracing::info!(
            "HA: {} is suspected ({why}); its endpoints hold new transactions until the verdict",
            primary.color
        );
        for app in crate::endpoints::Endpoints::routing_to(state, &primary.id) {
            let me = self.clone();
            let op = op.clone();
            tasks.spawn(async move {
                if let Err(e) = me.endpoints.pause_for(&app, &op, SUSPECT_PAUSE).await {
                    tracing::warn!("{app}: could not hold the endpoint: {e}");
                }
            });
        }
    }

    /// Logs the verdict's sentence once per kind of verdict (the seconds in
    /// it change every tick); whether it was logged now.
    fn log_verdict(&self, key: &str, sentence: Option<String>) -> bool {
        match sentence {
            Some(sentence) => {
                let kind = sentence.split(':').take(2).collect::<String>();
                if lock(&self.last_sentence).get(key) != Some(&kind) {
                    tracing::info!("{sentence}");
                    lock(&self.last_sentence).insert(key.to_string(), kind);
                    return true;
                }
                false
            }
            None => {
                lock(&self.last_sentence).remove(key);
                false
            }
        }
    }

    /// Starts a run of every active failover operation that has none.
    pub(crate) fn run_failovers(self: &Arc<Self>, state: &State, tasks: &mut JoinSet<()>) {
        let ops = state
            .operations
            .values()
            .filter(|o| o.kind == OperationKind::Failover && o.state.is_active());
        for op in ops {
            let key = format!("failover:{}", op.id);
            // Not the primary's key: a step in flight on a lost primary (a
            // start on a dead host) must not hold its failover up; the
            // executor leaves a failing-over primary alone anyway.
            let mut keys = vec![key];
            keys.extend(op.subject.clone());
            let Some(busy) = self.claim(keys) else {
                continue;
            };
            let me = self.clone();
            let (op_id, primary) = (op.id.clone(), op.database.clone());
            tasks.spawn(async move {
                let _busy = busy;
                let runner = Runner {
                    store: &me.store,
                    hosts: &me.hosts,
                    endpoints: &me.endpoints,
                };
                let sentence = runner.run(&op_id).await;
                tracing::warn!("{sentence}");
                me.ha.forget(&primary);
                me.wake.notify_one();
            });
        }
    }

    /// Finishes or undoes every changeover that no task carries out any
    /// more (the control plane that ran it died).
    fn recover_changeovers(self: &Arc<Self>, state: &State, tasks: &mut JoinSet<()>) {
        let ops = state.operations.values().filter(|o| {
            o.kind == OperationKind::Changeover
                && o.state.is_active()
                && !self.endpoints.is_op_running(&o.id)
        });
        for op in ops {
            let Some(busy) = self.claim(vec![format!("changeover:{}", op.id)]) else {
                continue;
            };
            let me = self.clone();
            let op_id = op.id.clone();
            tasks.spawn(async move {
                let _busy = busy;
                match crate::changeover::recover(&me.store, &me.hosts, &me.endpoints, &op_id).await
                {
                    Ok(Some(sentence)) => tracing::warn!("{sentence}"),
                    Ok(None) => {}
                    Err(e) => tracing::warn!("changeover {op_id}: cannot finish it yet: {e}"),
                }
                me.wake.notify_one();
            });
        }
    }

    /// Resumes every endpoint held by an operation that is no longer active.
    fn release_orphaned_holds(self: &Arc<Self>, state: &State, tasks: &mut JoinSet<()>) {
        for app in orphaned_holds(state) {
            let Some(busy) = self.claim(vec![format!("endpoint:{app}")]) else {
                continue;
            };
            let me = self.clone();
            tasks.spawn(async move {
                let _busy = busy;
                match me.endpoints.reroute_held(&app).await {
                    Ok(()) => tracing::warn!(
                        "{app}: its endpoint was held by an operation that has ended; resumed it"
                    ),
                    Err(e) => tracing::warn!("{app}: cannot release its held endpoint: {e}"),
                }
            });
        }
    }

    /// A primary whose configuration still names a synchronous standby it
    /// no longer has (it gave it away, or lost it) stops waiting for it.
    fn clear_stale_sync(self: &Arc<Self>, state: &Arc<State>, tasks: &mut JoinSet<()>) {
        for db in state.databases.values() {
            let stale = db.is_live()
                && !db.is_follower()
                && db.sync_applied.is_some()
                && synchronous_standby(state, db).is_none()
                && db.ha_standby.is_none()
                && self.hosts.is_up(&db.host);
            if !stale {
                continue;
            }
            let Some(busy) = self.claim(vec![format!("sync:{}", db.id)]) else {
                continue;
            };
            let (me, st, d) = (self.clone(), state.clone(), db.clone());
            tasks.spawn(async move {
                let _busy = busy;
                if let Err(e) = me.apply_sync(&st, &d, None).await {
                    tracing::warn!("{}: could not stop waiting for a standby: {e}", d.color);
                }
            });
        }
    }

    /// Gives a standby to every premium or enterprise primary without one.
    async fn add_missing_standbys(&self, state: &State) {
        let mut ports = None;
        for db in state.databases.values() {
            if !ha::lacks_standby(state, db) || self.is_busy(&db.id) {
                continue;
            }
            if ports.is_none() {
                ports = Some(
                    self.hosts
                        .port_offers(crate::provision::OFFERS_PER_HOST)
                        .await,
                );
            }
            let Some(ports) = &ports else { continue };
            match ha::add_standby(&self.store, &self.hosts, ports, &db.id) {
                Ok(sentence) => {
                    tracing::info!("{sentence}");
                    self.wake.notify_one();
                }
                Err(e) => tracing::warn!("HA: cannot build a standby for {}: {e}", db.color),
            }
        }
    }

    /// Asks the primary a query now and then; one that stops answering is
    /// failed over by the verdict once it has been silent long enough.
    fn probe(self: &Arc<Self>, primary: &DatabaseRecord, running: bool, tasks: &mut JoinSet<()>) {
        if !running || !self.ha.probe_due(&primary.id) {
            return;
        }
        let Some(busy) = self.claim(vec![format!("probe:{}", primary.id)]) else {
            return;
        };
        let Some(agent) = self.hosts.get(&primary.host) else {
            return;
        };
        let me = self.clone();
        let p = primary.clone();
        tasks.spawn(async move {
            let _busy = busy;
            let sent = std::time::Instant::now();
            match agent.probe(&p.id).await {
                Ok(probe) => {
                    me.ha.probed(&p.id, sent, true);
                    if probe.timeline.is_some() && probe.timeline != p.timeline {
                        let _ = me.store.update(|s| {
                            if let Some(d) = s.databases.get_mut(&p.id) {
                                d.timeline = probe.timeline;
                            }
                            Ok(())
                        });
                    }
                }
                Err(e) => {
                    tracing::debug!("{}: probe failed: {e}", p.color);
                    me.ha.probed(&p.id, sent, false);
                }
            }
        });
    }

    /// Sync mode: lets commits go on without a standby lost for the grace
    /// (unless strict) and waits again once it is back; names the standby
    /// in the primary's configuration when that differs; measures its lag.
    fn keep_sync(
        self: &Arc<Self>,
        state: &Arc<State>,
        primary: &DatabaseRecord,
        standby: &DatabaseRecord,
        tasks: &mut JoinSet<()>,
    ) {
        if primary.sync {
            let standby_up = self.hosts.is_up(&standby.host);
            let down_for = (!standby_up)
                .then(|| self.hosts.silence(&standby.host))
                .flatten();
            let available = standby_up && standby.state == DatabaseState::Available;
            if let Some(suspend) = sync_suspension(
                primary.sync_strict,
                primary.sync_suspended,
                down_for,
                available,
                SYNC_GRACE,
            ) {
                let id = primary.id.clone();
                if self
                    .store
                    .update(|s| {
                        if let Some(d) = s.databases.get_mut(&id) {
                            d.sync_suspended = suspend;
                        }
                        Ok(())
                    })
                    .is_ok()
                {
                    tracing::warn!(
                        "HA: {}: {}",
                        primary.color,
                        if suspend {
                            "its synchronous standby is lost; commits no longer wait for it"
                        } else {
                            "its synchronous standby is back; commits wait for it again"
                        }
                    );
                    self.wake.notify_one();
                }
                return;
            }
        }
        let want_sync = synchronous_standby(state, primary);
        let me = self.clone();
        let (p, sb, st) = (primary.clone(), standby.clone(), state.clone());
        if want_sync != primary.sync_applied {
            let Some(busy) = self.claim(vec![format!("sync:{}", primary.id)]) else {
                return;
            };
            tasks.spawn(async move {
                let _busy = busy;
                if let Err(e) = me.apply_sync(&st, &p, want_sync).await {
                    tracing::warn!("{}: could not set its synchronous standby: {e}", p.color);
                }
            });
        } else if sb.state == DatabaseState::Available && self.ha.lag_due(&p.id) {
            let Some(busy) = self.claim(vec![format!("lag:{}", primary.id)]) else {
                return;
            };
            tasks.spawn(async move {
                let _busy = busy;
                let measured =
                    tokio::time::timeout(LAG_GLANCE, crate::lag::measure(&me.hosts, &st, &sb))
                        .await;
                if let Ok(Ok(lag)) = measured {
                    if let Err(e) = ha::record_lag(&me.store, &p.id, lag.bytes) {
                        tracing::warn!("{}: cannot record its standby's lag: {e}", p.color);
                    }
                }
            });
        }
    }

    /// Names (or clears) the primary's synchronous standby and reloads it.
    async fn apply_sync(
        &self,
        state: &State,
        primary: &DatabaseRecord,
        want: Option<String>,
    ) -> Result<(), ApiErr> {
        let spec = cluster_spec(state, primary);
        self.hosts.agent(&primary.host)?.set_upstream(&spec).await?;
        tracing::info!(
            "{}: commits {}",
            primary.color,
            if want.is_some() {
                "now wait for its standby (synchronous)"
            } else {
                "no longer wait for a standby"
            }
        );
        let id = primary.id.clone();
        self.store.update(|s| {
            if let Some(d) = s.databases.get_mut(&id) {
                d.sync_applied = want.clone();
            }
            Ok(())
        })
    }
}
