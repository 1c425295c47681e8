//! Integration tests of physical streaming replication between two real
//! PostgreSQL clusters in one temp dir: slots, base backup, replay, exact
//! commit counts, leader restart, repointing, promotion.
//! A guard stops both postmasters (immediate) and removes the dir even
//! when a test fails.

#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;
use pgfollow_postgres::replication::STANDBY_SIGNAL;
use pgfollow_postgres::{Cluster, CommitCache, PgError, StopMode};
use pgfollow_types::agent::{ClusterSpec, Upstream};
use pgfollow_types::Lsn;
use tempfile::TempDir;

/// Quotes, a backslash, spaces and a colon: everything that needs escaping
/// in a passfile, a conninfo value and a postgresql.conf literal.
const REPL_PW: &str = "re'pl \\ pw: \"2\"";
const SLOT: &str = "follower_1";

/// A leader and a follower in one temp dir; dropping it stops both at once
/// and removes the dir.
struct Pair {
    leader: Cluster,
    lspec: ClusterSpec,
    follower: Cluster,
    fspec: ClusterSpec,
    /// What an agent remembers of counted WAL.
    commits: CommitCache,
    // Dropped after `Drop::drop` has stopped postgres.
    _dir: TempDir,
}

impl Drop for Pair {
    fn drop(&mut self) {
        stop_immediately(&self.follower);
        stop_immediately(&self.leader);
    }
}

impl Pair {
    /// A leader (initialized, started, bootstrapped, autovacuum off so that
    /// nothing but the test commits) and a follower spec pointing at it.
    async fn new() -> Self {
        let dir = temp_dir();
        let leader = Cluster::new(dir.path().join("leader"), binaries(), os_user());
        let follower = Cluster::new(dir.path().join("follower"), binaries(), os_user());
        let mut lspec = spec(free_port());
        lspec.id = "leader".into();
        lspec.replication.password = REPL_PW.into();
        leader.initialize(&lspec).await.unwrap();
        start_on_free_port(&leader, &mut lspec).await;
        leader.bootstrap(&lspec).await.unwrap();
        let su = leader.connect("postgres").await.unwrap();
        // One statement each: several would share an implicit transaction.
        for stmt in [
            "ALTER SYSTEM SET autovacuum = off",
            "SELECT pg_reload_conf()",
        ] {
            su.batch_execute(stmt).await.unwrap();
        }

        let mut fspec = lspec.clone();
        fspec.id = "follower".into();
        fspec.port = free_port();
        fspec.upstream = Pair::new_upstream(&lspec);
        Self {
            leader,
            lspec,
            follower,
            fspec,
            commits: CommitCache::default(),
            _dir: dir,
        }
    }

    async fn owner_of(&self, spec: &ClusterSpec) -> tokio_postgres::Client {
        login(
            spec.port,
            &spec.database,
            &spec.owner.name,
            &spec.owner.password,
        )
        .await
        .expect("owner login")
    }

    async fn rows_on_follower(&self) -> i64 {
        match self.follower.connect("appdb").await {
            Ok(c) => c
                .query_one("SELECT count(*) FROM t", &[])
                .await
                .map(|r| r.get(0))
                .unwrap_or(-1),
            Err(_) => -1,
        }
    }

    async fn follower_sees(&self, rows: i64) -> bool {
        eventually(Duration::from_secs(30), || async {
            self.rows_on_follower().await == rows
        })
        .await
    }

    async fn replay_lsn(&self) -> Lsn {
        self.follower
            .replay_status()
            .await
            .unwrap()
            .replay_lsn
            .unwrap()
    }
}

/// `Execution Time` of counting commit records between `from` and `to`.
async fn leader_pg_explain(leader: &Cluster, from: Lsn, to: Lsn) -> String {
    let c = leader.connect("postgres").await.unwrap();
    let rows = c
        .simple_query(&format!(
            "EXPLAIN (ANALYZE, TIMING OFF) SELECT sum(count) FROM pg_get_wal_stats('{from}', '{to}', true) \
             WHERE \"resource_manager/record_type\" IN ('Transaction/COMMIT', 'Transaction/COMMIT_PREPARED')"
        ))
        .await
        .unwrap();
    rows.iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .filter(|l| l.contains("Time"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// `n` single-row INSERTs, each its own transaction.
async fn commit_rows(c: &tokio_postgres::Client, n: i32) {
    for i in 0..n {
        c.execute("INSERT INTO t VALUES ($1)", &[&i]).await.unwrap();
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn a_follower_streams_counts_exact_commits_and_is_promoted() {
    let mut p = Pair::new().await;
    let leader_owner = p.owner_of(&p.lspec).await;
    leader_owner
        .batch_execute("CREATE TABLE t (i int)")
        .await
        .unwrap();

    // Slots: idempotent, WAL reserved at once.
    p.leader.create_slot(SLOT).await.unwrap();
    p.leader.create_slot(SLOT).await.unwrap();
    let slot = p.leader.slot_status(SLOT).await.unwrap().unwrap();
    assert!(!slot.active, "{slot:?}");
    assert!(slot.restart_lsn.is_some(), "{slot:?}");
    assert_eq!(p.leader.slot_status("no_such_slot").await.unwrap(), None);

    // Base backup, with progress.
    let calls = Mutex::new(Vec::new());
    let started = Instant::now();
    p.follower
        .basebackup(&p.fspec, |done, total| {
            calls.lock().unwrap().push((done, total))
        })
        .await
        .unwrap();
    eprintln!("basebackup of a tiny database: {:?}", started.elapsed());
    let calls = calls.into_inner().unwrap();
    eprintln!("progress calls: {calls:?}");
    let &(done, total) = calls.last().expect("at least one progress call");
    assert!(done > 0 && total > 0 && done <= total, "{calls:?}");
    let pgdata = p.follower.pgdata();
    assert!(pgdata.join(STANDBY_SIGNAL).is_file());
    assert!(!p.follower.pgdata_init().exists());
    assert!(!p.follower.root().join("basebackup.pgpass").exists());
    assert_eq!(mode(&pgdata), 0o700);
    assert_eq!(mode(&pgdata.join("pgfollow.conf")), 0o600);
    let conf = std::fs::read_to_string(pgdata.join("pgfollow.conf")).unwrap();
    assert!(conf.contains(&format!("port = {}", p.fspec.port)), "{conf}");
    assert!(conf.contains("primary_slot_name = 'follower_1'"), "{conf}");
    // Again: only rewrites the configuration.
    p.follower.basebackup(&p.fspec, |_, _| {}).await.unwrap();
    assert!(p.follower.status("follower").initialized);

    start_on_free_port(&p.follower, &mut p.fspec).await;
    let st = p.follower.replay_status().await.unwrap();
    assert!(st.in_recovery && st.replay_lsn.is_some(), "{st:?}");
    assert!(
        eventually(Duration::from_secs(30), || async {
            p.follower.replay_status().await.unwrap().streaming
        })
        .await,
        "the follower streams"
    );
    assert!(p.leader.slot_status(SLOT).await.unwrap().unwrap().active);

    // Read-only, same roles, stats work, bootstrap is refused.
    let follower_owner = p.owner_of(&p.fspec).await;
    let err = follower_owner
        .execute("INSERT INTO t VALUES (0)", &[])
        .await
        .unwrap_err();
    assert!(
        err.as_db_error()
            .is_some_and(|e| e.message().contains("read-only transaction")),
        "{err:?}"
    );
    let stats = p.follower.stats("appdb").await.unwrap();
    assert!(stats.in_recovery && stats.tables == 1, "{stats:?}");
    assert!(matches!(
        p.follower.bootstrap(&p.fspec).await,
        Err(PgError::InRecovery { .. })
    ));

    // 100 commits stream over; then nothing is behind.
    commit_rows(&leader_owner, 100).await;
    assert!(p.follower_sees(100).await, "follower sees 100 rows");
    let caught_up = p
        .leader
        .commits_since(p.replay_lsn().await, 1 << 30, &p.commits)
        .await
        .unwrap();
    assert_eq!(
        (caught_up.commits, caught_up.complete),
        (0, true),
        "{caught_up:?}"
    );
    let at_current = p
        .leader
        .commits_since(caught_up.current, 1 << 30, &p.commits)
        .await
        .unwrap();
    assert_eq!((at_current.commits, at_current.complete), (0, true));
    let t = Instant::now();
    for _ in 0..20 {
        p.leader
            .commits_since(caught_up.current, 1 << 30, &p.commits)
            .await
            .unwrap();
    }
    eprintln!(
        "commits_since, small gap, incl. connect: {:?} per call",
        t.elapsed() / 20
    );

    // Follower down: the slot goes inactive, 7 commits are exactly 7 behind.
    let replayed = p.replay_lsn().await;
    p.follower.stop(StopMode::Fast).await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            !p.leader.slot_status(SLOT).await.unwrap().unwrap().active
        })
        .await,
        "slot inactive while the follower is down"
    );
    commit_rows(&leader_owner, 7).await;
    let behind = p
        .leader
        .commits_since(replayed, 1 << 30, &p.commits)
        .await
        .unwrap();
    assert_eq!((behind.commits, behind.complete), (7, true), "{behind:?}");
    assert!(behind.current > replayed);
    let t = Instant::now();
    p.leader
        .commits_since(replayed, 1 << 30, &p.commits)
        .await
        .unwrap();
    eprintln!(
        "commits_since, 7 commits behind, incl. connect: {:?}",
        t.elapsed()
    );
    let plan = leader_pg_explain(&p.leader, replayed, behind.current).await;
    eprintln!("server time of the count, 7 commits behind: {plan}");
    let partial = p
        .leader
        .commits_since(replayed, 64, &p.commits)
        .await
        .unwrap();
    assert!(!partial.complete && partial.commits < 7, "{partial:?}");
    let nothing = p
        .leader
        .commits_since(replayed, 0, &p.commits)
        .await
        .unwrap();
    assert_eq!((nothing.commits, nothing.complete), (0, false));

    // Back up: active again, catches up.
    p.follower.start().await.unwrap();
    assert!(
        p.follower_sees(107).await,
        "follower catches up after restart"
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            p.leader.slot_status(SLOT).await.unwrap().unwrap().active
        })
        .await,
        "slot active again"
    );

    // Leader restart: the follower reconnects by itself.
    p.leader.stop(StopMode::Fast).await.unwrap();
    p.leader.start().await.unwrap();
    let leader_owner = p.owner_of(&p.lspec).await;
    commit_rows(&leader_owner, 3).await;
    assert!(
        p.follower_sees(110).await,
        "follower catches up after a leader restart"
    );

    // Repointing (here: a new application_name) reloads the WAL receiver.
    if let Some(up) = p.fspec.upstream.as_mut() {
        up.application_name = "follower-b".into();
    }
    p.follower.set_upstream(&p.fspec).await.unwrap();
    let leader_pg = p.leader.connect("postgres").await.unwrap();
    assert!(
        eventually(Duration::from_secs(30), || async {
            leader_pg
                .query_opt(
                    "SELECT 1 FROM pg_stat_replication WHERE application_name = 'follower-b'",
                    &[],
                )
                .await
                .unwrap()
                .is_some()
        })
        .await,
        "the leader sees the follower under its new name"
    );

    // Dropping the slot while a walsender streams through it.
    assert!(p.leader.slot_status(SLOT).await.unwrap().unwrap().active);
    p.leader.drop_slot(SLOT).await.unwrap();
    assert_eq!(p.leader.slot_status(SLOT).await.unwrap(), None);
    p.leader.drop_slot(SLOT).await.unwrap();
    // And an inactive one.
    p.leader.create_slot("spare").await.unwrap();
    p.leader.drop_slot("spare").await.unwrap();
    assert_eq!(p.leader.slot_status("spare").await.unwrap(), None);

    // Promotion at a position: one the follower cannot reach (past the
    // leader's WAL) changes nothing within the limit...
    let flushed: Lsn = leader_pg
        .query_one("SELECT pg_current_wal_flush_lsn()::text", &[])
        .await
        .unwrap()
        .get::<_, String>(0)
        .parse()
        .unwrap();
    let t = Instant::now();
    let not_yet = p
        .follower
        .promote_when_replayed(Lsn(flushed.0 + (1 << 20)), Duration::from_millis(30))
        .await
        .unwrap();
    assert!(!not_yet.promoted, "{not_yet:?}");
    assert!(not_yet.catch_up_polls >= 2, "{not_yet:?}");
    assert!(
        t.elapsed() >= Duration::from_millis(30),
        "{:?}",
        t.elapsed()
    );
    assert!(p.follower.replay_status().await.unwrap().in_recovery);
    // ... the leader's flush position is reached and the follower promoted
    // at once: writable, standby.signal gone, idempotent.
    let t = Instant::now();
    let done = p
        .follower
        .promote_when_replayed(flushed, Duration::from_secs(10))
        .await
        .unwrap();
    eprintln!("promote: {:?} {done:?}", t.elapsed());
    assert!(done.promoted, "{done:?}");
    assert!(done.replayed.is_some_and(|r| r >= flushed), "{done:?}");
    assert!(done.promote_polls >= 1, "{done:?}");
    let again = p
        .follower
        .promote_when_replayed(flushed, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(again.promoted && again.promote_polls == 0, "{again:?}");
    let st = p.follower.replay_status().await.unwrap();
    assert!(!st.in_recovery, "{st:?}");
    assert!(!pgdata.join(STANDBY_SIGNAL).exists());
    p.follower.promote().await.unwrap();
    let fork_owner = p.owner_of(&p.fspec).await;
    fork_owner
        .execute("INSERT INTO t VALUES (-1)", &[])
        .await
        .unwrap();
    assert_eq!(p.rows_on_follower().await, 111);
    // Re-rendered without upstream: no standby settings, no password.
    p.fspec.upstream = None;
    p.follower.set_upstream(&p.fspec).await.unwrap();
    let conf = std::fs::read_to_string(pgdata.join("pgfollow.conf")).unwrap();
    assert!(!conf.contains("primary_conninfo"), "{conf}");
    // A promoted follower is a leader: it counts commits, creating
    // pg_walinspect if it is missing.
    let fork_pg = p.follower.connect("postgres").await.unwrap();
    fork_pg
        .batch_execute("DROP EXTENSION pg_walinspect")
        .await
        .unwrap();
    let before: Lsn = fork_pg
        .query_one("SELECT pg_current_wal_flush_lsn()::text", &[])
        .await
        .unwrap()
        .get::<_, String>(0)
        .parse()
        .unwrap();
    commit_rows(&fork_owner, 2).await;
    let count = p
        .follower
        .commits_since(before, 1 << 30, &p.commits)
        .await
        .unwrap();
    // Two rows, and the CREATE EXTENSION commit itself.
    assert_eq!(count.commits, 3, "{count:?}");
    let count = p
        .follower
        .commits_since(before, 1 << 30, &p.commits)
        .await
        .unwrap();
    assert_eq!(count.commits, 3, "{count:?}");
    // An upstream for a data directory that is no standby is refused.
    let mut again = p.fspec.clone();
    again.upstream = Pair::new_upstream(&p.lspec);
    assert!(matches!(
        p.follower.set_upstream(&again).await,
        Err(PgError::InvalidSpec(_))
    ));
}

impl Pair {
    fn new_upstream(lspec: &ClusterSpec) -> Option<Upstream> {
        Some(Upstream {
            host: "127.0.0.1".into(),
            port: lspec.port,
            user: lspec.replication.name.clone(),
            password: REPL_PW.into(),
            slot: SLOT.into(),
            application_name: "follower".into(),
        })
    }
}

#[tokio::test]
async fn a_failed_base_backup_leaves_nothing_and_hides_the_password() {
    let mut p = Pair::new().await;
    // A follower is never initdb'd.
    match p.follower.initialize(&p.fspec).await {
        Err(PgError::InvalidSpec(msg)) => assert!(msg.contains("base backup"), "{msg}"),
        other => panic!("expected InvalidSpec, got {other:?}"),
    }

    // Wrong password.
    p.leader.create_slot(SLOT).await.unwrap();
    let wrong = "wr0ng: pass";
    if let Some(up) = p.fspec.upstream.as_mut() {
        up.password = wrong.into();
    }
    let err = p
        .follower
        .basebackup(&p.fspec, |_, _| {})
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, PgError::BaseBackup { .. }), "{msg}");
    assert!(msg.contains("password authentication failed"), "{msg}");
    assert!(!msg.contains(wrong), "{msg}");
    assert!(!p.follower.pgdata_init().exists());
    assert!(!p.follower.pgdata().exists());
    assert!(!p.follower.root().join("basebackup.pgpass").exists());
    assert!(!p.follower.status("follower").initialized);

    // A slot that does not exist.
    p.fspec.upstream = Pair::new_upstream(&p.lspec);
    if let Some(up) = p.fspec.upstream.as_mut() {
        up.slot = "missing_slot".into();
    }
    let err = p
        .follower
        .basebackup(&p.fspec, |_, _| {})
        .await
        .unwrap_err();
    assert!(err.to_string().contains("missing_slot"), "{err}");
    assert!(!p.follower.pgdata_init().exists());

    // WAL that is long gone.
    match p
        .leader
        .commits_since("0/10".parse().unwrap(), 1 << 20, &p.commits)
        .await
    {
        Err(e @ PgError::WalGone { .. }) => assert!(e.to_string().contains("base backup"), "{e}"),
        other => panic!("expected WalGone, got {other:?}"),
    }
}
