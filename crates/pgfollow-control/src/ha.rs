//! High availability: every premium and enterprise primary has a hidden
//! standby. Each tick the monitor looks at every such primary (its host's
//! heartbeats, whether postgres runs and answers a query, its standby's
//! last time-stamped lag), asks the planner's `ha_verdict`, and on a
//! failover verdict records a failover operation, which the failover
//! runner (`failover.rs`) carries out step by step, fence first. The old
//! primary rejoins as the new standby when its host is back; a primary that
//! has no standby (it became one by a changeover, an unfollow or a
//! promotion) gets one.

use crate::provision::PortOffers;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::Utc;
use pgfollow_planner::{HaLimits, HaObservation};
use pgfollow_types::api::DatabaseState;
use pgfollow_types::model::{DatabaseRecord, LagSample, OperationKind, State};

use crate::error::ApiErr;
use crate::hosts::{Hosts, HOST_LEASE};
use crate::provision::{new_operation, next_operation_id};
use crate::store::Store;

/// Standby lag beyond which a failover is refused (WAL bytes), unless
/// `serve --ha-max-lag-mb` says otherwise.
pub const HA_MAX_LAG_BYTES: u64 = 16 * 1024 * 1024;
/// How long an old primary's host may stay down before a new standby is
/// built elsewhere instead of waiting for it to rejoin.
pub const REJOIN_PATIENCE: Duration = Duration::from_secs(10);
/// How often a healthy standby's lag is measured and recorded.
pub const LAG_EVERY: Duration = Duration::from_millis(1000);
/// A lag measurement older than this does not approve a failover.
pub const LAG_MAX_AGE: Duration = Duration::from_secs(5);
/// How often a primary is asked a query.
pub const PROBE_EVERY: Duration = Duration::from_millis(500);
/// A running primary that has answered no query this long is failed over.
pub const HUNG_AFTER: Duration = Duration::from_secs(3);
/// How long a synchronous primary waits for a lost standby before the
/// control plane tells it to stop waiting (unless strict).
pub const SYNC_GRACE: Duration = HOST_LEASE;

/// The limits the HA verdict is judged by.
pub fn limits(max_lag_bytes: u64) -> HaLimits {
    HaLimits {
        grace: HOST_LEASE,
        hung_after: HUNG_AFTER,
        max_lag_bytes,
        max_lag_age: LAG_MAX_AGE,
    }
}

/// What the monitor remembers between ticks (observations only: what
/// decides a failover is in the catalog).
#[derive(Default)]
pub struct HaMemory {
    /// Database id → failed starts in a row.
    start_failures: Mutex<HashMap<String, u32>>,
    /// Primary id → since when its probes have gone unanswered.
    unanswered_since: Mutex<HashMap<String, Instant>>,
    /// Primary id → when it was last probed / its lag last measured.
    probed_at: Mutex<HashMap<String, Instant>>,
    lag_at: Mutex<HashMap<String, Instant>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn due(map: &Mutex<HashMap<String, Instant>>, id: &str, every: Duration) -> bool {
    let mut m = lock(map);
    if m.get(id).is_some_and(|at| at.elapsed() < every) {
        return false;
    }
    m.insert(id.to_string(), Instant::now());
    true
}

impl HaMemory {
    pub fn start_failed(&self, id: &str, failed: bool) {
        let mut m = lock(&self.start_failures);
        if failed {
            *m.entry(id.to_string()).or_default() += 1;
        } else {
            m.remove(id);
        }
    }

    /// Whether `primary` is due a probe (and, if so, it counts as probed).
    pub fn probe_due(&self, primary: &str) -> bool {
        due(&self.probed_at, primary, PROBE_EVERY)
    }

    /// Whether `primary`'s standby is due a lag measurement.
    pub fn lag_due(&self, primary: &str) -> bool {
        due(&self.lag_at, primary, LAG_EVERY)
    }

    /// Records the outcome of a probe of `primary` that was sent at `sent`.
    pub fn probed(&self, primary: &str, sent: Instant, answered: bool) {
        let mut m = lock(&self.unanswered_since);
        if answered {
            m.remove(primary);
        } else {
            m.entry(primary.to_string()).or_insert(sent);
        }
    }

    fn unresponsive_for(&self, primary: &str) -> Option<Duration> {
        lock(&self.unanswered_since)
            .get(primary)
            .map(|at| at.elapsed())
    }

    /// Forgets what was seen of `primary` (it failed over or is gone).
    pub fn forget(&self, primary: &str) {
        lock(&self.unanswered_since).remove(primary);
        lock(&self.start_failures).remove(primary);
    }
}

/// The HA primaries: live, not followers, with a standby, and no failover
/// under way.
pub fn primaries(state: &State) -> impl Iterator<Item = (&DatabaseRecord, &DatabaseRecord)> {
    state.databases.values().filter_map(|d| {
        let standby = d
            .ha_standby
            .as_ref()
            .and_then(|id| state.databases.get(id))?;
        let failing_over = state.operations.values().any(|o| {
            o.database == d.id && o.kind == OperationKind::Failover && o.state.is_active()
        });
        (d.is_live()
            && !d.is_follower()
            && !failing_over
            && matches!(
                d.state,
                DatabaseState::Available | DatabaseState::Unavailable
            ))
        .then_some((d, standby))
    })
}

/// Looks at one primary (cheap: the agents' heartbeats, `postmaster.pid`,
/// and what earlier probes and measurements found).
pub async fn observe(
    hosts: &Hosts,
    memory: &HaMemory,
    primary: &DatabaseRecord,
    standby: &DatabaseRecord,
) -> HaObservation {
    let silent_for = hosts.silence(&primary.host).unwrap_or(Duration::MAX);
    let host_up = silent_for < HOST_LEASE;
    // A host that has missed heartbeats is not asked (a frozen one would
    // hold the tick for the call's timeout): its silence decides, and
    // whether postgres runs there is taken as unchanged.
    let running = match hosts.get(&primary.host) {
        Some(_) if host_up && silent_for >= SUSPECT_AFTER => true,
        Some(a) if host_up => a.status(&primary.id).await.is_ok_and(|s| s.running),
        _ => false,
    };
    let now = Utc::now();
    let unresponsive_for = memory.unresponsive_for(&primary.id).filter(|_| running);
    // The primary cannot have written anything since it was last seen
    // working: what counts is how much older the measurement is than that.
    let lost_for = if host_up {
        unresponsive_for.unwrap_or_default()
    } else {
        silent_for
    };
    HaObservation {
        host_up,
        silent_for,
        running,
        start_failures: lock(&memory.start_failures)
            .get(&primary.id)
            .copied()
            .unwrap_or(0),
        unresponsive_for,
        standby_ready: standby.is_live() && standby.state == DatabaseState::Available,
        standby_lag: primary.standby_lag.map(|s| {
            let age = (now - s.measured_at).to_std().unwrap_or(Duration::ZERO);
            (s.bytes, age.saturating_sub(lost_for))
        }),
    }
}

/// Records `primary`'s standby lag, time-stamped, in the catalog.
pub fn record_lag(store: &Store, primary: &str, bytes: u64) -> Result<(), ApiErr> {
    let sample = LagSample {
        bytes,
        measured_at: Utc::now(),
    };
    store.update(|s| {
        if let Some(d) = s.databases.get_mut(primary) {
            d.standby_lag = Some(sample);
        }
        Ok(())
    })
}

/// A primary silent this long is suspected (two heartbeats missed and a
/// half): its endpoints hold new transactions until the verdict.
pub const SUSPECT_AFTER: Duration = Duration::from_millis(750);

/// The active hold (suspicion) operation of `primary`, if any.
pub fn active_hold<'a>(
    state: &'a State,
    primary: &str,
) -> Option<&'a pgfollow_types::model::OperationRecord> {
    state
        .operations
        .values()
        .find(|o| o.database == primary && o.kind == OperationKind::Hold && o.state.is_active())
}

/// Records a hold operation for a suspected `primary` (none if it has one).
pub fn begin_hold(store: &Store, primary: &str, why: &str) -> Result<Option<String>, ApiErr> {
    store.update(|state| {
        if active_hold(state, primary).is_some() || !state.databases.contains_key(primary) {
            return Ok(None);
        }
        let id = next_operation_id(state);
        let mut op = new_operation(&id, OperationKind::Hold, primary, Utc::now());
        op.reason = Some(why.to_string());
        op.state = pgfollow_types::model::OperationState::Running;
        state.operations.insert(id.clone(), op);
        Ok(Some(id))
    })
}

/// Ends `primary`'s hold: reconciliation then resumes its endpoints.
pub fn end_hold(store: &Store, primary: &str) -> Result<bool, ApiErr> {
    store.update(|state| {
        let Some(id) = active_hold(state, primary).map(|o| o.id.clone()) else {
            return Ok(false);
        };
        if let Some(o) = state.operations.get_mut(&id) {
            o.state = pgfollow_types::model::OperationState::Done;
            o.updated_at = Utc::now();
        }
        Ok(true)
    })
}

/// Records a failover operation for `primary` (once: none if one is under
/// way). The failover runner picks it up. A hold under way is taken over:
/// its endpoints stay held, now by the failover.
pub fn begin_failover(store: &Store, primary: &str, why: &str) -> Result<Option<String>, ApiErr> {
    store.update(|state| {
        let Some(p) = state.databases.get(primary).cloned() else {
            return Ok(None);
        };
        let under_way = state.operations.values().any(|o| {
            o.database == p.id && o.kind == OperationKind::Failover && o.state.is_active()
        });
        let Some(standby) = p.ha_standby.clone().filter(|_| !under_way) else {
            return Ok(None);
        };
        let id = next_operation_id(state);
        let mut op = new_operation(&id, OperationKind::Failover, &p.id, Utc::now());
        op.subject = Some(standby);
        op.reason = Some(why.to_string());
        state.operations.insert(id.clone(), op);
        if let Some(hold) = active_hold(state, &p.id).map(|o| o.id.clone()) {
            if let Some(o) = state.operations.get_mut(&hold) {
                o.state = pgfollow_types::model::OperationState::Done;
                o.last_error = Some(format!("taken over by failover {id}"));
            }
            for app in state.apps.values_mut() {
                if let Some(e) = app.endpoint.as_mut() {
                    if e.held_by.as_deref() == Some(hold.as_str()) {
                        e.held_by = Some(id.clone());
                    }
                }
            }
        }
        Ok(Some(id))
    })
}

/// Whether `db` is a primary that should have an HA standby and has none:
/// a live, available, premium or enterprise database that follows nothing,
/// with no operation under way.
pub fn lacks_standby(state: &State, db: &DatabaseRecord) -> bool {
    db.plan.tier.has_ha()
        && !db.ha_released
        && db.is_live()
        && !db.is_follower()
        && !db.hidden
        && db.state == DatabaseState::Available
        && db
            .ha_standby
            .as_ref()
            .and_then(|id| state.databases.get(id))
            .is_none_or(|s| !s.is_live())
        && !state
            .operations
            .values()
            .any(|o| o.database == db.id && o.state.is_active())
}

/// Adds a hidden standby of `primary` on the best other host up; the host.
fn build_standby(
    state: &mut State,
    hosts: &Hosts,
    ports: &PortOffers,
    primary: &DatabaseRecord,
) -> Result<pgfollow_types::model::HostRecord, ApiErr> {
    let host = crate::provision::choose_host(state, Some(primary), &|h| hosts.is_up(h))?;
    crate::provision::add_database(
        state,
        &crate::provision::NewDatabase {
            app: primary.app.as_str(),
            plan: &primary.plan,
            host: &host,
            ports,
            now: Utc::now(),
            leader: Some(primary),
            sync: false,
            hidden: true,
        },
    )?;
    Ok(host)
}

/// Gives `primary` a new hidden standby on the best other host up.
pub fn add_standby(
    store: &Store,
    hosts: &Hosts,
    ports: &PortOffers,
    primary_id: &str,
) -> Result<String, ApiErr> {
    store.update(|state| {
        let Some(primary) = state.databases.get(primary_id).cloned() else {
            return Err(ApiErr::not_found("the primary vanished"));
        };
        if !lacks_standby(state, &primary) {
            return Ok(format!("{} already has its standby", primary.color));
        }
        let host = build_standby(state, hosts, ports, &primary)?;
        Ok(format!(
            "HA: {} ({} of {}) is a {} primary without a standby; building one on host {}",
            primary.color, primary.name, primary.app, primary.plan.name, host.name
        ))
    })
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
    ports: &PortOffers,
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
        let host = build_standby(state, hosts, ports, &primary)?;
        Ok(format!(
            "{}: its old primary's host is still down after {} s; building a new standby on host {}",
            primary.color,
            REJOIN_PATIENCE.as_secs(),
            host.name
        ))
    })
}
