//! How far a follower is behind its leader: exact commit records between the
//! follower's replay position and the leader's current WAL position, counted
//! with `pg_walinspect` on the leader, bounded in the WAL it reads.

use chrono::Utc;
use pgfollow_types::api::Lag;
use pgfollow_types::model::{DatabaseRecord, State};
use pgfollow_types::Lsn;

use crate::error::ApiErr;
use crate::hosts::Hosts;

/// The most WAL one measurement reads; past it the answer is "more than N
/// commits". 16 MiB is read in a few milliseconds.
pub const MAX_SCAN_BYTES: u64 = 16 * 1024 * 1024;

/// Where the leader's WAL is, asked as a count from past its end (which
/// reads no WAL).
const PAST_THE_END: Lsn = Lsn(u64::MAX / 2);

/// Measures `follower`'s lag. The follower's replay position and the
/// leader's flush position are read at the same moment (two connections
/// opened side by side), then the commits between the two are counted; so
/// commits the leader makes while the count runs are not counted.
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
    let (commits, more_than) = if span == 0 {
        (0, false)
    } else {
        let count = leader_agent
            .commits_since(&leader.id, from, span.min(MAX_SCAN_BYTES))
            .await?;
        (count.commits, span > MAX_SCAN_BYTES)
    };
    let seconds = match (commits, replay.last_replay_unix_ms) {
        (0, _) | (_, None) => 0.0,
        (_, Some(ms)) => ((Utc::now().timestamp_millis() - ms).max(0) as f64) / 1000.0,
    };
    Ok(Lag {
        commits,
        more_than,
        bytes: span,
        seconds,
        streaming: replay.streaming,
    })
}
