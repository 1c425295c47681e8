//! The web dashboard in a real headless Chromium (Debian's `chromium`)
//! against a real `serve` with a follower under a pgbench load: the login
//! takes the token from a form (never a URL), the page shows every
//! `pg:info` field as `pg:info --json` has it, the chart's points are the
//! Behind By samples (exactly the commits the follower lacks while its
//! replay is held), and a changeover shows as a marker. The last page is
//! the README's screenshot (`PGFOLLOW_WRITE_SCREENSHOT=1` writes
//! `docs/dashboard.png`).

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pgfollow_testkit::drivers::Pgbench;

use crate::common::*;

const CHROMIUM: &str = "/usr/bin/chromium";

/// How long one Chromium run may take.
const BROWSER_LIMIT: Duration = Duration::from_secs(60);

/// A browser profile and the login page, removed when dropped.
struct Browser {
    dir: tempfile::TempDir,
    runs: u32,
}

impl Browser {
    /// A page that POSTs `token` to serve's login form as soon as it loads:
    /// the token travels in the request body, as when a person types it.
    fn new(url: &str, token: &str) -> Browser {
        assert!(
            Path::new(CHROMIUM).exists(),
            "this test needs Debian's chromium: apt-get install -y chromium"
        );
        let dir = tempfile::tempdir().unwrap();
        let page = dir.path().join("login.html");
        std::fs::write(
            &page,
            format!(
                "<!doctype html><form id=\"f\" method=\"post\" action=\"{url}/dashboard/login\">\
                 <input name=\"token\" value=\"{token}\"></form>\
                 <script>document.getElementById('f').submit()</script>"
            ),
        )
        .unwrap();
        std::fs::set_permissions(&page, std::fs::Permissions::from_mode(0o600)).unwrap();
        Browser { dir, runs: 0 }
    }

    /// Logs in with a new profile and returns what Chromium printed after
    /// `extra` (`--dump-dom`, or `--screenshot=FILE`), once the page had 6 s
    /// of (virtual) time to load its data and draw.
    fn run(&mut self, extra: &[String]) -> String {
        self.runs += 1;
        let profile = self.dir.path().join(format!("profile-{}", self.runs));
        let out = self.dir.path().join(format!("out-{}", self.runs));
        let err = self.dir.path().join(format!("err-{}", self.runs));
        let mut child = Command::new(CHROMIUM)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                "--virtual-time-budget=6000",
                "--window-size=1200,960",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(extra)
            .arg(format!(
                "file://{}",
                self.dir.path().join("login.html").display()
            ))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            // Its own process group: the renderer and other helpers go
            // with it, also when the run is cut short.
            .process_group(0)
            .spawn()
            .expect("chromium starts");
        let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
        let deadline = Instant::now() + BROWSER_LIMIT;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if Instant::now() >= deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = child.wait();
        let stderr = std::fs::read_to_string(&err).unwrap_or_default();
        let status =
            status.unwrap_or_else(|| panic!("chromium ran past {BROWSER_LIMIT:?}: {stderr}"));
        assert!(status.success(), "chromium failed ({status}): {stderr}");
        std::fs::read_to_string(&out).unwrap_or_default()
    }

    fn dom(&mut self) -> String {
        let dom = self.run(&["--dump-dom".to_string()]);
        assert!(
            dom.contains("data-state=\"ready\""),
            "the dashboard did not load its data:\n{dom}"
        );
        // It redraws itself every 2 s, without a reload.
        let refreshes: u32 = attributes(&dom, "data-refreshes")
            .first()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(refreshes >= 2, "the page drew itself {refreshes} times");
        dom
    }

    fn screenshot(&mut self) -> PathBuf {
        let file = self.dir.path().join("dashboard.png");
        self.run(&[format!("--screenshot={}", file.display())]);
        file
    }
}

/// The HTML of the element that starts at the first `start` after `from`,
/// up to the next `end`.
fn section<'a>(html: &'a str, start: &str, end: &str) -> &'a str {
    let at = html
        .find(start)
        .unwrap_or_else(|| panic!("no {start} in the page:\n{html}"));
    let rest = &html[at..];
    let stop = rest[start.len()..]
        .find(end)
        .map_or(rest.len(), |i| i + start.len());
    &rest[..stop]
}

/// The value shown for `label` in a database card.
fn field(card: &str, label: &str) -> String {
    let row = section(card, &format!("<tr data-field=\"{label}\">"), "</tr>");
    let td = row.split("<td").nth(1).unwrap_or_default();
    let text = td.split_once('>').map(|x| x.1).unwrap_or_default();
    let text = text.split("</td>").next().unwrap_or_default();
    // A progress bar inside Status: its text only.
    text.split('<')
        .next()
        .unwrap_or_default()
        .trim()
        .replace("&amp;", "&")
}

/// Every `name="value"` of `attr` in `html`, in order.
fn attributes(html: &str, attr: &str) -> Vec<String> {
    html.split(&format!(" {attr}=\""))
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .map(str::to_string)
        .collect()
}

fn card<'a>(dom: &'a str, color: &str) -> &'a str {
    section(
        dom,
        &format!("data-app=\"sushi\" data-color=\"{color}\" data-name="),
        "class=\"card db\"",
    )
}

fn chart<'a>(dom: &'a str, color: &str) -> &'a str {
    section(
        dom,
        &format!("<div class=\"chart\" data-app=\"sushi\" data-color=\"{color}\">"),
        "<div class=\"chart\"",
    )
}

#[test]
fn the_dashboard_shows_pg_info_and_a_live_lag_chart_in_chromium() {
    let s = server();
    app_with_database(&s, "sushi", "standard-0");
    add_follower(&s, "sushi", "standard-0", "WHITE");
    wait_available(&s, "sushi");
    let leader_url = config_get(&s, "sushi", "PGFOLLOW_POSTGRESQL_WHITE_URL");
    let pgbench = Path::new("/usr/lib/postgresql/15/bin/pgbench");
    Pgbench::init(pgbench, &leader_url, &[]).unwrap();
    // Only what the test runs commits while the follower's replay is held
    // below: no autovacuum or autoanalyze of these tables.
    psql(
        &s,
        "sushi",
        "WHITE",
        "alter table pgbench_accounts set (autovacuum_enabled = false); \
         alter table pgbench_branches set (autovacuum_enabled = false); \
         alter table pgbench_tellers set (autovacuum_enabled = false); \
         alter table pgbench_history set (autovacuum_enabled = false); \
         create table t (id int) with (autovacuum_enabled = false)",
    );

    // A wrong token opens nothing; the metrics token opens the dashboard
    // (read-only), and its session opens nothing under /v1.
    let admin = token(&s);
    let metrics_token = std::fs::read_to_string(s.data_dir().join("metrics.token"))
        .unwrap()
        .trim()
        .to_string();
    let mut wrong = Browser::new(&s.url, "not-a-token");
    let refused = wrong.run(&["--dump-dom".to_string()]);
    assert!(refused.contains("data-state=\"login\""), "{refused}");
    assert_eq!(http_get(&s.url, "/dashboard/data", None).0, 401);

    // The follower under load: the chart fills with samples.
    let load = Pgbench::start(pgbench, &leader_url, &[], 4, 10).unwrap();
    let mut browser = Browser::new(&s.url, &metrics_token);
    std::thread::sleep(Duration::from_secs(5));
    let under_load = browser.dom();
    let points = attributes(chart(&under_load, "CHARCOAL"), "data-commits");
    assert!(points.len() >= 2, "{}", chart(&under_load, "CHARCOAL"));
    let report = load.finish().unwrap();
    assert!(report.processed > 0, "{}", report.output);

    // Replay held, 5 commits: the newest point is exactly 5, as pg:info says.
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
    let newest_commits = || {
        let (status, body) = http_get(&s.url, "/v1/apps/sushi/lag-history", Some(&admin));
        assert_eq!(status, 200, "{body}");
        let h: serde_json::Value = serde_json::from_str(&body).unwrap();
        h["followers"][0]["points"]
            .as_array()
            .and_then(|p| p.last())
            .map(|p| p["commits"].clone())
    };
    eventually(Duration::from_secs(30), "a sample of 5 commits", || {
        newest_commits() == Some(serde_json::json!(5))
    });
    let dom = browser.dom();
    let infos = info(&s, "sushi");
    let charcoal_info = infos.iter().find(|d| d["color"] == "CHARCOAL").unwrap();
    assert_eq!(charcoal_info["behind_by"]["commits"], 5, "{charcoal_info}");
    let commits = attributes(chart(&dom, "CHARCOAL"), "data-commits");
    assert_eq!(commits.last().map(String::as_str), Some("5"), "{commits:?}");
    let seconds = attributes(chart(&dom, "CHARCOAL"), "data-seconds");
    let newest_seconds: f64 = seconds.last().unwrap().parse().unwrap();
    assert!(newest_seconds > 0.0, "{seconds:?}");
    let at = attributes(chart(&dom, "CHARCOAL"), "data-at");
    assert!(at.len() > points.len(), "the chart grew: {at:?}");
    assert!(
        at.windows(2).all(|w| w[0] < w[1]),
        "points are in time order: {at:?}"
    );

    // Every pg:info field as pg:info --json has it.
    for d in &infos {
        let color = d["color"].as_str().unwrap();
        let card = card(&dom, color);
        let text = |k: &str| d[k].as_str().unwrap_or_default().to_string();
        assert_eq!(field(card, "Plan"), text("plan"), "{card}");
        assert_eq!(field(card, "Status"), text("state"), "{card}");
        assert_eq!(
            field(card, "Connections"),
            format!("{}/{}", d["connections_used"], d["connection_limit"]),
            "{card}"
        );
        assert_eq!(field(card, "PG Version"), text("pg_version"), "{card}");
        assert_eq!(field(card, "Fork/Follow"), text("fork_follow"), "{card}");
        assert_eq!(field(card, "Tables"), d["tables"].to_string(), "{card}");
        assert_eq!(field(card, "Host"), text("host"), "{card}");
        assert_eq!(field(card, "Add-on"), text("name"), "{card}");
        let size = field(card, "Data Size");
        let shown: f64 = size
            .strip_suffix(" MB / 64 GB")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{size}"));
        let bytes = d["data_size_bytes"].as_f64().unwrap() / 1024.0 / 1024.0;
        assert!((shown - bytes).abs() < 0.5, "{size} vs {bytes} MB");
        assert!(field(card, "Created").ends_with(" UTC"), "{card}");
    }
    let charcoal = card(&dom, "CHARCOAL");
    assert_eq!(field(charcoal, "Following"), "PGFOLLOW_POSTGRESQL_WHITE");
    let behind = field(charcoal, "Behind By");
    assert!(behind.starts_with("5 commits ("), "{behind}");
    assert_eq!(
        field(card(&dom, "WHITE"), "Followers"),
        "PGFOLLOW_POSTGRESQL_CHARCOAL"
    );
    let hosts = section(&dom, "<tr data-host=\"local\">", "</tr>");
    assert!(hosts.contains("<td>up</td>"), "{hosts}");

    // A changeover: a marker on CHARCOAL's chart, which stays for the hour.
    superuser_sql(&s, "sushi", "CHARCOAL", "select pg_wal_replay_resume()");
    s.cli(&["pg:changeover", "CHARCOAL", "--app", "sushi"]).ok();
    let after = browser.dom();
    let chart_after = chart(&after, "CHARCOAL");
    assert_eq!(
        attributes(chart_after, "data-kind"),
        ["changeover"],
        "{chart_after}"
    );
    assert!(
        attributes(chart_after, "data-commits").len() >= commits.len(),
        "{chart_after}"
    );

    let png = browser.screenshot();
    let bytes = std::fs::read(&png).unwrap();
    assert!(bytes.starts_with(b"\x89PNG"), "not a PNG");
    if std::env::var_os("PGFOLLOW_WRITE_SCREENSHOT").is_some() {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/dashboard.png");
        std::fs::write(&docs, &bytes).unwrap();
    }
}

/// The `pg_basebackup` processes copying into `data_dir`.
fn basebackups(data_dir: &Path) -> Vec<nix::unistd::Pid> {
    let dir = data_dir.display().to_string();
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .filter(|pid| {
                    let comm =
                        std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                    let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                    comm.trim() == "pg_basebackup" && String::from_utf8_lossy(&cmd).contains(&dir)
                })
                .map(nix::unistd::Pid::from_raw)
                .collect()
        })
        .unwrap_or_default()
}

/// Stops a follower's copy (SIGSTOP) and lets it go on when dropped.
struct HeldCopy(Vec<nix::unistd::Pid>);

impl HeldCopy {
    fn signal(&self, sig: nix::sys::signal::Signal) {
        for pid in &self.0 {
            let _ = nix::sys::signal::kill(*pid, sig);
        }
    }
}

impl Drop for HeldCopy {
    fn drop(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
    }
}

#[test]
fn a_followers_copy_shows_its_progress_on_the_dashboard() {
    use nix::sys::signal::Signal;
    let s = server();
    app_with_database(&s, "sushi", "standard-0");
    psql(
        &s,
        "sushi",
        "WHITE",
        "create table t as select g as id, repeat('x', 500) as pad from generate_series(1, 200000) g",
    );
    add_follower(&s, "sushi", "standard-0", "WHITE");
    // Catch the copy as it starts and hold it.
    let mut pids = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while pids.is_empty() && Instant::now() < deadline {
        pids = basebackups(&s.data_dir());
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!pids.is_empty(), "no pg_basebackup was seen");
    let held = HeldCopy(pids);
    held.signal(Signal::SIGSTOP);
    // pg_basebackup reports its progress when a new second has begun: let
    // it run a moment in each new second until the agent has a report.
    let copy = || {
        info(&s, "sushi")
            .into_iter()
            .find(|d| d["color"] == "CHARCOAL")
            .map(|d| d["copy"].clone())
            .unwrap_or_default()
    };
    for _ in 0..30 {
        if !copy().is_null() {
            break;
        }
        std::thread::sleep(Duration::from_millis(1100));
        held.signal(Signal::SIGCONT);
        std::thread::sleep(Duration::from_millis(20));
        held.signal(Signal::SIGSTOP);
        std::thread::sleep(Duration::from_millis(600));
    }
    let c = copy();
    assert!(c["total_bytes"].as_u64().is_some_and(|t| t > 0), "{c}");
    let done = c["done_bytes"].as_u64().unwrap();
    assert!(
        done < c["total_bytes"].as_u64().unwrap(),
        "the copy was held before its end: {c}"
    );

    let token = token(&s);
    let mut browser = Browser::new(&s.url, &token);
    let dom = browser.dom();
    let ops = section(&dom, "<div id=\"operations\">", "</section>");
    let row = section(ops, "data-kind=\"provision\"", "</tr>");
    assert!(row.contains("<progress max=\"100\" value="), "{row}");
    assert!(row.contains(" of "), "the copy's bytes: {row}");
    let card = card(&dom, "CHARCOAL");
    assert!(field(card, "Status").starts_with("preparing"), "{card}");
    assert!(card.contains("<progress"), "{card}");

    drop(held);
    wait_available(&s, "sushi");
}
