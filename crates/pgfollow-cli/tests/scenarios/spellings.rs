//! The Heroku spellings of the follower workflow, typed as the Heroku
//! documentation writes them: `addons:add`/`addons:remove`,
//! `heroku-postgresql:PLAN` and `pgfollow-postgresql:PLAN`, and
//! `HEROKU_POSTGRESQL_<COLOUR>_URL` wherever a database is named.

use crate::common::*;

#[test]
fn the_heroku_documentation_commands_work_as_written() {
    let s = server();
    s.cli(&["apps:create", "sushi"]).ok();
    let made = s
        .cli(&[
            "addons:add",
            "heroku-postgresql:standard-0",
            "--app",
            "sushi",
        ])
        .ok();
    assert!(
        made.stdout.contains("Creating standard-0 on sushi"),
        "{}",
        made.stdout
    );
    wait_available(&s, "sushi");

    // The follower, named by Heroku's config var of its leader.
    let follower = s
        .cli(&[
            "addons:add",
            "pgfollow-postgresql:standard-0",
            "--follow",
            "HEROKU_POSTGRESQL_WHITE_URL",
            "--app",
            "sushi",
            "--json",
        ])
        .ok()
        .json();
    assert_eq!(follower["database"]["color"], "CHARCOAL", "{follower}");
    wait_available(&s, "sushi");

    for (name, want) in [
        ("HEROKU_POSTGRESQL_CHARCOAL_URL", "CHARCOAL"),
        ("HEROKU_POSTGRESQL_CHARCOAL", "CHARCOAL"),
        ("HEROKU_POSTGRESQL_WHITE_URL", "WHITE"),
        ("sushi::HEROKU_POSTGRESQL_WHITE_URL", "WHITE"),
    ] {
        let info = s
            .cli(&["pg:info", name, "--app", "sushi", "--json"])
            .ok()
            .json();
        assert_eq!(info["color"], want, "pg:info {name}: {info}");
    }
    let info = s
        .cli(&[
            "pg:info",
            "HEROKU_POSTGRESQL_CHARCOAL_URL",
            "--app",
            "sushi",
        ])
        .ok()
        .stdout;
    assert!(
        info.contains("Following:   PGFOLLOW_POSTGRESQL_WHITE"),
        "{info}"
    );
    let one = psql(
        &s,
        "sushi",
        "HEROKU_POSTGRESQL_WHITE_URL",
        "select 1 as one",
    );
    assert!(one.contains("one"), "{one}");

    // A plan that does not exist, with the prefix: the usual one-line error.
    let out = s
        .cli(&["addons:add", "heroku-postgresql:nope-9", "--app", "sushi"])
        .failed();
    assert!(out.stderr.contains("unknown plan"), "{}", out.stderr);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);

    // A colour that is not there.
    let out = s
        .cli(&["pg:info", "HEROKU_POSTGRESQL_AMBER_URL", "--app", "sushi"])
        .failed();
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);

    s.cli(&[
        "addons:remove",
        "HEROKU_POSTGRESQL_CHARCOAL_URL",
        "--app",
        "sushi",
        "--confirm",
        "sushi",
    ])
    .ok();
    let addons = s.cli(&["addons", "--app", "sushi", "--json"]).ok().json();
    let colors: Vec<&str> = addons
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["color"].as_str())
        .collect();
    assert_eq!(colors, ["WHITE"], "{addons}");
}
