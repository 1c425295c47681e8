//! A changeover interrupted by a control plane that died (or a task that
//! ended) while it held the app's endpoint: what to do with it at the next
//! look. Once the catalog records the switch, only forward; before it, the
//! follower itself says whether the promotion happened.

use chrono::{DateTime, Utc};
use pgfollow_types::model::{OperationKind, OperationRecord, State};

/// After a changeover from `old` to `new`: when `new` is on an HA plan and
/// has no standby, `old`'s standby becomes `new`'s (it follows `new` from
/// now on, through a repoint operation with id `repoint_id`), and `old` is
/// marked as having released it. Returns the sentence to log, if anything
/// moved.
pub fn hand_over_standby(
    state: &mut State,
    old: &str,
    new: &str,
    repoint_id: String,
    now: DateTime<Utc>,
) -> Option<String> {
    let o = state.databases.get(old)?;
    let n = state.databases.get(new)?;
    let standby = o.ha_standby.clone()?;
    let has_live = |id: &Option<String>| {
        id.as_ref()
            .and_then(|i| state.databases.get(i))
            .is_some_and(|s| s.is_live())
    };
    if !n.plan.tier.has_ha() || has_live(&n.ha_standby) || !has_live(&Some(standby.clone())) {
        return None;
    }
    let sentence = format!(
        "HA: {}'s standby now follows {} (it replaced {} behind DATABASE_URL)",
        o.color, n.color, o.color
    );
    if let Some(o) = state.databases.get_mut(old) {
        o.ha_standby = None;
        o.ha_released = true;
    }
    if let Some(n) = state.databases.get_mut(new) {
        n.ha_standby = Some(standby.clone());
        n.ha_released = false;
    }
    if let Some(s) = state.databases.get_mut(&standby) {
        s.following = Some(new.to_string());
        s.standby_lag = None;
    }
    let mut op = OperationRecord::new(&repoint_id, OperationKind::Repoint, &standby, now);
    op.subject = Some(new.to_string());
    state.operations.insert(repoint_id, op);
    Some(sentence)
}

/// The step names a changeover records.
pub const CHANGEOVER_SWITCH: &str = "switch";

/// What becomes of an interrupted changeover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeoverRecovery {
    /// The switch is recorded: route the endpoint to the new primary and
    /// resume; the changeover is done.
    Reroute,
    /// The follower was promoted but the switch is not recorded: record
    /// it, then reroute.
    Switch,
    /// Nothing changed hands: the changeover failed, and the endpoint
    /// resumes on the old primary.
    Abort,
    /// The follower cannot be asked yet.
    Wait,
}

/// Decides, from whether the switch is recorded and whether the follower
/// is still in recovery (none when it cannot be asked).
pub fn recover_changeover(switched: bool, target_in_recovery: Option<bool>) -> ChangeoverRecovery {
    match (switched, target_in_recovery) {
        (true, _) => ChangeoverRecovery::Reroute,
        (false, Some(false)) => ChangeoverRecovery::Switch,
        (false, Some(true)) => ChangeoverRecovery::Abort,
        (false, None) => ChangeoverRecovery::Wait,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interrupted_changeover_goes_forward_only_past_the_promotion() {
        use ChangeoverRecovery::*;
        let rows = [
            (true, None, Reroute),
            (true, Some(true), Reroute),
            (true, Some(false), Reroute),
            (false, Some(false), Switch),
            (false, Some(true), Abort),
            (false, None, Wait),
        ];
        for (switched, in_recovery, want) in rows {
            assert_eq!(
                recover_changeover(switched, in_recovery),
                want,
                "switched {switched}, in recovery {in_recovery:?}"
            );
        }
    }

    fn three(new_plan: usize, new_has_standby: bool) -> State {
        use crate::decide::tests::db;
        use pgfollow_types::api::DatabaseState;
        use pgfollow_types::model::Desired;
        use pgfollow_types::plan::builtin_plans;
        let plans = builtin_plans();
        let mut state = State::default();
        let mut old = db(DatabaseState::Available, Desired::Running);
        old.id = "old".into();
        old.ha_standby = Some("sb".into());
        let mut new = db(DatabaseState::Available, Desired::Running);
        new.id = "new".into();
        new.plan = plans[new_plan].clone();
        if new_has_standby {
            new.ha_standby = Some("old".into());
        }
        let mut sb = db(DatabaseState::Available, Desired::Running);
        sb.id = "sb".into();
        sb.following = Some("old".into());
        sb.hidden = true;
        for d in [old, new, sb] {
            state.databases.insert(d.id.clone(), d);
        }
        state
    }

    #[test]
    fn the_standby_of_a_primary_that_stepped_down_moves_to_its_successor() {
        use pgfollow_types::plan::{builtin_plans, Tier};
        let plans = builtin_plans();
        let premium = plans.iter().position(|p| p.tier == Tier::Premium).unwrap();
        let standard = plans.iter().position(|p| p.tier == Tier::Standard).unwrap();
        let mut s = three(premium, false);
        let said = hand_over_standby(&mut s, "old", "new", "op-9".into(), Utc::now());
        assert!(said.is_some());
        assert_eq!(s.databases["sb"].following.as_deref(), Some("new"));
        assert_eq!(s.databases["new"].ha_standby.as_deref(), Some("sb"));
        assert!(s.databases["old"].ha_standby.is_none() && s.databases["old"].ha_released);
        assert_eq!(s.operations["op-9"].kind, OperationKind::Repoint);
        // A successor without HA, or with a standby already, takes nothing.
        for mut s in [three(standard, false), three(premium, true)] {
            let before = s.clone();
            assert!(hand_over_standby(&mut s, "old", "new", "op-9".into(), Utc::now()).is_none());
            assert_eq!(s, before);
        }
    }
}
