//! Session pooling through `DATABASE_URL`: `addons:create --pool-mode
//! session`, session state across transactions, a `pg:changeover` that
//! ends open sessions (their clients reconnect to the new primary, nothing
//! acknowledged is lost), and `pg:endpoint:mode` switching back.

use std::time::Duration;

use tokio_postgres::SimpleQueryMessage;

use crate::common::*;

/// The `pool_mode` line of the app's endpoint configuration on disk.
fn ini_pool_mode(s: &Server) -> String {
    // The app's endpoint: beside it are the read endpoint's slots (`rd-…`),
    // which follow the mode a moment later.
    let ini = s.data_dir().join("endpoints/ep-sushi/pgbouncer.ini");
    std::fs::read_to_string(&ini)
        .unwrap_or_else(|e| panic!("{}: {e}", ini.display()))
        .lines()
        .find_map(|l| l.strip_prefix("pool_mode = ").map(str::to_string))
        .expect("a pool_mode line")
}

/// Runs `f` with a tokio-postgres client on `url` (simple protocol only).
fn with_client<T>(url: &str, f: impl AsyncFnOnce(&tokio_postgres::Client) -> T) -> T {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        f(&c).await
    })
}

async fn one(c: &tokio_postgres::Client, sql: &str) -> Result<String, String> {
    let rows = c.simple_query(sql).await.map_err(|e| e.to_string())?;
    Ok(rows
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .unwrap_or_default())
}

#[test]
fn session_mode_keeps_session_state_and_a_changeover_ends_open_sessions() {
    let s = server();
    s.cli(&["apps:create", "sushi"]).ok();
    s.cli(&[
        "addons:create",
        "standard-0",
        "--pool-mode",
        "session",
        "--app",
        "sushi",
    ])
    .ok();
    wait_available(&s, "sushi");
    assert_eq!(
        s.cli(&["pg:endpoint:mode", "--app", "sushi"]).ok().stdout,
        "session\n"
    );
    assert_eq!(ini_pool_mode(&s), "session");
    let main = config_get(&s, "sushi", "DATABASE_URL");
    psql_url(&main, "create table w (id bigint primary key)").ok();

    // Session state lasts from one statement (transaction) to the next.
    let other = main.clone();
    let (work_mem, scratch, lock_elsewhere) = with_client(&main, async |c| {
        c.simple_query("SET work_mem = '7MB'").await.unwrap();
        c.simple_query("CREATE TEMP TABLE scratch (x int)")
            .await
            .unwrap();
        c.simple_query("INSERT INTO scratch VALUES (1)")
            .await
            .unwrap();
        c.simple_query("SELECT pg_advisory_lock(42)").await.unwrap();
        let (c2, conn) = tokio_postgres::connect(&other, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        (
            one(c, "SHOW work_mem").await.unwrap(),
            one(c, "SELECT count(*) FROM scratch").await.unwrap(),
            one(&c2, "SELECT pg_try_advisory_lock(42)").await.unwrap(),
        )
    });
    assert_eq!(
        (work_mem.as_str(), scratch.as_str(), lock_elsewhere.as_str()),
        ("7MB", "1", "f")
    );

    // A changeover ends the open sessions: a writer that reconnects after
    // an error loses its connection once and goes on on the new primary.
    add_follower(&s, "sushi", "standard-0", "WHITE");
    wait_available(&s, "sushi");
    let charcoal = config_get(&s, "sushi", "PGFOLLOW_POSTGRESQL_CHARCOAL_URL");
    let writer = Writer::start(&main, "w", Duration::from_secs(60));
    writer.warm_up();
    let out = s.cli(&["pg:changeover", "CHARCOAL", "--app", "sushi"]).ok();
    eprintln!("{}", out.stdout);
    std::thread::sleep(Duration::from_millis(700));
    let report = writer.finish();
    eprintln!(
        "writer in session mode: {} acknowledged, errors {:?}, longest insert {:?}",
        report.acked.len(),
        report.errors,
        report.longest
    );
    assert!(
        (1..=3).contains(&report.errors.len()),
        "the writer's session should have ended once: {:?}",
        report.errors
    );
    let on_new = ids(&charcoal, "w");
    let missing: Vec<_> = report
        .acked
        .iter()
        .filter(|id| !on_new.contains(id))
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged, missing on CHARCOAL: {missing:?}"
    );
    let white = config_get(&s, "sushi", "PGFOLLOW_POSTGRESQL_WHITE_URL");
    assert!(
        ids(&white, "w").len() < on_new.len(),
        "the writer did not go on on CHARCOAL"
    );

    // Back to transaction pooling: the endpoint is rewritten and reloaded.
    let out = s
        .cli(&["pg:endpoint:mode", "transaction", "--app", "sushi"])
        .ok();
    assert!(
        out.stdout
            .starts_with("Setting the endpoint of sushi to transaction pooling... done"),
        "{}",
        out.stdout
    );
    assert_eq!(ini_pool_mode(&s), "transaction");
    assert_eq!(
        s.cli(&["pg:endpoint:mode", "--app", "sushi", "--json"])
            .ok()
            .json()["pool_mode"],
        "transaction"
    );
    psql_url(&main, "insert into w values (1000000)").ok();
    assert!(ids(&charcoal, "w").contains(&1000000));
    let bad = s
        .cli(&["pg:endpoint:mode", "statement", "--app", "sushi"])
        .failed();
    assert!(bad.stderr.contains("neither"), "{}", bad.stderr);
}
