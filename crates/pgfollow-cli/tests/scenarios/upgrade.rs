//! `pg:upgrade` with real pg_upgrade from PostgreSQL 15 to 18: a dry run on
//! a throwaway copy leaves the database as it was; a follower is
//! unfollowed, upgraded on its own copy with its extensions, roles and
//! passwords, and promoted behind DATABASE_URL; bad versions and leaders
//! with followers are refused in one line.

use crate::common::*;
use crate::versions::two_major_server;

fn credentials(s: &Server, db: &str) -> serde_json::Value {
    s.cli(&["pg:credentials:url", db, "--app", "sushi", "--json"])
        .ok()
        .json()
}

fn one_line_refusal(s: &Server, args: &[&str], said: &str) {
    let mut all = vec!["pg:upgrade"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--app", "sushi", "--confirm", "sushi"]);
    let out = s.cli(&all).failed();
    assert!(out.stderr.contains(said), "{args:?}: {}", out.stderr);
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
}

#[test]
fn a_follower_is_upgraded_to_18_with_its_extensions_roles_and_passwords_then_promoted() {
    let s = two_major_server();
    s.cli(&["apps:create", "sushi"]).ok();
    s.cli(&[
        "addons:create",
        "standard-0",
        "--version",
        "15",
        "--app",
        "sushi",
    ])
    .ok();
    wait_available(&s, "sushi");
    psql(
        &s,
        "sushi",
        "WHITE",
        "create extension hstore; create extension citext; \
         create table t (id int primary key, attrs hstore, name citext); \
         insert into t select g, hstore('n', g::text), 'Name' || g from generate_series(1, 1000) g",
    );
    let db = credentials(&s, "WHITE")["database"]
        .as_str()
        .unwrap()
        .to_string();
    superuser_sql(
        &s,
        "sushi",
        "WHITE",
        &format!("create role reporter login password 'pw-reporter-1'; grant connect on database {db} to reporter"),
    );
    add_follower(&s, "sushi", "standard-0", "WHITE");
    wait_available(&s, "sushi");

    // Refusals: same or older major, one not installed, a leader with followers.
    one_line_refusal(
        &s,
        &["WHITE", "--version", "15"],
        "only goes to a newer major",
    );
    one_line_refusal(
        &s,
        &["WHITE", "--version", "17"],
        "PostgreSQL 17 is not installed",
    );
    one_line_refusal(
        &s,
        &["WHITE", "--version", "18"],
        "has followers (CHARCOAL)",
    );

    // A dry run: timed, on a copy; WHITE keeps running 15, untouched.
    let out = s
        .cli(&[
            "pg:upgrade",
            "WHITE",
            "--version",
            "18",
            "--dry-run",
            "--app",
            "sushi",
        ])
        .ok();
    assert!(
        out.stdout
            .contains("done: a copy of WHITE upgraded from PostgreSQL 15 to 18 in"),
        "{}",
        out.stdout
    );
    let white = s
        .cli(&["pg:info", "WHITE", "--app", "sushi", "--json"])
        .ok()
        .json();
    assert!(
        white["pg_version"].as_str().unwrap().starts_with("15"),
        "{white}"
    );
    assert_eq!(white["state"], "available");
    let dir = cluster_dir_of(&s, "sushi", "WHITE");
    assert!(!dir.join("upgrade-dry-run").exists(), "the copy is removed");

    // The follower: unfollowed, upgraded, promoted.
    let out = s
        .cli(&[
            "pg:upgrade",
            "CHARCOAL",
            "--version",
            "18",
            "--app",
            "sushi",
            "--confirm",
            "sushi",
        ])
        .ok();
    assert!(
        out.stdout
            .contains("done: upgraded from PostgreSQL 15 to 18: pg_upgrade took"),
        "{}",
        out.stdout
    );
    wait_available(&s, "sushi");
    let charcoal = s
        .cli(&["pg:info", "CHARCOAL", "--app", "sushi", "--json"])
        .ok()
        .json();
    assert!(
        charcoal["pg_version"].as_str().unwrap().starts_with("18"),
        "{charcoal}"
    );
    assert!(charcoal["following"].is_null(), "{charcoal}");
    let rows = psql(
        &s,
        "sushi",
        "CHARCOAL",
        "select count(*), max(attrs -> 'n'), count(*) filter (where name = 'NAME7') from t",
    );
    assert!(rows.contains("1000") && rows.contains("999"), "{rows}");
    let exts = psql(
        &s,
        "sushi",
        "CHARCOAL",
        "select string_agg(extname, ',' order by extname) from pg_extension",
    );
    assert!(exts.contains("citext") && exts.contains("hstore"), "{exts}");
    // Roles and their passwords came along.
    let c = credentials(&s, "CHARCOAL");
    let url = |user: &str, password: &str| {
        format!(
            "postgres://{user}:{password}@{}:{}/{}",
            c["host"].as_str().unwrap(),
            c["port"],
            c["database"].as_str().unwrap()
        )
    };
    let as_owner = psql_url(c["url"].as_str().unwrap(), "show server_version").ok();
    assert!(as_owner.stdout.starts_with("18"), "{}", as_owner.stdout);
    psql_url(&url("reporter", "pw-reporter-1"), "select 1").ok();
    assert!(!psql_url(&url("reporter", "wrong"), "select 1").success());

    s.cli(&["pg:promote", "CHARCOAL", "--app", "sushi"]).ok();
    let main = config_get(&s, "sushi", "DATABASE_URL");
    let v = psql_url(&main, "show server_version").ok();
    assert!(v.stdout.starts_with("18"), "{}", v.stdout);
    psql_url(
        &main,
        "insert into t values (1001, hstore('n', '1001'), 'x')",
    )
    .ok();
}

#[test]
fn an_upgrade_interrupted_by_a_killed_serve_finishes_after_the_restart() {
    let mut s = two_major_server();
    s.cli(&["apps:create", "sushi"]).ok();
    s.cli(&[
        "addons:create",
        "standard-0",
        "--version",
        "15",
        "--app",
        "sushi",
    ])
    .ok();
    wait_available(&s, "sushi");
    psql(
        &s,
        "sushi",
        "WHITE",
        "create table t (id int primary key); insert into t select generate_series(1, 2000)",
    );
    // The CLI gives up waiting at once; the operation goes on.
    s.cli(&[
        "pg:upgrade",
        "WHITE",
        "--version",
        "18",
        "--timeout",
        "0",
        "--app",
        "sushi",
        "--confirm",
        "sushi",
    ])
    .failed();
    // Killed while pg_upgrade's own server runs (the old one, on the data
    // directory, listening only in pg_upgrade's working directory): the
    // restart must stop it before it can use the cluster.
    let dir = cluster_dir_of(&s, "sushi", "WHITE");
    eventually(
        std::time::Duration::from_secs(60),
        "pg_upgrade has started the old server",
        || {
            std::fs::read_dir(dir.join("upgrade"))
                .into_iter()
                .flatten()
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with(".s.PGSQL."))
        },
    );
    s.kill9();
    s.restart().unwrap();
    eventually(
        std::time::Duration::from_secs(180),
        "WHITE runs 18 and is available",
        || {
            let i = s
                .cli(&["pg:info", "WHITE", "--app", "sushi", "--json"])
                .ok()
                .json();
            i["state"] == "available" && i["pg_version"].as_str().unwrap_or("").starts_with("18")
        },
    );
    let rows = psql(&s, "sushi", "WHITE", "select count(*) from t");
    assert!(rows.contains("2000"), "{rows}");
    for line in s
        .log()
        .lines()
        .filter(|l| l.contains("left by an earlier agent"))
    {
        eprintln!("{line}");
    }
    assert_eq!(s.running_postmasters().len(), 1, "exactly one postgres");
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("pgdata.") || n == "upgrade")
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
