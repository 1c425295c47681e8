//! How far a follower is behind its leader: exact commit records between the
//! follower's replay position and the leader's current WAL position, counted
//! with `pg_walinspect` on the leader, bounded in the WAL it reads.

use chrono::Utc;
use pgfollow_types::api::Lag;
use pgfollow_types::model::{DatabaseRecord, State};

use crate::error::ApiErr;
use crate::hosts::Hosts;

/// The most WAL one measurement reads; past it the answer is "more than N
/// commits". 16 MiB is read in a few milliseconds.
pub const MAX_SCAN_BYTES: u64 = 16 * 1024 * 1024;

/// Measures `follower`'s lag. Two round trips: the follower's replay
/// position, then the leader's count from there.
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
    let replay = hosts
        .agent(&follower.host)?
        .replay_status(&follower.id)
        .await?;
    let from = replay.replay_lsn.or(replay.receive_lsn).ok_or_else(|| {
        ApiErr::unavailable(format!("{} has not replayed any WAL yet", follower.color))
    })?;
    let count = hosts
        .agent(&leader.host)?
        .commits_since(&leader.id, from, MAX_SCAN_BYTES)
        .await?;
    let seconds = match (count.commits, replay.last_replay_unix_ms) {
        (0, _) | (_, None) => 0.0,
        (_, Some(ms)) => ((Utc::now().timestamp_millis() - ms).max(0) as f64) / 1000.0,
    };
    Ok(Lag {
        commits: count.commits,
        more_than: !count.complete,
        bytes: count.current.bytes_since(from),
        seconds,
        streaming: replay.streaming,
    })
}
