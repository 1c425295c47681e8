//! `pg:backups` with real pg_dump and pg_restore: capture, list, info,
//! download (a valid custom-format archive), restore into another database
//! and from 15 into 18, delete, and the refusals.

use std::path::Path;

use crate::common::*;
use crate::versions::{two_major_server, PG18_BIN};

fn color(s: &pgfollow_testkit::Server, args: &[&str]) -> String {
    let mut all = vec!["addons:create"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--app", "sushi", "--json"]);
    s.cli(&all).ok().json()["database"]["color"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn backups_capture_list_info_download_restore_and_delete() {
    let s = two_major_server();
    s.cli(&["apps:create", "sushi"]).ok();
    let white = color(&s, &["standard-0", "--version", "15"]);
    let other = color(&s, &["standard-0", "--version", "15"]);
    let newer = color(&s, &["standard-0", "--version", "18"]);
    wait_available(&s, "sushi");
    psql(
        &s,
        "sushi",
        &white,
        "create table orders (id serial primary key, total int); insert into orders (total) select g from generate_series(1, 5000) g",
    );

    // Capture waits and says it is done.
    let out = s
        .cli(&["pg:backups:capture", &white, "--app", "sushi"])
        .ok();
    assert!(
        out.stdout.contains("Backing up WHITE to b001... done"),
        "{}",
        out.stdout
    );
    let list = s
        .cli(&["pg:backups", "--app", "sushi", "--json"])
        .ok()
        .json();
    assert_eq!(list[0]["name"], "b001", "{list}");
    assert_eq!(list[0]["status"], "completed", "{list}");
    assert_eq!(list[0]["pg_major"], 15, "{list}");
    let size = list[0]["size_bytes"].as_u64().unwrap();
    assert!(size > 10_000, "{list}");
    let text = s.cli(&["pg:backups", "--app", "sushi"]).ok().stdout;
    assert!(
        text.contains("b001") && text.contains("completed"),
        "{text}"
    );
    let info = s
        .cli(&["pg:backups:info", "b001", "--app", "sushi"])
        .ok()
        .stdout;
    assert!(
        info.contains("Status:") && info.contains("completed"),
        "{info}"
    );
    // pg:info shows it.
    let pi = s.cli(&["pg:info", &white, "--app", "sushi"]).ok().stdout;
    assert!(pi.contains("Last Backup: b001 ("), "{pi}");

    // The file on the control plane's host is private.
    let file = s.data_dir().join("backups/sushi/b001.dump");
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&file), 0o600);
    assert_eq!(mode(&s.data_dir().join("backups")), 0o700);
    assert_eq!(mode(&s.data_dir().join("backups/sushi")), 0o700);

    // Download: a valid custom-format archive listing the table.
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("b001.dump");
    s.cli(&[
        "pg:backups:download",
        "b001",
        "--app",
        "sushi",
        "-o",
        out_file.to_str().unwrap(),
    ])
    .ok();
    assert_eq!(std::fs::metadata(&out_file).unwrap().len(), size);
    let toc = std::process::Command::new(Path::new(PG18_BIN).join("pg_restore"))
        .arg("-l")
        .arg(&out_file)
        .output()
        .unwrap();
    assert!(
        toc.status.success(),
        "{}",
        String::from_utf8_lossy(&toc.stderr)
    );
    let toc = String::from_utf8_lossy(&toc.stdout);
    assert!(toc.contains("TABLE public orders"), "{toc}");
    assert!(toc.contains("Format: CUSTOM"), "{toc}");

    // Restore into another 15 database: the rows are there, WHITE untouched.
    psql(&s, "sushi", &other, "create table scratch (x int)");
    let out = s
        .cli(&[
            "pg:backups:restore",
            "b001",
            &other,
            "--app",
            "sushi",
            "--confirm",
            "sushi",
        ])
        .ok();
    assert!(out.stdout.contains("done"), "{}", out.stdout);
    let rows = psql(
        &s,
        "sushi",
        &other,
        "select count(*), sum(total) from orders",
    );
    assert!(rows.contains("5000 | 12502500"), "{rows}");
    // Its own table is still there (restore replaces what the backup has).
    psql(&s, "sushi", &other, "select count(*) from scratch");
    assert!(psql(&s, "sushi", &white, "select count(*) from orders").contains("5000"));

    // Restore 15 -> 18: the documented major-upgrade route.
    let out = s
        .cli(&[
            "pg:backups:restore",
            "b001",
            &newer,
            "--app",
            "sushi",
            "--confirm",
            "sushi",
        ])
        .ok();
    assert!(
        out.stdout.contains("(PostgreSQL 15) into"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("(PostgreSQL 18"), "{}", out.stdout);
    let v = psql(
        &s,
        "sushi",
        &newer,
        "select current_setting('server_version_num'), count(*) from orders",
    );
    assert!(v.contains("180") && v.contains("5000"), "{v}");
    // Writable and its sequence carried over.
    let id = psql(
        &s,
        "sushi",
        &newer,
        "insert into orders (total) values (1) returning id",
    );
    assert!(id.contains("5001"), "{id}");

    // Refusals: one line, non-zero exit, nothing done.
    let e = s
        .cli(&["pg:backups:restore", "b001", &other, "--app", "sushi"])
        .failed();
    assert_eq!(e.stderr.trim().lines().count(), 1, "{}", e.stderr);
    assert!(e.stderr.contains("--confirm sushi"), "{}", e.stderr);
    let e = s
        .cli(&[
            "pg:backups:restore",
            "b042",
            &other,
            "--app",
            "sushi",
            "--confirm",
            "sushi",
        ])
        .failed();
    assert_eq!(e.stderr.trim().lines().count(), 1, "{}", e.stderr);
    assert!(e.stderr.contains("no backup b042"), "{}", e.stderr);
    let e = s
        .cli(&["pg:backups:info", "b042", "--app", "sushi"])
        .failed();
    assert!(e.stderr.contains("no backup b042"), "{}", e.stderr);
    let e = s
        .cli(&["pg:backups:delete", "b001", "--app", "sushi"])
        .failed();
    assert!(e.stderr.contains("--confirm sushi"), "{}", e.stderr);
    assert!(file.exists());

    // Delete removes the record and the file.
    s.cli(&[
        "pg:backups:delete",
        "b001",
        "--app",
        "sushi",
        "--confirm",
        "sushi",
    ])
    .ok();
    assert!(!file.exists());
    let list = s
        .cli(&["pg:backups", "--app", "sushi", "--json"])
        .ok()
        .json();
    assert_eq!(list.as_array().unwrap().len(), 0, "{list}");
    let e = s
        .cli(&[
            "pg:backups:delete",
            "b001",
            "--app",
            "sushi",
            "--confirm",
            "sushi",
        ])
        .failed();
    assert!(e.stderr.contains("no backup b001"), "{}", e.stderr);

    // The next one is b002, never a reused number.
    let out = s.cli(&["pg:backups:capture", "--app", "sushi"]).ok();
    assert!(out.stdout.contains("to b002... done"), "{}", out.stdout);

    // Destroying the app takes its backups (records and files) with it.
    s.cli(&["apps:destroy", "sushi", "--confirm", "sushi"]).ok();
    assert!(!s.data_dir().join("backups/sushi/b002.dump").exists());
    s.cli(&["apps:create", "sushi"]).ok();
    let list = s
        .cli(&["pg:backups", "--app", "sushi", "--json"])
        .ok()
        .json();
    assert_eq!(list.as_array().unwrap().len(), 0, "{list}");
}

#[test]
fn backups_schedules_are_listed_and_removed() {
    let s = server();
    app_with_database(&s, "sushi", "standard-0");
    let e = s
        .cli(&["pg:backups:schedule", "--at", "25:00", "--app", "sushi"])
        .failed();
    assert!(e.stderr.contains("HH:MM UTC"), "{}", e.stderr);
    s.cli(&["pg:backups:schedule", "--at", "02:00 UTC", "--app", "sushi"])
        .ok();
    let out = s
        .cli(&["pg:backups:schedules", "--app", "sushi"])
        .ok()
        .stdout;
    assert!(
        out.contains("PGFOLLOW_POSTGRESQL_WHITE_URL: daily at 02:00 UTC"),
        "{out}"
    );
    s.cli(&["pg:backups:unschedule", "--app", "sushi"]).ok();
    let out = s
        .cli(&["pg:backups:schedules", "--app", "sushi"])
        .ok()
        .stdout;
    assert!(out.contains("No backup schedules"), "{out}");
    let e = s.cli(&["pg:backups:cancel", "--app", "sushi"]).failed();
    assert!(
        e.stderr.contains("no backup or restore running"),
        "{}",
        e.stderr
    );
}

#[test]
fn backups_retention_cancel_and_restore_by_database_or_other_app() {
    let s = server();
    app_with_database(&s, "sushi", "hobby-dev");
    psql(
        &s,
        "sushi",
        "WHITE",
        "create table t (id int); insert into t values (1), (2), (3)",
    );
    // hobby keeps 2 manual backups: the third capture deletes b001 and its file.
    for _ in 0..3 {
        s.cli(&["pg:backups:capture", "--app", "sushi"]).ok();
    }
    let list = s
        .cli(&["pg:backups", "--app", "sushi", "--json"])
        .ok()
        .json();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["b003", "b002"], "{list}");
    assert!(!s.data_dir().join("backups/sushi/b001.dump").exists());
    assert!(s.data_dir().join("backups/sushi/b003.dump").exists());

    // Another app restores sushi's backup by APP::NAME, and a database's
    // name means its latest backup.
    app_with_database(&s, "ramen", "hobby-dev");
    s.cli(&[
        "pg:backups:restore",
        "sushi::b002",
        "--app",
        "ramen",
        "--confirm",
        "ramen",
    ])
    .ok();
    assert!(psql(&s, "ramen", "WHITE", "select count(*) from t").contains('3'));
    psql(&s, "ramen", "WHITE", "drop table t");
    let e = s
        .cli(&[
            "pg:backups:restore",
            "WHITE",
            "--app",
            "ramen",
            "--confirm",
            "ramen",
        ])
        .failed();
    assert!(
        e.stderr.contains("WHITE has no completed backup"),
        "{}",
        e.stderr
    );
    s.cli(&[
        "pg:backups:restore",
        "sushi::WHITE",
        "--app",
        "ramen",
        "--confirm",
        "ramen",
    ])
    .ok();
    assert!(psql(&s, "ramen", "WHITE", "select count(*) from t").contains('3'));
    // sushi was never touched.
    assert_eq!(
        s.cli(&["pg:backups", "--app", "sushi", "--json"])
            .ok()
            .json()
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // A capture that waits for a lock is cancelled: marked so, no file left.
    let url = config_get(&s, "sushi", "PGFOLLOW_POSTGRESQL_WHITE_URL");
    let mut locker = std::process::Command::new("psql")
        .arg(&url)
        .args([
            "-X",
            "-c",
            "begin; lock table t in access exclusive mode; select pg_sleep(60)",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    eventually(
        std::time::Duration::from_secs(20),
        "the lock is held",
        || {
            psql(&s, "sushi", "WHITE", "select count(*) from pg_locks where mode = 'AccessExclusiveLock' and relation = 't'::regclass")
            .contains('1')
        },
    );
    s.cli(&["pg:backups:capture", "--app", "sushi", "--no-wait"])
        .ok();
    eventually(std::time::Duration::from_secs(20), "b004 runs", || {
        s.cli(&["pg:backups:info", "b004", "--app", "sushi", "--json"])
            .ok()
            .json()["status"]
            == "running"
    });
    let port = url
        .rsplit(':')
        .next()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    assert!(
        pg_dump_running(&port),
        "pg_dump of port {port} waits for the lock"
    );
    let out = s.cli(&["pg:backups:cancel", "--app", "sushi"]).ok();
    assert!(
        out.stdout.contains("Cancelled backup b004."),
        "{}",
        out.stdout
    );
    eventually(
        std::time::Duration::from_secs(20),
        "no partial file",
        || {
            !s.data_dir()
                .join("backups/sushi/b004.dump.partial")
                .exists()
        },
    );
    let _ = locker.kill();
    let _ = locker.wait();
    let b = s
        .cli(&["pg:backups:info", "b004", "--app", "sushi", "--json"])
        .ok()
        .json();
    assert_eq!(b["status"], "cancelled", "{b}");
    assert!(!s.data_dir().join("backups/sushi/b004.dump").exists());
    let e = s
        .cli(&[
            "pg:backups:download",
            "b004",
            "--app",
            "sushi",
            "-o",
            "/dev/null",
        ])
        .failed();
    assert!(
        e.stderr.contains("not complete (cancelled)"),
        "{}",
        e.stderr
    );
    // No pg_dump of that database runs any more, and its session is gone.
    let port = url
        .rsplit(':')
        .next()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    assert!(!pg_dump_running(&port), "pg_dump of port {port} still runs");
    eventually(
        std::time::Duration::from_secs(20),
        "pg_dump's session ends",
        || {
            psql(
                &s,
                "sushi",
                "WHITE",
                "select count(*) from pg_stat_activity where application_name = 'pgfollow-backup'",
            )
            .contains('0')
        },
    );
}

/// Whether a `pg_dump -p PORT` process runs on this machine.
fn pg_dump_running(port: &str) -> bool {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .any(|c| {
            let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
            args.first().is_some_and(|a| a.ends_with(b"pg_dump"))
                && args
                    .windows(2)
                    .any(|w| w[0] == b"-p" && w[1] == port.as_bytes())
        })
}

#[test]
fn backups_of_a_database_on_another_host_outlive_that_host() {
    let s = server();
    s.cli(&["apps:create", "sushi"]).ok();
    // A local database first, so the next one goes to the emptier h2.
    let local = color(&s, &["standard-0"]);
    let mut h2 = pgfollow_testkit::AgentProcess::start(bin(), &s, "h2", None).unwrap();
    let remote = color(&s, &["standard-0"]);
    wait_available(&s, "sushi");
    let i = s
        .cli(&["pg:info", &remote, "--app", "sushi", "--json"])
        .ok()
        .json();
    assert_eq!(i["host"], "h2", "{i}");
    psql(
        &s,
        "sushi",
        &remote,
        "create table t (id int); insert into t select generate_series(1, 100)",
    );
    s.cli(&["pg:backups:capture", &remote, "--app", "sushi"])
        .ok();
    // The archive is on the control plane's host, not h2's.
    assert!(s.data_dir().join("backups/sushi/b001.dump").exists());
    assert!(!h2.data_dir().join("backups").exists());

    // h2 is lost; its backup restores into the local database.
    h2.signal(nix::sys::signal::Signal::SIGKILL);
    drop(h2);
    s.cli(&[
        "pg:backups:restore",
        "b001",
        &local,
        "--app",
        "sushi",
        "--confirm",
        "sushi",
    ])
    .ok();
    assert!(psql(&s, "sushi", &local, "select count(*) from t").contains("100"));
}
