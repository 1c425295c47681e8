//! The load of the changeover and failover benchmarks: a few writers, each
//! its own connection through a URL (an app's `DATABASE_URL`: PgBouncer in
//! transaction mode, so the simple query protocol only), committing
//! single-row inserts of ids no other writer uses, one after the other.
//! Every acknowledged insert and every error is recorded with its time
//! (and each acknowledgement with the port of the server that gave it), so
//! the longest pause, the failures, the lost commits and which primary
//! acknowledged what can be worked out afterwards. A writer that sees an
//! error reconnects (after [`RETRY_AFTER`]) and carries on. How many
//! inserts are in flight at a given moment can be read while they run
//! ([`Writers::in_flight`]).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::task::JoinHandle;
use tokio_postgres::{NoTls, SimpleQueryMessage};

/// The table the writers insert into.
pub const TABLE: &str = "bench_writes";

/// How long a writer waits after an error before it tries again.
pub const RETRY_AFTER: Duration = Duration::from_millis(20);
/// Longest a connection attempt may take.
const CONNECT_LIMIT: Duration = Duration::from_secs(10);
/// Longest one insert may take before it counts as failed.
pub const INSERT_LIMIT: Duration = Duration::from_secs(30);
/// The same where a host may be cut off: a connection to a host that went
/// silent hangs rather than breaks, so the writer gives up on its insert
/// after this and reconnects (an app's client-side statement timeout).
pub const CUT_INSERT_LIMIT: Duration = Duration::from_secs(1);
/// How long [`Writers::finish`] waits for the inserts in flight; a writer
/// still waiting then (its server hangs) is stopped and its insert counts
/// as failed.
const FINISH_LIMIT: Duration = Duration::from_secs(5);
/// Ids of writer `w` are `w * ID_SPACE + 1, + 2, ...`.
const ID_SPACE: i64 = 1_000_000_000;
/// Writers started so far in this process: each gets its own `w`, so runs
/// that share a table never reuse an id.
static STARTED: AtomicI64 = AtomicI64::new(0);

/// One acknowledged insert.
#[derive(Debug, Clone, Copy)]
pub struct Ack {
    pub id: i64,
    /// When the INSERT was sent.
    pub sent: Instant,
    /// When its acknowledgement arrived.
    pub done: Instant,
    /// The server that acknowledged it: its address and `port` setting,
    /// returned by the INSERT (which PostgreSQL answered behind an
    /// endpoint; hosts of their own may use the same port), as
    /// [`server_id`] makes them one number; 0 if it said none.
    pub server: u64,
}

/// One failed attempt: a refused or broken connection, or an INSERT that
/// returned an error or took longer than 30 s.
#[derive(Debug, Clone)]
pub struct Failure {
    pub at: Instant,
    pub what: String,
}

/// What all writers saw, acknowledgements in the order they arrived.
#[derive(Debug, Default)]
pub struct Seen {
    pub acks: Vec<Ack>,
    pub failures: Vec<Failure>,
}

/// Writers running on the current tokio runtime; dropping them stops them.
pub struct Writers {
    stop: Arc<AtomicBool>,
    /// Each writer's task and what it has seen so far (kept outside the
    /// task, so a writer stopped in the middle of an insert loses nothing).
    tasks: Vec<(JoinHandle<()>, Arc<Mutex<Seen>>)>,
    origin: Instant,
    /// Nanoseconds after `origin` at which the latest-sent acknowledged
    /// insert was sent (0: none yet).
    latest_sent: Arc<AtomicU64>,
    /// Inserts sent and not yet answered.
    in_flight: Arc<AtomicU32>,
}

impl Writers {
    /// Starts `count` writers on `url`, each giving up on an insert after
    /// [`INSERT_LIMIT`].
    pub fn start(url: &str, count: u32) -> Self {
        Self::start_limited(url, count, INSERT_LIMIT)
    }

    /// [`Writers::start`] giving up on an insert after `insert_limit`.
    pub fn start_limited(url: &str, count: u32, insert_limit: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let origin = Instant::now();
        let latest_sent = Arc::new(AtomicU64::new(0));
        let in_flight = Arc::new(AtomicU32::new(0));
        let tasks = (0..count)
            .map(|_| {
                let w = STARTED.fetch_add(1, Ordering::Relaxed) + 1;
                let seen = Arc::new(Mutex::new(Seen::default()));
                let live = Live {
                    stop: stop.clone(),
                    origin,
                    latest_sent: latest_sent.clone(),
                    in_flight: in_flight.clone(),
                    seen: seen.clone(),
                    insert_limit,
                };
                let task = tokio::spawn(write_loop(url.to_string(), w * ID_SPACE, live));
                (task, seen)
            })
            .collect();
        Self {
            stop,
            tasks,
            origin,
            latest_sent,
            in_flight,
        }
    }

    /// How many inserts have been sent and not yet answered, now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// True once an insert sent after `t` was acknowledged.
    pub fn acked_one_sent_after(&self, t: Instant) -> bool {
        let ns = self.latest_sent.load(Ordering::Relaxed);
        ns > 0 && self.origin + Duration::from_nanos(ns) > t
    }

    /// Waits (at most `limit`) until an insert sent after `t` was
    /// acknowledged; false if none was.
    pub async fn wait_acked_after(&self, t: Instant, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.acked_one_sent_after(t) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.acked_one_sent_after(t)
    }

    /// Stops every writer (each finishes the insert it is in, for at most
    /// [`FINISH_LIMIT`] in all; an insert still unanswered then counts as
    /// failed) and returns what they saw.
    pub async fn finish(mut self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + FINISH_LIMIT;
        let mut all = Seen::default();
        for (mut task, seen) in std::mem::take(&mut self.tasks) {
            let outcome = tokio::time::timeout_at(deadline, &mut task).await;
            if outcome.is_err() {
                task.abort();
            }
            let mut seen = std::mem::take(&mut *lock(&seen));
            match outcome {
                Ok(Ok(())) => {}
                Ok(Err(e)) => seen.failures.push(Failure {
                    at: Instant::now(),
                    what: format!("writer task: {e}"),
                }),
                Err(_) => {
                    seen.failures.push(Failure {
                        at: Instant::now(),
                        what: format!(
                            "insert: still unanswered {} s after the run ended",
                            FINISH_LIMIT.as_secs()
                        ),
                    });
                }
            }
            all.acks.extend(seen.acks);
            all.failures.extend(seen.failures);
        }
        all.acks.sort_by_key(|a| a.done);
        all.failures.sort_by_key(|f| f.at);
        all
    }
}

/// Writers on a thread of their own inside a host's network namespace: a
/// client running on that host (it still reaches the host's own addresses
/// when the host's link is down). Dropping them stops them.
pub struct WritersOn {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<Seen>>>,
}

impl WritersOn {
    /// [`Writers::start_limited`] on `host`.
    pub fn start(
        host: &pgfollow_testkit::NetHost,
        url: &str,
        count: u32,
        insert_limit: Duration,
    ) -> Self {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (host, url) = (host.clone(), url.to_string());
        let thread = std::thread::spawn(move || {
            host.enter()?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            Ok(rt.block_on(async move {
                let writers = Writers::start_limited(&url, count, insert_limit);
                let _ = stopped.await;
                writers.finish().await
            }))
        });
        Self {
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Stops them (as [`Writers::finish`] does, so within its bound) and
    /// returns what they saw.
    pub async fn finish(mut self) -> anyhow::Result<Seen> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let thread = self.thread.take().context("finished twice")?;
        tokio::task::spawn_blocking(move || thread.join())
            .await?
            .map_err(|_| anyhow::anyhow!("the writers' thread panicked"))?
    }
}

impl Drop for WritersOn {
    fn drop(&mut self) {
        // The thread's writers stop (and abort) on their own once told.
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Drop for Writers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for (task, _) in &self.tasks {
            task.abort();
        }
    }
}

fn lock(seen: &Mutex<Seen>) -> std::sync::MutexGuard<'_, Seen> {
    seen.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a writer shares with the others while it runs.
struct Live {
    stop: Arc<AtomicBool>,
    origin: Instant,
    latest_sent: Arc<AtomicU64>,
    in_flight: Arc<AtomicU32>,
    /// This writer's acknowledgements and failures.
    seen: Arc<Mutex<Seen>>,
    insert_limit: Duration,
}

impl Live {
    async fn fail(&self, what: String) {
        lock(&self.seen).failures.push(Failure {
            at: Instant::now(),
            what,
        });
        tokio::time::sleep(RETRY_AFTER).await;
    }
}

async fn write_loop(url: String, first_id: i64, live: Live) {
    let mut client = None;
    let mut next = first_id + 1;
    while !live.stop.load(Ordering::Relaxed) {
        if client.is_none() {
            match tokio::time::timeout(CONNECT_LIMIT, tokio_postgres::connect(&url, NoTls)).await {
                Ok(Ok((c, connection))) => {
                    tokio::spawn(async move {
                        let _ = connection.await;
                    });
                    client = Some(c);
                }
                Ok(Err(e)) => {
                    live.fail(format!("connect: {}", detail(&e))).await;
                    continue;
                }
                Err(_) => {
                    live.fail("connect: timed out".into()).await;
                    continue;
                }
            }
        }
        let Some(c) = &client else { continue };
        let sql =
            format!("INSERT INTO {TABLE} (id) VALUES ({next}) RETURNING coalesce(host(inet_server_addr()), '') || ' ' || current_setting('port')");
        live.in_flight.fetch_add(1, Ordering::SeqCst);
        let sent = Instant::now();
        let outcome = tokio::time::timeout(live.insert_limit, c.simple_query(&sql)).await;
        let done = Instant::now();
        live.in_flight.fetch_sub(1, Ordering::SeqCst);
        match outcome {
            Ok(Ok(messages)) => {
                lock(&live.seen).acks.push(Ack {
                    id: next,
                    sent,
                    done,
                    server: returned_server(&messages),
                });
                let ns = sent.saturating_duration_since(live.origin).as_nanos() as u64;
                live.latest_sent.fetch_max(ns.max(1), Ordering::Relaxed);
            }
            Ok(Err(e)) => {
                client = None;
                live.fail(format!("insert {next}: {}", detail(&e))).await;
            }
            Err(_) => {
                client = None;
                let limit = live.insert_limit.as_secs_f64();
                live.fail(format!("insert {next}: no answer in {limit} s"))
                    .await;
            }
        }
        next += 1;
    }
}

/// The server in the row an INSERT ... RETURNING returned (0 if none).
fn returned_server(messages: &[SimpleQueryMessage]) -> u64 {
    messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(server_id),
            _ => None,
        })
        .unwrap_or(0)
}

/// `"ADDRESS PORT"` (the address empty over a Unix socket) as one number:
/// an IPv4 address in the high bits, the port in the low 16; 0 when the
/// port does not parse.
fn server_id(row: &str) -> u64 {
    let (addr, port) = row.split_once(' ').unwrap_or(("", row));
    let Ok(port) = port.trim().parse::<u16>() else {
        return 0;
    };
    let addr = addr
        .parse::<std::net::Ipv4Addr>()
        .map_or(0, |a| u64::from(u32::from(a)));
    addr << 16 | u64::from(port)
}

/// The server's message for a database error ("db error" says nothing).
fn detail(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => e.to_string(),
    }
}

impl Seen {
    /// The longest time during which no writer got an acknowledgement:
    /// the largest gap between two consecutive acknowledgements (of any
    /// writers), from the first to the last.
    pub fn longest_gap(&self) -> Duration {
        self.acks
            .windows(2)
            .map(|w| w[1].done.saturating_duration_since(w[0].done))
            .max()
            .unwrap_or_default()
    }

    /// The longest single acknowledged insert.
    pub fn longest_insert(&self) -> Duration {
        self.acks
            .iter()
            .map(|a| a.done.saturating_duration_since(a.sent))
            .max()
            .unwrap_or_default()
    }

    /// Acknowledged ids that `present` lacks.
    pub fn missing(&self, present: &HashSet<i64>) -> Vec<i64> {
        let mut lost: Vec<i64> = self
            .acks
            .iter()
            .map(|a| a.id)
            .filter(|id| !present.contains(id))
            .collect();
        lost.sort_unstable();
        lost
    }

    /// The outage that followed `t`: the longest time without any
    /// acknowledgement that ended after `t`. Returns when the last
    /// acknowledgement before it arrived and when the first after it did.
    /// (Backends of a postmaster killed at `t` may go on acknowledging
    /// inserts for a while, so the outage can start after `t`.)
    pub fn outage_after(&self, t: Instant) -> Option<(Instant, Instant)> {
        self.acks
            .windows(2)
            .filter(|w| w[1].done > t)
            .max_by_key(|w| w[1].done.saturating_duration_since(w[0].done))
            .map(|w| (w[0].done, w[1].done))
    }

    /// The failures' messages without their ids, each with its count.
    pub fn failure_kinds(&self) -> String {
        let mut counts = std::collections::BTreeMap::new();
        for f in &self.failures {
            let kind: String = f
                .what
                .split_whitespace()
                .filter(|w| !w.chars().all(|c| c.is_ascii_digit() || c == ':'))
                .collect::<Vec<_>>()
                .join(" ");
            *counts.entry(kind).or_insert(0u32) += 1;
        }
        if counts.is_empty() {
            return "none".into();
        }
        counts
            .iter()
            .map(|(k, n)| format!("{n}× {k}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The first failure's message, shortened, for the progress lines.
    pub fn first_failure(&self) -> Option<String> {
        self.failures.first().map(|f| {
            let mut s = f.what.replace('\n', " ");
            if s.len() > 100 {
                let cut = (0..=100)
                    .rev()
                    .find(|i| s.is_char_boundary(*i))
                    .unwrap_or(0);
                s.truncate(cut);
                s.push('…');
            }
            s
        })
    }
}

/// Creates the writers' table through `url` (simple protocol).
pub async fn create_table(url: &str) -> anyhow::Result<()> {
    let client = connect(url).await?;
    client
        .simple_query(&format!(
            "CREATE TABLE IF NOT EXISTS {TABLE} (id bigint PRIMARY KEY)"
        ))
        .await
        .with_context(|| format!("creating {TABLE}"))?;
    Ok(())
}

/// The ids in the writers' table of the database at `url`.
pub async fn ids_at(url: &str) -> anyhow::Result<HashSet<i64>> {
    let client = connect(url).await?;
    let rows = client
        .simple_query(&format!("SELECT id FROM {TABLE}"))
        .await
        .with_context(|| format!("reading {TABLE}"))?;
    Ok(rows
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0)?.parse().ok(),
            _ => None,
        })
        .collect())
}

async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) =
        tokio::time::timeout(CONNECT_LIMIT, tokio_postgres::connect(url, NoTls))
            .await
            .context("connecting: timed out")?
            .context("connecting")?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Milliseconds with one decimal.
pub fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

/// The middle value (the mean of the two middle ones for an even count).
pub fn median(values: &[Duration]) -> Option<Duration> {
    let mut v = values.to_vec();
    v.sort_unstable();
    match v.len() {
        0 => None,
        n if n % 2 == 1 => Some(v[n / 2]),
        n => Some((v[n / 2 - 1] + v[n / 2]) / 2),
    }
}

#[cfg(test)]
mod tests {
    use super::server_id;

    #[test]
    fn a_server_is_its_address_and_port() {
        let a = server_id("10.231.20.2 15400");
        let b = server_id("10.231.20.3 15400");
        assert_ne!(a, b, "the same port on two hosts is two servers");
        assert_eq!(a & 0xffff, 15400);
        assert_eq!(server_id(" 5432"), 5432, "over a Unix socket: the port");
        assert_eq!(server_id("10.0.0.1 x"), 0);
    }
}
