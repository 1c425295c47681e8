//! Followers: creating them, the rules, exact lag, placement and resilience.

use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::common::*;

fn leader_and_follower(s: &Server) -> (String, String) {
    let leader = app_with_database(s, "sushi", "standard-0");
    let out = s
        .cli(&[
            "addons:create",
            "standard-0",
            "--follow",
            "WHITE",
            "--app",
            "sushi",
            "--json",
        ])
        .ok();
    let answer = out.json();
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("read-only queries once it has caught up"),
        "{answer}"
    );
    let follower = answer["database"]["name"].as_str().unwrap().to_string();
    let wait = s
        .cli(&["pg:wait", "--app", "sushi", "--timeout", "180"])
        .ok();
    assert!(wait.stdout.contains("available"), "{}", wait.stdout);
    (leader, follower)
}

#[test]
fn a_follower_streams_every_commit_and_is_read_only() {
    let s = server();
    let (_leader, follower) = leader_and_follower(&s);
    let white = s.cli(&["pg:info", "WHITE", "--app", "sushi"]).ok().stdout;
    assert!(
        white.contains("Followers:   PGFOLLOW_POSTGRESQL_CHARCOAL\n"),
        "{white}"
    );
    // The lag is measured live; on a loaded machine one reading may time out.
    let mut charcoal = String::new();
    eventually(Duration::from_secs(30), "pg:info shows the lag", || {
        charcoal = s
            .cli(&["pg:info", "CHARCOAL", "--app", "sushi"])
            .ok()
            .stdout;
        charcoal.contains(" commit")
    });
    for want in [
        "Following:",
        "WHITE",
        "Behind By:",
        "commit",
        "Unavailable on followers",
        "available",
    ] {
        assert!(
            charcoal.contains(want),
            "pg:info of the follower lacks {want:?}:\n{charcoal}"
        );
    }

    psql(
        &s,
        "sushi",
        "WHITE",
        "create table orders (id int primary key)",
    );
    for i in 0..20 {
        psql(
            &s,
            "sushi",
            "WHITE",
            &format!("insert into orders values ({i})"),
        );
    }
    let follower_url = config_get(&s, "sushi", "PGFOLLOW_POSTGRESQL_CHARCOAL_URL");
    eventually(
        Duration::from_secs(30),
        "the follower has every order",
        || psql_url(&follower_url, "select count(*) from orders").stdout == "20\n",
    );
    let refused = psql_url(&follower_url, "insert into orders values (100)").failed();
    assert!(
        refused.stderr.contains("read-only transaction"),
        "{}",
        refused.stderr
    );

    let json = s
        .cli(&["pg:info", &follower, "--app", "sushi", "--json"])
        .ok()
        .json();
    assert_eq!(json["following"], "WHITE");
    assert!(json["behind_by"]["commits"].is_u64(), "{json}");
    assert!(json["behind_by"]["bytes"].is_u64(), "{json}");
    assert!(json["behind_by"]["seconds"].is_number(), "{json}");
}

#[test]
fn behind_by_counts_commits_exactly() {
    let s = server();
    leader_and_follower(&s);
    psql(&s, "sushi", "WHITE", "create table t (id int)");
    eventually(Duration::from_secs(30), "caught up", || {
        s.cli(&["pg:info", "CHARCOAL", "--app", "sushi", "--json"])
            .ok()
            .json()["behind_by"]["commits"]
            == 0
    });
    superuser_sql(&s, "sushi", "CHARCOAL", "select pg_wal_replay_pause()");
    for i in 0..7 {
        psql(&s, "sushi", "WHITE", &format!("insert into t values ({i})"));
    }
    // A rolled-back transaction is not a commit.
    psql(
        &s,
        "sushi",
        "WHITE",
        "begin; insert into t values (99); rollback;",
    );
    let info = s
        .cli(&["pg:info", "CHARCOAL", "--app", "sushi", "--json"])
        .ok()
        .json();
    assert_eq!(info["behind_by"]["commits"], 7, "{info}");
    assert_eq!(info["behind_by"]["more_than"], false);
    assert!(info["behind_by"]["bytes"].as_u64().unwrap() > 0);
    let text = s
        .cli(&["pg:info", "CHARCOAL", "--app", "sushi"])
        .ok()
        .stdout;
    assert!(text.contains("7 commits"), "{text}");
    superuser_sql(&s, "sushi", "CHARCOAL", "select pg_wal_replay_resume()");
    eventually(Duration::from_secs(30), "caught up again", || {
        s.cli(&["pg:info", "CHARCOAL", "--app", "sushi", "--json"])
            .ok()
            .json()["behind_by"]["commits"]
            == 0
    });
}

#[test]
fn following_is_refused_when_the_rules_say_no() {
    let s = server();
    app_with_database(&s, "sushi", "standard-0");
    add_database(&s, "sushi", "hobby-basic");
    let count = || {
        s.cli(&["addons", "--app", "sushi", "--json"])
            .ok()
            .json()
            .as_array()
            .unwrap()
            .len()
    };
    let refuse = |args: &[&str], want: &str| {
        let out = s.cli(args).failed();
        assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
        assert!(out.stderr.contains(want), "{want:?} not in {}", out.stderr);
    };
    refuse(
        &[
            "addons:create",
            "standard-0",
            "--follow",
            "CHARCOAL",
            "--app",
            "sushi",
        ],
        "hobby",
    );
    refuse(
        &[
            "addons:create",
            "hobby-dev",
            "--follow",
            "WHITE",
            "--app",
            "sushi",
        ],
        "hobby",
    );
    refuse(
        &[
            "addons:create",
            "standard-0",
            "--follow",
            "AMBER",
            "--app",
            "sushi",
        ],
        "no database",
    );
    refuse(
        &[
            "addons:create",
            "standard-0",
            "--follow",
            "postgres://u:p@127.0.0.1:1/x",
            "--app",
            "sushi",
        ],
        "not the URL",
    );
    assert_eq!(count(), 2);

    // No chains.
    add_follower(&s, "sushi", "standard-0", "WHITE");
    wait_available(&s, "sushi");
    refuse(
        &[
            "addons:create",
            "standard-0",
            "--follow",
            "AMBER",
            "--app",
            "sushi",
        ],
        "chained",
    );
    // A leader that is still being created cannot be followed yet.
    s.cli(&["addons:create", "standard-0", "--app", "sushi"])
        .ok();
    refuse(
        &[
            "addons:create",
            "standard-0",
            "--follow",
            "AQUA",
            "--app",
            "sushi",
        ],
        "Temporarily Unavailable",
    );
    wait_available(&s, "sushi");
    assert_eq!(count(), 4);

    // Destroying a leader with followers is refused with their names.
    refuse(
        &[
            "addons:destroy",
            "WHITE",
            "--app",
            "sushi",
            "--confirm",
            "sushi",
        ],
        "AMBER",
    );
}

#[test]
fn a_follower_can_be_named_from_another_app_or_by_url_and_destroying_it_drops_its_slot() {
    let s = server();
    app_with_database(&s, "sushi", "standard-0");
    s.cli(&["apps:create", "ramen"]).ok();
    s.cli(&[
        "addons:create",
        "standard-0",
        "--follow",
        "sushi::DATABASE_URL",
        "--app",
        "ramen",
    ])
    .ok();
    let url = config_get(&s, "sushi", "DATABASE_URL");
    s.cli(&[
        "addons:create",
        "standard-0",
        "--follow",
        &url,
        "--app",
        "ramen",
    ])
    .ok();
    wait_available(&s, "ramen");
    let infos = info(&s, "ramen");
    assert_eq!(infos.len(), 2);
    assert!(
        infos.iter().all(|i| i["following"] == "sushi::WHITE"),
        "{infos:?}"
    );
    let slots = || {
        psql_url(&url, "select count(*) from pg_replication_slots")
            .ok()
            .stdout
    };
    assert_eq!(slots(), "2\n");
    let white = s
        .cli(&["pg:info", "WHITE", "--app", "sushi", "--json"])
        .ok()
        .json();
    assert_eq!(
        white["followers"],
        serde_json::json!(["ramen::WHITE", "ramen::CHARCOAL"])
    );

    s.cli(&[
        "addons:destroy",
        "CHARCOAL",
        "--app",
        "ramen",
        "--confirm",
        "ramen",
    ])
    .ok();
    eventually(
        Duration::from_secs(60),
        "the destroyed follower's slot is dropped",
        || slots() == "1\n",
    );
}

#[test]
fn a_follower_reconnects_after_its_leader_or_itself_restarts() {
    let s = server();
    leader_and_follower(&s);
    psql(&s, "sushi", "WHITE", "create table t (id int)");
    let follower_url = config_get(&s, "sushi", "PGFOLLOW_POSTGRESQL_CHARCOAL_URL");
    let crash = |db: &str| {
        let dir = cluster_dir_of(&s, "sushi", db);
        let pid: i32 = std::fs::read_to_string(dir.join("pgdata/postmaster.pid"))
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    };
    for (round, db) in ["WHITE", "CHARCOAL"].iter().enumerate() {
        crash(db);
        // pgfollow starts it again; the follower catches up by itself.
        eventually(
            Duration::from_secs(60),
            "the leader takes writes again",
            || {
                s.cli(&[
                    "pg:psql",
                    "WHITE",
                    "--app",
                    "sushi",
                    "-c",
                    &format!("insert into t values ({round})"),
                ])
                .success()
            },
        );
        let want = format!("{}\n", round + 1);
        eventually(
            Duration::from_secs(60),
            "the follower has the new row",
            || psql_url(&follower_url, "select count(*) from t").stdout == want,
        );
    }
}

#[test]
fn a_follower_is_placed_on_another_host_and_zone() {
    let s = server();
    let mut h2 = pgfollow_testkit::AgentProcess::start(bin(), &s, "h2", Some("zone-b")).unwrap();
    let hosts = s.cli(&["hosts", "--json"]).ok().json();
    let names: Vec<&str> = hosts
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["h2", "local"]);
    assert_eq!(hosts[0]["zone"], "zone-b");
    assert_eq!(hosts[0]["reachable"], true);

    let (leader, follower) = leader_and_follower(&s);
    let infos = info(&s, "sushi");
    let host_of = |name: &str| {
        infos.iter().find(|i| i["name"] == name).unwrap()["host"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_ne!(
        host_of(&leader),
        host_of(&follower),
        "follower on its leader's host"
    );
    let text = s.cli(&["hosts"]).ok().stdout;
    assert!(
        text.contains("zone-b") && text.contains(&leader) && text.contains(&follower),
        "{text}"
    );
    let info_text = s
        .cli(&["pg:info", "CHARCOAL", "--app", "sushi"])
        .ok()
        .stdout;
    assert!(
        info_text.contains(&format!("Host:        {}", host_of(&follower))),
        "{info_text}"
    );

    // The follower on the other host streams.
    psql(
        &s,
        "sushi",
        "WHITE",
        "create table t (id int); insert into t values (1)",
    );
    let follower_url = config_get(&s, "sushi", "PGFOLLOW_POSTGRESQL_CHARCOAL_URL");
    eventually(
        Duration::from_secs(30),
        "the row reaches the other host",
        || psql_url(&follower_url, "select count(*) from t").stdout == "1\n",
    );
    assert_eq!(h2.running_postmasters().len(), 1);
    assert_eq!(s.running_postmasters().len(), 1);

    // An agent restart keeps its database running and re-attaches.
    h2.restart().unwrap();
    wait_available(&s, "sushi");
    psql(&s, "sushi", "WHITE", "insert into t values (2)");
    eventually(Duration::from_secs(30), "streaming again", || {
        psql_url(&follower_url, "select count(*) from t").stdout == "2\n"
    });

    // Destroying works across hosts.
    s.cli(&[
        "addons:destroy",
        "CHARCOAL",
        "--app",
        "sushi",
        "--confirm",
        "sushi",
    ])
    .ok();
    s.cli(&[
        "addons:destroy",
        "WHITE",
        "--app",
        "sushi",
        "--confirm",
        "sushi",
    ])
    .ok();
    eventually(Duration::from_secs(60), "both clusters are removed", || {
        h2.running_postmasters().is_empty() && s.running_postmasters().is_empty()
    });
}

#[test]
fn a_follower_that_falls_off_its_slot_shows_failed_with_how_to_rebuild_it() {
    let dir = tempfile::tempdir().unwrap();
    let plans = dir.path().join("plans.toml");
    std::fs::write(
        &plans,
        "[[plan]]\nname = \"standard-tiny\"\ntier = \"standard\"\nconnection_limit = 20\n\
         shared_buffers_mb = 32\nwork_mem_mb = 4\nstorage_limit_gb = 1\nmax_slot_wal_keep_mb = 16\n\
         price_per_month = 5\n",
    )
    .unwrap();
    let s = Server::start_with(bin(), &["--plans", plans.to_str().unwrap()]).unwrap();
    app_with_database(&s, "sushi", "standard-tiny");
    s.cli(&[
        "addons:create",
        "standard-tiny",
        "--follow",
        "WHITE",
        "--app",
        "sushi",
    ])
    .ok();
    wait_available(&s, "sushi");

    // Stop the follower while no control plane restarts it.
    let leader_url = config_get(&s, "sushi", "DATABASE_URL");
    let leader_dir = cluster_dir_of(&s, "sushi", "WHITE");
    let follower_dir = cluster_dir_of(&s, "sushi", "CHARCOAL");
    let mut s = s;
    s.kill9();
    let postmaster: i32 = std::fs::read_to_string(follower_dir.join("pgdata/postmaster.pid"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    kill(Pid::from_raw(postmaster), Signal::SIGQUIT).unwrap();
    eventually(Duration::from_secs(30), "the follower stops", || {
        kill(Pid::from_raw(postmaster), None).is_err()
    });

    // Far more WAL than the plan lets the slot keep (16 MB) and than
    // wal_keep_size (64 MB).
    psql_url(&leader_url, "create table big (v text)").ok();
    for _ in 0..4 {
        psql_url(
            &leader_url,
            "insert into big select repeat('x', 200) from generate_series(1, 150000)",
        )
        .ok();
    }
    let superuser = |sql: &str| superuser_sql_at(&leader_dir, sql);
    eventually(
        Duration::from_secs(60),
        "the leader invalidates the slot",
        || {
            superuser("checkpoint");
            superuser("select wal_status from pg_replication_slots") == "lost\n"
        },
    );

    // Back up: pgfollow starts the follower again, and finds it cannot follow.
    s.restart().unwrap();
    eventually(
        Duration::from_secs(60),
        "pg:info says the follower failed",
        || {
            s.cli(&["pg:info", "CHARCOAL", "--app", "sushi", "--json"])
                .ok()
                .json()["state"]
                == "failed"
        },
    );
    let text = s
        .cli(&["pg:info", "CHARCOAL", "--app", "sushi"])
        .ok()
        .stdout;
    assert!(text.contains("failed"), "{text}");
    assert!(text.contains("max_slot_wal_keep_size"), "{text}");
    assert!(
        text.contains("addons:create standard-tiny --follow WHITE"),
        "{text}"
    );
    // The leader is unharmed.
    psql_url(&leader_url, "insert into big values ('still writable')").ok();
}
