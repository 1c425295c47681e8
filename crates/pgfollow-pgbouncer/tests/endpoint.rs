//! Integration tests of one PgBouncer endpoint in front of real PostgreSQL
//! clusters: retargeting under a writer, DISABLE/ENABLE, PAUSE/RESUME,
//! a taken port, no target. Each test has its own temp dir and ports; its
//! `World` guard kills PgBouncer and stops PostgreSQL even on failure.

// A failed unwrap fails the test, which is what it should do.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::*;
use pgfollow_pgbouncer::{BouncerError, Endpoint, EndpointStatus};
use tokio_postgres::types::Type;

const WRITE_FOR: Duration = Duration::from_secs(3);
const SWITCH_AFTER: Duration = Duration::from_secs(1);

/// The `n` values of `writes` in one cluster, through a direct login.
async fn written(port: u16) -> Vec<i32> {
    let c = connect("127.0.0.1", port).await.unwrap();
    c.query("SELECT n FROM writes ORDER BY n", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// psql (simple protocol) through the endpoint.
fn psql_marker(port: u16) -> String {
    let psql = pg_binaries().tool("psql");
    let out = std::process::Command::new(psql)
        .args(["-X", "-A", "-t", "-c", "SELECT v FROM marker"])
        .arg(format!(
            "host=127.0.0.1 port={port} user={APP_USER} dbname={DB} connect_timeout=5"
        ))
        .env("PGPASSWORD", APP_PW)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retarget_under_a_writer_moves_writes_without_errors() {
    let mut w = World::new();
    let a = w.cluster("a", "A").await;
    let b = w.cluster("b", "B").await;

    // No database yet: clients are refused with a clear error.
    let (ep, mut spec) = w.endpoint("ep", None).await;
    assert_eq!(
        ep.status(),
        EndpointStatus {
            configured: true,
            running: true,
            pid: ep.pid()
        }
    );
    let err = connect("127.0.0.1", spec.port).await.unwrap_err();
    assert!(err.contains(DB), "{err}");

    // From no target to A: nothing to pause.
    spec.target = Some(w.target(a));
    ep.retarget(&spec).await.unwrap();
    let client = connect("127.0.0.1", spec.port).await.unwrap();
    assert_eq!(marker(&client).await, "A");
    let typed = client
        .query_typed(
            "SELECT v FROM marker WHERE $1::int = 1",
            &[(&1i32, Type::INT4)],
        )
        .await
        .unwrap();
    assert_eq!(typed[0].get::<_, String>(0), "A");
    assert_eq!(psql_marker(spec.port), "A");

    // A writer on one connection, alternating simple and extended
    // (unnamed statement) protocol, one row per statement.
    let writer = tokio::spawn(async move {
        let started = Instant::now();
        let (mut n, mut errors, mut slowest) = (0i32, Vec::new(), Duration::ZERO);
        while started.elapsed() < WRITE_FOR {
            n += 1;
            let t = Instant::now();
            let res = if n % 2 == 0 {
                client
                    .simple_query(&format!("INSERT INTO writes(n) VALUES ({n})"))
                    .await
                    .map(|_| ())
            } else {
                client
                    .query_typed("INSERT INTO writes(n) VALUES ($1)", &[(&n, Type::INT4)])
                    .await
                    .map(|_| ())
            };
            slowest = slowest.max(t.elapsed());
            if let Err(e) = res {
                errors.push(format!(
                    "insert {n}: {}",
                    pgfollow_pgbouncer::error::pg_detail(&e)
                ));
            }
        }
        (n, errors, slowest)
    });
    tokio::time::sleep(SWITCH_AFTER).await;
    spec.target = Some(w.target(b));
    let paused = ep.retarget(&spec).await.unwrap();
    println!("retarget A -> B held clients for {paused:?}");
    let (last, errors, slowest) = writer.await.unwrap();
    println!("writer: {last} inserts, slowest {slowest:?}");
    assert!(errors.is_empty(), "writer saw errors: {errors:?}");

    // Every row is in exactly one cluster, A's before B's.
    let in_a = written(w.clusters[a].1.port).await;
    let in_b = written(w.clusters[b].1.port).await;
    assert!(
        !in_a.is_empty() && !in_b.is_empty(),
        "A {} rows, B {} rows",
        in_a.len(),
        in_b.len()
    );
    assert!(
        in_a.last() < in_b.first(),
        "rows after the switch must be in B"
    );
    let all: Vec<i32> = in_a.iter().chain(&in_b).copied().collect();
    assert_eq!(
        all,
        (1..=last).collect::<Vec<_>>(),
        "no row lost or doubled"
    );
    println!("rows: {} in A, {} in B", in_a.len(), in_b.len());

    // New clients see B; psql too.
    let fresh = connect("127.0.0.1", spec.port).await.unwrap();
    assert_eq!(marker(&fresh).await, "B");
    assert_eq!(psql_marker(spec.port), "B");
    let db = ep.database(DB).await.unwrap().unwrap();
    assert_eq!((db.port, db.paused), (Some(w.clusters[b].1.port), false));

    // Start is idempotent; stop then status says not running; stop again is Ok.
    ep.start().await.unwrap();
    ep.stop().await.unwrap();
    let st = ep.status();
    assert!(st.configured && !st.running && st.pid.is_none(), "{st:?}");
    ep.stop().await.unwrap();
    assert!(matches!(
        ep.pause(DB).await,
        Err(BouncerError::NotRunning { .. })
    ));

    // Restart from the files on disk, then destroy removes everything.
    ep.start().await.unwrap();
    assert_eq!(
        marker(&connect("127.0.0.1", spec.port).await.unwrap()).await,
        "B"
    );
    ep.destroy().await.unwrap();
    assert!(!ep.root().exists());
    assert!(!ep.status().running);
    ep.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disable_enable_pause_resume() {
    let mut w = World::new();
    let a = w.cluster("a", "A").await;
    let target = w.target(a);
    let (ep, spec) = w.endpoint("ep", Some(target)).await;
    let held = connect("127.0.0.1", spec.port).await.unwrap();
    assert_eq!(marker(&held).await, "A");

    // DISABLE: new connections fail, existing ones keep working.
    ep.disable(DB).await.unwrap();
    assert!(ep.database(DB).await.unwrap().unwrap().disabled);
    let err = connect("127.0.0.1", spec.port).await.unwrap_err();
    println!("while disabled: {err}");
    assert_eq!(marker(&held).await, "A");
    ep.enable(DB).await.unwrap();
    ep.enable(DB).await.unwrap();
    assert_eq!(
        marker(&connect("127.0.0.1", spec.port).await.unwrap()).await,
        "A"
    );

    // PAUSE holds a query until RESUME.
    ep.pause(DB).await.unwrap();
    assert!(ep.database(DB).await.unwrap().unwrap().paused);
    let query = tokio::spawn(async move {
        let v = marker(&held).await;
        (v, held)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!query.is_finished(), "a query must wait while paused");
    ep.resume(DB).await.unwrap();
    let (v, held) = tokio::time::timeout(Duration::from_secs(5), query)
        .await
        .expect("the query must run after RESUME")
        .unwrap();
    assert_eq!(v, "A");
    ep.resume(DB).await.unwrap();

    // A transaction left open makes PAUSE time out; the database is resumed.
    held.simple_query("BEGIN; SELECT 1").await.unwrap();
    let short = Endpoint::new(ep.root().to_path_buf(), bouncer_binary(), os_user())
        .with_pause_timeout(Duration::from_secs(1));
    let err = short.pause(DB).await.unwrap_err();
    assert!(matches!(err, BouncerError::PauseTimeout { .. }), "{err}");
    assert!(!ep.database(DB).await.unwrap().unwrap().paused);
    held.simple_query("COMMIT").await.unwrap();

    // KILL drops the clients and leaves the database paused until RESUME.
    ep.kill_clients(DB).await.unwrap();
    assert!(held.simple_query("SELECT 1").await.is_err());
    ep.resume(DB).await.unwrap();
    assert_eq!(
        marker(&connect("127.0.0.1", spec.port).await.unwrap()).await,
        "A"
    );

    assert!(matches!(
        ep.pause("nosuchdb").await,
        Err(BouncerError::NoSuchDatabase { .. })
    ));
}

/// A hold whose PAUSE cannot finish ends the client in a transaction with
/// its server connection, and only it: an idle client keeps its connection
/// and is served after RESUME (a client that was connecting is not pushed
/// to the next host of its URL).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hold_that_cannot_pause_ends_only_the_open_transactions() {
    let mut w = World::new();
    let a = w.cluster("a", "A").await;
    let target = w.target(a);
    let (ep, spec) = w.endpoint("ep", Some(target)).await;
    let busy = connect("127.0.0.1", spec.port).await.unwrap();
    let idle = connect("127.0.0.1", spec.port).await.unwrap();
    assert_eq!(marker(&idle).await, "A");
    busy.simple_query("BEGIN; SELECT 1").await.unwrap();

    let admin = ep.admin().await.unwrap();
    let ended = admin
        .pause_or_kill(DB, Duration::from_millis(200))
        .await
        .unwrap();
    assert!(ended, "the open transaction held the pause up");
    assert!(
        busy.simple_query("SELECT 1").await.is_err(),
        "the client in a transaction was ended"
    );
    assert!(ep.database(DB).await.unwrap().unwrap().paused);
    let query = tokio::spawn(async move { marker(&idle).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!query.is_finished(), "the idle client waits while paused");
    ep.resume(DB).await.unwrap();
    let v = tokio::time::timeout(Duration::from_secs(5), query)
        .await
        .expect("the idle client is served after RESUME")
        .unwrap();
    assert_eq!(v, "A");
}

#[tokio::test]
async fn a_taken_port_is_port_in_use_and_leaves_nothing_running() {
    let w = World::new();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let ep = Endpoint::new(w.path("ep"), bouncer_binary(), os_user());
    ep.write_config(&endpoint_spec(port, None)).unwrap();
    let err = ep.start().await.unwrap_err();
    assert!(
        matches!(err, BouncerError::PortInUse { port: p } if p == port),
        "{err}"
    );
    assert!(err.to_string().contains(&port.to_string()));
    assert!(!ep.status().running);
    drop(taken);
}

#[tokio::test]
async fn without_a_target_clients_get_an_error_naming_the_database() {
    let mut w = World::new();
    let (ep, spec) = w.endpoint("ep", None).await;
    let err = connect("127.0.0.1", spec.port).await.unwrap_err();
    assert!(
        err.contains("no such database") && err.contains(DB),
        "{err}"
    );
    assert!(matches!(
        ep.pause(DB).await,
        Err(BouncerError::NoSuchDatabase { .. })
    ));
    assert!(ep.databases().await.unwrap().is_empty());
}

#[tokio::test]
async fn start_without_configuration_says_so() {
    let w = World::new();
    let ep = Endpoint::new(w.path("ep"), bouncer_binary(), os_user());
    let st = ep.status();
    assert!(!st.configured && !st.running);
    assert!(matches!(
        ep.start().await,
        Err(BouncerError::NotConfigured { .. })
    ));
    ep.stop().await.unwrap();
    ep.destroy().await.unwrap();
}

/// Stopping an endpoint cuts its connected clients off at once: PgBouncer
/// 1.23 and newer wait on SIGTERM until every client has gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stop_does_not_wait_for_connected_clients() {
    let mut w = World::new();
    let a = w.cluster("a", "A").await;
    let target = w.target(a);
    let (ep, spec) = w.endpoint("ep", Some(target)).await;
    let idle = connect("127.0.0.1", spec.port).await.unwrap();
    assert_eq!(marker(&idle).await, "A");
    let started = Instant::now();
    ep.stop().await.unwrap();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "stop took {took:?}");
    assert!(!ep.status().running);
    assert!(idle.simple_query("SELECT 1").await.is_err());
    println!("stopped in {} ms with a client connected", took.as_millis());
}
