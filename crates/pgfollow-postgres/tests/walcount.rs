//! The cached commit count against the truth, on a real PostgreSQL leader:
//! tens of thousands of commits spread over several WAL segments (four
//! boundaries crossed amid bare commit records, so commit records cross
//! them), counted from many positions,
//! cold and warm, compared with the number of commits made and with one
//! `pg_get_wal_stats` over the whole range. The oldest commit's age is
//! checked against the time it was made.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use pgfollow_postgres::{Cluster, CommitCache, PgError};
use pgfollow_types::Lsn;
use tempfile::TempDir;

/// The WAL segment size of the clusters the tests make.
const SEGMENT: u64 = pgfollow_postgres::cluster::WAL_SEGMENT_MB as u64 * 1024 * 1024;

struct Leader {
    cluster: Cluster,
    _dir: TempDir,
}

impl Drop for Leader {
    fn drop(&mut self) {
        stop_immediately(&self.cluster);
    }
}

async fn leader() -> Leader {
    let dir = temp_dir();
    let cluster = Cluster::new(dir.path().join("leader"), binaries(), os_user());
    let mut spec = spec(free_port());
    cluster.initialize(&spec).await.unwrap();
    start_on_free_port(&cluster, &mut spec).await;
    cluster.bootstrap(&spec).await.unwrap();
    let su = cluster.connect("postgres").await.unwrap();
    for stmt in [
        "ALTER SYSTEM SET autovacuum = off",
        "SELECT pg_reload_conf()",
        // Keeps the WAL of the test (a follower's slot does the same).
        "SELECT pg_create_physical_replication_slot('hold', true)",
        "CREATE TABLE c (id int8, pad text)",
        // Pads of varying length, so records end at varying places.
        "CREATE PROCEDURE bare(n int) LANGUAGE plpgsql AS $$ BEGIN \
         FOR i IN 1..n LOOP PERFORM txid_current(); COMMIT; END LOOP; END $$",
        "CREATE PROCEDURE many(n int) LANGUAGE plpgsql AS $$ BEGIN \
         FOR i IN 1..n LOOP INSERT INTO c VALUES (i, repeat('y', 200 + (i * 7919) % 1500)); \
         COMMIT; END LOOP; END $$",
    ] {
        su.batch_execute(stmt).await.unwrap();
    }
    Leader { cluster, _dir: dir }
}

async fn flush_lsn(c: &tokio_postgres::Client) -> Lsn {
    lsn(c, "pg_current_wal_flush_lsn()").await
}

/// Where WAL is written: ahead of the flush position while commits are
/// asynchronous.
async fn insert_lsn(c: &tokio_postgres::Client) -> Lsn {
    lsn(c, "pg_current_wal_insert_lsn()").await
}

async fn lsn(c: &tokio_postgres::Client, function: &str) -> Lsn {
    c.query_one(&format!("SELECT {function}::text"), &[])
        .await
        .unwrap()
        .get::<_, String>(0)
        .parse()
        .unwrap()
}

/// One `pg_get_wal_stats` over the whole range: the uncached truth.
async fn truth(c: &tokio_postgres::Client, from: Lsn, to: Lsn) -> u64 {
    let row = c
        .query_one(
            &format!(
                "SELECT coalesce(sum(count), 0)::int8 FROM pg_get_wal_stats('{from}', '{to}', true) \
                 WHERE \"resource_manager/record_type\" IN ('Transaction/COMMIT', 'Transaction/COMMIT_PREPARED')"
            ),
            &[],
        )
        .await
        .unwrap();
    row.get::<_, i64>(0) as u64
}

#[tokio::test]
async fn commits_are_counted_exactly_across_segments_cold_and_warm() {
    let l = leader().await;
    let su = l.cluster.connect("postgres").await.unwrap();
    su.batch_execute("SET synchronous_commit = off")
        .await
        .unwrap();
    let start = flush_lsn(&su).await;
    let made_at = Instant::now();
    // Four segment boundaries, each crossed in the middle of a run of bare
    // commit records (a commit record crosses it unless one ends exactly
    // there), with bulk filler in between; and the positions in between.
    let mut marks = vec![start];
    let mut expected = 0u64;
    for _ in 0..4 {
        for _ in 0..40 {
            let to_boundary = SEGMENT - insert_lsn(&su).await.0 % SEGMENT;
            if to_boundary <= 256 * 1024 {
                break;
            }
            // A row is 1.1 to 2.5 kB of WAL (with a full-page image): from below.
            let rows = (to_boundary - 192 * 1024) / 2500 + 1;
            su.batch_execute(&format!(
                "INSERT INTO c SELECT g, repeat('y', 1000) FROM generate_series(1, {rows}) g"
            ))
            .await
            .unwrap();
            expected += 1;
        }
        let before = insert_lsn(&su).await;
        marks.push(before);
        su.batch_execute("CALL bare(12000)").await.unwrap();
        let after = insert_lsn(&su).await;
        assert_ne!(
            before.0 / SEGMENT,
            after.0 / SEGMENT,
            "bare commits cross a boundary"
        );
        expected += 12000;
        marks.push(after);
        su.batch_execute("CALL many(3000)").await.unwrap();
        expected += 3000;
        marks.push(insert_lsn(&su).await);
    }
    // Flushed: synchronous_commit is off for the load.
    su.batch_execute("SET synchronous_commit = on; INSERT INTO c VALUES (0, 'last')")
        .await
        .unwrap();
    expected += 1;
    let end = flush_lsn(&su).await;
    assert!(
        end.bytes_since(start) > 3 * SEGMENT,
        "the load spans several segments: {start}..{end}"
    );
    assert_eq!(truth(&su, start, end).await, expected);

    let cache = CommitCache::default();
    let t = Instant::now();
    let cold = l
        .cluster
        .commits_since(start, u64::MAX, &cache)
        .await
        .unwrap();
    let cold_took = t.elapsed();
    assert_eq!(cold.commits, expected, "{cold:?}");
    assert!(
        cold.complete && cold.counted_to == Some(cold.current),
        "{cold:?}"
    );
    assert!(!cache.is_empty());
    let t = Instant::now();
    let warm = l
        .cluster
        .commits_since(start, u64::MAX, &cache)
        .await
        .unwrap();
    let warm_took = t.elapsed();
    assert_eq!(warm.commits, expected, "{warm:?}");
    eprintln!(
        "{} MB of WAL, {expected} commits: cold {cold_took:?}, warm {warm_took:?}",
        end.bytes_since(start) >> 20
    );
    // The load took well under the time since its first commit.
    let age = warm.oldest_commit_age_ms.unwrap();
    assert!(
        age >= 1 && age as u128 <= made_at.elapsed().as_millis() + 1000,
        "oldest commit {age} ms ago"
    );

    // From every mark and from positions between them, the same as the truth.
    let mut froms = marks.clone();
    for w in marks.windows(2) {
        froms.push(Lsn(w[0].0 + (w[1].0 - w[0].0) / 3));
        froms.push(Lsn(w[0].0 + (w[1].0 - w[0].0) * 2 / 3));
    }
    for from in froms {
        let cached = l
            .cluster
            .commits_since(from, u64::MAX, &cache)
            .await
            .unwrap();
        let fresh = l
            .cluster
            .commits_since(from, u64::MAX, &CommitCache::default())
            .await
            .unwrap();
        let want = truth(&su, from, cached.current).await;
        assert_eq!((cached.commits, fresh.commits), (want, want), "from {from}");
        // A bound stops the count where it says.
        let bounded = l
            .cluster
            .commits_since(from, 16 * 1024 * 1024 + 5, &cache)
            .await
            .unwrap();
        let to = bounded.counted_to.unwrap();
        assert_eq!(
            to,
            Lsn((from.0 + 16 * 1024 * 1024 + 5).min(bounded.current.0))
        );
        assert_eq!(
            bounded.commits,
            truth(&su, from, to).await,
            "from {from} to {to}"
        );
    }

    // With no time to spare, each call counts one more segment: a lower
    // bound that grows until it is the whole count.
    let slow = CommitCache::default();
    let mut calls = 0;
    let mut last = (0, start);
    loop {
        let c = l
            .cluster
            .commits_since_within(start, u64::MAX, &slow, Duration::ZERO)
            .await
            .unwrap();
        calls += 1;
        let to = c.counted_to.unwrap();
        assert!(
            c.commits <= expected && (c.commits, to) > last,
            "{c:?} after {last:?}"
        );
        assert_eq!(c.commits, truth(&su, start, to).await, "{c:?}");
        last = (c.commits, to);
        if c.complete {
            assert_eq!(c.commits, expected);
            break;
        }
        assert!(calls < 20, "no end after {calls} calls: {c:?}");
    }
    assert!(calls >= 3, "{calls} calls for four segments");

    // Held for a second: the oldest commit not replayed is a second old.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mid = marks[3];
    let again = l
        .cluster
        .commits_since(mid, u64::MAX, &cache)
        .await
        .unwrap();
    assert!(again.oldest_commit_age_ms.unwrap() >= 1100, "{again:?}");
    // Nothing behind: no age.
    let none = l
        .cluster
        .commits_since(again.current, u64::MAX, &cache)
        .await
        .unwrap();
    assert_eq!((none.commits, none.oldest_commit_age_ms), (0, None));
}

#[tokio::test]
async fn wal_that_is_gone_and_never_counted_is_an_error() {
    let l = leader().await;
    match l
        .cluster
        .commits_since("0/10".parse().unwrap(), u64::MAX, &CommitCache::default())
        .await
    {
        Err(e @ PgError::WalGone { .. }) => assert!(e.to_string().contains("base backup"), "{e}"),
        other => panic!("expected WalGone, got {other:?}"),
    }
}
