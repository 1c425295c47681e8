//! Real drivers sending named, protocol-level prepared statements through
//! one endpoint whose pool (4 server connections, `common::endpoint_spec`)
//! is smaller than the number of clients, also across a retarget to another
//! server (PgBouncer prepares the statements again there): tokio-postgres,
//! psycopg 3 with `prepare_threshold=0`, and `pgbench -M prepared`. Each
//! must see 0 errors, and every acknowledged insert must be in exactly one
//! of the two servers.

// A failed unwrap fails the test, which is what it should do.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use pgfollow_pgbouncer::{Endpoint, EndpointSpec};
use pgfollow_testkit::drivers::{self, Pgbench, PreparedLoad, PsycopgLoad, DRIVER_TABLE_SQL};
use tokio_postgres::SimpleQueryMessage;

/// Clients per driver: four times the endpoint's pool.
const CLIENTS: usize = 16;
const POOL_SIZE: i64 = 4;
const TABLE: &str = "drv";

/// A world with clusters A and B (each with the driver table) and an
/// endpoint routing to A.
async fn two_servers_and_an_endpoint() -> (World, Endpoint, EndpointSpec) {
    let mut w = World::new();
    for (id, marker) in [("a", "A"), ("b", "B")] {
        let idx = w.cluster(id, marker).await;
        let c = connect("127.0.0.1", w.clusters[idx].1.port).await.unwrap();
        c.simple_query(&DRIVER_TABLE_SQL.replace("{table}", TABLE))
            .await
            .unwrap();
    }
    let target = w.target(0);
    let (ep, spec) = w.endpoint("ep", Some(target)).await;
    assert_eq!(spec.pool_size as i64, POOL_SIZE);
    assert!(CLIENTS as i64 > POOL_SIZE);
    (w, ep, spec)
}

/// The endpoint's running value of `key` (`SHOW CONFIG`).
async fn live_setting(ep: &Endpoint, key: &str) -> Option<String> {
    let admin = ep.admin().await.unwrap();
    let rows = admin
        .command("SHOW CONFIG", Duration::from_secs(10))
        .await
        .unwrap();
    rows.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) if r.get("key") == Some(key) => {
            r.get("value").map(str::to_string)
        }
        _ => None,
    })
}

/// `(client, n)` of the driver table, over a direct login.
async fn rows(port: u16) -> BTreeSet<(i32, i32)> {
    let c = connect("127.0.0.1", port).await.unwrap();
    c.query(&format!("SELECT client, n FROM {TABLE}"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Samples, every 50 ms until stopped, the app role's client backends on
/// both servers (the endpoint's server connections): the largest count seen.
struct ServerConnSampler {
    stop: Arc<AtomicBool>,
    max: Arc<AtomicI64>,
    task: tokio::task::JoinHandle<()>,
}

impl ServerConnSampler {
    async fn start(ports: [u16; 2]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let max = Arc::new(AtomicI64::new(0));
        let mut clients = Vec::new();
        for p in ports {
            clients.push(connect("127.0.0.1", p).await.unwrap());
        }
        let (flag, seen) = (stop.clone(), max.clone());
        let task = tokio::spawn(async move {
            let sql = "SELECT count(*) FROM pg_stat_activity WHERE usename = current_user \
                       AND backend_type = 'client backend' AND pid <> pg_backend_pid()";
            for _ in 0..2000 {
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                for c in &clients {
                    if let Ok(row) = c.query_one(sql, &[]).await {
                        seen.fetch_max(row.get::<_, i64>(0), Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        Self { stop, max, task }
    }

    async fn finish(self) -> i64 {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        self.max.load(Ordering::Relaxed)
    }
}

/// Every acknowledged insert is in exactly one server, and each got some.
async fn check_rows(w: &World, acked: &BTreeSet<(i32, i32)>) {
    let in_a = rows(w.clusters[0].1.port).await;
    let in_b = rows(w.clusters[1].1.port).await;
    println!("rows: {} in A, {} in B", in_a.len(), in_b.len());
    assert!(
        !in_a.is_empty() && !in_b.is_empty(),
        "both servers took rows"
    );
    assert!(in_a.is_disjoint(&in_b), "a row went to both servers");
    let all: BTreeSet<_> = in_a.union(&in_b).copied().collect();
    assert_eq!(
        &all, acked,
        "the servers hold exactly the acknowledged rows"
    );
}

fn conninfo(port: u16) -> String {
    format!("host=127.0.0.1 port={port} user={APP_USER} dbname={DB} connect_timeout=10")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_prepared_statements_with_more_clients_than_server_connections() {
    let (w, ep, mut spec) = two_servers_and_an_endpoint().await;
    assert_eq!(
        live_setting(&ep, "max_prepared_statements")
            .await
            .as_deref(),
        Some("200")
    );
    let sampler = ServerConnSampler::start([w.clusters[0].1.port, w.clusters[1].1.port]).await;
    let mut cfg = tokio_postgres::Config::new();
    cfg.host("127.0.0.1")
        .port(spec.port)
        .user(APP_USER)
        .password(APP_PW)
        .dbname(DB)
        .connect_timeout(Duration::from_secs(10));
    let load = PreparedLoad::start(cfg, TABLE, CLIENTS, 1, Duration::from_secs(60)).unwrap();

    tokio::task::block_in_place(|| load.wait_for(300, Duration::from_secs(30))).unwrap();
    spec.target = Some(w.target(1));
    let held = ep.retarget(&spec).await.unwrap();
    let before = load.transactions();
    tokio::task::block_in_place(|| load.wait_for(before + 300, Duration::from_secs(30))).unwrap();
    let report = tokio::task::block_in_place(|| load.finish());
    let max_server_conns = sampler.finish().await;
    println!(
        "{}; retarget held clients {held:?}; at most {max_server_conns} server connections",
        drivers::summary("tokio-postgres", &report)
    );

    assert_eq!(report.errors, 0, "errors: {:?}", report.first_errors);
    assert!(
        (1..=POOL_SIZE).contains(&max_server_conns),
        "{max_server_conns} server connections for a pool of {POOL_SIZE}"
    );
    assert_eq!(report.acked.len() as u64, report.transactions);
    check_rows(&w, &report.acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_with_prepare_threshold_0_and_more_clients_than_server_connections() {
    let (w, ep, mut spec) = two_servers_and_an_endpoint().await;
    let sampler = ServerConnSampler::start([w.clusters[0].1.port, w.clusters[1].1.port]).await;
    let load = PsycopgLoad::start(
        &conninfo(spec.port),
        &[("PGPASSWORD", APP_PW)],
        TABLE,
        CLIENTS,
        1,
        Duration::from_secs(6),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    spec.target = Some(w.target(1));
    let held = ep.retarget(&spec).await.unwrap();
    let report = tokio::task::block_in_place(|| load.finish()).unwrap();
    let max_server_conns = sampler.finish().await;
    println!(
        "{}; retarget held clients {held:?}; at most {max_server_conns} server connections",
        drivers::summary("psycopg", &report)
    );

    assert_eq!(report.errors, 0, "errors: {:?}", report.first_errors);
    assert!(report.transactions > 100, "{report:?}");
    assert!(
        (1..=POOL_SIZE).contains(&max_server_conns),
        "{max_server_conns} server connections for a pool of {POOL_SIZE}"
    );
    check_rows(&w, &report.acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_prepared_with_more_clients_than_server_connections() {
    let (w, ep, mut spec) = two_servers_and_an_endpoint().await;
    let pgbench = pg_binaries().tool("pgbench");
    let env = [("PGPASSWORD", APP_PW)];
    for (_, cluster) in &w.clusters {
        Pgbench::init(&pgbench, &conninfo(cluster.port), &env).unwrap();
    }
    let sampler = ServerConnSampler::start([w.clusters[0].1.port, w.clusters[1].1.port]).await;
    let run = Pgbench::start(&pgbench, &conninfo(spec.port), &env, CLIENTS, 6).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    spec.target = Some(w.target(1));
    let held = ep.retarget(&spec).await.unwrap();
    let report = tokio::task::block_in_place(|| run.finish()).unwrap();
    let max_server_conns = sampler.finish().await;
    println!(
        "pgbench -M prepared: {} clients, {} transactions, {} failed, {} aborted; \
         retarget held clients {held:?}; at most {max_server_conns} server connections",
        report.clients,
        report.processed,
        report.failed,
        report.aborted.len()
    );

    assert!(
        report.exit_ok && report.failed == 0 && report.aborted.is_empty(),
        "pgbench saw errors:\n{}",
        report.output
    );
    assert!(report.processed > 50, "{}", report.output);
    assert!(
        (1..=POOL_SIZE).contains(&max_server_conns),
        "{max_server_conns} server connections for a pool of {POOL_SIZE}"
    );
    // Both servers ran transactions: B's history is not empty.
    let b = connect("127.0.0.1", w.clusters[1].1.port).await.unwrap();
    let n: i64 = b
        .query_one("SELECT count(*) FROM pgbench_history", &[])
        .await
        .unwrap()
        .get(0);
    assert!(n > 0, "no pgbench transaction reached B after the retarget");
}
