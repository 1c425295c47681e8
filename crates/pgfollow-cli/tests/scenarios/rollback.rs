//! Continuous protection with real pgBackRest: a standard database archives
//! its WAL and gets a base backup by itself, `pg:info` shows how far back it
//! can be rolled, `addons:create --rollback DB --to TIME` makes a new
//! database as DB was at that moment, and after a failover the new primary
//! goes on archiving into the same stanza. The main scenario runs on 15
//! and on the default major, 18.

use std::time::Duration;

use crate::common::*;
use crate::ha::{host_of_white, lose_host, premium_on_h2};

/// The database's clock, to the microsecond, as `--to` takes it.
fn now_on(s: &Server, db: &str) -> String {
    psql(
        s,
        "sushi",
        db,
        "select to_char(clock_timestamp() at time zone 'utc', 'YYYY-MM-DD HH24:MI:SS.US') || ' UTC'",
    )
    .lines()
    .find(|l| l.contains("UTC"))
    .unwrap()
    .trim()
    .to_string()
}

/// Waits until `db` can be rolled back (its first base backup is done).
fn wait_protected(s: &Server, db: &str) {
    eventually(Duration::from_secs(180), "Rollback: earliest from", || {
        let i = s
            .cli(&["pg:info", db, "--app", "sushi", "--json"])
            .ok()
            .json();
        i["rollback"]["earliest"].is_string()
    });
    // The window opens the second after the base backup stopped (pgBackRest
    // counts whole seconds): a moment noted sooner would be refused.
    std::thread::sleep(Duration::from_millis(1100));
}

fn rollback(s: &Server, db: &str, to: &str) -> String {
    let out = s
        .cli(&[
            "addons:create",
            "standard-0",
            "--rollback",
            db,
            "--to",
            to,
            "--app",
            "sushi",
            "--json",
        ])
        .ok();
    let color = out.json()["database"]["color"]
        .as_str()
        .unwrap()
        .to_string();
    wait_available(s, "sushi");
    color
}

fn count(s: &Server, db: &str, sql: &str) -> String {
    psql(s, "sushi", db, sql)
        .lines()
        .map(str::trim)
        .find(|l| l.chars().all(|c| c.is_ascii_digit()) && !l.is_empty())
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_dropped_table_comes_back_with_a_rollback_to_the_moment_before() {
    a_dropped_table_comes_back(&["--version", "15"], "15.");
}

/// The same on the default major, 18, which needs pgBackRest 2.56 or newer.
/// Where the host has only an older one (Debian 12's 2.45), the database
/// says so in `pg:info` instead: its version, and what it would need.
#[test]
fn a_dropped_table_comes_back_with_a_rollback_on_the_default_major() {
    match installed_pgbackrest() {
        Some((2, minor)) if minor >= 56 => a_dropped_table_comes_back(&[], "18."),
        Some((major, minor)) => an_18_database_says_why_it_is_unprotected(major, minor),
        None => panic!("no pgBackRest installed: run scripts/install-deps"),
    }
}

/// `pgbackrest version` of the first pgBackRest where the agent looks.
fn installed_pgbackrest() -> Option<(u32, u32)> {
    [
        "/opt/pgfollow/pgbackrest/bin/pgbackrest",
        "/usr/bin/pgbackrest",
        "/usr/local/bin/pgbackrest",
    ]
    .iter()
    .find_map(|p| {
        let out = std::process::Command::new(p).arg("version").output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut v = text.split_whitespace().nth(1)?.split('.');
        Some((v.next()?.parse().ok()?, v.next()?.parse().ok()?))
    })
}

fn an_18_database_says_why_it_is_unprotected(major: u32, minor: u32) {
    let s = server();
    s.cli(&["apps:create", "sushi"]).ok();
    s.cli(&["addons:create", "standard-0", "--app", "sushi"])
        .ok();
    wait_available(&s, "sushi");
    let head = format!("Rollback:    unavailable: pgBackRest {major}.{minor} on host ");
    let why = "supports PostgreSQL up to 15, not 18: install pgBackRest 2.56 or newer";
    let mut text = String::new();
    eventually(Duration::from_secs(60), &head, || {
        text = s.cli(&["pg:info", "WHITE", "--app", "sushi"]).ok().stdout;
        text.lines()
            .any(|l| l.starts_with(&head) && l.contains(why))
    });
    assert!(text.contains("PG Version:  18."), "{text}");
}

/// WHITE (`addons:create standard-0` with `version`, on a major whose
/// `PG Version` starts with `major`) is protected, a dropped table comes
/// back with a rollback to the moment before, nothing after it does.
fn a_dropped_table_comes_back(version: &[&str], major: &str) {
    let s = server();
    s.cli(&["apps:create", "sushi"]).ok();
    let mut create = vec!["addons:create", "standard-0", "--app", "sushi"];
    create.extend_from_slice(version);
    s.cli(&create).ok();
    wait_available(&s, "sushi");
    wait_protected(&s, "WHITE");
    let text = s.cli(&["pg:info", "WHITE", "--app", "sushi"]).ok().stdout;
    assert!(text.contains(&format!("PG Version:  {major}")), "{text}");
    assert!(text.contains("Rollback:    earliest from 20"), "{text}");
    assert!(text.contains("Base Backup: 20"), "{text}");
    // The archive is on the control plane's host, the OS user's.
    assert!(s.data_dir().join("pgbackrest/archive/").is_dir());
    // WAL goes out through the pgBackRest the agent found, by its path.
    let archive_command = superuser_sql(&s, "sushi", "WHITE", "show archive_command");
    let program = archive_command
        .split_whitespace()
        .find(|w| w.ends_with("/pgbackrest"))
        .unwrap_or_default();
    assert!(
        program.starts_with('/') && std::path::Path::new(program).is_file(),
        "{archive_command}"
    );

    psql(
        &s,
        "sushi",
        "WHITE",
        "create table orders (id int primary key); insert into orders select generate_series(1, 100); create table notes (t text)",
    );
    std::thread::sleep(Duration::from_millis(300));
    let noted = now_on(&s, "WHITE");
    std::thread::sleep(Duration::from_millis(300));
    psql(
        &s,
        "sushi",
        "WHITE",
        "insert into notes values ('after the noted time'); drop table orders",
    );

    // Out of the window, or not a time: one line, nothing made.
    for (args, said) in [
        (
            vec!["--to", "2020-01-01 00:00 UTC"],
            "is before the earliest moment WHITE can be rolled back to",
        ),
        (vec!["--to", "2999-01-01 00:00 UTC"], "is in the future"),
        (vec!["--by", "2x"], "is not a duration"),
        (vec!["--to", "yesterday"], "is not a time"),
    ] {
        let mut all = vec![
            "addons:create",
            "standard-0",
            "--rollback",
            "WHITE",
            "--app",
            "sushi",
        ];
        all.extend_from_slice(&args);
        let out = s.cli(&all).failed();
        assert!(out.stderr.contains(said), "{args:?}: {}", out.stderr);
        assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
    }
    let hobby = s
        .cli(&["addons:create", "hobby-dev", "--app", "sushi", "--json"])
        .ok();
    let hobby = hobby.json()["database"]["color"]
        .as_str()
        .unwrap()
        .to_string();
    wait_available(&s, "sushi");
    let out = s
        .cli(&[
            "addons:create",
            "standard-0",
            "--rollback",
            &hobby,
            "--by",
            "1m",
            "--app",
            "sushi",
        ])
        .failed();
    assert!(
        out.stderr.contains("has no continuous protection"),
        "{}",
        out.stderr
    );
    assert_eq!(info(&s, "sushi").len(), 2, "nothing half-made");

    let back = rollback(&s, "WHITE", &noted);
    assert_eq!(count(&s, &back, "select count(*) from orders"), "100");
    assert_eq!(
        count(&s, &back, "select count(*) from notes"),
        "0",
        "nothing after the noted time"
    );
    // WHITE itself is untouched.
    assert_eq!(count(&s, "WHITE", "select count(*) from notes"), "1");
    // The copy is writable, forgets how it was made, and is protected itself.
    psql(&s, "sushi", &back, "insert into orders values (101)");
    let restore_command = superuser_sql(&s, "sushi", &back, "show restore_command");
    assert_eq!(restore_command.trim(), "", "{restore_command}");
    wait_protected(&s, &back);
    let log = s.log();
    assert!(
        log.contains("recovered to its target and promoted"),
        "{log}"
    );

    // Destroyed, its archive goes; WHITE's stays.
    let stanzas = || {
        std::fs::read_dir(s.data_dir().join("pgbackrest/archive"))
            .unwrap()
            .flatten()
            .count()
    };
    assert_eq!(stanzas(), 2);
    s.cli(&[
        "addons:destroy",
        &back,
        "--app",
        "sushi",
        "--confirm",
        "sushi",
    ])
    .ok();
    eventually(
        Duration::from_secs(60),
        "the copy's archive is removed",
        || stanzas() == 1,
    );
    let text = s.cli(&["pg:info", "WHITE", "--app", "sushi"]).ok().stdout;
    assert!(text.contains("Rollback:    earliest from 20"), "{text}");
}

#[test]
fn after_a_failover_the_new_primary_archives_into_the_same_stanza() {
    let s = server();
    let mut h2 = premium_on_h2(&s, &["--version", "15"]);
    wait_protected(&s, "WHITE");
    psql(
        &s,
        "sushi",
        "WHITE",
        "create table w (id int primary key); insert into w select generate_series(1, 10)",
    );
    lose_host(&mut h2);
    eventually(Duration::from_secs(60), "WHITE moves to host local", || {
        host_of_white(&s) == "local"
    });
    eventually(Duration::from_secs(30), "WHITE takes writes", || {
        s.cli(&[
            "pg:psql",
            "WHITE",
            "--app",
            "sushi",
            "-c",
            "insert into w values (20)",
        ])
        .success()
    });
    // A moment on the new timeline, before the new primary's own base
    // backup: the old primary's backup and WAL across the timeline switch.
    let on_new_timeline = now_on(&s, "WHITE");
    let base = s
        .cli(&["pg:info", "WHITE", "--app", "sushi", "--json"])
        .ok()
        .json()["rollback"]["last_base_backup"]
        .clone();
    eprintln!("noted {on_new_timeline} on the new timeline; newest base backup then: {base}");
    // The new primary's own base backup, into the same stanza.
    eventually(
        Duration::from_secs(180),
        "a base backup of the new primary",
        || {
            s.log()
                .contains("a base backup of the new primary after a failover")
                && s.log().matches("base backup done").count() >= 2
        },
    );
    psql(&s, "sushi", "WHITE", "insert into w values (30)");
    std::thread::sleep(Duration::from_millis(300));
    let noted = now_on(&s, "WHITE");
    std::thread::sleep(Duration::from_millis(300));
    psql(&s, "sushi", "WHITE", "insert into w values (40)");

    let first = rollback(&s, "WHITE", &on_new_timeline);
    assert_eq!(
        count(&s, &first, "select count(*) from w where id = 20"),
        "1"
    );
    assert_eq!(
        count(&s, &first, "select count(*) from w where id = 30"),
        "0"
    );
    let back = rollback(&s, "WHITE", &noted);
    assert_eq!(
        count(&s, &back, "select count(*) from w where id in (20, 30)"),
        "2",
        "written after the failover, before the noted time"
    );
    assert_eq!(
        count(&s, &back, "select count(*) from w where id = 40"),
        "0"
    );
    assert_eq!(
        count(&s, &back, "select count(*) from w where id <= 10"),
        "10"
    );
    let stanzas: Vec<_> = std::fs::read_dir(s.data_dir().join("pgbackrest/archive"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    // WHITE's lineage (one stanza for both primaries), and the rollbacks'
    // own once they are protected.
    assert!(!stanzas.is_empty() && stanzas.len() <= 3, "{stanzas:?}");
}

#[test]
fn a_rollback_interrupted_by_a_killed_serve_finishes_after_the_restart() {
    let mut s = server();
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
    wait_protected(&s, "WHITE");
    psql(
        &s,
        "sushi",
        "WHITE",
        "create table t (id int primary key); insert into t select generate_series(1, 500)",
    );
    std::thread::sleep(Duration::from_millis(300));
    let noted = now_on(&s, "WHITE");
    std::thread::sleep(Duration::from_millis(300));
    psql(&s, "sushi", "WHITE", "insert into t values (501)");
    s.cli(&[
        "addons:create",
        "standard-0",
        "--rollback",
        "WHITE",
        "--to",
        &noted,
        "--app",
        "sushi",
    ])
    .ok();
    eventually(Duration::from_secs(60), "the restore has started", || {
        s.log()
            .contains("restoring the source's archive as it was at the rollback's moment")
    });
    s.kill9();
    s.restart().unwrap();
    wait_available(&s, "sushi");
    assert_eq!(count(&s, "CHARCOAL", "select count(*) from t"), "500");
    assert_eq!(
        s.running_postmasters().len(),
        2,
        "WHITE and CHARCOAL, nothing else"
    );
    let dir = cluster_dir_of(&s, "sushi", "CHARCOAL");
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("pgdata.") || n == "restore.pgbackrest.conf")
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
