//! A changeover interrupted by a control plane that died (or a task that
//! ended) while it held the app's endpoint: what to do with it at the next
//! look. Once the catalog records the switch, only forward; before it, the
//! follower itself says whether the promotion happened.

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
}
