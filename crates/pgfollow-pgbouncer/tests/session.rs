//! An endpoint in session pooling: session state (SET, advisory locks,
//! temporary tables) lasts across transactions; holding it (PAUSE) ends
//! the open sessions instead of waiting for them to disconnect, new
//! connections wait until RESUME; a retarget moves reconnecting clients to
//! the new server; a change of pool mode ends the sessions of the old one.

// A failed unwrap fails the test, which is what it should do.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use pgfollow_pgbouncer::PoolMode;
use tokio_postgres::SimpleQueryMessage;

/// The first column of the first row of `sql` (simple protocol).
async fn one(c: &tokio_postgres::Client, sql: &str) -> String {
    c.simple_query(sql)
        .await
        .unwrap()
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_keeps_session_state_and_a_hold_ends_the_sessions() {
    let mut w = World::new();
    let a = w.cluster("a", "A").await;
    let b = w.cluster("b", "B").await;
    let target = w.target(a);
    let (ep, mut spec) = w.endpoint("ep", Some(target)).await;
    assert_eq!(ep.pool_mode().unwrap(), PoolMode::Transaction);

    // Transaction → session: the old mode's clients are disconnected.
    let old = connect("127.0.0.1", spec.port).await.unwrap();
    assert_eq!(marker(&old).await, "A");
    spec.pool_mode = PoolMode::Session;
    ep.retarget(&spec).await.unwrap();
    assert_eq!(ep.pool_mode().unwrap(), PoolMode::Session);
    let err = old.simple_query("SELECT 1").await.unwrap_err();
    println!("a transaction-mode client after the switch: {err}");

    // Session state lasts from one transaction to the next.
    let c1 = connect("127.0.0.1", spec.port).await.unwrap();
    let c2 = connect("127.0.0.1", spec.port).await.unwrap();
    c1.simple_query("SET work_mem = '7MB'").await.unwrap();
    assert_eq!(one(&c1, "SHOW work_mem").await, "7MB");
    c1.simple_query("CREATE TEMP TABLE scratch(x int)")
        .await
        .unwrap();
    c1.simple_query("INSERT INTO scratch VALUES (1)")
        .await
        .unwrap();
    assert_eq!(one(&c1, "SELECT count(*) FROM scratch").await, "1");
    assert_eq!(one(&c1, "SELECT pg_advisory_lock(42)").await, "");
    assert_eq!(one(&c2, "SELECT pg_try_advisory_lock(42)").await, "f");
    c1.simple_query("BEGIN; DECLARE cur CURSOR WITH HOLD FOR SELECT v FROM marker; COMMIT")
        .await
        .unwrap();
    assert_eq!(one(&c1, "FETCH cur").await, "A");

    // A hold ends the sessions at once; new connections wait for RESUME.
    let started = std::time::Instant::now();
    ep.pause(DB).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the hold must not wait for sessions to end: {:?}",
        started.elapsed()
    );
    let err = c1.simple_query("SELECT 1").await.unwrap_err();
    println!("a session client after the hold: {err}");
    let port = spec.port;
    let waiting = tokio::spawn(async move {
        let c = connect("127.0.0.1", port).await.unwrap();
        marker(&c).await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "a new session must wait while held");
    ep.resume(DB).await.unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen, "A");
    // The advisory lock went with c1's session.
    let c3 = connect("127.0.0.1", spec.port).await.unwrap();
    assert_eq!(one(&c3, "SELECT pg_try_advisory_lock(42)").await, "t");
    drop(c3);

    // A retarget in session mode: open sessions end, reconnects land on B.
    let c4 = connect("127.0.0.1", spec.port).await.unwrap();
    spec.target = Some(w.target(b));
    let held = ep.retarget(&spec).await.unwrap();
    println!("session-mode retarget held clients {held:?}");
    assert!(c4.simple_query("SELECT 1").await.is_err());
    let c5 = connect("127.0.0.1", spec.port).await.unwrap();
    assert_eq!(marker(&c5).await, "B");

    // Back to transaction mode.
    spec.pool_mode = PoolMode::Transaction;
    ep.retarget(&spec).await.unwrap();
    assert!(c5.simple_query("SELECT 1").await.is_err());
    assert_eq!(ep.pool_mode().unwrap(), PoolMode::Transaction);
    assert_eq!(
        marker(&connect("127.0.0.1", spec.port).await.unwrap()).await,
        "B"
    );
}
