//! Progress of long work when stdout is not a terminal: plain lines, one
//! per change and never a `\r`, and nothing beside the JSON with `--json`
//! (the lines then go to stderr). The terminal's redrawn line is a pure
//! function, tested with plain values beside it (`wait.rs`, `progress.rs`,
//! `maintenance.rs`).

use crate::common::*;

fn assert_plain(out: &str) {
    assert!(
        !out.contains('\r'),
        "a terminal's redraw in plain output: {out:?}"
    );
    assert!(
        !out.contains('\x1b'),
        "escape codes in plain output: {out:?}"
    );
}

#[test]
fn long_work_prints_plain_lines_off_a_terminal_and_only_json_with_json() {
    let s = server();
    app_with_database(&s, "sushi", "standard-0");
    psql(
        &s,
        "sushi",
        "WHITE",
        "create table t as select g as id, repeat('x', 200) as pad from generate_series(1, 200000) g",
    );

    // addons:create --wait: the pg:wait lines, the last one available.
    let out = s
        .cli(&[
            "addons:create",
            "standard-0",
            "--follow",
            "WHITE",
            "--app",
            "sushi",
            "--wait",
        ])
        .ok();
    assert_plain(&out.stdout);
    let waits: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("Waiting for database "))
        .collect();
    assert!(!waits.is_empty(), "{}", out.stdout);
    for l in &waits {
        assert!(
            l.starts_with("Waiting for database PGFOLLOW_POSTGRESQL_CHARCOAL_URL... "),
            "{l}"
        );
    }
    assert_eq!(
        waits.last().copied(),
        Some("Waiting for database PGFOLLOW_POSTGRESQL_CHARCOAL_URL... available")
    );
    let distinct: std::collections::BTreeSet<&&str> = waits.iter().collect();
    assert_eq!(distinct.len(), waits.len(), "a line per change: {waits:?}");

    // With --json: stdout is the JSON alone, the wait went to stderr.
    let out = s
        .cli(&[
            "addons:create",
            "standard-0",
            "--follow",
            "WHITE",
            "--app",
            "sushi",
            "--wait",
            "--json",
        ])
        .ok();
    assert_eq!(out.json()["database"]["color"], "AMBER", "{}", out.stdout);
    assert!(
        out.stderr
            .lines()
            .last()
            .is_some_and(|l| l == "Waiting for database PGFOLLOW_POSTGRESQL_AMBER_URL... available"),
        "{}",
        out.stderr
    );

    // pg:unfollow --wait: the server's message, then the steps, then done.
    let out = s
        .cli(&[
            "pg:unfollow",
            "AMBER",
            "--app",
            "sushi",
            "--confirm",
            "sushi",
            "--wait",
        ])
        .ok();
    assert_plain(&out.stdout);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(
        lines[0].starts_with("Unfollowing AMBER... started"),
        "{lines:?}"
    );
    assert_eq!(
        lines.last().copied(),
        Some("Unfollowing AMBER... done"),
        "{lines:?}"
    );
    for l in &lines[1..] {
        assert!(l.starts_with("Unfollowing AMBER... "), "{l}");
    }
    let amber = info(&s, "sushi")
        .into_iter()
        .find(|d| d["color"] == "AMBER")
        .unwrap();
    assert!(amber["following"].is_null(), "{amber}");
    assert_eq!(amber["state"], "available", "{amber}");
    assert!(amber["copy"].is_null(), "no copy once done: {amber}");

    // pg:changeover off a terminal: only its step lines and the summary.
    let out = s.cli(&["pg:changeover", "CHARCOAL", "--app", "sushi"]).ok();
    assert_plain(&out.stdout);
    assert!(out.stdout.starts_with("  check "), "{}", out.stdout);
    assert!(!out.stdout.contains("Changing over to"), "{}", out.stdout);
}
