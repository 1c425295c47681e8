//! `pg:unfollow` and `pg:promote`.

use std::time::Duration;

use crate::common::*;

fn leader_and_follower(s: &Server) {
    app_with_database(s, "sushi", "standard-0");
    psql(
        s,
        "sushi",
        "WHITE",
        "create table t (id int); insert into t values (1)",
    );
    add_follower(s, "sushi", "standard-0", "WHITE");
    wait_available(s, "sushi");
}

fn info_of(s: &Server, db: &str) -> serde_json::Value {
    s.cli(&["pg:info", db, "--app", "sushi", "--json"])
        .ok()
        .json()
}

#[test]
fn an_unfollowed_follower_is_a_writable_fork_with_all_it_received() {
    let s = server();
    leader_and_follower(&s);
    let follower_url = config_get(&s, "sushi", "PGFOLLOW_POSTGRESQL_CHARCOAL_URL");
    let leader_url = config_get(&s, "sushi", "DATABASE_URL");
    eventually(
        Duration::from_secs(30),
        "the row reached the follower",
        || psql_url(&follower_url, "select count(*) from t").stdout == "1\n",
    );

    // A script must confirm; a leader cannot be unfollowed.
    let out = s
        .cli(&["pg:unfollow", "CHARCOAL", "--app", "sushi"])
        .failed();
    assert!(out.stderr.contains("--confirm sushi"), "{}", out.stderr);
    let out = s
        .cli(&[
            "pg:unfollow",
            "WHITE",
            "--app",
            "sushi",
            "--confirm",
            "sushi",
        ])
        .failed();
    assert!(out.stderr.contains("not a follower"), "{}", out.stderr);

    let out = s
        .cli(&[
            "pg:unfollow",
            "CHARCOAL",
            "--app",
            "sushi",
            "--confirm",
            "sushi",
        ])
        .ok();
    assert!(
        out.stdout.contains("Unfollowing CHARCOAL"),
        "{}",
        out.stdout
    );
    eventually(Duration::from_secs(60), "the fork can be followed", || {
        info_of(&s, "CHARCOAL")["fork_follow"] == "Available"
    });
    let fork = info_of(&s, "CHARCOAL");
    assert!(fork["following"].is_null(), "{fork}");
    assert!(info_of(&s, "WHITE")["followers"]
        .as_array()
        .unwrap()
        .is_empty());
    let text = s
        .cli(&["pg:info", "CHARCOAL", "--app", "sushi"])
        .ok()
        .stdout;
    assert!(
        !text.contains("Following:") && !text.contains("Behind By:"),
        "{text}"
    );

    // Writable, with the data it had; the two have gone separate ways.
    psql_url(&follower_url, "insert into t values (2)").ok();
    psql_url(&leader_url, "insert into t values (3)").ok();
    assert_eq!(
        psql_url(
            &follower_url,
            "select string_agg(id::text, ',' order by id) from t"
        )
        .ok()
        .stdout,
        "1,2\n"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        psql_url(
            &leader_url,
            "select string_agg(id::text, ',' order by id) from t"
        )
        .ok()
        .stdout,
        "1,3\n"
    );
    // The leader keeps no slot for it any more.
    assert_eq!(
        psql_url(&leader_url, "select count(*) from pg_replication_slots")
            .ok()
            .stdout,
        "0\n"
    );
    // A second unfollow is refused; the fork itself can now be followed.
    s.cli(&[
        "pg:unfollow",
        "CHARCOAL",
        "--app",
        "sushi",
        "--confirm",
        "sushi",
    ])
    .failed();
    add_follower(&s, "sushi", "standard-0", "CHARCOAL");
    wait_available(&s, "sushi");
    let amber = info_of(&s, "AMBER");
    assert_eq!(amber["following"], "CHARCOAL");
}

#[test]
fn promote_moves_database_url_and_keeps_the_old_one_reachable() {
    let s = server();
    leader_and_follower(&s);
    let white_url = config_get(&s, "sushi", "PGFOLLOW_POSTGRESQL_WHITE_URL");
    let main_url = config_get(&s, "sushi", "DATABASE_URL");
    let port_of = |db: &str| {
        s.cli(&["pg:credentials:url", db, "--app", "sushi", "--json"])
            .ok()
            .json()["port"]
            .to_string()
    };
    // Which PostgreSQL answers through DATABASE_URL (the endpoint).
    let behind_main = || {
        psql_url(&main_url, "select inet_server_port()")
            .ok()
            .stdout
            .trim()
            .to_string()
    };
    assert_eq!(behind_main(), port_of("WHITE"));

    let out = s.cli(&["pg:promote", "WHITE", "--app", "sushi"]).failed();
    assert!(out.stderr.contains("already"), "{}", out.stderr);

    // DATABASE_URL never goes to a read-only follower by itself.
    let out = s
        .cli(&["pg:promote", "CHARCOAL", "--app", "sushi"])
        .failed();
    assert!(out.stderr.contains("read-only follower"), "{}", out.stderr);
    assert!(out.stderr.contains("--unfollow"), "{}", out.stderr);
    assert_eq!(behind_main(), port_of("WHITE"), "nothing changed");
    // With --force it does, and the user is told it stays read-only.
    let out = s
        .cli(&["pg:promote", "CHARCOAL", "--force", "--app", "sushi"])
        .ok();
    assert!(out.stdout.contains("read-only follower"), "{}", out.stdout);
    assert!(
        out.stdout.contains("PGFOLLOW_POSTGRESQL_WHITE_URL"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("now routes to CHARCOAL"),
        "{}",
        out.stdout
    );
    // The app's URL is the same; the endpoint behind it routes to CHARCOAL.
    assert_eq!(config_get(&s, "sushi", "DATABASE_URL"), main_url);
    assert_eq!(behind_main(), port_of("CHARCOAL"));
    assert_eq!(
        config_get(&s, "sushi", "PGFOLLOW_POSTGRESQL_WHITE_URL"),
        white_url
    );
    let infos = info(&s, "sushi");
    assert_eq!(
        infos[0]["color"], "CHARCOAL",
        "DATABASE_URL's database comes first"
    );
    assert_eq!(infos[0]["attachments"][0], "DATABASE_URL");

    // Back to WHITE, then CHARCOAL again with --unfollow: now writable.
    s.cli(&["pg:promote", "WHITE", "--app", "sushi"]).ok();
    let out = s
        .cli(&["pg:promote", "CHARCOAL", "--unfollow", "--app", "sushi"])
        .ok();
    assert!(out.stdout.contains("stops following"), "{}", out.stdout);
    wait_available(&s, "sushi");
    eventually(Duration::from_secs(60), "CHARCOAL is writable", || {
        s.cli(&[
            "pg:psql",
            "--app",
            "sushi",
            "-c",
            "insert into t values (9)",
        ])
        .success()
    });
    assert_eq!(behind_main(), port_of("CHARCOAL"));
}

#[test]
fn a_preparing_database_is_promoted_only_with_force() {
    let s = server();
    app_with_database(&s, "sushi", "standard-0");
    s.cli(&["addons:create", "standard-0", "--app", "sushi"])
        .ok();
    // initdb alone takes over a second: CHARCOAL is still preparing.
    let out = s
        .cli(&["pg:promote", "CHARCOAL", "--app", "sushi"])
        .failed();
    assert!(out.stderr.contains("--force"), "{}", out.stderr);
    s.cli(&["pg:promote", "CHARCOAL", "--force", "--app", "sushi"])
        .ok();
    wait_available(&s, "sushi");
    let infos = info(&s, "sushi");
    assert_eq!(infos[0]["color"], "CHARCOAL");
}

#[test]
fn a_follower_that_leaves_recovery_behind_pgfollows_back_is_stopped() {
    let s = server();
    leader_and_follower(&s);
    let charcoal = config_get(&s, "sushi", "PGFOLLOW_POSTGRESQL_CHARCOAL_URL");
    // Someone promotes the follower by hand: a second writable copy.
    superuser_sql(&s, "sushi", "CHARCOAL", "select pg_promote()");
    eventually(
        Duration::from_secs(30),
        "CHARCOAL is stopped and failed",
        || info_of(&s, "CHARCOAL")["state"] == "failed",
    );
    let detail = info_of(&s, "CHARCOAL")["status_detail"].to_string();
    assert!(detail.contains("left recovery"), "{detail}");
    psql_url(&charcoal, "select 1").failed();
    assert!(s.log().contains("a second writable copy"), "{}", s.log());
}
