//! Tokens, file modes, roles, pg_hba.conf, the OS user, and logs without
//! secrets.

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use crate::common::*;

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn the_api_wants_the_token_and_describes_itself() {
    let s = server();
    let token = token(&s);
    assert!(token.len() >= 32);
    assert_eq!(mode(&s.data_dir().join("api.json")), 0o600);
    assert_eq!(mode(&s.data_dir().join("catalog.sqlite")), 0o600);

    let (status, body) = http_get(&s.url, "/v1/apps", None);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("token"), "{body}");
    assert_eq!(http_get(&s.url, "/v1/apps", Some("wrong")).0, 401);
    assert_eq!(http_get(&s.url, "/openapi.json", None).0, 401);
    let (status, body) = http_get(&s.url, "/openapi.json", Some(&token));
    assert_eq!(status, 200);
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(doc["paths"]["/v1/apps/{app}/addons"].is_object());
    assert_eq!(http_get(&s.url, "/v1/apps", Some(&token)).0, 200);

    // PGFOLLOW_API and PGFOLLOW_TOKEN override the API file.
    let out = s.cli_env(
        &["apps"],
        &[
            ("PGFOLLOW_API", &s.url),
            ("PGFOLLOW_TOKEN", "wrong"),
            ("PGFOLLOW_DATA_DIR", "/nonexistent"),
        ],
    );
    let out = out.failed();
    assert!(out.stderr.contains("token"), "{}", out.stderr);
    s.cli_env(
        &["apps"],
        &[
            ("PGFOLLOW_API", &s.url),
            ("PGFOLLOW_TOKEN", &token),
            ("PGFOLLOW_DATA_DIR", "/nonexistent"),
        ],
    )
    .ok();
}

#[test]
fn each_database_has_its_own_roles_and_no_trust_over_tcp() {
    let s = server();
    app_with_database(&s, "sushi", "standard-0");
    add_database(&s, "sushi", "standard-0");
    let creds: Vec<serde_json::Value> = ["WHITE", "CHARCOAL"]
        .iter()
        .map(|db| {
            s.cli(&["pg:credentials:url", db, "--app", "sushi", "--json"])
                .ok()
                .json()
        })
        .collect();
    assert_ne!(creds[0]["user"], creds[1]["user"]);
    for c in &creds {
        let password = c["password"].as_str().unwrap();
        assert_eq!(password.len(), 32, "128 bits as hex");
        assert!(password.chars().all(|ch| ch.is_ascii_hexdigit()));
        // Stored as a SCRAM verifier, not in the clear.
        let url = c["url"].as_str().unwrap();
        let out = psql_url(
            url,
            "select rolpassword like 'SCRAM-SHA-256$%' from pg_authid where rolname = current_user",
        );
        // pg_authid is for superusers only: the owner is not one.
        assert!(!out.success(), "the owner must not read pg_authid");
        let out = psql_url(
            url,
            "select rolsuper from pg_roles where rolname = current_user",
        )
        .ok();
        assert_eq!(out.stdout, "f\n");
    }
    // One database's owner cannot log into the other.
    let cross = format!(
        "postgres://{}:{}@127.0.0.1:{}/{}",
        creds[0]["user"].as_str().unwrap(),
        creds[0]["password"].as_str().unwrap(),
        creds[1]["port"],
        creds[1]["database"].as_str().unwrap()
    );
    psql_url(&cross, "select 1").failed();

    for dir in cluster_dirs(&s) {
        let pgdata = s.data_dir().join("clusters").join(&dir).join("pgdata");
        let hba = std::fs::read_to_string(pgdata.join("pg_hba.conf")).unwrap();
        for line in hba
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let words: Vec<&str> = line.split_whitespace().collect();
            if words.last() == Some(&"trust") {
                assert_eq!(
                    words[0], "local",
                    "trust only on the agent's socket: {line}"
                );
            }
        }
        let socket_dir = s.data_dir().join("clusters").join(&dir).join("run");
        assert_eq!(mode(&socket_dir), 0o700, "the trusted socket is private");
    }
}

#[test]
fn postgres_runs_as_an_unprivileged_user() {
    let s = server();
    app_with_database(&s, "sushi", "hobby-dev");
    let pids = s.running_postmasters();
    assert_eq!(pids.len(), 1);
    let uid = std::fs::metadata(format!("/proc/{}", pids[0]))
        .unwrap()
        .uid();
    if nix::unistd::geteuid().is_root() {
        let postgres = nix::unistd::User::from_name("postgres").unwrap().unwrap();
        assert_eq!(uid, postgres.uid.as_raw(), "postgres must not run as root");
    } else {
        assert_eq!(uid, nix::unistd::geteuid().as_raw());
    }
    let info = s.cli(&["hosts", "--json"]).ok().json();
    // Debian's 15 is among the host's majors (18 too, where
    // scripts/install-deps ran); the newest is listed first.
    let majors: Vec<&str> = info[0]["pg_versions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str()?.split('.').next())
        .collect();
    assert!(majors.contains(&"15"), "{info}");
    assert_eq!(
        info[0]["pg_version"].as_str().unwrap().split('.').next(),
        majors.first().copied()
    );
}

#[test]
fn no_secret_reaches_the_log() {
    let s = server();
    app_with_database(&s, "sushi", "standard-0");
    s.cli(&[
        "pg:credentials:rotate",
        "--app",
        "sushi",
        "--confirm",
        "sushi",
    ])
    .ok();
    psql(&s, "sushi", "DATABASE_URL", "select 1");
    // Provoke errors too.
    s.cli(&["pg:kill", "999999", "--app", "sushi"]).failed();
    let password = s
        .cli(&["pg:credentials:url", "--app", "sushi", "--json"])
        .ok()
        .json()["password"]
        .as_str()
        .unwrap()
        .to_string();
    let log = s.log();
    assert!(log.contains("available"), "the log is being written: {log}");
    assert!(
        !log.contains(&password),
        "the owner's password is in the log"
    );
    assert!(!log.contains(&token(&s)), "the API token is in the log");
    let pg_logs = cluster_dirs(&s)
        .iter()
        .map(|d| {
            std::fs::read_to_string(
                s.data_dir()
                    .join("clusters")
                    .join(d)
                    .join("log/postgresql.log"),
            )
            .unwrap_or_default()
        })
        .collect::<String>();
    assert!(
        !pg_logs.contains(&password),
        "the password is in postgres's log"
    );
}
