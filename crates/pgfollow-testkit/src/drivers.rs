//! Real client drivers, run the way an app runs them, for tests that go
//! through an endpoint: tokio-postgres with named prepared statements
//! ([`PreparedLoad`]), psycopg 3 with `prepare_threshold=0`
//! ([`PsycopgLoad`], a Python script run by the interpreter of the venv that
//! `scripts/install-deps` makes) and `pgbench -M prepared` ([`Pgbench`]).
//!
//! The two driver loads write rows `(client, n)` into a table made with
//! [`DRIVER_TABLE_SQL`]: odd transactions are one `INSERT ... RETURNING` in
//! autocommit, even ones an explicit transaction with an `INSERT` and a
//! `SELECT`, every statement a prepared one. Each run is bounded in time and
//! reports every error it saw and every insert that was acknowledged, so a
//! test can check both "0 errors" and "nothing acknowledged was lost".

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// The interpreter of the venv that `scripts/install-deps` fills with psycopg.
pub const VENV_PYTHON: &str = "/opt/pgfollow/venv/bin/python";

/// The table the driver loads write to (`{table}` is replaced).
pub const DRIVER_TABLE_SQL: &str =
    "CREATE TABLE IF NOT EXISTS {table} (client int, n int, PRIMARY KEY (client, n))";

/// Errors kept word for word in a report (all are counted).
const MAX_KEPT_ERRORS: usize = 10;
/// The longest one statement may take before it counts as an error.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a driver run may take beyond its own duration.
const GRACE: Duration = Duration::from_secs(60);

const PSYCOPG_SCRIPT: &str = include_str!("../drivers/psycopg_load.py");

/// What one driver run saw.
#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    pub clients: usize,
    /// Committed transactions.
    pub transactions: u64,
    /// Failed transactions (and failed connection attempts).
    pub errors: u64,
    /// The first few errors, word for word.
    pub first_errors: Vec<String>,
    /// `(client, n)` of every acknowledged insert.
    pub acked: BTreeSet<(i32, i32)>,
}

impl LoadReport {
    fn error(&mut self, text: String) {
        self.errors += 1;
        if self.first_errors.len() < MAX_KEPT_ERRORS {
            self.first_errors.push(text);
        }
    }

    fn merge(&mut self, other: LoadReport) {
        self.transactions += other.transactions;
        for e in other.first_errors {
            if self.first_errors.len() < MAX_KEPT_ERRORS {
                self.first_errors.push(e);
            }
        }
        self.errors += other.errors;
        self.acked.extend(other.acked);
    }
}

/// `table` must be a plain lower-case identifier (it goes into SQL).
fn check_table(table: &str) -> anyhow::Result<()> {
    if table.is_empty()
        || !table
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        bail!("table name {table:?} must be [a-z0-9_]+");
    }
    Ok(())
}

/// tokio-postgres clients, each on its own connection, that `prepare` their
/// statements once and run them again and again (tokio-postgres sends them
/// as named statements `s0`, `s1`, ...), in a thread of their own.
pub struct PreparedLoad {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    handle: Option<std::thread::JoinHandle<LoadReport>>,
}

impl PreparedLoad {
    /// Starts `clients` clients (ids `first_client..`) on `config`, writing
    /// to `table`, until [`PreparedLoad::finish`] or `limit` passes.
    pub fn start(
        config: tokio_postgres::Config,
        table: &str,
        clients: usize,
        first_client: i32,
        limit: Duration,
    ) -> anyhow::Result<Self> {
        check_table(table)?;
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let (flag, counter, table) = (stop.clone(), done.clone(), table.to_string());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("building a tokio runtime for the load")?;
        let handle = std::thread::spawn(move || {
            rt.block_on(async move {
                let deadline = Instant::now() + limit;
                let tasks: Vec<_> = (0..clients)
                    .map(|i| {
                        let ctx = ClientCtx {
                            config: config.clone(),
                            table: table.clone(),
                            client: first_client + i as i32,
                            stop: flag.clone(),
                            done: counter.clone(),
                            deadline,
                        };
                        tokio::spawn(prepared_client(ctx))
                    })
                    .collect();
                let mut report = LoadReport {
                    clients,
                    ..LoadReport::default()
                };
                for t in tasks {
                    match t.await {
                        Ok(r) => report.merge(r),
                        Err(e) => report.error(format!("client task failed: {e}")),
                    }
                }
                report.clients = clients;
                report
            })
        });
        Ok(Self {
            stop,
            done,
            handle: Some(handle),
        })
    }

    /// Transactions committed so far.
    pub fn transactions(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Waits (bounded) until at least `n` transactions were committed.
    pub fn wait_for(&self, n: u64, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        while self.transactions() < n {
            if Instant::now() >= deadline {
                bail!(
                    "the tokio-postgres load committed {} transactions in {limit:?}, expected {n}",
                    self.transactions()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Stops the clients and returns what they saw.
    pub fn finish(mut self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        match self.handle.take().map(|h| h.join()) {
            Some(Ok(report)) => report,
            _ => {
                let mut r = LoadReport::default();
                r.error("the load's thread panicked".into());
                r
            }
        }
    }
}

impl Drop for PreparedLoad {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

struct ClientCtx {
    config: tokio_postgres::Config,
    table: String,
    client: i32,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    deadline: Instant,
}

struct Prepared {
    client: tokio_postgres::Client,
    insert: tokio_postgres::Statement,
    count: tokio_postgres::Statement,
}

async fn connect_and_prepare(ctx: &ClientCtx) -> Result<Prepared, String> {
    let connect = ctx.config.connect(tokio_postgres::NoTls);
    let (client, conn) = tokio::time::timeout(STATEMENT_TIMEOUT, connect)
        .await
        .map_err(|_| "connect: no answer within 10 s".to_string())?
        .map_err(|e| format!("connect: {}", pg_error(&e)))?;
    tokio::spawn(conn);
    let prepare = async {
        let insert = client
            .prepare(&format!(
                "INSERT INTO {} (client, n) VALUES ($1, $2) RETURNING n",
                ctx.table
            ))
            .await?;
        let count = client
            .prepare(&format!(
                "SELECT count(*) FROM {} WHERE client = $1",
                ctx.table
            ))
            .await?;
        Ok::<_, tokio_postgres::Error>((insert, count))
    };
    let (insert, count) = tokio::time::timeout(STATEMENT_TIMEOUT, prepare)
        .await
        .map_err(|_| "prepare: no answer within 10 s".to_string())?
        .map_err(|e| format!("prepare: {}", pg_error(&e)))?;
    Ok(Prepared {
        client,
        insert,
        count,
    })
}

/// One transaction: odd `n` a single insert, even `n` insert + count in
/// an explicit transaction.
async fn one_transaction(p: &mut Prepared, client: i32, n: i32) -> Result<(), String> {
    let got: i32 = if n % 2 == 1 {
        p.client
            .query_one(&p.insert, &[&client, &n])
            .await
            .map_err(|e| pg_error(&e))?
            .get(0)
    } else {
        let tx = p.client.transaction().await.map_err(|e| pg_error(&e))?;
        let got = tx
            .query_one(&p.insert, &[&client, &n])
            .await
            .map_err(|e| pg_error(&e))?
            .get(0);
        let _: i64 = tx
            .query_one(&p.count, &[&client])
            .await
            .map_err(|e| pg_error(&e))?
            .get(0);
        tx.commit().await.map_err(|e| pg_error(&e))?;
        got
    };
    if got != n {
        return Err(format!("INSERT returned {got}, expected {n}"));
    }
    Ok(())
}

async fn prepared_client(ctx: ClientCtx) -> LoadReport {
    let mut report = LoadReport::default();
    let mut conn: Option<Prepared> = None;
    let mut n = 0i32;
    while !ctx.stop.load(Ordering::Relaxed) && Instant::now() < ctx.deadline {
        let p = match conn.as_mut() {
            Some(p) => p,
            None => match connect_and_prepare(&ctx).await {
                Ok(p) => conn.insert(p),
                Err(e) => {
                    report.error(format!("client {}: {e}", ctx.client));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        n += 1;
        let outcome = match tokio::time::timeout(
            STATEMENT_TIMEOUT,
            one_transaction(p, ctx.client, n),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err("no answer within 10 s".to_string()),
        };
        match outcome {
            Ok(()) => {
                report.transactions += 1;
                report.acked.insert((ctx.client, n));
                ctx.done.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                report.error(format!("client {} tx {n}: {e}", ctx.client));
                if p.client.is_closed() {
                    conn = None;
                }
            }
        }
    }
    report
}

/// The server's message of a database error (tokio-postgres says only
/// "db error"), else the error with its sources.
fn pg_error(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{}: {}", db.severity(), db.message());
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// psycopg 3 threads with `prepare_threshold=0`, in a Python process of
/// their own that runs for a fixed time.
pub struct PsycopgLoad {
    child: Option<Child>,
    limit: Duration,
    started: Instant,
    stdout: Option<std::thread::JoinHandle<String>>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl PsycopgLoad {
    /// The venv's interpreter, or an error saying how to get it.
    pub fn python() -> anyhow::Result<PathBuf> {
        let python = PathBuf::from(VENV_PYTHON);
        if !python.is_file() {
            bail!(
                "{VENV_PYTHON} is missing: run scripts/install-deps (it installs psycopg 3 from PyPI into /opt/pgfollow/venv)"
            );
        }
        Ok(python)
    }

    /// Starts `clients` threads (ids `first_client..`) on `conninfo` (a
    /// libpq connection string or URL) writing to `table` for `seconds`,
    /// with `env` added to the environment (e.g. `PGPASSWORD`).
    pub fn start(
        conninfo: &str,
        env: &[(&str, &str)],
        table: &str,
        clients: usize,
        first_client: i32,
        duration: Duration,
    ) -> anyhow::Result<Self> {
        check_table(table)?;
        let python = Self::python()?;
        let mut child = Command::new(&python)
            .args(["-c", PSYCOPG_SCRIPT, conninfo])
            .arg(clients.to_string())
            .arg(first_client.to_string())
            .arg(format!("{:.3}", duration.as_secs_f64()))
            .arg(table)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot run {}", python.display()))?;
        let stdout = child.stdout.take().map(read_all);
        let stderr = child.stderr.take().map(read_all);
        Ok(Self {
            child: Some(child),
            limit: duration + GRACE,
            started: Instant::now(),
            stdout,
            stderr,
        })
    }

    /// Waits (bounded) for the run to end and returns its report.
    pub fn finish(mut self) -> anyhow::Result<LoadReport> {
        let mut child = self.child.take().context("already finished")?;
        let status = wait_bounded(
            &mut child,
            self.limit.saturating_sub(self.started.elapsed()),
        )
        .context("the psycopg load")?;
        let out = self
            .stdout
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        let err = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        if !status.success() {
            bail!("the psycopg load exited with {status}:\n{err}{out}");
        }
        parse_psycopg_report(&out).with_context(|| format!("psycopg load output:\n{out}\n{err}"))
    }
}

impl Drop for PsycopgLoad {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn parse_psycopg_report(out: &str) -> anyhow::Result<LoadReport> {
    let line = out.lines().last().context("no report line")?;
    let v: serde_json::Value = serde_json::from_str(line).context("report is not JSON")?;
    let num = |k: &str| {
        v[k].as_u64()
            .with_context(|| format!("no {k} in the report"))
    };
    let mut acked = BTreeSet::new();
    for pair in v["acked"].as_array().context("no acked in the report")? {
        let c = pair[0].as_i64().context("bad acked pair")?;
        let n = pair[1].as_i64().context("bad acked pair")?;
        acked.insert((i32::try_from(c)?, i32::try_from(n)?));
    }
    Ok(LoadReport {
        clients: usize::try_from(num("clients")?)?,
        transactions: num("transactions")?,
        errors: num("errors")?,
        first_errors: v["first_errors"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
        acked,
    })
}

/// What `pgbench -M prepared` reported.
#[derive(Debug, Clone)]
pub struct PgbenchReport {
    pub clients: usize,
    /// `number of transactions actually processed`.
    pub processed: u64,
    /// `number of failed transactions` (PostgreSQL 15's pgbench).
    pub failed: u64,
    /// Lines about aborted clients (`client 3 aborted in command ...`).
    pub aborted: Vec<String>,
    pub exit_ok: bool,
    pub output: String,
}

/// `pgbench -M prepared` in the background.
pub struct Pgbench {
    child: Option<Child>,
    clients: usize,
    limit: Duration,
    started: Instant,
    stdout: Option<std::thread::JoinHandle<String>>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Pgbench {
    /// `pgbench -i -s 1 -q` on `target` (a connection string or URL).
    pub fn init(program: &Path, target: &str, env: &[(&str, &str)]) -> anyhow::Result<()> {
        let out = crate::run_bounded(
            Command::new(program)
                .args(["-i", "-s", "1", "-q", target])
                .envs(env.iter().copied()),
            Duration::from_secs(120),
        )?;
        if !out.success() {
            bail!("pgbench -i failed ({}):\n{}", out.status, out.stderr);
        }
        Ok(())
    }

    /// `pgbench -M prepared -n -c CLIENTS -j CLIENTS -T SECS target`: the
    /// built-in TPC-B-like script, every statement prepared. One thread per
    /// client, as apps have: pgbench prepares a client's statements with a
    /// blocking call, so a thread serving several clients through a pool
    /// smaller than them can wait for a server connection that another of
    /// its own clients holds in an open transaction, and never get it.
    pub fn start(
        program: &Path,
        target: &str,
        env: &[(&str, &str)],
        clients: usize,
        seconds: u32,
    ) -> anyhow::Result<Self> {
        let mut child = Command::new(program)
            .args(["-M", "prepared", "-n", "-c"])
            .arg(clients.to_string())
            .arg("-j")
            .arg(clients.to_string())
            .arg("-T")
            .arg(seconds.to_string())
            .arg(target)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot run {}", program.display()))?;
        let stdout = child.stdout.take().map(read_all);
        let stderr = child.stderr.take().map(read_all);
        Ok(Self {
            child: Some(child),
            clients,
            limit: Duration::from_secs(u64::from(seconds)) + GRACE,
            started: Instant::now(),
            stdout,
            stderr,
        })
    }

    /// Waits (bounded) for pgbench to end and returns what it reported.
    pub fn finish(mut self) -> anyhow::Result<PgbenchReport> {
        let mut child = self.child.take().context("already finished")?;
        let status = wait_bounded(
            &mut child,
            self.limit.saturating_sub(self.started.elapsed()),
        )
        .context("pgbench")?;
        let out = self
            .stdout
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        let err = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        let field = |prefix: &str| {
            out.lines()
                .find_map(|l| l.trim().strip_prefix(prefix))
                .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|n| n.parse().ok())
        };
        let processed = field("number of transactions actually processed: ")
            .with_context(|| format!("pgbench printed no transaction count:\n{out}\n{err}"))?;
        Ok(PgbenchReport {
            clients: self.clients,
            processed,
            failed: field("number of failed transactions: ").unwrap_or(0),
            aborted: err
                .lines()
                .filter(|l| l.contains("aborted"))
                .map(str::to_string)
                .collect(),
            exit_ok: status.success(),
            output: format!("{out}{err}"),
        })
    }
}

impl Drop for Pgbench {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn read_all(mut r: impl std::io::Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        s
    })
}

/// Waits for `child` up to `limit`; kills it after that.
fn wait_bounded(child: &mut Child, limit: Duration) -> anyhow::Result<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("still running after {limit:?}; killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The rows `(client, n)` of the driver table `table` of the database at
/// `url`, read with psql.
pub fn driver_rows(url: &str, table: &str) -> anyhow::Result<BTreeSet<(i32, i32)>> {
    check_table(table)?;
    let out = crate::run_bounded(
        Command::new("psql")
            .arg(url)
            .args(["-X", "-At", "-F", " ", "-v", "ON_ERROR_STOP=1", "-c"])
            .arg(format!("SELECT client, n FROM {table}"))
            .env("PGCONNECT_TIMEOUT", "5"),
        Duration::from_secs(60),
    )?;
    if !out.success() {
        bail!("reading {table} failed: {}", out.stderr);
    }
    let mut rows = BTreeSet::new();
    for line in out.stdout.lines() {
        let mut parts = line.split(' ');
        if let (Some(c), Some(n)) = (parts.next(), parts.next()) {
            rows.insert((c.parse()?, n.parse()?));
        }
    }
    Ok(rows)
}

/// Shared by the loads' reports: a one-line summary for test output.
pub fn summary(name: &str, r: &LoadReport) -> String {
    format!(
        "{name}: {} clients, {} transactions, {} errors{}",
        r.clients,
        r.transactions,
        r.errors,
        r.first_errors
            .first()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    )
}
