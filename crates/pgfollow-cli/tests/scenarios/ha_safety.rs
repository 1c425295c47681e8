//! HA you can trust: a hung primary is failed over, a frozen host in sync
//! mode acknowledges nothing the new primary lacks, sync mode goes on
//! without a lost standby (unless strict), a control plane killed in the
//! middle of a failover finishes it after a restart, the other followers
//! follow the new primary, and a premium database that becomes the primary
//! by a changeover gets its standby.

use std::time::{Duration, Instant};

use pgfollow_testkit::AgentProcess;

use crate::common::*;
use crate::ha::{ha_status, host_of_white, lose_host, premium_on_h2, wait_ha_available};

fn writes_back(main: &str, table: &str, limit: Duration) {
    eventually(limit, "writes work again through DATABASE_URL", || {
        psql_url(main, &format!("insert into {table} values (-1)")).success()
    });
}

#[test]
fn a_primary_that_answers_no_query_is_fenced_and_failed_over() {
    let s = server();
    let h2 = premium_on_h2(&s, &[]);
    let main = config_get(&s, "sushi", "DATABASE_URL");
    psql_url(&main, "create table w (id bigint primary key)").ok();
    let postmaster = h2.running_postmasters()[0];
    let mut pids = vec![postmaster];
    pids.extend(children_of(postmaster));
    // The postmaster and every backend hang; the agent is fine.
    let frozen = Frozen::stop(pids.clone());
    let hung = Instant::now();
    eventually(Duration::from_secs(30), "WHITE moves to host local", || {
        host_of_white(&s) == "local"
    });
    writes_back(&main, "w", Duration::from_secs(30));
    let took = hung.elapsed();
    eprintln!("hung primary: writes back after {took:?}");
    assert!(took < Duration::from_secs(15), "took {took:?}");
    let log = s.log();
    assert!(log.contains("answered no query"), "{log}");
    assert!(log.contains("stopped the old primary"), "{log}");
    // The fence killed the hung processes: none of them runs any more.
    for p in &pids {
        let state = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
        assert!(
            state.is_empty() || state.contains(") Z "),
            "process {p} of the old primary still exists: {state}"
        );
    }
    drop(frozen);
}

#[test]
fn a_frozen_primary_host_in_sync_mode_acknowledges_nothing_the_new_primary_lacks() {
    let s = server();
    let h2 = premium_on_h2(&s, &["--sync"]);
    eventually(
        Duration::from_secs(30),
        "commits wait for the standby",
        || s.log().contains("now wait for its standby"),
    );
    let main = config_get(&s, "sushi", "DATABASE_URL");
    let old = config_get(&s, "sushi", "PGFOLLOW_POSTGRESQL_WHITE_URL");
    psql_url(&main, "create table w (id bigint primary key)").ok();
    psql_url(&main, "create table direct (id bigint primary key)").ok();
    // One writer through the endpoint, one that keeps its own connection
    // to the old primary, as an app on the colour URL would.
    let through = Writer::start(&main, "w", Duration::from_secs(90));
    let direct = Writer::start(&old, "direct", Duration::from_secs(90));
    through.warm_up();
    let postmaster = h2.running_postmasters()[0];
    let mut pids = vec![h2.pid().unwrap() as i32, postmaster];
    pids.extend(children_of(postmaster));
    let mut frozen = Frozen::stop(pids);
    std::thread::sleep(Duration::from_secs(4));
    frozen.thaw();
    eventually(Duration::from_secs(30), "WHITE moves to host local", || {
        host_of_white(&s) == "local"
    });
    writes_back(&main, "w", Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(500));
    let (through, direct) = (through.finish(), direct.finish());
    let new = config_get(&s, "sushi", "PGFOLLOW_POSTGRESQL_WHITE_URL");
    for (name, report, table) in [("endpoint", &through, "w"), ("direct", &direct, "direct")] {
        let on_new = ids(&new, table);
        let missing: Vec<_> = report
            .acked
            .iter()
            .filter(|id| !on_new.contains(id))
            .collect();
        assert!(
            missing.is_empty(),
            "{name} writer: acknowledged but not on the new primary: {missing:?}"
        );
    }
    assert!(through.acked.len() > 5, "{through:?}");
    assert!(
        h2.log().contains("fencing this host's primaries"),
        "{}",
        h2.log()
    );
}

/// A premium primary on h2 with its standby on h3, in sync mode.
fn sync_primary_with_standby_on_h3(s: &Server, sync: &str) -> (AgentProcess, AgentProcess) {
    let h2 = AgentProcess::start(bin(), s, "h2", None).unwrap();
    let h3 = AgentProcess::start(bin(), s, "h3", None).unwrap();
    s.cli(&["apps:create", "sushi"]).ok();
    let mut args = vec!["addons:create", "premium-0", "--app", "sushi", "--sync"];
    if !sync.is_empty() {
        args.push(sync);
    }
    s.cli(&args).ok();
    wait_available(s, "sushi");
    wait_ha_available(s);
    assert_eq!(host_of_white(s), "h2");
    assert_eq!(h3.running_postmasters().len(), 1, "the standby is on h3");
    eventually(
        Duration::from_secs(30),
        "commits wait for the standby",
        || s.log().contains("now wait for its standby"),
    );
    (h2, h3)
}

#[test]
fn sync_mode_stops_waiting_for_a_lost_standby_after_the_grace() {
    let s = server();
    let (_h2, mut h3) = sync_primary_with_standby_on_h3(&s, "");
    let main = config_get(&s, "sushi", "DATABASE_URL");
    psql_url(&main, "create table w (id bigint primary key)").ok();
    let lost = lose_host(&mut h3);
    writes_back(&main, "w", Duration::from_secs(20));
    eprintln!(
        "standby lost: commits flow again after {:?}",
        lost.elapsed()
    );
    assert_eq!(
        ha_status(&s),
        "Temporarily Unavailable (synchronous standby lost; commits no longer wait)"
    );
    let text = s.cli(&["pg:info", "--app", "sushi"]).ok().stdout;
    assert!(text.contains("commits no longer wait"), "{text}");
    assert!(
        s.log().contains("commits no longer wait for it"),
        "{}",
        s.log()
    );
    // When the standby is back, commits wait for it again.
    h3.restart().unwrap();
    eventually(Duration::from_secs(60), "HA Status: Available", || {
        ha_status(&s) == "Available"
    });
    assert!(s.log().contains("commits wait for it again"), "{}", s.log());
}

#[test]
fn strict_sync_mode_keeps_waiting_for_a_lost_standby() {
    let s = server();
    let (_h2, mut h3) = sync_primary_with_standby_on_h3(&s, "strict");
    let main = config_get(&s, "sushi", "DATABASE_URL");
    psql_url(&main, "create table w (id bigint primary key)").ok();
    lose_host(&mut h3);
    std::thread::sleep(Duration::from_secs(4));
    let writer = Writer::start(&main, "w", Duration::from_secs(6));
    std::thread::sleep(Duration::from_secs(4));
    let report = writer.finish();
    assert!(
        report.acked.is_empty(),
        "strict mode acknowledged commits without its standby: {report:?}"
    );
    assert!(!s.log().contains("commits no longer wait"), "{}", s.log());
    assert_eq!(ha_status(&s), "Temporarily Unavailable");
}

/// Kills serve right after failover step `step` is recorded, restarts it,
/// and checks the failover finishes with writes through DATABASE_URL.
fn serve_killed_after(step: &str) {
    let point = format!("failover:{step}");
    let mut s = Server::start_with_env(bin(), &[], &[("PGFOLLOW_CRASH_AFTER", &point)]).unwrap();
    let mut h2 = premium_on_h2(&s, &[]);
    let main = config_get(&s, "sushi", "DATABASE_URL");
    psql_url(&main, "create table w (id bigint primary key)").ok();
    lose_host(&mut h2);
    assert!(
        s.wait_exit(Duration::from_secs(30)).is_some(),
        "serve did not stop at {point}"
    );
    assert!(s.log().contains("aborting here"), "{}", s.log());
    s.set_env("PGFOLLOW_CRASH_AFTER", None);
    s.restart().unwrap();
    eventually(Duration::from_secs(30), "WHITE moves to host local", || {
        host_of_white(&s) == "local"
    });
    writes_back(&main, "w", Duration::from_secs(30));
    assert!(s.log().contains("failed over in"), "{}", s.log());
}

#[test]
fn serve_killed_after_the_hold_finishes_the_failover_after_a_restart() {
    serve_killed_after("hold");
}

#[test]
fn serve_killed_after_the_promotion_finishes_the_failover_after_a_restart() {
    serve_killed_after("promote");
}

#[test]
fn the_other_followers_follow_the_new_primary_after_a_failover() {
    let s = server();
    let mut h2 = premium_on_h2(&s, &[]);
    add_follower(&s, "sushi", "standard-0", "DATABASE_URL");
    wait_available(&s, "sushi");
    let main = config_get(&s, "sushi", "DATABASE_URL");
    psql_url(&main, "create table w (id bigint primary key)").ok();
    lose_host(&mut h2);
    eventually(Duration::from_secs(30), "WHITE moves to host local", || {
        host_of_white(&s) == "local"
    });
    writes_back(&main, "w", Duration::from_secs(30));
    psql_url(&main, "insert into w values (42)").ok();
    let follower = config_get(&s, "sushi", "PGFOLLOW_POSTGRESQL_CHARCOAL_URL");
    eventually(
        Duration::from_secs(60),
        "the follower replays a write made after the failover",
        || ids(&follower, "w").contains(&42),
    );
    let mut last = serde_json::Value::Null;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        last = s
            .cli(&["pg:info", "CHARCOAL", "--app", "sushi", "--json"])
            .ok()
            .json();
        if last["behind_by"]["commits"] == 0 && last["state"] == "available" {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(last["behind_by"]["commits"], 0, "{last}");
    assert_eq!(last["state"], "available", "{last}");
}

#[test]
fn a_plan_upgrade_by_changeover_ends_with_ha_available() {
    let s = server();
    app_with_database(&s, "sushi", "premium-0");
    wait_ha_available(&s);
    add_follower(&s, "sushi", "premium-2", "DATABASE_URL");
    wait_available(&s, "sushi");
    s.cli(&["pg:changeover", "CHARCOAL", "--app", "sushi"]).ok();
    eventually(
        Duration::from_secs(120),
        "the new primary's HA Status: Available",
        || {
            let info = s
                .cli(&["pg:info", "CHARCOAL", "--app", "sushi", "--json"])
                .ok()
                .json();
            info["ha_status"] == "Available"
        },
    );
    // WHITE's standby moved with DATABASE_URL: no copy was made for it.
    assert!(
        s.log().contains("WHITE's standby now follows CHARCOAL"),
        "{}",
        s.log()
    );
    assert_eq!(
        ha_status(&s),
        "Temporarily Unavailable (its standby moved with DATABASE_URL at a changeover)"
    );
    assert_eq!(
        s.running_postmasters().len(),
        3,
        "WHITE, CHARCOAL and one standby"
    );
}

/// sushi on a standard plan: WHITE on h2, its follower CHARCOAL on local.
fn standard_leader_on_h2(s: &Server) -> AgentProcess {
    let h2 = AgentProcess::start(bin(), s, "h2", None).unwrap();
    s.cli(&["apps:create", "sushi"]).ok();
    s.cli(&["addons:create", "standard-0", "--app", "sushi"])
        .ok();
    wait_available(s, "sushi");
    assert_eq!(host_of_white(s), "h2");
    let main = config_get(s, "sushi", "DATABASE_URL");
    psql_url(&main, "create table w (id bigint primary key)").ok();
    psql_url(&main, "insert into w values (1)").ok();
    add_follower(s, "sushi", "standard-0", "DATABASE_URL");
    wait_available(s, "sushi");
    h2
}

#[test]
fn manual_failover_when_the_leader_is_gone_unfollow_then_promote() {
    let s = server();
    let mut h2 = standard_leader_on_h2(&s);
    let main = config_get(&s, "sushi", "DATABASE_URL");
    lose_host(&mut h2);
    s.cli(&[
        "pg:unfollow",
        "CHARCOAL",
        "--app",
        "sushi",
        "--confirm",
        "sushi",
    ])
    .ok();
    s.cli(&["pg:wait", "CHARCOAL", "--app", "sushi"]).ok();
    let charcoal = config_get(&s, "sushi", "PGFOLLOW_POSTGRESQL_CHARCOAL_URL");
    psql_url(&charcoal, "insert into w values (2)").ok();
    let out = s.cli(&["pg:promote", "CHARCOAL", "--app", "sushi"]).ok();
    assert!(
        out.stdout.contains("now routes to CHARCOAL"),
        "{}",
        out.stdout
    );
    psql_url(&main, "insert into w values (3)").ok();
    assert_eq!(ids(&charcoal, "w"), [1, 2, 3].into_iter().collect());
    assert!(
        s.log().contains("its slot for this database stays there"),
        "{}",
        s.log()
    );
}

#[test]
fn changeover_with_leader_lost_moves_the_app_in_one_command_and_is_refused_while_the_leader_answers(
) {
    let s = server();
    let mut h2 = standard_leader_on_h2(&s);
    let main = config_get(&s, "sushi", "DATABASE_URL");
    let out = s
        .cli(&[
            "pg:changeover",
            "CHARCOAL",
            "--leader-lost",
            "--app",
            "sushi",
        ])
        .failed();
    assert!(out.stderr.contains("still answers"), "{}", out.stderr);
    lose_host(&mut h2);
    let out = s
        .cli(&[
            "pg:changeover",
            "CHARCOAL",
            "--leader-lost",
            "--app",
            "sushi",
        ])
        .ok();
    assert!(out.stdout.contains("received"), "{}", out.stdout);
    psql_url(&main, "insert into w values (2)").ok();
    let charcoal = config_get(&s, "sushi", "PGFOLLOW_POSTGRESQL_CHARCOAL_URL");
    assert_eq!(ids(&charcoal, "w"), [1, 2].into_iter().collect());
}

#[test]
fn an_open_transaction_on_database_url_does_not_hold_up_a_failover() {
    let s = server();
    let mut h2 = premium_on_h2(&s, &[]);
    let main = config_get(&s, "sushi", "DATABASE_URL");
    psql_url(&main, "create table w (id bigint primary key)").ok();
    let open = OpenTransaction::start(&main, "w");
    let lost = lose_host(&mut h2);
    writes_back(&main, "w", Duration::from_secs(30));
    let took = lost.elapsed();
    eprintln!("failover with an open transaction: writes back after {took:?}");
    assert!(took < Duration::from_secs(8), "took {took:?}");
    assert!(
        open.finish().is_err(),
        "the open transaction's client gets an error"
    );
}

#[test]
fn a_prepared_statement_works_on_the_same_connection_across_a_failover() {
    let s = server();
    let mut h2 = premium_on_h2(&s, &[]);
    let main = config_get(&s, "sushi", "DATABASE_URL");
    psql_url(&main, "create table w (id bigint primary key, at text)").ok();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (client, insert) = rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&main, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let insert = client
            .prepare("INSERT INTO w (id, at) VALUES ($1, current_setting('port'))")
            .await
            .unwrap();
        client.execute(&insert, &[&1i64]).await.unwrap();
        (client, insert)
    });
    // The connection is idle when the host is lost (a transaction in
    // flight then would fail, as it should).
    lose_host(&mut h2);
    eventually(Duration::from_secs(30), "WHITE moves to host local", || {
        host_of_white(&s) == "local"
    });
    // The same connection and the same named statement: PgBouncer prepares
    // it again on the new primary.
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut id = 2i64;
        loop {
            match client.execute(&insert, &[&id]).await {
                Ok(_) => break,
                Err(e) if Instant::now() < deadline && !client.is_closed() => {
                    eprintln!("insert {id}: {e}");
                    id += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("the prepared statement never worked again: {e}"),
            }
        }
    });
    assert_eq!(host_of_white(&s), "local");
    let new = config_get(&s, "sushi", "PGFOLLOW_POSTGRESQL_WHITE_URL");
    assert!(
        ids(&new, "w").contains(&1),
        "the row from before the failover"
    );
    assert!(ids(&new, "w").len() >= 2, "and one from after it");
}
