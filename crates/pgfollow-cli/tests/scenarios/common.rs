//! Shared steps of the scenarios.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

pub use pgfollow_testkit::{CliOutput, Server};

pub fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_pgfollow"))
}

pub fn server() -> Server {
    Server::start(bin()).expect("pgfollow serve starts")
}

/// Creates `app` and a database on `plan` in it, waits until it is
/// available and returns its add-on name.
pub fn app_with_database(s: &Server, app: &str, plan: &str) -> String {
    s.cli(&["apps:create", app]).ok();
    add_database(s, app, plan)
}

pub fn add_database(s: &Server, app: &str, plan: &str) -> String {
    let out = s.cli(&["addons:create", plan, "--app", app, "--json"]).ok();
    let name = out.json()["database"]["name"]
        .as_str()
        .expect("addons:create --json names the database")
        .to_string();
    wait_available(s, app);
    name
}

pub fn wait_available(s: &Server, app: &str) {
    s.cli(&["pg:wait", "--app", app, "--timeout", "120"]).ok();
}

/// `pg:psql -c SQL`, its output.
pub fn psql(s: &Server, app: &str, db: &str, sql: &str) -> String {
    s.cli(&["pg:psql", db, "--app", app, "-c", sql]).ok().stdout
}

/// Runs `psql URL -Atc SQL` directly, as an app would connect.
pub fn psql_url(url: &str, sql: &str) -> CliOutput {
    pgfollow_testkit::run_bounded(
        Command::new("psql")
            .arg(url)
            .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .env("PGCONNECT_TIMEOUT", "5"),
        Duration::from_secs(60),
    )
    .expect("psql runs")
}

pub fn config_get(s: &Server, app: &str, var: &str) -> String {
    s.cli(&["config:get", var, "--app", app])
        .ok()
        .stdout
        .trim()
        .to_string()
}

/// Polls `check` every 100 ms until it holds or `limit` passes.
pub fn eventually(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what}: not so after {limit:?}");
}

/// The `pg:info --json` of every database of `app`.
pub fn info(s: &Server, app: &str) -> Vec<serde_json::Value> {
    s.cli(&["pg:info", "--app", app, "--json"])
        .ok()
        .json()
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Directories under the data dir's `clusters`.
pub fn cluster_dirs(s: &Server) -> Vec<String> {
    std::fs::read_dir(s.data_dir().join("clusters"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A raw HTTP GET, to see what the API answers without the CLI.
pub fn http_get(url: &str, path: &str, token: Option<&str>) -> (u16, String) {
    use std::io::{Read, Write};
    let addr = url.trim_start_matches("http://");
    let mut conn = std::net::TcpStream::connect(addr).expect("connect to the API");
    conn.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )
    .expect("send");
    let mut answer = String::new();
    conn.read_to_string(&mut answer).expect("read");
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    (status, body)
}

/// The token from the data directory's API file.
pub fn token(s: &Server) -> String {
    let text = std::fs::read_to_string(s.data_dir().join("api.json")).expect("api.json");
    let v: serde_json::Value = serde_json::from_str(&text).expect("api.json is JSON");
    v["token"].as_str().expect("token").to_string()
}

/// What a writer saw.
#[derive(Debug, Default)]
pub struct WriterReport {
    /// Ids whose INSERT was acknowledged, in order.
    pub acked: Vec<i64>,
    /// When each of `acked` was acknowledged.
    pub acked_at: Vec<Instant>,
    pub errors: Vec<String>,
    /// The longest single INSERT.
    pub longest: Duration,
}

/// A client inserting `1, 2, 3, ...` into `table (id)` one transaction at a
/// time through `url`, with the simple query protocol (what PgBouncer in
/// transaction mode carries), until stopped or `limit` passes.
pub struct Writer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<WriterReport>>,
}

impl Writer {
    pub fn start(url: &str, table: &str, limit: Duration) -> Writer {
        Self::start_from(None, url, table, limit)
    }

    /// As [`Writer::start`], from a client on `host` (its network
    /// namespace).
    pub fn start_from(
        host: Option<&pgfollow_testkit::NetHost>,
        url: &str,
        table: &str,
        limit: Duration,
    ) -> Writer {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (url, table, flag) = (url.to_string(), table.to_string(), stop.clone());
        let host = host.cloned();
        let handle = std::thread::spawn(move || {
            if let Some(h) = host {
                h.enter().expect("the writer enters its host's namespace");
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(write_loop(url, table, flag, limit))
        });
        Writer {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops it and returns what it saw.
    pub fn finish(mut self) -> WriterReport {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap()
    }

    /// How many inserts were acknowledged so far is not tracked live; wait a
    /// little for the writer to be busy.
    pub fn warm_up(&self) {
        std::thread::sleep(Duration::from_millis(700));
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

async fn write_loop(
    url: String,
    table: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    limit: Duration,
) -> WriterReport {
    let mut report = WriterReport::default();
    let deadline = Instant::now() + limit;
    let mut client = None;
    let mut next = 1i64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
        if client.is_none() {
            match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
                Ok((c, conn)) => {
                    tokio::spawn(conn);
                    client = Some(c);
                }
                Err(e) => {
                    report.errors.push(format!("connect: {e}"));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
        }
        let Some(c) = &client else { continue };
        let started = Instant::now();
        let sql = format!("INSERT INTO {table} (id) VALUES ({next})");
        let insert = c.simple_query(&sql);
        // An insert stuck behind a dead server must not hold the test.
        let outcome = match tokio::time::timeout(Duration::from_secs(10), insert).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err("no answer within 10 s".to_string()),
        };
        match outcome {
            Ok(_) => {
                report.longest = report.longest.max(started.elapsed());
                report.acked.push(next);
                report.acked_at.push(Instant::now());
                next += 1;
            }
            Err(e) => {
                report.errors.push(format!("insert {next}: {e}"));
                client = None;
                next += 1;
            }
        }
    }
    report
}

/// The ids in `table` of the database at `url`.
pub fn ids(url: &str, table: &str) -> std::collections::BTreeSet<i64> {
    psql_url(url, &format!("select id from {table}"))
        .ok()
        .stdout
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// The port the cluster in directory `dir` listens on (from its config).
pub fn cluster_port(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("pgdata/pgfollow.conf"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.trim().strip_prefix("port = ").map(str::to_string))
        .unwrap_or_else(|| panic!("no port in {}", dir.display()))
}

/// Runs SQL as the superuser over the cluster's own Unix socket, the way
/// an operator on the host would.
pub fn superuser_sql_at(dir: &Path, sql: &str) -> String {
    pgfollow_testkit::run_bounded(
        Command::new("psql")
            .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(dir.join("run"))
            .args([
                "-p",
                &cluster_port(dir),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-c",
                sql,
            ]),
        Duration::from_secs(30),
    )
    .unwrap()
    .ok()
    .stdout
}

/// The cluster directory of database `db` of `app` on the server's host.
pub fn cluster_dir_of(s: &Server, app: &str, db: &str) -> std::path::PathBuf {
    let port = s
        .cli(&["pg:credentials:url", db, "--app", app, "--json"])
        .ok()
        .json()["port"]
        .to_string();
    cluster_dirs(s)
        .into_iter()
        .map(|d| s.data_dir().join("clusters").join(d))
        .find(|d| cluster_port(d) == port)
        .unwrap_or_else(|| panic!("no cluster directory with port {port}"))
}

/// [`superuser_sql_at`] on database `db` of `app`.
pub fn superuser_sql(s: &Server, app: &str, db: &str, sql: &str) -> String {
    superuser_sql_at(&cluster_dir_of(s, app, db), sql)
}

/// A client on `url` that opened a transaction and leaves it open, on a
/// thread of its own; `finish` tries to commit it and says what happened.
pub struct OpenTransaction {
    commit: std::sync::mpsc::Sender<()>,
    handle: std::thread::JoinHandle<Result<(), String>>,
}

impl OpenTransaction {
    pub fn start(url: &str, table: &str) -> OpenTransaction {
        let (url, table) = (url.to_string(), table.to_string());
        let (commit, wait) = std::sync::mpsc::channel::<()>();
        let (ready_tx, ready) = std::sync::mpsc::channel::<()>();
        let handle = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::spawn(conn);
                c.simple_query(&format!("BEGIN; INSERT INTO {table} (id) VALUES (-7)"))
                    .await
                    .map_err(|e| e.to_string())?;
                let _ = ready_tx.send(());
                let _ =
                    tokio::task::spawn_blocking(move || wait.recv_timeout(Duration::from_secs(60)))
                        .await;
                c.simple_query("COMMIT")
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })
        });
        ready
            .recv_timeout(Duration::from_secs(10))
            .expect("the transaction opened");
        OpenTransaction { commit, handle }
    }

    pub fn finish(self) -> Result<(), String> {
        let _ = self.commit.send(());
        self.handle.join().unwrap()
    }
}

/// `addons:create PLAN --follow LEADER --app APP` (it does not wait).
pub fn add_follower(s: &Server, app: &str, plan: &str, leader: &str) {
    s.cli(&["addons:create", plan, "--follow", leader, "--app", app])
        .ok();
}

/// The processes whose parent is `parent`.
pub fn children_of(parent: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        if rest.split_whitespace().nth(1).and_then(|p| p.parse().ok()) == Some(parent) {
            out.push(pid);
        }
    }
    out
}

/// Stopped processes, continued when dropped (also when a test fails).
pub struct Frozen(Vec<i32>);

impl Frozen {
    pub fn stop(pids: Vec<i32>) -> Frozen {
        for p in &pids {
            let _ = kill(Pid::from_raw(*p), Signal::SIGSTOP);
        }
        Frozen(pids)
    }

    pub fn thaw(&mut self) {
        for p in self.0.drain(..) {
            let _ = kill(Pid::from_raw(p), Signal::SIGCONT);
        }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        self.thaw();
    }
}

/// The postmaster of the cluster in `dir`, from its `postmaster.pid`.
pub fn postmaster_of(dir: &Path) -> i32 {
    let pidfile = std::fs::read_to_string(dir.join("pgdata/postmaster.pid")).unwrap();
    pidfile.lines().next().unwrap().trim().parse().unwrap()
}
