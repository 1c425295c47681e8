//! `GET /metrics`: a real Prometheus (Debian's `prometheus`) scrapes
//! `serve` with the read-only metrics token and sees a follower's lag, the
//! same numbers `pg:info` shows. The admin token does not open `/metrics`
//! and the metrics token opens nothing else.

use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::*;

const PROMETHEUS: &str = "/usr/bin/prometheus";

/// A Prometheus process, killed and reaped when dropped.
struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Starts Prometheus scraping `target` (host:port) every second.
fn prometheus(target: &str, token: &str) -> Prometheus {
    assert!(
        std::path::Path::new(PROMETHEUS).exists(),
        "this test needs Debian's prometheus: apt-get install -y prometheus"
    );
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, token).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
             scrape_configs:\n  - job_name: pgfollow\n    metrics_path: /metrics\n\
             \x20   authorization:\n      credentials_file: {}\n\
             \x20   static_configs:\n      - targets: ['{target}']\n",
            token_file.display()
        ),
    )
    .unwrap();
    let port = free_port();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let child = Command::new(PROMETHEUS)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("prometheus starts");
    Prometheus {
        child,
        url: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    }
}

/// The value of the first series `query` (PromQL) returns, if any.
fn query(p: &Prometheus, query: &str) -> Option<f64> {
    let encoded: String = query
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let Ok(addr) = p
        .url
        .trim_start_matches("http://")
        .parse::<std::net::SocketAddr>()
    else {
        return None;
    };
    // Not up yet: no answer.
    std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    let (status, body) = http_get(&p.url, &format!("/api/v1/query?query={encoded}"), None);
    if status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

/// The value of the sample `name{labels...}` whose labels include `with`.
fn sample(text: &str, name: &str, with: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| with.iter().all(|w| l.contains(w)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn prometheus_scrapes_a_followers_lag_with_the_metrics_token() {
    let s = server();
    app_with_database(&s, "sushi", "standard-0");
    add_follower(&s, "sushi", "standard-0", "WHITE");
    wait_available(&s, "sushi");
    psql(
        &s,
        "sushi",
        "WHITE",
        "create table t (id int) with (autovacuum_enabled = false)",
    );
    eventually(Duration::from_secs(60), "the follower caught up", || {
        info(&s, "sushi")
            .iter()
            .find(|d| d["color"] == "CHARCOAL")
            .is_some_and(|d| d["behind_by"]["commits"] == 0)
    });
    superuser_sql(&s, "sushi", "CHARCOAL", "select pg_wal_replay_pause()");
    for i in 0..5 {
        psql(&s, "sushi", "WHITE", &format!("insert into t values ({i})"));
    }

    // The metrics token: its own file, 0600; it opens /metrics only.
    let path = s.data_dir().join("metrics.token");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{}", path.display());
    let metrics_token = std::fs::read_to_string(&path).unwrap().trim().to_string();
    let admin = token(&s);
    assert_ne!(metrics_token, admin);
    assert_eq!(http_get(&s.url, "/metrics", None).0, 401);
    assert_eq!(http_get(&s.url, "/metrics", Some(&admin)).0, 401);
    assert_eq!(http_get(&s.url, "/v1/apps", Some(&metrics_token)).0, 401);
    let (status, text) = http_get(&s.url, "/metrics", Some(&metrics_token));
    assert_eq!(status, 200, "{text}");
    let charcoal = [
        "app=\"sushi\"",
        "database=\"CHARCOAL\"",
        "role=\"follower\"",
    ];
    let white = ["app=\"sushi\"", "database=\"WHITE\"", "role=\"primary\""];
    assert_eq!(
        sample(&text, "pgfollow_replication_lag_commits", &charcoal),
        Some(5.0),
        "{text}"
    );
    assert!(
        sample(&text, "pg_replication_lag_seconds", &charcoal).is_some_and(|v| v > 0.0),
        "{text}"
    );
    assert!(
        sample(&text, "pgfollow_replication_lag_bytes", &charcoal).is_some_and(|v| v > 0.0),
        "{text}"
    );
    assert_eq!(sample(&text, "pg_up", &white), Some(1.0), "{text}");
    assert_eq!(
        sample(&text, "pg_replication_is_replica", &charcoal),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "pg_settings_max_connections", &white),
        Some(120.0),
        "{text}"
    );
    assert!(
        sample(&text, "pg_database_size_bytes", &white).is_some_and(|v| v > 1e6),
        "{text}"
    );
    assert_eq!(
        sample(&text, "pgfollow_host_up", &["host=\"local\""]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "pgfollow_endpoint_paused", &["app=\"sushi\""]),
        Some(0.0),
        "{text}"
    );
    assert!(
        sample(
            &text,
            "pgfollow_operations_finished_total",
            &["kind=\"provision\""]
        )
        .is_some_and(|v| v >= 2.0),
        "{text}"
    );
    for family in [
        "pgfollow_failovers_total",
        "pgfollow_write_pause_seconds",
        "pgfollow_operation_duration_seconds",
        "pgfollow_ha_available",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "{family}: {text}"
        );
    }

    // A real Prometheus scrapes it and answers the lag through its API.
    let target = s.url.trim_start_matches("http://").to_string();
    let p = prometheus(&target, &metrics_token);
    eventually(Duration::from_secs(60), "Prometheus scrapes serve", || {
        query(&p, "up{job=\"pgfollow\"}") == Some(1.0)
    });
    eventually(Duration::from_secs(30), "Prometheus has the lag", || {
        query(
            &p,
            "pgfollow_replication_lag_commits{app=\"sushi\",database=\"CHARCOAL\"}",
        ) == Some(5.0)
    });
    let seconds = query(&p, "pg_replication_lag_seconds{database=\"CHARCOAL\"}");
    assert!(seconds.is_some_and(|v| v > 0.0), "{seconds:?}");

    // Replay resumes: Prometheus sees it catch up.
    superuser_sql(&s, "sushi", "CHARCOAL", "select pg_wal_replay_resume()");
    eventually(
        Duration::from_secs(60),
        "Prometheus sees it caught up",
        || {
            query(
                &p,
                "pgfollow_replication_lag_commits{database=\"CHARCOAL\"}",
            ) == Some(0.0)
        },
    );
}
