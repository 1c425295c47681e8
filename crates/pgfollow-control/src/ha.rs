//! High availability: every premium and enterprise primary has a hidden
//! standby. The monitor looks at each such primary every tick; the planner's
//! `ha_verdict` decides; a failover fences the old primary (its endpoints
//! hold new transactions, its agent stops it by itself once it cannot reach
//! the control plane), promotes the standby, moves the database's name,
//! colour and attachments to it, routes the endpoints to it and lets
//! transactions through. The old primary rejoins as the new standby, from a
//! fresh copy, when its host is back.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::Utc;
use pgfollow_planner::{ha_verdict, HaObservation, HaVerdict};
use pgfollow_types::api::DatabaseState;
use pgfollow_types::model::{DatabaseRecord, OperationKind, State};

use crate::endpoints::Endpoints;
use crate::error::ApiErr;
use crate::hosts::{Hosts, HOST_LEASE};
use crate::provision::new_operation;
use crate::store::Store;

/// Standby lag beyond which a failover is refused (WAL bytes), unless
/// `serve --ha-max-lag-mb` says otherwise.
pub const HA_MAX_LAG_BYTES: u64 = 16 * 1024 * 1024;
/// How long an old primary's host may stay down before a new standby is
/// built elsewhere instead of waiting for it to rejoin.
pub const REJOIN_PATIENCE: Duration = Duration::from_secs(10);
/// How often a healthy standby's lag is measured.
const LAG_EVERY: Duration = Duration::from_millis(500);

/// What the monitor remembers between ticks.
#[derive(Default)]
pub struct HaMemory {
    /// Primary id → (when measured, standby lag in bytes).
    lag: Mutex<HashMap<String, (Instant, u64)>>,
    /// Database id → failed starts in a row.
    pub start_failures: Mutex<HashMap<String, u32>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl HaMemory {
    pub fn lag_due(&self, primary: &str) -> bool {
        lock(&self.lag)
            .get(primary)
            .is_none_or(|(at, _)| at.elapsed() >= LAG_EVERY)
    }

    pub fn record_lag(&self, primary: &str, bytes: u64) {
        lock(&self.lag).insert(primary.to_string(), (Instant::now(), bytes));
    }

    pub fn lag(&self, primary: &str) -> Option<u64> {
        lock(&self.lag).get(primary).map(|(_, b)| *b)
    }

    pub fn start_failed(&self, id: &str, failed: bool) {
        let mut m = lock(&self.start_failures);
        if failed {
            *m.entry(id.to_string()).or_default() += 1;
        } else {
            m.remove(id);
        }
    }
}

/// The HA primaries: live, not followers, with a standby.
pub fn primaries(state: &State) -> impl Iterator<Item = (&DatabaseRecord, &DatabaseRecord)> {
    state.databases.values().filter_map(|d| {
        let standby = d
            .ha_standby
            .as_ref()
            .and_then(|id| state.databases.get(id))?;
        (d.is_live()
            && !d.is_follower()
            && matches!(
                d.state,
                DatabaseState::Available | DatabaseState::Unavailable
            ))
        .then_some((d, standby))
    })
}

/// Looks at one primary.
pub async fn observe(
    hosts: &Hosts,
    memory: &HaMemory,
    primary: &DatabaseRecord,
    standby: &DatabaseRecord,
) -> HaObservation {
    let silent_for = hosts.silence(&primary.host).unwrap_or(Duration::MAX);
    let host_up = silent_for < HOST_LEASE;
    let running = match hosts.get(&primary.host) {
        Some(a) if host_up => a.status(&primary.id).await.is_ok_and(|s| s.running),
        _ => false,
    };
    HaObservation {
        host_up,
        silent_for,
        running,
        start_failures: lock(&memory.start_failures)
            .get(&primary.id)
            .copied()
            .unwrap_or(0),
        standby_ready: standby.is_live() && standby.state == DatabaseState::Available,
        standby_lag_bytes: memory.lag(&primary.id),
    }
}

/// The verdict on one observation, with a lag limit of `max_lag_bytes`.
pub fn verdict(o: &HaObservation, max_lag_bytes: u64) -> HaVerdict {
    ha_verdict(o, HOST_LEASE, max_lag_bytes)
}

/// Fails `primary_id` over to its standby. Returns a sentence for the log.
pub async fn failover(
    store: &Store,
    hosts: &Hosts,
    endpoints: &Endpoints,
    primary_id: &str,
    why: &str,
) -> Result<String, ApiErr> {
    let started = Instant::now();
    let state = store.read()?;
    let primary = state
        .databases
        .get(primary_id)
        .ok_or_else(|| ApiErr::not_found("the primary vanished"))?
        .clone();
    let standby = primary
        .ha_standby
        .as_ref()
        .and_then(|id| state.databases.get(id))
        .ok_or_else(|| ApiErr::not_found("the standby vanished"))?
        .clone();

    // Fence: nothing reaches the old primary through an endpoint again.
    let held = endpoints.hold_routes_to(&primary.id).await;
    // Promote the standby.
    if let Err(e) = hosts.agent(&standby.host)?.promote(&standby.id).await {
        for app in &held {
            let _ = endpoints.reroute_held(app).await;
        }
        return Err(ApiErr::unavailable(format!(
            "promoting the standby of {} failed: {e}",
            primary.color
        )));
    }
    // The database (its name, colour and attachments) now lives on the
    // standby's cluster; the old cluster becomes its standby-to-be.
    let now = Utc::now();
    store.update(|state| {
        let (Some(p), Some(s)) = (
            state.databases.get(&primary.id).cloned(),
            state.databases.get(&standby.id).cloned(),
        ) else {
            return Err(ApiErr::not_found("a database vanished during the failover"));
        };
        if let Some(new) = state.databases.get_mut(&s.id) {
            new.name = p.name.clone();
            new.color = p.color.clone();
            new.following = None;
            new.hidden = false;
            new.ha_standby = Some(p.id.clone());
            new.state = DatabaseState::Available;
            new.status_detail = None;
            new.sync = p.sync;
            new.sync_applied = None;
            new.created_at = p.created_at;
        }
        if let Some(old) = state.databases.get_mut(&p.id) {
            old.name = s.name.clone();
            old.color = s.color.clone();
            old.following = Some(s.id.clone());
            old.hidden = true;
            old.ha_standby = None;
            old.state = DatabaseState::Preparing;
            old.status_detail = Some(format!(
                "replaced by a failover ({why}); rejoins as the standby when its host is back"
            ));
            old.sync = false;
            old.sync_applied = None;
        }
        for app in state.apps.values_mut() {
            for id in app.attachments.values_mut() {
                if *id == p.id {
                    *id = s.id.clone();
                }
            }
        }
        for op in state.operations.values_mut() {
            if op.database == p.id && op.state.is_active() {
                op.state = pgfollow_types::model::OperationState::Failed;
                op.last_error = Some("superseded by a failover".into());
            }
        }
        state.next_serial += 1;
        let op_id = format!(
            "op-{:06}-{}",
            state.next_serial,
            hex::encode(rand::random::<[u8; 2]>())
        );
        let mut op = new_operation(&op_id, OperationKind::Rejoin, &p.id, now);
        op.subject = Some(s.id.clone());
        state.operations.insert(op_id, op);
        Ok(())
    })?;
    // Route the endpoints to the new primary and let transactions through.
    for app in &held {
        if let Err(e) = endpoints.reroute_held(app).await {
            tracing::error!("{app}: could not route the endpoint to the new primary: {e}");
        }
    }
    Ok(format!(
        "{} ({} of {}): failed over in {:.0} ms because {why}; now on host {}, the old primary rejoins as its standby",
        primary.color,
        primary.name,
        primary.app,
        started.elapsed().as_secs_f64() * 1000.0,
        standby.host
    ))
}

/// Whether `standby` is an old primary waiting to rejoin whose host has
/// been down past [`REJOIN_PATIENCE`].
pub fn rejoin_hopeless(state: &State, hosts: &Hosts, standby: &DatabaseRecord) -> bool {
    let rejoining = state.operations.values().any(|o| {
        o.database == standby.id && o.kind == OperationKind::Rejoin && o.state.is_active()
    });
    rejoining
        && hosts
            .silence(&standby.host)
            .is_none_or(|s| s >= REJOIN_PATIENCE)
}

/// Gives up on `old` rejoining: it is removed (its files go when its host
/// is back) and `primary` gets a new standby on the best host up.
pub fn replace_standby(
    store: &Store,
    hosts: &Hosts,
    port_range: (u16, u16),
    primary_id: &str,
    old_id: &str,
) -> Result<String, ApiErr> {
    store.update(|state| {
        let primary = state
            .databases
            .get(primary_id)
            .cloned()
            .ok_or_else(|| ApiErr::not_found("the primary vanished"))?;
        crate::provision::remove_database(state, old_id, Utc::now())?;
        let host = crate::provision::choose_host(state, Some(&primary), &|h| hosts.is_up(h))?;
        crate::provision::add_database(
            state,
            &crate::provision::NewDatabase {
                app: primary.app.as_str(),
                plan: &primary.plan,
                host: &host,
                port_range,
                now: Utc::now(),
                leader: Some(&primary),
                sync: false,
                hidden: true,
            },
        )?;
        Ok(format!(
            "{}: its old primary's host is still down after {} s; building a new standby on host {}",
            primary.color,
            REJOIN_PATIENCE.as_secs(),
            host.name
        ))
    })
}
