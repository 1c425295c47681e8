//! A reference for (c): the same exact count pgfollow makes (commit records
//! between the follower's replay position and the leader's flush position,
//! with `pg_walinspect`'s `pg_get_wal_stats`), but over two connections
//! opened once and kept, read one right after the other. Where pgfollow's
//! number is larger, the difference is what its way of measuring adds (the
//! leader commits on while it connects), not replication lag.

use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::time::MissedTickBehavior;
use tokio_postgres::Client;

/// Counts commit records from `$1` to the leader's flush position; 0 when
/// there is no gap (`pg_get_wal_stats` refuses an empty range).
const COUNT_SQL: &str = "SELECT CASE WHEN $1::text::pg_lsn >= pg_current_wal_flush_lsn() THEN 0::int8 \
     ELSE (SELECT coalesce(sum(count), 0)::int8 \
     FROM pg_get_wal_stats($1::text::pg_lsn, pg_current_wal_flush_lsn(), true) \
     WHERE \"resource_manager/record_type\" IN ('Transaction/COMMIT', 'Transaction/COMMIT_PREPARED')) END";

/// Samples every `every` for `length`: commits behind, each.
pub async fn sample(
    leader: &Client,
    follower: &Client,
    every: Duration,
    length: Duration,
) -> anyhow::Result<Vec<u64>> {
    let count = leader
        .prepare(COUNT_SQL)
        .await
        .context("preparing the reference count")?;
    let replay = follower
        .prepare("SELECT pg_last_wal_replay_lsn()::text")
        .await
        .context("preparing the reference replay position")?;
    let deadline = Instant::now() + length;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut out = Vec::new();
    while Instant::now() < deadline {
        tick.tick().await;
        let lsn: Option<String> = follower
            .query_one(&replay, &[])
            .await
            .context("reading the follower's replay position")?
            .try_get(0)?;
        let Some(lsn) = lsn else { continue };
        let n: i64 = leader
            .query_one(&count, &[&lsn])
            .await
            .context("counting commits on the leader")?
            .try_get(0)?;
        out.push(n.max(0) as u64);
    }
    Ok(out)
}
