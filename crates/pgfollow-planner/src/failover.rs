//! Failover as a handshake, fence first (CloudNativePG's order): hold the
//! endpoints, fence the old primary, promote the standby, confirm it left
//! recovery on a new timeline, move the database's names to it, reroute the
//! endpoints. Each step is recorded in the operation when it is done, so a
//! control plane killed at any point resumes at the step it was on. Before
//! the promotion a failover may give up (nothing changed hands; the held
//! endpoints are released by reconciliation); from the promotion on it only
//! goes forward.

use std::time::Duration;

use chrono::{DateTime, Utc};
use pgfollow_types::agent::Probe;
use pgfollow_types::api::DatabaseState;
use pgfollow_types::model::{OperationKind, OperationRecord, OperationState, State};

/// The steps of a failover, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailoverStep {
    /// Hold new transactions at every endpoint that routes to the old
    /// primary (PAUSE; past a short deadline, end its server connections).
    Hold,
    /// The old primary can take no write: its agent stopped it, or the
    /// agent's self-fence deadline has certainly passed.
    Fence,
    /// End the standby's recovery.
    Promote,
    /// The standby answers out of recovery, on a newer timeline.
    Confirm,
    /// The catalog moves names, colour and attachments to the standby.
    Switch,
    /// The endpoints route to the new primary and let transactions through.
    Reroute,
}

impl FailoverStep {
    pub const ORDER: [FailoverStep; 6] = [
        FailoverStep::Hold,
        FailoverStep::Fence,
        FailoverStep::Promote,
        FailoverStep::Confirm,
        FailoverStep::Switch,
        FailoverStep::Reroute,
    ];

    /// Its name in the operation's list of steps done.
    pub fn as_str(self) -> &'static str {
        match self {
            FailoverStep::Hold => "hold",
            FailoverStep::Fence => "fence",
            FailoverStep::Promote => "promote",
            FailoverStep::Confirm => "confirm",
            FailoverStep::Switch => "switch",
            FailoverStep::Reroute => "reroute",
        }
    }

    fn what(self) -> &'static str {
        match self {
            FailoverStep::Hold => "holding new transactions at its endpoints",
            FailoverStep::Fence => "fencing the old primary",
            FailoverStep::Promote => "promoting the standby",
            FailoverStep::Confirm => "confirming the standby is out of recovery on a new timeline",
            FailoverStep::Switch => "moving the database's names and attachments to the standby",
            FailoverStep::Reroute => "routing the endpoints to the new primary",
        }
    }
}

/// A step before the promotion gives up after failing this many times in
/// a row (about 250 ms apart).
pub const MAX_FAILOVER_TRIES: u32 = 12;

/// What the failover runner does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailoverAction {
    Step(FailoverStep),
    /// Every step is done.
    Finish,
    /// Give up before the promotion (why).
    Abort(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailoverDecision {
    pub action: FailoverAction,
    pub sentence: String,
}

/// The next step of failover `op` of the primary called `color`.
pub fn decide_failover(op: &OperationRecord, color: &str) -> FailoverDecision {
    let next = FailoverStep::ORDER
        .into_iter()
        .find(|s| !op.has_done(s.as_str()));
    let (action, why) = match next {
        None => (
            FailoverAction::Finish,
            "every step is done; the failover is complete".to_string(),
        ),
        Some(step) if before_promotion(step) && op.failures >= MAX_FAILOVER_TRIES => {
            let reason = format!(
                "{} failed {} times ({})",
                step.what(),
                op.failures,
                op.last_error.as_deref().unwrap_or("no reason given")
            );
            (
                FailoverAction::Abort(reason.clone()),
                format!("giving up before the promotion: {reason}; nothing changed hands"),
            )
        }
        Some(step) => (FailoverAction::Step(step), step.what().to_string()),
    };
    FailoverDecision {
        action,
        sentence: format!("HA failover of {color}: {why}"),
    }
}

fn before_promotion(step: FailoverStep) -> bool {
    matches!(
        step,
        FailoverStep::Hold | FailoverStep::Fence | FailoverStep::Promote
    )
}

/// Whether an agent that has been silent for `silent_for` has certainly
/// fenced its primaries by itself: it stops them `self_fence_after` after
/// its last heartbeat was sent, and takes at most `stop_margin` to do so.
pub fn self_fence_is_certain(
    silent_for: Option<Duration>,
    self_fence_after: Duration,
    stop_margin: Duration,
) -> bool {
    silent_for.is_some_and(|s| s >= self_fence_after + stop_margin)
}

/// Whether a probe of the promoted standby shows it out of recovery on a
/// timeline newer than the old primary's (when that one is known).
pub fn is_promoted(probe: &Probe, old_timeline: Option<u32>) -> Result<(), String> {
    if probe.in_recovery {
        return Err("it is still in recovery".into());
    }
    match (probe.timeline, old_timeline) {
        (None, _) => Err("it did not say which timeline it writes on".into()),
        (Some(new), Some(old)) if new <= old => Err(format!(
            "it writes on timeline {new}, not newer than the old primary's {old}"
        )),
        (Some(_), _) => Ok(()),
    }
}

/// The catalog after the switch: the database (its name, colour, creation
/// time, attachments) now lives on the standby's cluster; the old cluster
/// becomes its standby-to-be with a rejoin operation (`rejoin_op`); the
/// other followers of the old primary follow the new one, each with a
/// repoint operation (ids from `next_id`); the old primary's other
/// operations are superseded.
pub fn switch_roles(
    state: &mut State,
    op: &OperationRecord,
    why: &str,
    now: DateTime<Utc>,
    next_id: &mut dyn FnMut(&mut State) -> String,
) -> Result<(), String> {
    let old_id = op.database.clone();
    let new_id = op.subject.clone().ok_or("the failover names no standby")?;
    let (Some(p), Some(s)) = (
        state.databases.get(&old_id).cloned(),
        state.databases.get(&new_id).cloned(),
    ) else {
        return Err("a database vanished during the failover".into());
    };
    if let Some(new) = state.databases.get_mut(&new_id) {
        new.name = p.name.clone();
        new.color = p.color.clone();
        new.following = None;
        new.hidden = false;
        new.ha_standby = Some(p.id.clone());
        new.state = DatabaseState::Available;
        new.status_detail = None;
        new.sync = p.sync;
        new.sync_strict = p.sync_strict;
        new.sync_applied = None;
        new.sync_suspended = false;
        new.standby_lag = None;
        new.created_at = p.created_at;
    }
    if let Some(old) = state.databases.get_mut(&old_id) {
        old.name = s.name.clone();
        old.color = s.color.clone();
        old.following = Some(new_id.clone());
        old.hidden = true;
        old.ha_standby = None;
        old.state = DatabaseState::Preparing;
        old.status_detail = Some(format!(
            "replaced by a failover ({why}); rejoins as the standby when its host is back"
        ));
        old.sync = false;
        old.sync_applied = None;
        old.sync_suspended = false;
        old.standby_lag = None;
    }
    for app in state.apps.values_mut() {
        for id in app.attachments.values_mut() {
            if *id == old_id {
                *id = new_id.clone();
            }
        }
    }
    for other in state.operations.values_mut() {
        if other.database == old_id && other.id != op.id && other.state.is_active() {
            other.state = OperationState::Failed;
            other.last_error = Some("superseded by a failover".into());
        }
    }
    let rejoin_id = next_id(state);
    let mut rejoin = OperationRecord::new(&rejoin_id, OperationKind::Rejoin, &old_id, now);
    rejoin.subject = Some(new_id.clone());
    state.operations.insert(rejoin_id, rejoin);
    let followers: Vec<String> = state
        .databases
        .values()
        .filter(|d| d.following.as_deref() == Some(old_id.as_str()) && d.id != old_id)
        .filter(|d| d.is_live() && !d.hidden)
        .map(|d| d.id.clone())
        .collect();
    for f in followers {
        if let Some(d) = state.databases.get_mut(&f) {
            d.following = Some(new_id.clone());
            d.status_detail = Some("its leader failed over; following the new primary".into());
        }
        let id = next_id(state);
        let mut repoint = OperationRecord::new(&id, OperationKind::Repoint, &f, now);
        repoint.subject = Some(new_id.clone());
        state.operations.insert(id, repoint);
    }
    Ok(())
}

/// Apps whose endpoint is held by an operation that is no longer active
/// (it finished, failed, or vanished): they must be released.
pub fn orphaned_holds(state: &State) -> Vec<String> {
    state
        .apps
        .values()
        .filter(|a| {
            a.endpoints.iter().any(|e| {
                e.held_by.as_ref().is_some_and(|op| {
                    !state
                        .operations
                        .get(op)
                        .is_some_and(|o| o.state.is_active())
                })
            })
        })
        .map(|a| a.name.to_string())
        .collect()
}

/// Whether a synchronous primary should stop waiting for its standby
/// (`Some(true)`), wait again (`Some(false)`), or stay as it is (`None`).
/// A standby down for `grace` is given up unless the mode is strict; one
/// that is available and streaming again is waited for again.
pub fn sync_suspension(
    strict: bool,
    suspended: bool,
    standby_down_for: Option<Duration>,
    standby_available: bool,
    grace: Duration,
) -> Option<bool> {
    match standby_down_for {
        Some(d) if !strict && !suspended && d >= grace => Some(true),
        None if suspended && standby_available => Some(false),
        _ if suspended && strict => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgfollow_types::model::OperationKind;

    fn op(done: &[&str], failures: u32) -> OperationRecord {
        let mut o = OperationRecord::new("op-1", OperationKind::Failover, "db-old", Utc::now());
        o.subject = Some("db-new".into());
        o.done = done.iter().map(|s| s.to_string()).collect();
        o.failures = failures;
        o.last_error = Some("host h2 does not answer".into());
        o
    }

    #[test]
    fn failover_steps_go_in_order_and_give_up_only_before_the_promotion() {
        use FailoverAction::*;
        use FailoverStep::*;
        let rows: &[(&[&str], u32, FailoverAction)] = &[
            (&[], 0, Step(Hold)),
            (&["hold"], 0, Step(Fence)),
            (&["hold"], 3, Step(Fence)),
            (&["hold", "fence"], 0, Step(Promote)),
            (&["hold", "fence", "promote"], 0, Step(Confirm)),
            (&["hold", "fence", "promote"], 50, Step(Confirm)),
            (&["hold", "fence", "promote", "confirm"], 0, Step(Switch)),
            (
                &["hold", "fence", "promote", "confirm", "switch"],
                99,
                Step(Reroute),
            ),
            (
                &["hold", "fence", "promote", "confirm", "switch", "reroute"],
                0,
                Finish,
            ),
        ];
        for (done, failures, want) in rows {
            let d = decide_failover(&op(done, *failures), "WHITE");
            assert_eq!(&d.action, want, "done {done:?}, failures {failures}");
            assert!(
                d.sentence.starts_with("HA failover of WHITE: "),
                "{}",
                d.sentence
            );
        }
        let d = decide_failover(&op(&["hold"], MAX_FAILOVER_TRIES), "WHITE");
        assert!(matches!(d.action, Abort(_)), "{d:?}");
        assert_eq!(
            d.sentence,
            "HA failover of WHITE: giving up before the promotion: fencing the old primary failed 12 times (host h2 does not answer); nothing changed hands"
        );
    }

    #[test]
    fn the_self_fence_is_certain_only_past_its_deadline_and_margin() {
        let (after, margin) = (Duration::from_millis(1000), Duration::from_millis(500));
        let rows = [
            (None, false),
            (Some(Duration::ZERO), false),
            (Some(Duration::from_millis(1499)), false),
            (Some(Duration::from_millis(1500)), true),
            (Some(Duration::from_secs(30)), true),
        ];
        for (silent, want) in rows {
            assert_eq!(
                self_fence_is_certain(silent, after, margin),
                want,
                "{silent:?}"
            );
        }
    }

    #[test]
    fn promotion_is_confirmed_out_of_recovery_on_a_newer_timeline() {
        let p = |in_recovery, timeline| Probe {
            in_recovery,
            timeline,
        };
        assert!(is_promoted(&p(false, Some(2)), Some(1)).is_ok());
        assert!(is_promoted(&p(false, Some(2)), None).is_ok());
        assert_eq!(
            is_promoted(&p(true, None), Some(1)),
            Err("it is still in recovery".into())
        );
        assert_eq!(
            is_promoted(&p(false, Some(1)), Some(1)),
            Err("it writes on timeline 1, not newer than the old primary's 1".into())
        );
        assert!(is_promoted(&p(false, None), Some(1)).is_err());
    }

    #[test]
    fn sync_waiting_is_given_up_after_the_grace_unless_strict_and_comes_back() {
        let g = Duration::from_secs(2);
        let s = |x| Some(Duration::from_millis(x));
        // (strict, suspended, down for, available) -> change
        let rows = [
            (false, false, None, true, None),
            (false, false, s(1999), false, None),
            (false, false, s(2000), false, Some(true)),
            (true, false, s(60_000), false, None),
            (false, true, s(5000), false, None),
            (false, true, None, false, None),
            (false, true, None, true, Some(false)),
            (true, true, s(5000), false, Some(false)),
        ];
        for (strict, suspended, down, available, want) in rows {
            assert_eq!(
                sync_suspension(strict, suspended, down, available, g),
                want,
                "strict {strict} suspended {suspended} down {down:?} available {available}"
            );
        }
    }

    fn catalog() -> State {
        use crate::decide::tests::db;
        use pgfollow_types::model::{AppRecord, Desired, EndpointRecord};
        use pgfollow_types::{AppName, Color};
        let mut state = State::default();
        let mut old = db(DatabaseState::Available, Desired::Running);
        old.id = "db-old".into();
        old.host = "h2".into();
        old.ha_standby = Some("db-new".into());
        old.sync = true;
        let mut new = db(DatabaseState::Available, Desired::Running);
        new.id = "db-new".into();
        new.name = "postgresql-hidden-1".into();
        new.color = Color::parse("AMBER").unwrap();
        new.following = Some("db-old".into());
        new.hidden = true;
        let mut other = db(DatabaseState::Available, Desired::Running);
        other.id = "db-f".into();
        other.color = Color::parse("CHARCOAL").unwrap();
        other.following = Some("db-old".into());
        for d in [old, new, other] {
            state.databases.insert(d.id.clone(), d);
        }
        let mut app = AppRecord {
            name: AppName::parse("sushi").unwrap(),
            created_at: Utc::now(),
            config: Default::default(),
            attachments: Default::default(),
            endpoints: vec![EndpointRecord {
                id: "ep-sushi".into(),
                host: "local".into(),
                port: 6432,
                applied: Some("db-old".into()),
                held_by: Some("op-1".into()),
            }],
            maintenance: false,
            pool_mode: Default::default(),
            read: Default::default(),
        };
        app.attachments.insert("DATABASE".into(), "db-old".into());
        app.attachments
            .insert("PGFOLLOW_POSTGRESQL_WHITE".into(), "db-old".into());
        state.apps.insert("sushi".into(), app);
        state
    }

    #[test]
    fn the_switch_moves_the_database_to_the_standby_and_repoints_the_others() {
        let mut state = catalog();
        let failover = op(&["hold", "fence", "promote", "confirm"], 0);
        state
            .operations
            .insert(failover.id.clone(), failover.clone());
        let mut n = 0;
        let mut next_id = |_: &mut State| {
            n += 1;
            format!("op-new-{n}")
        };
        switch_roles(
            &mut state,
            &failover,
            "its host was lost",
            Utc::now(),
            &mut next_id,
        )
        .unwrap();
        let (new, old, f) = (
            &state.databases["db-new"],
            &state.databases["db-old"],
            &state.databases["db-f"],
        );
        assert_eq!(
            (new.color.as_str(), new.hidden, new.following.as_deref()),
            ("WHITE", false, None)
        );
        assert_eq!(new.ha_standby.as_deref(), Some("db-old"));
        assert!(new.sync, "sync mode moves with the database");
        assert_eq!((old.color.as_str(), old.hidden), ("AMBER", true));
        assert_eq!(old.following.as_deref(), Some("db-new"));
        assert_eq!(f.following.as_deref(), Some("db-new"));
        let app = &state.apps["sushi"];
        assert!(app.attachments.values().all(|id| id == "db-new"));
        let rejoin = &state.operations["op-new-1"];
        assert_eq!(
            (rejoin.kind, rejoin.database.as_str()),
            (OperationKind::Rejoin, "db-old")
        );
        let repoint = &state.operations["op-new-2"];
        assert_eq!(
            (repoint.kind, repoint.database.as_str()),
            (OperationKind::Repoint, "db-f")
        );
        assert_eq!(repoint.subject.as_deref(), Some("db-new"));
    }

    #[test]
    fn a_hold_whose_operation_ended_is_orphaned() {
        let mut state = catalog();
        // Held by an operation the catalog does not have.
        assert_eq!(orphaned_holds(&state), vec!["sushi".to_string()]);
        let mut o = op(&[], 0);
        state.operations.insert(o.id.clone(), o.clone());
        assert!(
            orphaned_holds(&state).is_empty(),
            "a pending operation owns it"
        );
        o.state = OperationState::Failed;
        state.operations.insert(o.id.clone(), o);
        assert_eq!(orphaned_holds(&state), vec!["sushi".to_string()]);
    }
}
