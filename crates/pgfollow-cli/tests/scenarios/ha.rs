//! HA: a hidden standby for premium and enterprise databases, restart of a
//! crashed postgres, failover when the primary's host is lost, rejoin, sync
//! mode, and no failover for a short stall.

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use pgfollow_testkit::AgentProcess;

use crate::common::*;

pub(crate) fn ha_status(s: &Server) -> String {
    s.cli(&["pg:info", "WHITE", "--app", "sushi", "--json"])
        .ok()
        .json()["ha_status"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

pub(crate) fn wait_ha_available(s: &Server) {
    eventually(Duration::from_secs(120), "HA Status: Available", || {
        ha_status(s) == "Available"
    });
}

pub(crate) fn host_of_white(s: &Server) -> String {
    s.cli(&["pg:info", "WHITE", "--app", "sushi", "--json"])
        .ok()
        .json()["host"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The primary on `h2`, its standby on `local`.
pub(crate) fn premium_on_h2(s: &Server, extra: &[&str]) -> AgentProcess {
    let h2 = AgentProcess::start(bin(), s, "h2", Some("zone-b")).unwrap();
    s.cli(&["apps:create", "sushi"]).ok();
    let mut args = vec!["addons:create", "premium-0", "--app", "sushi"];
    args.extend_from_slice(extra);
    s.cli(&args).ok();
    wait_available(s, "sushi");
    assert_eq!(host_of_white(s), "h2");
    wait_ha_available(s);
    h2
}

/// Loses host h2: its agent and its postgres die at once.
pub(crate) fn lose_host(h2: &mut AgentProcess) -> Instant {
    let pids = h2.running_postmasters();
    let at = Instant::now();
    h2.signal(Signal::SIGKILL);
    h2.kill_bouncers();
    for pid in pids {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    at
}

#[test]
fn a_premium_database_has_a_hidden_standby_and_shows_ha_status() {
    let s = server();
    app_with_database(&s, "sushi", "premium-0");
    wait_ha_available(&s);
    let text = s.cli(&["pg:info", "--app", "sushi"]).ok().stdout;
    assert!(text.contains("HA Status:   Available"), "{text}");
    assert!(
        !text.contains("Followers:"),
        "the standby is hidden:\n{text}"
    );
    let addons = s.cli(&["addons", "--app", "sushi", "--json"]).ok().json();
    assert_eq!(addons.as_array().unwrap().len(), 1);
    assert_eq!(s.running_postmasters().len(), 2, "primary and standby");
    let vars = s.cli(&["config", "--app", "sushi", "--json"]).ok().json();
    assert_eq!(vars["vars"].as_object().unwrap().len(), 2, "{vars}");
    // A standard database has no HA status.
    add_database(&s, "sushi", "standard-0");
    let charcoal = s
        .cli(&["pg:info", "CHARCOAL", "--app", "sushi", "--json"])
        .ok()
        .json();
    assert!(charcoal["ha_status"].is_null());
    // Destroying the primary takes its standby along.
    s.cli(&[
        "addons:destroy",
        "WHITE",
        "--app",
        "sushi",
        "--confirm",
        "sushi",
    ])
    .ok();
    eventually(Duration::from_secs(60), "only CHARCOAL is left", || {
        s.running_postmasters().len() == 1
    });
}

#[test]
fn a_crashed_postgres_is_restarted_not_failed_over() {
    let s = server();
    let h2 = premium_on_h2(&s, &[]);
    let main = config_get(&s, "sushi", "DATABASE_URL");
    psql_url(&main, "create table t (id int)").ok();
    let pids = h2.running_postmasters();
    assert_eq!(pids.len(), 1);
    kill(Pid::from_raw(pids[0]), Signal::SIGKILL).unwrap();
    let killed = Instant::now();
    eventually(Duration::from_secs(30), "writes work again", || {
        psql_url(&main, "insert into t values (1)").success()
    });
    eprintln!(
        "crashed postgres: writes again after {:?}",
        killed.elapsed()
    );
    assert_eq!(host_of_white(&s), "h2", "no failover");
    assert!(!s.log().contains("failed over"), "{}", s.log());
}

#[test]
fn a_lost_host_fails_over_to_the_standby_which_the_old_primary_rejoins_by_rewind() {
    let s = server();
    let mut h2 = premium_on_h2(&s, &[]);
    let main = config_get(&s, "sushi", "DATABASE_URL");
    psql_url(&main, "create table w (id bigint primary key)").ok();
    let writer = Writer::start(&main, "w", Duration::from_secs(90));
    writer.warm_up();
    let lost = lose_host(&mut h2);
    eventually(Duration::from_secs(30), "WHITE moves to host local", || {
        host_of_white(&s) == "local"
    });
    eventually(
        Duration::from_secs(30),
        "writes work again through DATABASE_URL",
        || psql_url(&main, "insert into w values (-1)").success(),
    );
    eprintln!("lost host: writes again after {:?}", lost.elapsed());
    std::thread::sleep(Duration::from_millis(500));
    let report = writer.finish();
    let new_primary = config_get(&s, "sushi", "PGFOLLOW_POSTGRESQL_WHITE_URL");
    let on_new = ids(&new_primary, "w");
    let after_failover: Vec<_> = report
        .acked
        .iter()
        .filter(|id| !on_new.contains(id))
        .collect();
    // Asynchronous replication may lose the last commits before the loss;
    // never any after the failover.
    assert!(
        after_failover.len() < 50,
        "too many lost: {}",
        after_failover.len()
    );
    assert!(s.log().contains("failed over"), "{}", s.log());
    assert_eq!(ha_status(&s), "Temporarily Unavailable");

    // The old primary's host comes back: it rejoins as the standby, from a
    // fresh copy, and never takes writes as a primary.
    h2.restart().unwrap();
    wait_ha_available(&s);
    assert_eq!(h2.running_postmasters().len(), 1);
    let standby_dir = std::fs::read_dir(h2.data_dir().join("clusters"))
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    assert!(
        standby_dir.join("pgdata/standby.signal").exists(),
        "it rejoined as a standby"
    );
    let log = s.log();
    assert!(log.contains("winding it back with pg_rewind"), "{log}");
    assert!(!log.contains("pg_rewind failed"), "{log}");
    assert_eq!(host_of_white(&s), "local");
    psql_url(&main, "insert into w values (-2)").ok();
}

#[test]
fn in_sync_mode_no_acknowledged_commit_is_lost_on_failover() {
    let s = server();
    let mut h2 = premium_on_h2(&s, &["--sync"]);
    eventually(
        Duration::from_secs(30),
        "commits wait for the standby",
        || s.log().contains("now wait for its standby"),
    );
    let main = config_get(&s, "sushi", "DATABASE_URL");
    psql_url(&main, "create table w (id bigint primary key)").ok();
    let writer = Writer::start(&main, "w", Duration::from_secs(90));
    writer.warm_up();
    lose_host(&mut h2);
    eventually(Duration::from_secs(30), "WHITE moves to host local", || {
        host_of_white(&s) == "local"
    });
    eventually(Duration::from_secs(30), "writes work again", || {
        psql_url(&main, "insert into w values (-1)").success()
    });
    std::thread::sleep(Duration::from_millis(300));
    let report = writer.finish();
    let on_new = ids(
        &config_get(&s, "sushi", "PGFOLLOW_POSTGRESQL_WHITE_URL"),
        "w",
    );
    let lost: Vec<_> = report
        .acked
        .iter()
        .filter(|id| !on_new.contains(id))
        .collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    assert!(report.acked.len() > 10);
}

#[test]
fn a_short_stall_of_the_primarys_host_is_not_a_failover() {
    let s = server();
    let mut h2 = premium_on_h2(&s, &[]);
    let pids: Vec<i32> = h2.running_postmasters();
    let agent = h2.pid().unwrap() as i32;
    let all: Vec<i32> = std::iter::once(agent).chain(pids).collect();
    for p in &all {
        let _ = kill(Pid::from_raw(*p), Signal::SIGSTOP);
    }
    std::thread::sleep(Duration::from_millis(1000));
    for p in &all {
        let _ = kill(Pid::from_raw(*p), Signal::SIGCONT);
    }
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(host_of_white(&s), "h2");
    assert!(!s.log().contains("failed over"), "{}", s.log());
    let main = config_get(&s, "sushi", "DATABASE_URL");
    psql_url(&main, "select 1").ok();
    let _ = &mut h2;
}

#[test]
fn when_the_old_primarys_host_stays_down_a_new_standby_is_built_and_its_files_go_later() {
    let s = server();
    let mut h2 = premium_on_h2(&s, &[]);
    lose_host(&mut h2);
    eventually(Duration::from_secs(30), "WHITE moves to host local", || {
        host_of_white(&s) == "local"
    });
    // Without h2 a new standby is built on the only host left.
    wait_ha_available(&s);
    assert_eq!(
        s.running_postmasters().len(),
        2,
        "primary and new standby on local"
    );
    assert!(s.log().contains("building a new standby"), "{}", s.log());
    // When h2 is back, the old primary's files are removed, not started.
    h2.restart().unwrap();
    eventually(
        Duration::from_secs(60),
        "h2 holds no cluster any more",
        || {
            std::fs::read_dir(h2.data_dir().join("clusters"))
                .map(|d| d.count() == 0)
                .unwrap_or(true)
        },
    );
    assert!(h2.running_postmasters().is_empty());
    assert_eq!(ha_status(&s), "Available");
}

#[test]
fn an_agent_cut_off_from_the_control_plane_stops_its_primary_and_nothing_fails_over() {
    let mut s = server();
    let h2 = premium_on_h2(&s, &[]);
    assert_eq!(h2.running_postmasters().len(), 1);
    // The control plane freezes for 3 s: h2 hears nothing past its lease.
    let serve = s.pid().unwrap() as i32;
    kill(Pid::from_raw(serve), Signal::SIGSTOP).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let fenced = h2.running_postmasters().is_empty();
    kill(Pid::from_raw(serve), Signal::SIGCONT).unwrap();
    assert!(
        fenced,
        "the agent kept its primary running without the control plane"
    );
    assert!(h2.log().contains("fenced cluster"), "{}", h2.log());
    // Back: no failover (the control plane knows it was the one frozen);
    // the primary is started again where it was.
    let main = config_get(&s, "sushi", "DATABASE_URL");
    eventually(Duration::from_secs(90), "writes work again", || {
        psql_url(&main, "select 1").success()
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(host_of_white(&s), "h2");
    assert!(!s.log().contains("failed over"), "{}", s.log());
    let _ = &mut s;
}

#[test]
fn a_standby_beyond_the_lag_limit_is_not_promoted_and_pg_info_says_why() {
    // A limit of 0 MB: any WAL the standby has not replayed is too much.
    let s = Server::start_with(bin(), &["--ha-max-lag-mb", "0"]).unwrap();
    let mut h2 = AgentProcess::start(bin(), &s, "h2", None).unwrap();
    s.cli(&["apps:create", "sushi"]).ok();
    s.cli(&["addons:create", "premium-0", "--app", "sushi"])
        .ok();
    wait_available(&s, "sushi");
    wait_ha_available(&s);
    let main = config_get(&s, "sushi", "DATABASE_URL");
    psql_url(&main, "create table w (id bigint primary key)").ok();
    // The standby (the one cluster on host local) stops replaying, and
    // writers put it behind.
    let standby = cluster_dirs(&s)[0].clone();
    let dir = s.data_dir().join("clusters").join(standby);
    superuser_sql_at(&dir, "select pg_wal_replay_pause()");
    let writer = Writer::start(&main, "w", Duration::from_secs(60));
    writer.warm_up();
    std::thread::sleep(Duration::from_secs(1));
    lose_host(&mut h2);
    eventually(
        Duration::from_secs(30),
        "pg:info says why there is no failover",
        || {
            let info = s
                .cli(&["pg:info", "WHITE", "--app", "sushi", "--json"])
                .ok()
                .json();
            info["status_detail"]
                .as_str()
                .unwrap_or_default()
                .contains("behind (limit 0 kB)")
        },
    );
    drop(writer);
    assert_eq!(
        host_of_white(&s),
        "h2",
        "no failover to a standby beyond the limit"
    );
    assert!(s.log().contains("is not failed over"), "{}", s.log());
}
