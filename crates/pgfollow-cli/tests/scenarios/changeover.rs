//! `pg:changeover` and maintenance, with a writer going through
//! `DATABASE_URL` the whole time.

use std::time::Duration;

use crate::common::*;

/// sushi with WHITE (behind DATABASE_URL, table `w`) and its follower CHARCOAL.
fn app_with_follower(s: &Server) {
    app_with_database(s, "sushi", "standard-0");
    psql(
        s,
        "sushi",
        "WHITE",
        "create table w (id bigint primary key)",
    );
    add_follower(s, "sushi", "standard-0", "WHITE");
    wait_available(s, "sushi");
}

#[test]
fn changeover_moves_a_busy_app_with_a_short_pause_no_error_and_nothing_lost() {
    let s = server();
    app_with_follower(&s);
    let main = config_get(&s, "sushi", "DATABASE_URL");
    let white = config_get(&s, "sushi", "PGFOLLOW_POSTGRESQL_WHITE_URL");
    let charcoal = config_get(&s, "sushi", "PGFOLLOW_POSTGRESQL_CHARCOAL_URL");

    let writer = Writer::start(&main, "w", Duration::from_secs(60));
    writer.warm_up();
    let out = s.cli(&["pg:changeover", "CHARCOAL", "--app", "sushi"]).ok();
    for step in [
        "check",
        "freeze",
        "catch up",
        "promote",
        "switch",
        "retarget",
        "config write",
        "RELOAD",
        "RESUME",
        "Writes were held for",
    ] {
        assert!(out.stdout.contains(step), "no {step:?} in:\n{}", out.stdout);
    }
    std::thread::sleep(Duration::from_millis(700));
    let report = writer.finish();

    assert!(
        report.errors.is_empty(),
        "the writer saw errors: {:?}",
        report.errors
    );
    assert!(
        report.acked.len() > 20,
        "the writer wrote: {}",
        report.acked.len()
    );
    // Every acknowledged commit is on the new primary.
    let on_new = ids(&charcoal, "w");
    let missing: Vec<_> = report
        .acked
        .iter()
        .filter(|id| !on_new.contains(id))
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged but missing on CHARCOAL: {missing:?}"
    );
    // The old primary took nothing after the freeze: all it has, the new
    // one has, and the writes after the changeover are not there.
    let on_old = ids(&white, "w");
    assert!(on_old.is_subset(&on_new), "WHITE has rows CHARCOAL lacks");
    assert!(
        on_old.len() < on_new.len(),
        "the writes after the changeover went to WHITE"
    );
    // The app now writes to CHARCOAL through the same URL.
    assert_eq!(config_get(&s, "sushi", "DATABASE_URL"), main);
    psql_url(&main, "insert into w values (1000000)").ok();
    assert!(ids(&charcoal, "w").contains(&1000000));
    wait_available(&s, "sushi");
    let infos = info(&s, "sushi");
    assert_eq!(infos[0]["color"], "CHARCOAL");
    assert!(infos[0]["following"].is_null());
    eprintln!("longest insert during the changeover: {:?}", report.longest);
}

#[test]
fn changeover_is_refused_or_dry_run_without_touching_anything() {
    let s = server();
    app_with_follower(&s);
    add_database(&s, "sushi", "standard-0"); // AMBER: not a follower
    let out = s
        .cli(&["pg:changeover", "AMBER", "--app", "sushi"])
        .failed();
    assert!(
        out.stderr.contains("not a follower of WHITE"),
        "{}",
        out.stderr
    );
    let out = s
        .cli(&["pg:changeover", "WHITE", "--app", "sushi"])
        .failed();
    assert!(out.stderr.contains("not a follower"), "{}", out.stderr);

    let out = s
        .cli(&["pg:changeover", "CHARCOAL", "--app", "sushi", "--dry-run"])
        .ok();
    assert!(
        out.stdout.contains("Dry run") && out.stdout.contains("freeze"),
        "{}",
        out.stdout
    );
    let infos = info(&s, "sushi");
    assert_eq!(infos[0]["color"], "WHITE");
    let charcoal = infos.iter().find(|i| i["color"] == "CHARCOAL").unwrap();
    assert_eq!(charcoal["following"], "WHITE");
}

#[test]
fn a_changeover_that_cannot_catch_up_resumes_on_the_old_primary_with_nothing_lost() {
    let s = server();
    app_with_follower(&s);
    let main = config_get(&s, "sushi", "DATABASE_URL");
    let white = config_get(&s, "sushi", "PGFOLLOW_POSTGRESQL_WHITE_URL");
    // The follower stops replaying: it can never be 0 commits behind.
    superuser_sql(&s, "sushi", "CHARCOAL", "select pg_wal_replay_pause()");

    let writer = Writer::start(&main, "w", Duration::from_secs(60));
    writer.warm_up();
    let out = s
        .cli(&[
            "pg:changeover",
            "CHARCOAL",
            "--app",
            "sushi",
            "--catch-up-timeout",
            "2",
        ])
        .failed();
    assert!(out.stderr.contains("resumed on WHITE"), "{}", out.stderr);
    std::thread::sleep(Duration::from_millis(500));
    let report = writer.finish();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let on_white = ids(&white, "w");
    assert!(
        report.acked.iter().all(|id| on_white.contains(id)),
        "lost commits"
    );
    assert!(
        report.longest >= Duration::from_secs(2),
        "the writer was held: {:?}",
        report.longest
    );
    let infos = info(&s, "sushi");
    assert_eq!(infos[0]["color"], "WHITE");
}

#[test]
fn maintenance_refuses_connections_through_database_url_until_it_is_off() {
    let s = server();
    app_with_database(&s, "sushi", "standard-0");
    let main = config_get(&s, "sushi", "DATABASE_URL");
    let direct = config_get(&s, "sushi", "PGFOLLOW_POSTGRESQL_WHITE_URL");
    psql_url(&main, "create table m (id int)").ok();
    assert_eq!(
        s.cli(&["maintenance", "--app", "sushi"]).ok().stdout,
        "off\n"
    );

    let out = s.cli(&["maintenance:on", "--app", "sushi"]).ok();
    assert!(out.stdout.contains("refused"), "{}", out.stdout);
    assert_eq!(
        s.cli(&["maintenance", "--app", "sushi"]).ok().stdout,
        "on\n"
    );
    let refused = psql_url(&main, "insert into m values (1)").failed();
    assert!(!refused.stderr.is_empty());
    assert_eq!(
        psql_url(&direct, "select count(*) from m").ok().stdout,
        "0\n"
    );

    s.cli(&["maintenance:off", "--app", "sushi"]).ok();
    psql_url(&main, "insert into m values (2)").ok();
    assert_eq!(
        psql_url(&direct, "select count(*) from m").ok().stdout,
        "1\n"
    );
}

#[test]
fn a_transaction_left_open_does_not_hold_up_a_changeover_it_is_ended() {
    let s = server();
    app_with_follower(&s);
    let main = config_get(&s, "sushi", "DATABASE_URL");
    let idle = OpenTransaction::start(&main, "w");
    let started = std::time::Instant::now();
    let out = s.cli(&["pg:changeover", "CHARCOAL", "--app", "sushi"]).ok();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(out.stdout.contains("were ended"), "{}", out.stdout);
    assert!(
        idle.finish().is_err(),
        "the open transaction's client gets an error"
    );
    psql_url(&main, "insert into w values (1)").ok();
    let charcoal = config_get(&s, "sushi", "PGFOLLOW_POSTGRESQL_CHARCOAL_URL");
    assert!(ids(&charcoal, "w").contains(&1), "writes go to CHARCOAL");
    assert!(
        !ids(&charcoal, "w").contains(&-7),
        "the open transaction rolled back"
    );
}

#[test]
fn with_no_kill_a_transaction_left_open_stops_the_changeover_and_writes_resume() {
    let s = server();
    app_with_follower(&s);
    let main = config_get(&s, "sushi", "DATABASE_URL");
    let idle = OpenTransaction::start(&main, "w");
    let out = s
        .cli(&["pg:changeover", "CHARCOAL", "--app", "sushi", "--no-kill"])
        .failed();
    assert!(out.stderr.contains("--no-kill"), "{}", out.stderr);
    assert!(out.stderr.contains("resumed on WHITE"), "{}", out.stderr);
    idle.finish()
        .expect("the open transaction was left alone and commits");
    psql_url(&main, "insert into w values (1)").ok();
    let white = config_get(&s, "sushi", "PGFOLLOW_POSTGRESQL_WHITE_URL");
    let on_white = ids(&white, "w");
    assert!(
        on_white.contains(&1) && on_white.contains(&-7),
        "{on_white:?}"
    );
}

#[test]
fn serve_killed_in_the_middle_of_a_changeover_finishes_it_after_a_restart() {
    let mut s =
        Server::start_with_env(bin(), &[], &[("PGFOLLOW_CRASH_AFTER", "changeover:switch")])
            .unwrap();
    app_with_follower(&s);
    let main = config_get(&s, "sushi", "DATABASE_URL");
    s.cli(&["pg:changeover", "CHARCOAL", "--app", "sushi"])
        .failed();
    assert!(
        s.wait_exit(Duration::from_secs(10)).is_some(),
        "serve stopped"
    );
    s.set_env("PGFOLLOW_CRASH_AFTER", None);
    s.restart().unwrap();
    eventually(
        Duration::from_secs(30),
        "writes work through DATABASE_URL",
        || psql_url(&main, "insert into w values (5)").success(),
    );
    let charcoal = config_get(&s, "sushi", "PGFOLLOW_POSTGRESQL_CHARCOAL_URL");
    assert!(
        ids(&charcoal, "w").contains(&5),
        "the endpoint routes to CHARCOAL"
    );
    assert!(
        s.log()
            .contains("interrupted changeover to CHARCOAL is finished"),
        "{}",
        s.log()
    );
}
