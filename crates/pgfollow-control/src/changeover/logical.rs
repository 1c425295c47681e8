//! A changeover to a logical follower (a major-version upgrade): the same
//! freeze, catch-up and reroute as any changeover, with two differences.
//! Before anything is touched it refuses what logical replication cannot
//! carry (the planner's `logical_problems`, one line each); and instead of
//! a promotion, the hand-over: every sequence's last value read from the
//! old primary (writes are held, so none moves after) and set on the
//! follower, then its subscription disabled and dropped (the data stays).
//! The old primary is left as a standalone database, no longer followed:
//! its slot and publication go with the unfollow operation the switch
//! records, like after any changeover.

use pgfollow_types::model::DatabaseRecord;

use crate::error::ApiErr;
use crate::hosts::Hosts;

/// Refuses, one line per problem, a changeover to logical follower
/// `target` of `old` that would lose something.
pub(super) async fn check(
    hosts: &Hosts,
    target: &DatabaseRecord,
    old: &DatabaseRecord,
) -> Result<(), ApiErr> {
    let (leader, follower) = crate::logical::facts(hosts, target, old).await?;
    let problems = pgfollow_planner::logical_problems(
        &leader,
        &follower,
        old.color.as_str(),
        target.color.as_str(),
    );
    if problems.is_empty() {
        return Ok(());
    }
    Err(ApiErr::conflict(format!(
        "{} cannot take over from {} by logical replication; nothing was changed:\n- {}",
        target.color,
        old.color,
        problems.join("\n- ")
    )))
}

/// The hand-over while writes are held; answers the step's detail.
pub(super) async fn hand_over(
    hosts: &Hosts,
    target: &DatabaseRecord,
    old: &DatabaseRecord,
) -> Result<String, ApiErr> {
    let carried = crate::logical::hand_over(hosts, target, Some(old)).await?;
    Ok(format!(
        "{carried} sequence(s) carried over from {}; {}'s subscription is dropped and it is writable",
        old.color, target.color
    ))
}
