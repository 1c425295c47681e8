//! Provisioning, `pg:info`, naming a database, `pg:ps`/`pg:kill`,
//! credentials and destroying.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;

#[test]
fn a_database_is_provisioned_attached_and_described() {
    let s = server();
    s.cli(&["apps:create", "sushi"]).ok();
    let out = s
        .cli(&["addons:create", "standard-0", "--app", "sushi"])
        .ok();
    assert!(out.stdout.contains("pgfollow pg:wait"), "{}", out.stdout);
    assert!(out.stdout.contains("$50/mo"), "{}", out.stdout);
    assert!(
        out.stdout.contains("PGFOLLOW_POSTGRESQL_WHITE_URL"),
        "{}",
        out.stdout
    );
    let wait = s
        .cli(&["pg:wait", "--app", "sushi", "--timeout", "120"])
        .ok();
    assert!(
        wait.stdout.contains("Waiting for database") && wait.stdout.contains("available"),
        "{}",
        wait.stdout
    );

    let text = s.cli(&["pg:info", "--app", "sushi"]).ok().stdout;
    for label in [
        "=== ",
        "DATABASE_URL",
        "Plan:",
        "Status:",
        "available",
        "Connections:",
        "/120",
        "PG Version:",
        "Created:",
        "Data Size:",
        "Tables:",
        "Fork/Follow:",
        "Available",
    ] {
        assert!(text.contains(label), "pg:info lacks {label:?}:\n{text}");
    }

    // A second database gets the next colour and leaves DATABASE_URL alone.
    let first_url = config_get(&s, "sushi", "DATABASE_URL");
    let second = add_database(&s, "sushi", "hobby-dev");
    let infos = info(&s, "sushi");
    assert_eq!(infos.len(), 2);
    let charcoal = infos.iter().find(|i| i["name"] == second.as_str()).unwrap();
    assert_eq!(charcoal["color"], "CHARCOAL");
    assert_eq!(
        charcoal["attachments"],
        serde_json::json!(["PGFOLLOW_POSTGRESQL_CHARCOAL_URL"])
    );
    assert_eq!(config_get(&s, "sushi", "DATABASE_URL"), first_url);
    assert!(charcoal["fork_follow"].as_str().unwrap().contains("hobby"));

    // Tables and data survive, and pg:info counts them.
    psql(
        &s,
        "sushi",
        "WHITE",
        "create table t (id int); insert into t values (1), (2)",
    );
    let white = s
        .cli(&["pg:info", "WHITE", "--app", "sushi", "--json"])
        .ok()
        .json();
    assert_eq!(white["tables"], 1);
    assert!(white["data_size_bytes"].as_u64().unwrap() > 1_000_000);
    // The newest major the host has (18 where scripts/install-deps ran).
    let hosts = s.cli(&["hosts", "--json"]).ok().json();
    assert_eq!(
        white["pg_version"].as_str().unwrap().split('.').next(),
        hosts[0]["pg_version"].as_str().unwrap().split('.').next()
    );
}

#[test]
fn every_way_of_naming_a_database_finds_it() {
    let s = server();
    let name = app_with_database(&s, "sushi", "standard-0");
    s.cli(&["apps:create", "ramen"]).ok();
    for reference in [
        "WHITE",
        "white",
        "PGFOLLOW_POSTGRESQL_WHITE_URL",
        "PGFOLLOW_POSTGRESQL_WHITE",
        "DATABASE_URL",
        "DATABASE",
        name.as_str(),
    ] {
        let got = s
            .cli(&["pg:info", reference, "--app", "sushi", "--json"])
            .ok()
            .json();
        assert_eq!(got["name"], name.as_str(), "{reference}");
    }
    for reference in ["sushi::DATABASE_URL", "sushi::WHITE"] {
        let got = s
            .cli(&["pg:info", reference, "--app", "ramen", "--json"])
            .ok()
            .json();
        assert_eq!(got["name"], name.as_str(), "{reference}");
    }
    let out = s.cli(&["pg:info", "CHARCOAL", "--app", "sushi"]).failed();
    assert!(out.stderr.starts_with("error: "), "{}", out.stderr);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    s.cli(&["pg:info", "nosuchapp::DATABASE_URL", "--app", "sushi"])
        .failed();
}

#[test]
fn connections_are_listed_cancelled_and_ended() {
    let s = server();
    app_with_database(&s, "sushi", "standard-0");
    let url = config_get(&s, "sushi", "DATABASE_URL");
    let spawn_sleeper = || {
        Command::new("psql")
            .arg(&url)
            .args(["-X", "-c", "select pg_sleep(60)"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let sleeping_pids = || -> Vec<i64> {
        let ps = s.cli(&["pg:ps", "--app", "sushi", "--json"]).ok().json();
        ps.as_array()
            .unwrap()
            .iter()
            .filter(|b| b["query"].as_str().unwrap_or("").contains("pg_sleep"))
            .map(|b| b["pid"].as_i64().unwrap())
            .collect()
    };

    // Cancel: the query stops, the client sees the cancellation.
    let mut sleeper = spawn_sleeper();
    let mut pids = Vec::new();
    eventually(
        Duration::from_secs(30),
        "pg:ps shows the sleeping query",
        || {
            pids = sleeping_pids();
            !pids.is_empty()
        },
    );
    let text = s.cli(&["pg:ps", "--app", "sushi"]).ok().stdout;
    assert!(text.contains("pg_sleep"), "{text}");
    s.cli(&["pg:kill", &pids[0].to_string(), "--app", "sushi"])
        .ok();
    let out = sleeper.wait_with_output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("canceling statement"));

    // --force ends the connection.
    sleeper = spawn_sleeper();
    eventually(Duration::from_secs(30), "the second sleeper shows", || {
        pids = sleeping_pids();
        !pids.is_empty()
    });
    s.cli(&["pg:kill", &pids[0].to_string(), "--force", "--app", "sushi"])
        .ok();
    let out = sleeper.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(sleeping_pids().is_empty());

    // killall ends them all.
    let mut a = spawn_sleeper();
    let mut b = spawn_sleeper();
    eventually(Duration::from_secs(30), "two sleepers show", || {
        sleeping_pids().len() == 2
    });
    s.cli(&["pg:killall", "--app", "sushi"]).ok();
    assert!(!a.wait().unwrap().success());
    assert!(!b.wait().unwrap().success());
    assert!(sleeping_pids().is_empty());

    // An unknown pid is refused with a pointer to pg:ps.
    let out = s.cli(&["pg:kill", "999999", "--app", "sushi"]).failed();
    assert!(out.stderr.contains("pg:ps"), "{}", out.stderr);
}

#[test]
fn credentials_are_shown_and_rotated() {
    let s = server();
    app_with_database(&s, "sushi", "standard-0");
    let creds = s
        .cli(&["pg:credentials:url", "--app", "sushi", "--json"])
        .ok()
        .json();
    let old_url = creds["url"].as_str().unwrap().to_string();
    assert_eq!(
        old_url,
        config_get(&s, "sushi", "PGFOLLOW_POSTGRESQL_WHITE_URL")
    );
    let old_main = config_get(&s, "sushi", "DATABASE_URL");
    assert_eq!(psql_url(&old_main, "select 1").ok().stdout, "1\n");
    assert_eq!(creds["password"].as_str().unwrap().len(), 32);
    assert_eq!(psql_url(&old_url, "select 1").ok().stdout, "1\n");

    // Rotation needs the app's name typed back.
    s.cli(&["pg:credentials:rotate", "--app", "sushi"]).failed();
    s.cli(&[
        "pg:credentials:rotate",
        "--app",
        "sushi",
        "--confirm",
        "sushi",
    ])
    .ok();
    let new_url = config_get(&s, "sushi", "PGFOLLOW_POSTGRESQL_WHITE_URL");
    assert_ne!(new_url, old_url);
    assert_eq!(psql_url(&new_url, "select 1").ok().stdout, "1\n");
    // The endpoint behind DATABASE_URL takes the new password, not the old.
    let new_main = config_get(&s, "sushi", "DATABASE_URL");
    assert_ne!(new_main, old_main);
    assert_eq!(psql_url(&new_main, "select 1").ok().stdout, "1\n");
    psql_url(&old_main, "select 1").failed();
    let refused = psql_url(&old_url, "select 1").failed();
    assert!(
        refused.stderr.contains("password authentication failed"),
        "{}",
        refused.stderr
    );
}

#[test]
fn destroying_a_database_removes_its_cluster_files_and_config_vars() {
    let s = server();
    let white = app_with_database(&s, "sushi", "standard-0");
    let charcoal = add_database(&s, "sushi", "standard-0");
    assert_eq!(cluster_dirs(&s).len(), 2);

    let out = s
        .cli(&["addons:destroy", "CHARCOAL", "--app", "sushi"])
        .failed();
    assert!(out.stderr.contains("--confirm"), "{}", out.stderr);
    let out = s
        .cli(&[
            "addons:destroy",
            "CHARCOAL",
            "--app",
            "sushi",
            "--confirm",
            "sushi",
        ])
        .ok();
    assert!(out.stdout.contains(&charcoal), "{}", out.stdout);
    let vars = s.cli(&["config", "--app", "sushi", "--json"]).ok().json();
    assert!(vars["vars"]
        .get("PGFOLLOW_POSTGRESQL_CHARCOAL_URL")
        .is_none());
    eventually(
        Duration::from_secs(60),
        "CHARCOAL's files are removed",
        || cluster_dirs(&s).len() == 1,
    );
    assert_eq!(s.running_postmasters().len(), 1);
    let addons = s.cli(&["addons", "--app", "sushi", "--json"]).ok().json();
    let names: Vec<&str> = addons
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, [white.as_str()]);
}

#[test]
fn rotations_at_the_same_time_are_serialized_and_the_last_password_works() {
    let s = server();
    app_with_database(&s, "sushi", "standard-0");
    let rotate = || {
        let out = s.cli(&[
            "pg:credentials:rotate",
            "--app",
            "sushi",
            "--confirm",
            "sushi",
        ]);
        (out.success(), out.stderr.clone())
    };
    let (a, b) = std::thread::scope(|t| {
        let a = t.spawn(rotate);
        let b = t.spawn(rotate);
        (a.join().unwrap(), b.join().unwrap())
    });
    assert!(a.0 || b.0, "one rotation goes through: {a:?} {b:?}");
    for (ok, err) in [&a, &b] {
        assert!(*ok || err.contains("under way"), "{err}");
    }
    for var in ["DATABASE_URL", "PGFOLLOW_POSTGRESQL_WHITE_URL"] {
        let url = config_get(&s, "sushi", var);
        assert_eq!(psql_url(&url, "select 1").ok().stdout, "1\n", "{var}");
    }
}

/// Kills serve right after rotation step `step`; after a restart the role,
/// the catalog and the endpoint agree.
fn rotation_interrupted_after(step: &str) {
    let point = format!("rotate:{step}");
    let mut s = Server::start_with_env(bin(), &[], &[("PGFOLLOW_CRASH_AFTER", &point)]).unwrap();
    app_with_database(&s, "sushi", "standard-0");
    let old = config_get(&s, "sushi", "PGFOLLOW_POSTGRESQL_WHITE_URL");
    s.cli(&[
        "pg:credentials:rotate",
        "--app",
        "sushi",
        "--confirm",
        "sushi",
    ])
    .failed();
    assert!(
        s.wait_exit(Duration::from_secs(10)).is_some(),
        "serve stopped at {point}"
    );
    s.set_env("PGFOLLOW_CRASH_AFTER", None);
    s.restart().unwrap();
    eventually(Duration::from_secs(30), "DATABASE_URL logs in", || {
        psql_url(&config_get(&s, "sushi", "DATABASE_URL"), "select 1").success()
    });
    let new = config_get(&s, "sushi", "PGFOLLOW_POSTGRESQL_WHITE_URL");
    assert_ne!(new, old, "the rotation finished");
    assert_eq!(psql_url(&new, "select 1").ok().stdout, "1\n");
    psql_url(&old, "select 1").failed();
}

#[test]
fn a_rotation_interrupted_after_the_role_changed_converges() {
    rotation_interrupted_after("set-password");
}

#[test]
fn a_rotation_interrupted_after_the_catalog_changed_converges() {
    rotation_interrupted_after("commit-password");
}
