//! `pg:diagnose` and the pg-extras commands against a real database in
//! which the test makes each condition they report: a query blocked by a
//! session idle in its transaction, a long-running query, a bloated table
//! with a big index never scanned, an invalid index (a failed
//! `CREATE INDEX CONCURRENTLY`), a sequence near its end, a slow statement
//! for `pg:outliers`.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common::*;

/// A client session on a thread of its own: it runs `sql` and keeps its
/// connection open until dropped (at most a few minutes).
struct Session {
    pid: i32,
    stop: Option<mpsc::Sender<()>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Session {
    /// Connects, then runs `sql` without waiting for it to finish (it may
    /// be blocked, or sleep), and holds the connection.
    fn start(url: &str, sql: &str) -> Session {
        let (url, sql) = (url.to_string(), sql.to_string());
        let (stop, stopped) = mpsc::channel::<()>();
        let (pid_tx, pid_rx) = mpsc::channel::<i32>();
        let handle = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .expect("the session connects");
                tokio::spawn(conn);
                let pid: i32 = c
                    .query_one("select pg_backend_pid()", &[])
                    .await
                    .unwrap()
                    .get(0);
                let _ = pid_tx.send(pid);
                let run = c.simple_query(&sql);
                let mut wait = tokio::task::spawn_blocking(move || {
                    let _ = stopped.recv_timeout(Duration::from_secs(300));
                });
                // Whichever ends first; the connection closes with `c`.
                tokio::select! {
                    _ = run => {
                        let _ = (&mut wait).await;
                    }
                    _ = &mut wait => {}
                }
            });
        });
        let pid = pid_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the session opened");
        Session {
            pid,
            stop: Some(stop),
            handle: Some(handle),
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn json_rows(s: &Server, command: &str) -> Vec<serde_json::Value> {
    s.cli(&[command, "--app", "sushi", "--json"])
        .ok()
        .json()
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Whether a report's text cell is process id `pid`.
fn is_pid(v: &serde_json::Value, pid: i32) -> bool {
    v.as_str().and_then(|s| s.parse().ok()) == Some(pid)
}

fn check<'a>(d: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    d["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no check {name} in {d}"))
}

fn details(c: &serde_json::Value) -> String {
    c["details"].to_string()
}

#[test]
fn diagnose_and_the_extras_report_the_conditions_made() {
    let s = server();
    app_with_database(&s, "sushi", "standard-0");
    let url = config_get(&s, "sushi", "PGFOLLOW_POSTGRESQL_WHITE_URL");
    // A query that runs on while the rest is made (long-running from 60 s).
    let long = Session::start(&url, "select pg_sleep(600)");
    let long_since = Instant::now();
    for sql in [
        "create table acct (id int primary key, balance int)",
        "insert into acct values (1, 100)",
        "create table b (id int, pad text) with (autovacuum_enabled = false)",
        "insert into b select g, repeat('x', 100) from generate_series(1, 100000) g",
        "create index b_id on b (id)",
        "delete from b where id % 10 <> 0",
        "analyze b",
        "create sequence s as smallint",
        "select setval('s', 30000)",
        "create table u (v int)",
        "insert into u values (1), (1)",
        "select pg_sleep(0.3)",
    ] {
        psql(&s, "sushi", "WHITE", sql);
    }
    // A failed CREATE INDEX CONCURRENTLY leaves an invalid index behind.
    let failed = s.cli(&[
        "pg:psql",
        "--app",
        "sushi",
        "-c",
        "create unique index concurrently u_v on u (v)",
    ]);
    assert!(!failed.success(), "{}", failed.stdout);

    // A session idle in its transaction holds a row lock; another waits.
    let holder = Session::start(
        &url,
        "begin; update acct set balance = balance + 1 where id = 1",
    );
    let holder_since = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    let blocked = Session::start(&url, "update acct set balance = balance - 1 where id = 1");
    eventually(
        Duration::from_secs(20),
        "pg:blocking shows the wait",
        || {
            json_rows(&s, "pg:blocking").iter().any(|r| {
                is_pid(&r["blocked_pid"], blocked.pid) && is_pid(&r["blocking_pid"], holder.pid)
            })
        },
    );
    let blocking = s.cli(&["pg:blocking", "--app", "sushi"]).ok().stdout;
    assert!(
        blocking.starts_with("blocked_pid  blocked_query"),
        "{blocking}"
    );
    assert!(
        blocking.contains("update acct set balance = balance - 1"),
        "{blocking}"
    );

    let locks = json_rows(&s, "pg:locks");
    assert!(
        locks
            .iter()
            .any(|l| is_pid(&l["pid"], blocked.pid) && l["granted"] == "f"),
        "{locks:?}"
    );
    assert!(
        locks.iter().any(|l| is_pid(&l["pid"], holder.pid)
            && l["relation"] == "public.acct"
            && l["mode"] == "RowExclusiveLock"
            && l["granted"] == "t"),
        "{locks:?}"
    );

    let bloat = json_rows(&s, "pg:bloat");
    let b = bloat
        .iter()
        .find(|r| r["type"] == "table" && r["object"] == "b")
        .unwrap_or_else(|| panic!("{bloat:?}"));
    let ratio: f64 = b["bloat"].as_str().unwrap().parse().unwrap();
    assert!(ratio >= 5.0, "{b}");
    let vacuum = json_rows(&s, "pg:vacuum-stats");
    let vb = vacuum.iter().find(|r| r["table"] == "b").unwrap();
    assert_eq!(vb["dead_rows"], "90000", "{vb}");
    assert_eq!(vb["expect_autovacuum"], "disabled", "{vb}");
    let usage = json_rows(&s, "pg:index-usage");
    let ub = usage.iter().find(|r| r["table"] == "b").unwrap();
    assert_eq!(ub["idx_scan"], "0", "{ub}");
    let outliers = json_rows(&s, "pg:outliers");
    assert!(
        outliers
            .iter()
            .any(|o| o["query"].as_str().is_some_and(|q| q.contains("pg_sleep"))),
        "{outliers:?}"
    );
    let text = s.cli(&["pg:outliers", "--app", "sushi"]).ok().stdout;
    assert!(text.starts_with("total_ms  percent  calls"), "{text}");

    // The checks, once the idle transaction is old enough to count (and
    // the wait far from a minute, when it turns red).
    let idle = Duration::from_secs(11).saturating_sub(holder_since.elapsed());
    std::thread::sleep(idle);
    let d = s
        .cli(&["pg:diagnose", "--app", "sushi", "--json"])
        .ok()
        .json();
    assert_eq!(d["database"], "WHITE");
    let status = |name: &str| check(&d, name)["status"].as_str().unwrap().to_string();
    assert_eq!(status("connections"), "green", "{d}");
    assert_eq!(status("blocking-queries"), "yellow", "{d}");
    let waiting = details(check(&d, "blocking-queries"));
    assert!(
        waiting.contains(&format!("pid {} has waited", blocked.pid))
            && waiting.contains(&format!("for pid {} (idle in transaction)", holder.pid)),
        "{waiting}"
    );
    assert_eq!(status("idle-in-transaction"), "yellow", "{d}");
    assert!(details(check(&d, "idle-in-transaction")).contains(&format!("pid {}", holder.pid)));
    assert_eq!(status("bloat"), "yellow", "{d}");
    assert!(
        details(check(&d, "bloat")).contains("table public.b: "),
        "{d}"
    );
    assert_eq!(status("unused-indexes"), "yellow", "{d}");
    assert!(
        details(check(&d, "unused-indexes")).contains("public.b_id"),
        "{d}"
    );
    assert_eq!(status("invalid-indexes"), "red", "{d}");
    assert!(
        details(check(&d, "invalid-indexes")).contains("public.u_v"),
        "{d}"
    );
    assert_eq!(status("sequences"), "red", "{d}");
    assert!(
        details(check(&d, "sequences")).contains("public.s: 91.6%"),
        "{d}"
    );
    for green in [
        "transaction-id-wraparound",
        "replication-slots",
        "follower-lag",
    ] {
        assert_eq!(status(green), "green", "{green}: {d}");
    }
    // Not a terminal: plain words, no colour codes.
    let lines = s.cli(&["pg:diagnose", "--app", "sushi"]).ok().stdout;
    assert!(lines.contains("\nRED: invalid-indexes: "), "{lines}");
    assert!(lines.starts_with("GREEN: connections: "), "{lines}");
    assert!(!lines.contains('\x1b'), "{lines}");

    // Once the holder ends its transaction, nothing waits any more.
    drop(holder);
    drop(blocked);
    eventually(Duration::from_secs(20), "nothing is blocked", || {
        json_rows(&s, "pg:blocking").is_empty()
    });
    assert_eq!(
        s.cli(&["pg:blocking", "--app", "sushi"]).ok().stdout,
        "No query waits for a lock on DATABASE_URL.\n"
    );

    // A minute into the long query: yellow; what the holder did is gone.
    let wait = Duration::from_secs(61).saturating_sub(long_since.elapsed());
    std::thread::sleep(wait);
    let d = s
        .cli(&["pg:diagnose", "--app", "sushi", "--json"])
        .ok()
        .json();
    let status = |name: &str| check(&d, name)["status"].as_str().unwrap().to_string();
    assert_eq!(status("long-running-queries"), "yellow", "{d}");
    assert!(
        details(check(&d, "long-running-queries")).contains(&format!("pid {}", long.pid)),
        "{d}"
    );
    assert_eq!(status("blocking-queries"), "green", "{d}");
    assert_eq!(status("idle-in-transaction"), "green", "{d}");
    drop(long);

    // Bad input: one line saying what to do.
    let e = s.cli(&["pg:diagnose", "NOSUCH", "--app", "sushi"]).failed();
    assert_eq!(e.stderr.lines().count(), 1, "{}", e.stderr);
}
