//! How far a follower is behind its leader: exact commit records between the
//! follower's replay position and the leader's current WAL position, counted
//! with `pg_walinspect` by the leader's agent, which remembers the count of
//! WAL it read before (`pgfollow_postgres::walcount`), so only the newest
//! segment is read again; and the age of the oldest commit not replayed.

use chrono::Utc;
use pgfollow_types::agent::CommitCount;
use pgfollow_types::api::Lag;
use pgfollow_types::model::{DatabaseRecord, State};
use pgfollow_types::Lsn;

use crate::error::ApiErr;
use crate::hosts::Hosts;

/// Where the leader's WAL is, asked as a count from past its end (which
/// reads no WAL).
pub const PAST_THE_END: Lsn = Lsn(u64::MAX / 2);

/// Measures `follower`'s lag. The follower's replay position and the
/// leader's flush position are read at the same moment (two connections
/// opened side by side), then the commits between the two are counted; so
/// commits the leader makes while the count runs are not counted. The count
/// is exact at any distance; only a first count of much WAL (more than about
/// 2 GB) that runs out of the agent's time budget answers "more than N"
/// (`more_than`), and the next measurement goes on from there. `seconds` is
/// the age of the oldest commit the follower has not replayed (0 when it
/// lacks none).
pub async fn measure(
    hosts: &Hosts,
    state: &State,
    follower: &DatabaseRecord,
) -> Result<Lag, ApiErr> {
    let leader = follower
        .following
        .as_ref()
        .and_then(|id| state.databases.get(id))
        .ok_or_else(|| ApiErr::not_found(format!("{} follows no database", follower.color)))?;
    if follower.logical {
        return measure_logical(hosts, leader, follower).await;
    }
    let (follower_agent, leader_agent) = (hosts.agent(&follower.host)?, hosts.agent(&leader.host)?);
    let (replay, snapshot) = tokio::join!(
        follower_agent.replay_status(&follower.id),
        leader_agent.commits_since(&leader.id, PAST_THE_END, 0),
    );
    let (replay, leader_at) = (replay?, snapshot?.current);
    let from = replay.replay_lsn.or(replay.receive_lsn).ok_or_else(|| {
        ApiErr::unavailable(format!("{} has not replayed any WAL yet", follower.color))
    })?;
    let span = leader_at.bytes_since(from);
    let count = if span == 0 {
        None
    } else {
        Some(leader_agent.commits_since(&leader.id, from, span).await?)
    };
    Ok(Lag {
        commits: count.as_ref().map_or(0, |c| c.commits),
        more_than: count.as_ref().is_some_and(|c| match c.counted_to {
            Some(to) => to < leader_at,
            None => !c.complete,
        }),
        bytes: span,
        seconds: seconds_behind(count.as_ref(), replay.last_replay_unix_ms),
        streaming: replay.streaming,
    })
}

/// [`measure`] of a logical follower: from what it has applied (the
/// `write_lsn` its walsender on the leader last heard, else the slot's
/// `confirmed_flush_lsn`, what it has applied and flushed; both move past
/// WAL with nothing to apply too) to the leader's flush position, both read
/// side by side on the leader, counted the same way as a physical
/// follower's.
async fn measure_logical(
    hosts: &Hosts,
    leader: &DatabaseRecord,
    follower: &DatabaseRecord,
) -> Result<Lag, ApiErr> {
    let leader_agent = hosts.agent(&leader.host)?;
    let slot = crate::logical::replication_name(follower);
    let (status, snapshot) = tokio::join!(
        leader_agent.slot_status(&leader.id, &slot),
        leader_agent.commits_since(&leader.id, PAST_THE_END, 0),
    );
    let (status, leader_at) = (status?, snapshot?.current);
    let status = status.ok_or_else(|| {
        ApiErr::unavailable(format!(
            "{} has no replication slot on {} yet",
            follower.color, leader.color
        ))
    })?;
    let from = status
        .write_lsn
        .max(status.confirmed_flush_lsn)
        .ok_or_else(|| {
            ApiErr::unavailable(format!("{} has not confirmed any WAL yet", follower.color))
        })?;
    let span = leader_at.bytes_since(from);
    let count = if span == 0 {
        None
    } else {
        Some(leader_agent.commits_since(&leader.id, from, span).await?)
    };
    Ok(Lag {
        commits: count.as_ref().map_or(0, |c| c.commits),
        more_than: count.as_ref().is_some_and(|c| match c.counted_to {
            Some(to) => to < leader_at,
            None => !c.complete,
        }),
        bytes: span,
        seconds: seconds_behind(count.as_ref(), None),
        streaming: status.active,
    })
}

/// The age of the oldest commit the follower lacks, as the leader's agent
/// read it from the commit record; from an older agent that does not say,
/// the time since the follower last replayed a commit. 0 when it lacks none.
fn seconds_behind(count: Option<&CommitCount>, last_replay_unix_ms: Option<i64>) -> f64 {
    match count {
        None => 0.0,
        Some(c) if c.commits == 0 => 0.0,
        Some(c) => match (c.oldest_commit_age_ms, last_replay_unix_ms) {
            (Some(age), _) => age as f64 / 1000.0,
            (None, Some(ms)) => ((Utc::now().timestamp_millis() - ms).max(0) as f64) / 1000.0,
            (None, None) => 0.0,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(commits: u64, age: Option<u64>) -> CommitCount {
        CommitCount {
            current: Lsn(100),
            commits,
            complete: true,
            counted_to: Some(Lsn(100)),
            oldest_commit_age_ms: age,
        }
    }

    #[test]
    fn seconds_are_the_age_of_the_oldest_commit_not_replayed() {
        assert_eq!(seconds_behind(None, Some(0)), 0.0);
        assert_eq!(seconds_behind(Some(&count(0, Some(5000))), None), 0.0);
        assert_eq!(seconds_behind(Some(&count(3, Some(2500))), None), 2.5);
        // The agent's age wins over the follower's last replayed commit.
        assert_eq!(seconds_behind(Some(&count(3, Some(2500))), Some(0)), 2.5);
        // An older agent: since the last replayed commit.
        let an_hour_ago = Utc::now().timestamp_millis() - 3_600_000;
        let s = seconds_behind(Some(&count(3, None)), Some(an_hour_ago));
        assert!((3599.0..3700.0).contains(&s), "{s}");
        assert_eq!(seconds_behind(Some(&count(3, None)), None), 0.0);
    }
}
