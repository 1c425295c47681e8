//! Restarts, SIGTERM, SIGKILL in the middle of a provision, and a provision
//! that fails.

use std::os::unix::fs::symlink;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::common::*;

#[test]
fn sigterm_stops_every_database_and_a_restart_brings_them_back_with_data() {
    let mut s = server();
    app_with_database(&s, "sushi", "standard-0");
    add_database(&s, "sushi", "hobby-dev");
    psql(
        &s,
        "sushi",
        "WHITE",
        "create table kept (v text); insert into kept values ('still here')",
    );
    assert_eq!(s.running_postmasters().len(), 2);

    let status = s.signal(Signal::SIGTERM).expect("serve exits on SIGTERM");
    assert!(status.success(), "{status:?}");
    assert!(
        s.running_postmasters().is_empty(),
        "SIGTERM leaves no postgres running"
    );
    assert!(s.log().contains("stopped"), "{}", s.log());

    s.restart().unwrap();
    wait_available(&s, "sushi");
    let infos = info(&s, "sushi");
    assert_eq!(infos.len(), 2);
    assert!(infos.iter().all(|i| i["state"] == "available"), "{infos:?}");
    let out = psql(&s, "sushi", "WHITE", "select v from kept");
    assert!(out.contains("still here"), "{out}");
}

#[test]
fn sigint_also_shuts_down_in_order() {
    let mut s = server();
    app_with_database(&s, "sushi", "hobby-dev");
    let status = s.signal(Signal::SIGINT).expect("serve exits on SIGINT");
    assert!(status.success(), "{status:?}");
    assert!(s.running_postmasters().is_empty());
}

/// Kills serve with SIGKILL once its log shows `marker`, restarts it, and
/// checks the provision finished with nothing orphaned.
fn kill_during_provision(marker: &str) {
    let mut s = server();
    s.cli(&["apps:create", "sushi"]).ok();
    s.cli(&["addons:create", "standard-0", "--app", "sushi"])
        .ok();
    eventually(
        Duration::from_secs(60),
        &format!("log shows {marker:?}"),
        || s.log().contains(marker),
    );
    s.kill9();
    s.restart().unwrap();
    wait_available(&s, "sushi");
    assert_eq!(info(&s, "sushi").len(), 1);
    assert_eq!(cluster_dirs(&s).len(), 1, "one cluster directory");
    let cluster = s.data_dir().join("clusters").join(&cluster_dirs(&s)[0]);
    let leftovers: Vec<_> = std::fs::read_dir(&cluster)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("pgdata."))
        .collect();
    assert!(
        leftovers.is_empty(),
        "leftovers of an interrupted step: {leftovers:?}"
    );
    assert_eq!(s.running_postmasters().len(), 1, "exactly one postgres");
    psql(&s, "sushi", "DATABASE_URL", "create table works (id int)");
    let ops = s.log();
    assert!(ops.contains("it is available"), "{ops}");
}

#[test]
fn serve_killed_while_initializing_finishes_the_provision_after_restart() {
    kill_during_provision("initializing one");
}

#[test]
fn serve_killed_after_starting_postgres_finishes_the_provision_after_restart() {
    kill_during_provision("creating its roles and database");
}

#[test]
fn a_provision_that_keeps_failing_shows_failed_with_the_reason_and_leaves_no_files() {
    // PostgreSQL binaries whose initdb always fails.
    let fake = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir("/usr/lib/postgresql/15/bin")
        .unwrap()
        .flatten()
    {
        if entry.file_name() != "initdb" {
            symlink(entry.path(), fake.path().join(entry.file_name())).unwrap();
        }
    }
    let initdb = fake.path().join("initdb");
    std::fs::write(
        &initdb,
        "#!/bin/sh\necho 'initdb: disk on fire' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&initdb, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();

    let s = Server::start_with(bin(), &["--pg-bin", fake.path().to_str().unwrap()]).unwrap();
    s.cli(&["apps:create", "sushi"]).ok();
    s.cli(&["addons:create", "standard-0", "--app", "sushi"])
        .ok();
    let out = s
        .cli(&["pg:wait", "--app", "sushi", "--timeout", "120"])
        .failed();
    assert!(out.stderr.contains("disk on fire"), "{}", out.stderr);
    let infos = info(&s, "sushi");
    assert_eq!(infos[0]["state"], "failed");
    assert!(infos[0]["status_detail"]
        .as_str()
        .unwrap()
        .contains("disk on fire"));
    let text = s.cli(&["pg:info", "--app", "sushi"]).ok().stdout;
    assert!(text.contains("failed"), "{text}");
    assert!(cluster_dirs(&s).is_empty(), "{:?}", cluster_dirs(&s));
    // A failed database is not charged, and can be removed.
    let bill = s.cli(&["billing", "--app", "sushi", "--json"]).ok().json();
    assert!(!bill["lines"][0]["ended_at"].is_null());
    s.cli(&[
        "addons:destroy",
        "WHITE",
        "--app",
        "sushi",
        "--confirm",
        "sushi",
    ])
    .ok();
    eventually(
        Duration::from_secs(30),
        "the failed database is forgotten",
        || info(&s, "sushi").is_empty(),
    );
}
