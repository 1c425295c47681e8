//! `pgfollow-bench failover`: how long an app cannot write when its HA
//! primary fails in one of several ways, how many acknowledged commits are
//! lost, how many writes the old primary still acknowledged after the new
//! one took over, and how many attempts the app saw fail.
//!
//! Each run but the crashed-postgres ones starts a fresh `pgfollow serve`
//! and a second agent, `h2`, and creates a `premium-0` database (with
//! `--sync` in sync mode) whose primary lands on h2 and whose HA standby
//! lands on the server's own host. Once `HA Status` is `Available`, writers
//! commit through `DATABASE_URL`, and one more writer keeps its own
//! connection to the old primary's `PGFOLLOW_POSTGRESQL_WHITE_URL` (read
//! before the fault, so it names the old primary's host and port, as an app
//! on the colour URL would have it). Then the fault, on h2 only:
//! - host lost: its agent and postmaster get SIGKILL at once;
//! - frozen postgres: the postmaster and every process under it get
//!   SIGSTOP, the agent runs on (a hung postgres: pgfollow must notice that
//!   it answers no query, fence it and fail over);
//! - frozen host: the agent, the postmaster and everything under them get
//!   SIGSTOP for 4 s, then SIGCONT (a paused VM), async and `--sync`;
//! - crashed postgres (one server for all runs): SIGKILL to the postmaster
//!   only; pgfollow restarts it in place;
//! - host cut off (`--sync`): every process on a host of its own (a network
//!   namespace: serve with its embedded agent on one, h2 on another), and
//!   h2's link taken down; the writer on the old primary's own URL runs on
//!   h2 itself, so what the old primary acknowledges after the cut is seen;
//! - leader and host cut off (`--sync`): the control plane on etcd (three
//!   members, two `serve --etcd` replicas), machine m1 running the leading
//!   replica and the agent with the primary, m2 the other replica and the
//!   standby's agent; m1's link taken down (the machine dies: nothing it
//!   runs is heard again).
//!
//! With a host cut off, a connection to it hangs instead of breaking, so
//! the writers of those kinds give up on an insert after
//! [`writers::CUT_INSERT_LIMIT`] and reconnect (as an app with a client-side
//! statement timeout would); `DATABASE_URL`'s `connect_timeout=2` then
//! moves them past an endpoint that does not answer.
//!
//! Measured per run: from the fault to the end of the outage that follows
//! it (the longest time in which no writer got an acknowledgement, among
//! those ending after the fault; its end counts as the new primary's
//! promotion); how long the old primary's backends went on acknowledging
//! through `DATABASE_URL`; the acknowledged inserts missing on the new
//! primary (read through its `PGFOLLOW_POSTGRESQL_WHITE_URL`, which names
//! it after the failover); the writes the old primary acknowledged on its
//! own connection after the promotion; the failed attempts through
//! `DATABASE_URL` beside the inserts in flight at the fault. Whatever was
//! stopped is continued at the end of a run, also when it fails or on
//! Ctrl-C.

mod faults;
mod report;
mod setup;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::follower::pgfollow_bin;
use setup::Setup;

/// How long a frozen host stays stopped.
const FREEZE: Duration = Duration::from_secs(4);

/// What to run: `pgfollow-bench failover --help`.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// The pgfollow binary (default: the one next to this executable)
    #[arg(long, value_name = "PATH")]
    pub pgfollow: Option<PathBuf>,
    /// Plan of the HA database (premium or enterprise)
    #[arg(long, default_value = "premium-0")]
    pub plan: String,
    /// Host-lost runs with asynchronous replication (a fresh server each)
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(0..=50))]
    pub runs: u32,
    /// Host-lost runs with `addons:create --sync` (a fresh server each)
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(0..=50))]
    pub sync_runs: u32,
    /// Crashed-postgres runs (one server for all)
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(0..=50))]
    pub crash_runs: u32,
    /// Frozen-postgres runs: postmaster and backends SIGSTOPped, agent
    /// alive (a fresh server each)
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(0..=50))]
    pub frozen_postgres_runs: u32,
    /// Frozen-host runs, asynchronous replication: agent, postmaster and
    /// backends SIGSTOPped for 4 s (a fresh server each)
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(0..=50))]
    pub frozen_host_runs: u32,
    /// Frozen-host runs with `addons:create --sync` (a fresh server each)
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(0..=50))]
    pub frozen_host_sync_runs: u32,
    /// Host-cut-off runs, `--sync`: hosts in network namespaces, the
    /// primary's link taken down (a fresh network and server each)
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(0..=50))]
    pub cut_runs: u32,
    /// Runs with the leading control plane replica and the primary on one
    /// machine whose link is taken down, `--sync`, control plane on etcd
    /// (a fresh network, etcd cluster and replicas each)
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(0..=50))]
    pub leader_cut_runs: u32,
    /// Concurrent writers through DATABASE_URL, each on its own connection
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub writers: u32,
    /// Copy each run's `pgfollow serve` and agent h2 logs into this
    /// directory (they are removed with the run's temporary directories)
    #[arg(long, value_name = "DIR")]
    pub logs: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    HostAsync,
    HostSync,
    Crash,
    FrozenPostgres,
    FrozenHostAsync,
    FrozenHostSync,
    HostCutSync,
    LeaderAndHostCutSync,
}

impl Kind {
    /// In the order they run and are reported.
    const ALL: [Kind; 8] = [
        Kind::HostAsync,
        Kind::HostSync,
        Kind::Crash,
        Kind::FrozenPostgres,
        Kind::FrozenHostAsync,
        Kind::FrozenHostSync,
        Kind::HostCutSync,
        Kind::LeaderAndHostCutSync,
    ];

    fn label(self) -> &'static str {
        match self {
            Kind::HostAsync => "host lost, async",
            Kind::HostSync => "host lost, --sync",
            Kind::Crash => "crashed postgres",
            Kind::FrozenPostgres => "frozen postgres",
            Kind::FrozenHostAsync => "frozen host 4 s, async",
            Kind::FrozenHostSync => "frozen host 4 s, --sync",
            Kind::HostCutSync => "host cut off, --sync",
            Kind::LeaderAndHostCutSync => "leader+host cut off, --sync",
        }
    }

    /// Whether its database is created with `--sync`.
    fn sync(self) -> bool {
        matches!(
            self,
            Kind::HostSync | Kind::FrozenHostSync | Kind::HostCutSync | Kind::LeaderAndHostCutSync
        )
    }

    /// Whether its hosts are network namespaces and the fault a link taken
    /// down.
    fn cuts(self) -> bool {
        matches!(self, Kind::HostCutSync | Kind::LeaderAndHostCutSync)
    }

    /// Whether what it stops is continued during the run.
    fn thaws(self) -> bool {
        matches!(self, Kind::FrozenHostAsync | Kind::FrozenHostSync)
    }

    fn runs(self, opts: &Options) -> u32 {
        match self {
            Kind::HostAsync => opts.runs,
            Kind::HostSync => opts.sync_runs,
            Kind::Crash => opts.crash_runs,
            Kind::FrozenPostgres => opts.frozen_postgres_runs,
            Kind::FrozenHostAsync => opts.frozen_host_runs,
            Kind::FrozenHostSync => opts.frozen_host_sync_runs,
            Kind::HostCutSync => opts.cut_runs,
            Kind::LeaderAndHostCutSync => opts.leader_cut_runs,
        }
    }
}

/// One run's numbers.
#[derive(Debug)]
struct Run {
    kind: Kind,
    n: u32,
    /// From the fault to the end of the outage that followed it (the
    /// first acknowledgement through DATABASE_URL after it: the new
    /// primary's promotion, as the app sees it).
    writes_again: Duration,
    /// From the fault to the last acknowledgement before that outage (0
    /// if it came before the fault): how long the old primary's backends
    /// went on acknowledging through DATABASE_URL.
    old_acked_for: Duration,
    /// From the fault to the first acknowledgement through DATABASE_URL by
    /// another server than the old primary (None: none, the primary was
    /// restarted in place).
    promoted: Option<Duration>,
    /// When the bench saw the new primary (WHITE on host local) or the
    /// restarted postmaster, polling every 20 ms.
    replaced: Duration,
    /// The DATABASE_URL writers' errors, by kind.
    errors: String,
    acked: usize,
    failed: usize,
    /// Inserts through DATABASE_URL sent and unanswered at the fault.
    in_flight: u32,
    lost: Vec<i64>,
    /// Writes the old primary acknowledged after the promotion; None when
    /// no failover happened (the primary restarted in place).
    old_after: Option<OldAfter>,
    /// The writer on the old primary's own URL: acknowledged, and of
    /// those missing on the primary afterwards; its errors by kind.
    direct_acked: usize,
    direct_lost: usize,
    direct_errors: String,
    /// Frozen kinds: processes stopped, those still there at the end of
    /// the run (before the final SIGCONT: 0 once fenced), and when they
    /// were continued (frozen host).
    stopped: usize,
    survivors: Option<usize>,
    thawed: Option<Duration>,
    /// The primary's host afterwards.
    host_after: String,
}

/// Writes the old primary acknowledged after the new one's first.
#[derive(Debug, Clone, Copy, Default)]
struct OldAfter {
    /// On the writer's own connection to the old primary's URL.
    direct: usize,
    /// Through DATABASE_URL.
    endpoint: usize,
    /// The latest one's delay after the promotion.
    latest: Duration,
}

impl OldAfter {
    fn total(self) -> usize {
        self.direct + self.endpoint
    }
}

/// Runs everything and returns the report to print.
pub async fn run(opts: Options) -> anyhow::Result<String> {
    let bin = pgfollow_bin(opts.pgfollow.as_deref())?;
    let started = Instant::now();
    let mut runs = Vec::new();
    for kind in Kind::ALL {
        if kind == Kind::Crash {
            if opts.crash_runs > 0 {
                let crashes = crashed_postgres(&bin, &opts)
                    .await
                    .context("crashed postgres runs")?;
                runs.extend(crashes);
            }
            continue;
        }
        for n in 1..=kind.runs(&opts) {
            let r = fresh_run(&bin, &opts, kind, n)
                .await
                .with_context(|| format!("{} run {n}", kind.label()))?;
            say(&report::describe(&r));
            runs.push(r);
        }
    }
    Ok(report::render(&opts, &runs, started.elapsed()))
}

/// One run on a fresh server; it must end with a failover.
async fn fresh_run(
    bin: &std::path::Path,
    opts: &Options,
    kind: Kind,
    n: u32,
) -> anyhow::Result<Run> {
    let mut setup = match kind {
        Kind::HostCutSync => Setup::cut_off(bin, opts).await?,
        Kind::LeaderAndHostCutSync => Setup::leader_cut_off(bin, opts).await?,
        _ => Setup::new(bin, opts, kind.sync()).await?,
    };
    let run = setup.measure(opts, kind, n).await;
    setup.keep_logs(opts, kind, n);
    let run = run?;
    if run.host_after == setup.old_host() {
        anyhow::bail!(
            "writes came back but WHITE is still on {}: no failover happened",
            run.host_after
        );
    }
    tokio::task::block_in_place(move || drop(setup));
    Ok(run)
}

/// The crashed-postgres runs, one after the other on one server.
async fn crashed_postgres(bin: &std::path::Path, opts: &Options) -> anyhow::Result<Vec<Run>> {
    let mut setup = Setup::new(bin, opts, false).await?;
    let mut runs = Vec::new();
    for n in 1..=opts.crash_runs {
        if n > 1 {
            // Back to steady state: postgres up, standby streaming.
            setup.wait_ha_available().await?;
        }
        let run = setup.measure(opts, Kind::Crash, n).await;
        setup.keep_logs(opts, Kind::Crash, n);
        let run = run.with_context(|| format!("run {n}"))?;
        say(&report::describe(&run));
        runs.push(run);
    }
    tokio::task::block_in_place(move || drop(setup));
    Ok(runs)
}

/// A progress line on stderr (the results go to stdout).
fn say(line: &str) {
    eprintln!("[bench] {line}");
}
