//! `pgfollow-bench failover`: how long an app cannot write when the host of
//! its HA primary is lost, or when the primary's postgres crashes, and how
//! many acknowledged commits are lost.
//!
//! Each host-lost run starts a fresh `pgfollow serve` and a second agent,
//! `h2`, and creates a `premium-0` database (with `--sync` in sync mode)
//! whose primary lands on h2 and whose HA standby lands on the server's own
//! host. Once `HA Status` is `Available`, writers commit through
//! `DATABASE_URL`; then h2's agent and its postmasters are killed with
//! SIGKILL at once. Measured: from the kill to the end of the outage that
//! follows it (the longest time in which no writer got an acknowledgement,
//! among those ending after the kill); how long the killed primary's
//! backends, which outlive their postmaster while their client keeps them
//! busy, went on acknowledging; and the acknowledged inserts missing on the
//! new primary (read through its direct `PGFOLLOW_POSTGRESQL_WHITE_URL`,
//! which names it after the failover). The crashed-postgres runs share one server: each kills only
//! the primary's postmaster (SIGKILL); pgfollow restarts it in place.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use pgfollow_client::Client;
use pgfollow_testkit::{AgentProcess, Server};

use crate::follower::{pgfollow_bin, Pgfollow, APP};
use crate::writers::{self, median, Writers};

/// The targets.
const HOST_LOST_MEDIAN_MAX: Duration = Duration::from_secs(3);
const CRASH_MEDIAN_MAX: Duration = Duration::from_secs(2);

/// How long writes may stay impossible before a run gives up.
const OUTAGE_LIMIT: Duration = Duration::from_secs(60);
/// How long the standby may take to be `Available`.
const HA_READY_LIMIT: Duration = Duration::from_secs(180);
/// Writing before the kill, and after the first write again.
const WARM_UP: Duration = Duration::from_secs(1);
const TAIL: Duration = Duration::from_millis(500);

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
    /// Concurrent writers, each on its own connection
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub writers: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    HostAsync,
    HostSync,
    Crash,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::HostAsync => "host lost, async",
            Kind::HostSync => "host lost, --sync",
            Kind::Crash => "crashed postgres",
        }
    }
}

/// One run's numbers.
#[derive(Debug)]
struct Run {
    kind: Kind,
    n: u32,
    /// From the kill to the end of the outage that followed it.
    writes_again: Duration,
    /// From the kill to the last acknowledgement before that outage (0 if
    /// it came before the kill): how long the killed primary's backends
    /// went on acknowledging.
    old_acked_for: Duration,
    /// When the bench saw the new primary (WHITE on host local) or the
    /// restarted postmaster, polling every 20 ms.
    replaced: Duration,
    /// The writers' errors, by kind.
    errors: String,
    acked: usize,
    failed: usize,
    lost: Vec<i64>,
    /// The primary's host afterwards.
    host_after: String,
}

/// Runs everything and returns the report to print.
pub async fn run(opts: Options) -> anyhow::Result<String> {
    let bin = pgfollow_bin(opts.pgfollow.as_deref())?;
    let started = Instant::now();
    let mut runs = Vec::new();
    for (kind, count) in [
        (Kind::HostAsync, opts.runs),
        (Kind::HostSync, opts.sync_runs),
    ] {
        for n in 1..=count {
            let r = host_lost(&bin, &opts, kind, n)
                .await
                .with_context(|| format!("{} run {n}", kind.label()))?;
            say(&describe(&r));
            runs.push(r);
        }
    }
    if opts.crash_runs > 0 {
        let crashes = crashed_postgres(&bin, &opts)
            .await
            .context("crashed postgres runs")?;
        runs.extend(crashes);
    }
    Ok(render(&opts, &runs, started.elapsed()))
}

/// A server, agent h2 and a premium database whose primary is on h2 and
/// whose standby is available (and, in sync mode, synchronous).
struct Setup {
    pf: Pgfollow,
    api: Client,
    h2: AgentProcess,
    main_url: String,
}

impl Setup {
    async fn new(bin: &std::path::Path, opts: &Options, sync: bool) -> anyhow::Result<Self> {
        let server = tokio::task::block_in_place(|| Server::start(bin))
            .context("starting pgfollow serve")?;
        let h2 =
            tokio::task::block_in_place(|| AgentProcess::start(bin, &server, "h2", Some("zone-b")))
                .context("starting agent h2")?;
        let api = Client::discover(Some(server.data_dir())).context("finding the API")?;
        let pf = Pgfollow {
            server,
            bin: bin.to_path_buf(),
        };
        pf.cli(&["apps:create", APP]).await?;
        let mut args = vec!["addons:create", opts.plan.as_str(), "--app", APP];
        if sync {
            args.push("--sync");
        }
        pf.cli(&args).await?;
        pf.wait("WHITE").await?;
        let setup = Self {
            main_url: config_var(&api, "DATABASE_URL").await?,
            pf,
            api,
            h2,
        };
        let host = setup.host().await?;
        if host != "h2" {
            bail!("the primary landed on host {host}, not h2");
        }
        setup.wait_ha_available().await?;
        if sync {
            setup.wait_sync().await?;
        }
        writers::create_table(&setup.main_url).await?;
        Ok(setup)
    }

    async fn host(&self) -> anyhow::Result<String> {
        Ok(self.api.database(APP, "WHITE").await?.host)
    }

    async fn wait_ha_available(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + HA_READY_LIMIT;
        loop {
            let info = self.api.database(APP, "WHITE").await?;
            if info.ha_status.as_deref() == Some("Available") {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "HA Status still {:?} after {HA_READY_LIMIT:?}",
                    info.ha_status
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Sync mode: until the server says commits wait for the standby.
    async fn wait_sync(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + HA_READY_LIMIT;
        while !self.pf.server.log().contains("now wait for its standby") {
            if Instant::now() >= deadline {
                bail!("commits do not wait for the standby after {HA_READY_LIMIT:?}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Ok(())
    }

    /// Writers on, `kill` at once, until an insert sent after the kill is
    /// acknowledged (and a little more), writers off; the numbers.
    async fn measure(
        &mut self,
        opts: &Options,
        kind: Kind,
        n: u32,
        kill: impl FnOnce(&mut AgentProcess) -> anyhow::Result<Instant>,
    ) -> anyhow::Result<Run> {
        let writers = Writers::start(&self.main_url, opts.writers);
        tokio::time::sleep(WARM_UP).await;
        let before = self.h2.running_postmasters();
        let killed = kill(&mut self.h2)?;
        // The killed primary's backends may acknowledge for a while, so
        // wait for the primary that takes over (or the restarted one),
        // then for an insert sent after it was there.
        self.wait_replaced(kind, &before, killed).await?;
        let replaced = killed.elapsed();
        let again = writers.wait_acked_after(Instant::now(), OUTAGE_LIMIT).await;
        tokio::time::sleep(TAIL).await;
        let seen = writers.finish().await;
        if !again {
            bail!(
                "no write got through DATABASE_URL within {OUTAGE_LIMIT:?} of the kill (first error: {})",
                seen.first_failure().unwrap_or_default()
            );
        }
        // After a failover the colour var names the new primary.
        let url = config_var(&self.api, "PGFOLLOW_POSTGRESQL_WHITE_URL").await?;
        let present = writers::ids_at(&url).await?;
        let (last_before, first_after) = seen
            .outage_after(killed)
            .context("no acknowledgement after the kill")?;
        Ok(Run {
            kind,
            n,
            writes_again: first_after.saturating_duration_since(killed),
            old_acked_for: last_before.saturating_duration_since(killed),
            replaced,
            errors: seen.failure_kinds(),
            acked: seen.acks.len(),
            failed: seen.failures.len(),
            lost: seen.missing(&present),
            host_after: self.host().await?,
        })
    }
}

impl Setup {
    /// Until WHITE is on host local (host lost) or h2 runs a postmaster
    /// other than those in `before` (crash).
    async fn wait_replaced(
        &self,
        kind: Kind,
        before: &[i32],
        killed: Instant,
    ) -> anyhow::Result<()> {
        loop {
            let replaced = match kind {
                Kind::Crash => {
                    let now = self.h2.running_postmasters();
                    !now.is_empty() && now.iter().all(|p| !before.contains(p))
                }
                Kind::HostAsync | Kind::HostSync => self.host().await? == "local",
            };
            if replaced {
                return Ok(());
            }
            if killed.elapsed() >= OUTAGE_LIMIT {
                bail!("the primary was not replaced within {OUTAGE_LIMIT:?} of the kill");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// One host-lost run on a fresh server.
async fn host_lost(
    bin: &std::path::Path,
    opts: &Options,
    kind: Kind,
    n: u32,
) -> anyhow::Result<Run> {
    let mut setup = Setup::new(bin, opts, kind == Kind::HostSync).await?;
    let run = setup.measure(opts, kind, n, lose_host).await?;
    if run.host_after == "h2" {
        bail!("writes came back but WHITE is still on h2: no failover happened");
    }
    tokio::task::block_in_place(move || drop(setup));
    Ok(run)
}

/// SIGKILL to h2's agent and every postmaster it runs, at once; reaps the
/// agent. Returns when the signals were sent.
fn lose_host(h2: &mut AgentProcess) -> anyhow::Result<Instant> {
    let agent = h2.pid().context("agent h2 is not running")?;
    let postmasters = h2.running_postmasters();
    let at = Instant::now();
    let _ = kill(Pid::from_raw(agent as i32), Signal::SIGKILL);
    for pid in postmasters {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    tokio::task::block_in_place(|| h2.signal(Signal::SIGKILL));
    Ok(at)
}

/// SIGKILL to the primary's postmaster only (h2 runs only the primary).
fn crash_postgres(h2: &mut AgentProcess) -> anyhow::Result<Instant> {
    let pids = h2.running_postmasters();
    let [pid] = pids[..] else {
        bail!(
            "h2 runs {} postmasters, expected the primary only",
            pids.len()
        );
    };
    let at = Instant::now();
    kill(Pid::from_raw(pid), Signal::SIGKILL).context("killing the primary's postmaster")?;
    Ok(at)
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
        let run = setup
            .measure(opts, Kind::Crash, n, crash_postgres)
            .await
            .with_context(|| format!("run {n}"))?;
        say(&describe(&run));
        runs.push(run);
    }
    tokio::task::block_in_place(move || drop(setup));
    Ok(runs)
}

async fn config_var(api: &Client, var: &str) -> anyhow::Result<String> {
    let vars = api.config(APP).await?.vars;
    vars.get(var)
        .cloned()
        .with_context(|| format!("{APP} has no config var {var}"))
}

fn describe(r: &Run) -> String {
    format!(
        "{} run {}: writes again after {:.2} s (the old primary acknowledged until +{} ms; replaced at +{:.2} s); {} acknowledged, {} failed attempts, {} lost; primary now on {}; errors: {}",
        r.kind.label(),
        r.n,
        r.writes_again.as_secs_f64(),
        writers::ms(r.old_acked_for),
        r.replaced.as_secs_f64(),
        r.acked,
        r.failed,
        r.lost.len(),
        r.host_after,
        r.errors
    )
}

fn secs(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| format!("{:.2} s", d.as_secs_f64()))
}

/// The per-run table, the summary per kind and a line per target.
fn render(opts: &Options, runs: &[Run], took: Duration) -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut out = format!(
        "pgfollow failover benchmark: {} primary on host h2, HA standby on host local, {} writers \
         committing single-row inserts through DATABASE_URL, {cores} cores, {:.0} s in all\n\
         writes again = from the SIGKILL to the end of the outage after it (the first \
         acknowledgement after the longest time in which no writer got one)\n\
         old acks = how long after the SIGKILL the killed primary's backends still acknowledged \
         inserts (they outlive their postmaster while busy)\n\
         lost = acknowledged inserts missing on the primary afterwards; failed = attempts that got \
         an error (writers retry every {} ms)\n\n",
        opts.plan,
        opts.writers,
        took.as_secs_f64(),
        RETRY_MS
    );
    out.push_str(&format!(
        "{:<18} {:>3}  {:>12}  {:>13}  {:>7}  {:>6}  {:>4}  {}\n",
        "kind", "run", "writes again", "old acks ms", "acked", "failed", "lost", "primary after"
    ));
    for r in runs {
        out.push_str(&format!(
            "{:<18} {:>3}  {:>12}  {:>13}  {:>7}  {:>6}  {:>4}  {}\n",
            r.kind.label(),
            r.n,
            secs(Some(r.writes_again)),
            writers::ms(r.old_acked_for),
            r.acked,
            r.failed,
            r.lost.len(),
            r.host_after
        ));
    }
    out.push('\n');
    out.push_str(&format!(
        "{:<18} {:>4}  {:>8}  {:>8}  {:>10}  {:>14}\n",
        "kind", "runs", "median", "max", "lost total", "runs with loss"
    ));
    let mut summary = Vec::new();
    for kind in [Kind::HostAsync, Kind::HostSync, Kind::Crash] {
        let of: Vec<&Run> = runs.iter().filter(|r| r.kind == kind).collect();
        if of.is_empty() {
            continue;
        }
        let times: Vec<Duration> = of.iter().map(|r| r.writes_again).collect();
        let lost: usize = of.iter().map(|r| r.lost.len()).sum();
        let with_loss = of.iter().filter(|r| !r.lost.is_empty()).count();
        let med = median(&times);
        out.push_str(&format!(
            "{:<18} {:>4}  {:>8}  {:>8}  {:>10}  {:>14}\n",
            kind.label(),
            of.len(),
            secs(med),
            secs(times.iter().max().copied()),
            lost,
            with_loss
        ));
        summary.push((kind, med, lost, of.len()));
    }
    out.push('\n');
    let host_times: Vec<Duration> = runs
        .iter()
        .filter(|r| r.kind != Kind::Crash)
        .map(|r| r.writes_again)
        .collect();
    if let Some(med) = median(&host_times) {
        out.push_str(&format!(
            "{} host lost -> writes again: median {} over {} runs (async and sync), target <= {}\n",
            verdict(med <= HOST_LOST_MEDIAN_MAX),
            secs(Some(med)),
            host_times.len(),
            secs(Some(HOST_LOST_MEDIAN_MAX))
        ));
    }
    for (kind, med, lost, count) in summary {
        match kind {
            Kind::Crash => {
                if let Some(med) = med {
                    out.push_str(&format!(
                        "{} crashed postgres -> writes again: median {}, target <= {}\n",
                        verdict(med <= CRASH_MEDIAN_MAX),
                        secs(Some(med)),
                        secs(Some(CRASH_MEDIAN_MAX))
                    ));
                }
            }
            Kind::HostSync => out.push_str(&format!(
                "{} sync mode: {lost} acknowledged commits lost in {count} failovers, target 0\n",
                verdict(lost == 0)
            )),
            Kind::HostAsync => out.push_str(&format!(
                "info async mode: {lost} acknowledged commits lost in {count} failovers (asynchronous \
                 replication may lose the last ones)\n"
            )),
        }
    }
    out
}

const RETRY_MS: u128 = writers::RETRY_AFTER.as_millis();

fn verdict(pass: bool) -> &'static str {
    if pass {
        "PASS"
    } else {
        "MISS"
    }
}

/// A progress line on stderr (the results go to stdout).
fn say(line: &str) {
    eprintln!("[bench] {line}");
}
