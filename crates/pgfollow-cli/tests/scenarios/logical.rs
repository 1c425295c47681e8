//! A logical follower on a newer major (`addons:create --follow DB
//! --version 18` of a 15 leader) and `pg:changeover` to it: a major-version
//! upgrade with writes held for milliseconds, and the refusals of what
//! logical replication cannot carry.

use std::time::Duration;

use crate::common::*;
use crate::versions::two_major_server;
use pgfollow_testkit::Server;

/// sushi with WHITE (PostgreSQL 15, behind DATABASE_URL; table `w` whose
/// `k` comes from a sequence, 100 rows) and CHARCOAL, its logical follower
/// on 18, available.
fn app_with_logical_follower() -> Server {
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
        "create table w (id bigint primary key, k bigserial unique); \
         insert into w (id) select g from generate_series(1000001, 1000100) g",
    );
    s.cli(&[
        "addons:create",
        "standard-0",
        "--follow",
        "WHITE",
        "--version",
        "18",
        "--app",
        "sushi",
    ])
    .ok();
    wait_available(&s, "sushi");
    s
}

fn info_of(s: &Server, color: &str) -> serde_json::Value {
    s.cli(&["pg:info", color, "--app", "sushi", "--json"])
        .ok()
        .json()
}

#[test]
fn logical_follower_on_18_catches_up_and_a_changeover_to_it_loses_nothing() {
    let s = app_with_logical_follower();
    let main = config_get(&s, "sushi", "DATABASE_URL");
    let white = config_get(&s, "sushi", "PGFOLLOW_POSTGRESQL_WHITE_URL");
    let charcoal = config_get(&s, "sushi", "PGFOLLOW_POSTGRESQL_CHARCOAL_URL");

    // It follows WHITE, logically, on 18, with every row.
    let text = s
        .cli(&["pg:info", "CHARCOAL", "--app", "sushi"])
        .ok()
        .stdout;
    assert!(
        text.contains("Following:   PGFOLLOW_POSTGRESQL_WHITE\n")
            && text.contains("Replication: logical (PostgreSQL 15 → 18)\n")
            && text.contains("PG Version:  18."),
        "{text}"
    );
    assert_eq!(ids(&charcoal, "w").len(), 100);
    psql(&s, "sushi", "WHITE", "insert into w (id) values (1000101)");
    eventually(
        Duration::from_secs(20),
        "rows arrive and Behind By is 0",
        || {
            ids(&charcoal, "w").contains(&1000101)
                && info_of(&s, "CHARCOAL")["behind_by"]["commits"] == 0
        },
    );

    let writer = Writer::start(&main, "w", Duration::from_secs(60));
    writer.warm_up();
    let out = s.cli(&["pg:changeover", "CHARCOAL", "--app", "sushi"]).ok();
    eprintln!("{text}\n{}", out.stdout);
    for step in [
        "check",
        "freeze",
        "catch up",
        "hand over",
        "switch",
        "retarget",
    ] {
        assert!(out.stdout.contains(step), "no {step:?} in:\n{}", out.stdout);
    }
    std::thread::sleep(Duration::from_millis(700));
    let report = writer.finish();
    // No duplicate key on `k` either: the sequence carried on.
    assert!(
        report.errors.is_empty(),
        "the writer saw errors: {:?}",
        report.errors
    );
    assert!(
        report.acked.len() > 20,
        "the writer wrote {}",
        report.acked.len()
    );
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
    let on_old = ids(&white, "w");
    assert!(on_old.is_subset(&on_new), "WHITE has rows CHARCOAL lacks");
    assert!(
        on_old.len() < on_new.len(),
        "the writes after the changeover went to WHITE"
    );
    let dup = psql_url(&charcoal, "select count(*) - count(distinct k) from w").ok();
    assert_eq!(dup.stdout.trim(), "0");

    // DATABASE_URL now reaches PostgreSQL 18.
    let v = psql_url(&main, "show server_version").ok().stdout;
    assert!(v.starts_with("18."), "{v}");
    wait_available(&s, "sushi");
    let infos = info(&s, "sushi");
    assert_eq!(infos[0]["color"], "CHARCOAL");
    assert!(infos[0]["following"].is_null());
    // WHITE is left alone, followed by nothing: no slot, no publication.
    eventually(
        Duration::from_secs(20),
        "WHITE's slot and publication go",
        || {
            superuser_sql(
                &s,
                "sushi",
                "WHITE",
                "select count(*) from pg_replication_slots",
            )
            .trim()
                == "0"
        },
    );
    let pubs = psql_url(&white, "select count(*) from pg_publication").ok();
    assert_eq!(pubs.stdout.trim(), "0");
    eprintln!("longest insert during the changeover: {:?}", report.longest);
}

#[test]
fn logical_changeover_is_refused_for_a_table_without_a_key_and_for_ddl_while_following() {
    let s = app_with_logical_follower();
    psql(
        &s,
        "sushi",
        "WHITE",
        "create table log (line text); alter table w add column note text",
    );
    let out = s
        .cli(&["pg:changeover", "CHARCOAL", "--app", "sushi"])
        .failed();
    eprintln!("{}", out.stderr);
    // One line per problem (and the heading).
    assert_eq!(out.stderr.lines().count(), 5, "{}", out.stderr);
    for line in [
        "CHARCOAL cannot take over from WHITE by logical replication; nothing was changed",
        "- table public.log has no primary key or replica identity",
        "- column public.w.note text is on WHITE but not on CHARCOAL",
        "- table public.log is on WHITE but not on CHARCOAL",
    ] {
        assert!(out.stderr.contains(line), "no {line:?} in:\n{}", out.stderr);
    }
    let infos = info(&s, "sushi");
    assert_eq!(infos[0]["color"], "WHITE");
    let charcoal = infos.iter().find(|i| i["color"] == "CHARCOAL").unwrap();
    assert_eq!(charcoal["following"], "WHITE");
    // Writes still go to WHITE through DATABASE_URL.
    let main = config_get(&s, "sushi", "DATABASE_URL");
    let v = psql_url(&main, "show server_version").ok().stdout;
    assert!(v.starts_with("15."), "{v}");

    // pg:unfollow makes it a fork whose sequences went on from WHITE's.
    s.cli(&[
        "pg:unfollow",
        "CHARCOAL",
        "--app",
        "sushi",
        "--confirm",
        "sushi",
    ])
    .ok();
    wait_available(&s, "sushi");
    let charcoal_url = config_get(&s, "sushi", "PGFOLLOW_POSTGRESQL_CHARCOAL_URL");
    let k = psql_url(&charcoal_url, "insert into w (id) values (1) returning k").ok();
    assert!(k.stdout.trim().starts_with("101"), "{}", k.stdout);
    assert!(info_of(&s, "CHARCOAL")["following"].is_null());
    eventually(Duration::from_secs(20), "WHITE's slot goes", || {
        superuser_sql(
            &s,
            "sushi",
            "WHITE",
            "select count(*) from pg_replication_slots",
        )
        .trim()
            == "0"
    });
}
