//! Bad input: one clear line, a non-zero exit, nothing half-made.

use std::net::TcpListener;

use crate::common::*;

/// The error line of a failed command.
fn one_line_error(out: CliOutput) -> String {
    let out = out.failed();
    assert_eq!(out.stderr.lines().count(), 1, "one line: {:?}", out.stderr);
    assert!(out.stderr.starts_with("error: "), "{:?}", out.stderr);
    out.stderr
}

#[test]
fn bad_requests_are_refused_with_one_line_and_change_nothing() {
    let s = server();
    s.cli(&["apps:create", "sushi"]).ok();
    let before = s.cli(&["apps", "--json"]).ok().stdout;

    let e = one_line_error(s.cli(&["addons:create", "standard-99", "--app", "sushi"]));
    assert!(e.contains("pgfollow plans"), "{e}");
    let e = one_line_error(s.cli(&["addons:create", "standard-0", "--app", "nosuch"]));
    assert!(e.contains("nosuch"), "{e}");
    let e = one_line_error(s.cli(&["apps:create", "Bad_Name"]));
    assert!(e.contains("lowercase"), "{e}");
    let e = one_line_error(s.cli(&["apps:create", "sushi"]));
    assert!(e.contains("already exists"), "{e}");
    let e = one_line_error(s.cli(&["apps:destroy", "sushi", "--confirm", "ramen"]));
    assert!(e.contains("does not match"), "{e}");
    one_line_error(s.cli(&["pg:info", "--app", "nosuch"]));
    one_line_error(s.cli(&["config:set", "1BAD=x", "--app", "sushi"]));

    assert_eq!(s.cli(&["apps", "--json"]).ok().stdout, before);
    assert!(s
        .cli(&["addons", "--app", "sushi", "--json"])
        .ok()
        .json()
        .as_array()
        .unwrap()
        .is_empty());
    assert!(cluster_dirs(&s).is_empty());
}

#[test]
fn no_free_port_means_no_database() {
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port().to_string();
    let range = format!("{port}-{port}");
    let s = Server::start_with(bin(), &["--pg-ports", &range]).unwrap();
    s.cli(&["apps:create", "sushi"]).ok();
    let e = one_line_error(s.cli(&["addons:create", "standard-0", "--app", "sushi"]));
    assert!(e.contains("no free port"), "{e}");
    assert!(s
        .cli(&["addons", "--app", "sushi", "--json"])
        .ok()
        .json()
        .as_array()
        .unwrap()
        .is_empty());
    let bill = s.cli(&["billing", "--app", "sushi", "--json"]).ok().json();
    assert!(bill["lines"].as_array().unwrap().is_empty());
}

#[test]
fn serve_refuses_a_taken_port_or_data_directory_or_bad_ports() {
    let s = server();
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let run = |args: &[&str]| {
        pgfollow_testkit::run_bounded(
            std::process::Command::new(bin()).arg("serve").args(args),
            std::time::Duration::from_secs(60),
        )
        .unwrap()
    };
    let e = one_line_error(run(&[
        "--data-dir",
        data.to_str().unwrap(),
        "--listen",
        &addr,
    ]));
    assert!(e.contains("cannot listen"), "{e}");
    let e = one_line_error(run(&[
        "--data-dir",
        s.data_dir().to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]));
    assert!(e.contains("in use by another"), "{e}");
    let out = run(&[
        "--data-dir",
        data.to_str().unwrap(),
        "--pg-ports",
        "9000-80",
    ])
    .failed();
    assert!(out.stderr.contains("ports"), "{}", out.stderr);
    // The server that holds the data directory is untouched.
    s.cli(&["apps"]).ok();
}
