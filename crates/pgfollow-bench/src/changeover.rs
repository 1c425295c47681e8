//! `pgfollow-bench changeover`: what writers going through `DATABASE_URL`
//! see while the app moves to a follower, three ways, in one run:
//!
//! 1. `pg:changeover FOLLOWER` (pgfollow's one command);
//! 2. the manual procedure with pgfollow's commands: `maintenance:on`,
//!    `pg:wait`, `pg:unfollow`, `pg:promote`, `maintenance:off`;
//! 3. the hand-made floor on plain PostgreSQL and PgBouncer (see
//!    [`crate::floor`]);
//! 4. with `--major-runs`, `pg:changeover` to a logical follower on
//!    PostgreSQL 18 of a 15 primary: a major-version upgrade. The server
//!    then has both majors and the ordinary runs use 15 too, so the two
//!    kinds compare like for like. Each major run makes a fresh 15 primary
//!    (`pg:promote`) and a fresh 18 follower of it.
//!
//! Every run makes a fresh follower of the current primary, waits until it
//! is available, starts the writers, switches, lets the writers go on for a
//! moment, stops them and reads the new primary directly. The old primary
//! is destroyed (pgfollow) or stopped (floor) afterwards.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use pgfollow_client::Client;
use pgfollow_testkit::Server;

use crate::floor::Floor;
use crate::follower::{pgfollow_bin, Pgfollow, APP};
use crate::writers::{self, median, ms, Seen, Writers};

/// The target for the longest pause of `pg:changeover`.
const PAUSE_MAX: Duration = Duration::from_millis(300);
/// The target for the median pause of `pg:changeover`.
const PAUSE_MEDIAN: Duration = Duration::from_millis(45);
/// The target for the longest pause of a major-version changeover.
const MAJOR_PAUSE_MAX: Duration = Duration::from_millis(500);
/// Where the two majors of the major-version runs are.
const PG15_BIN: &str = "/usr/lib/postgresql/15/bin";
const PG18_BIN: &str = "/opt/pgfollow/postgresql/18/bin";
/// Writing before the switch, and after it.
const WARM_UP: Duration = Duration::from_secs(1);
const TAIL: Duration = Duration::from_secs(1);
/// How long a new primary may take to be followable.
const FORKABLE_LIMIT: Duration = Duration::from_secs(120);

/// What to run: `pgfollow-bench changeover --help`.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// The pgfollow binary (default: the one next to this executable)
    #[arg(long, value_name = "PATH")]
    pub pgfollow: Option<PathBuf>,
    /// Plan of the primary and of each follower
    #[arg(long, default_value = "standard-0")]
    pub plan: String,
    /// Runs of `pg:changeover`
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(0..=50))]
    pub runs: u32,
    /// Runs of the manual procedure (maintenance:on ... maintenance:off)
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(0..=20))]
    pub manual_runs: u32,
    /// Runs of the hand-made floor on plain PostgreSQL and PgBouncer
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(0..=50))]
    pub floor_runs: u32,
    /// Runs of `pg:changeover` from PostgreSQL 15 to a logical follower on 18
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=50))]
    pub major_runs: u32,
    /// PostgreSQL major of the ordinary runs' databases (default: the
    /// server's default major; 15 with --major-runs)
    #[arg(long, value_name = "MAJOR", value_parser = ["15", "18"])]
    pub pg_version: Option<String>,
    /// Concurrent writers, each on its own connection
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub writers: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Changeover,
    Manual,
    Floor,
    Major,
}

impl Method {
    fn label(self) -> &'static str {
        match self {
            Method::Changeover => "pg:changeover",
            Method::Manual => "manual procedure",
            Method::Floor => "hand-made floor",
            Method::Major => "major 15 → 18",
        }
    }
}

/// One run's numbers.
#[derive(Debug)]
struct Run {
    method: Method,
    n: u32,
    pause: Duration,
    longest_insert: Duration,
    acked: usize,
    failed: usize,
    lost: usize,
    /// What the switch itself reported or took, step by step.
    note: String,
}

impl Run {
    fn new(method: Method, n: u32, seen: &Seen, lost: usize, note: String) -> Self {
        Self {
            method,
            n,
            pause: seen.longest_gap(),
            longest_insert: seen.longest_insert(),
            acked: seen.acks.len(),
            failed: seen.failures.len(),
            lost,
            note,
        }
    }
}

/// Runs everything and returns the report to print.
pub async fn run(opts: Options) -> anyhow::Result<String> {
    let started = Instant::now();
    let mut runs = Vec::new();
    if opts.runs + opts.manual_runs + opts.major_runs > 0 {
        let bin = pgfollow_bin(opts.pgfollow.as_deref())?;
        say(&format!("starting pgfollow serve ({})", bin.display()));
        let both = ["--pg-bin", PG15_BIN, "--pg-bin", PG18_BIN];
        let server = tokio::task::block_in_place(|| match opts.major_runs {
            0 => Server::start(&bin),
            _ => Server::start_with(&bin, &both),
        })
        .context("starting pgfollow serve")?;
        let api = Client::discover(Some(server.data_dir())).context("finding the API")?;
        let pf = Pgfollow { server, bin };
        let result = pgfollow_runs(&pf, &api, &opts, &mut runs).await;
        tokio::task::block_in_place(move || drop(pf));
        result?;
    }
    if opts.floor_runs > 0 {
        say("the hand-made floor: plain PostgreSQL and PgBouncer");
        let mut floor = Floor::new().await.context("setting up the floor")?;
        let result = floor_runs(&mut floor, &opts, &mut runs).await;
        tokio::task::block_in_place(move || drop(floor));
        result?;
    }
    Ok(render(&opts, &runs, started.elapsed()))
}

/// The `pg:changeover` runs, then the manual ones, on one app.
async fn pgfollow_runs(
    pf: &Pgfollow,
    api: &Client,
    opts: &Options,
    runs: &mut Vec<Run>,
) -> anyhow::Result<()> {
    pf.cli(&["apps:create", APP]).await?;
    let version = match &opts.pg_version {
        Some(v) => Some(v.as_str()),
        None => (opts.major_runs > 0).then_some("15"),
    };
    let (mut primary, _) = pf.create_version(&opts.plan, None, version).await?;
    pf.wait(&primary).await?;
    let mut main_url = config_var(api, "DATABASE_URL").await?;
    writers::create_table(&main_url).await?;
    let plan = [
        (Method::Changeover, opts.runs),
        (Method::Manual, opts.manual_runs),
        (Method::Major, opts.major_runs),
    ];
    // Whether the primary runs 18 (asked for, or after a major run): a
    // major run needs a 15 one again.
    let mut on_18 = version == Some("18");
    for (method, count) in plan {
        for n in 1..=count {
            if on_18 && method == Method::Major {
                primary = fresh_15_primary(pf, api, opts, &primary).await?;
                // Its owner is another role: DATABASE_URL changed with it.
                main_url = config_var(api, "DATABASE_URL").await?;
            }
            wait_forkable(api, &primary).await?;
            let follower_version = (method == Method::Major).then_some("18");
            let (name, color) = pf
                .create_version(&opts.plan, Some(&primary), follower_version)
                .await?;
            pf.wait(&name).await?;
            let w = Writers::start(&main_url, opts.writers);
            tokio::time::sleep(WARM_UP).await;
            let note = match method {
                Method::Changeover | Method::Major => changeover(pf, &color).await,
                _ => manual(pf, &color).await,
            };
            tokio::time::sleep(TAIL).await;
            let seen = w.finish().await;
            let note = note.with_context(|| format!("{} run {n}", method.label()))?;
            let info = api.database(APP, &name).await?;
            if info.attachments.first().map(String::as_str) != Some("DATABASE_URL") {
                bail!(
                    "{} run {n}: {color} is not behind DATABASE_URL afterwards ({:?})",
                    method.label(),
                    info.attachments
                );
            }
            let url = config_var(api, &format!("PGFOLLOW_POSTGRESQL_{color}_URL")).await?;
            let lost = seen.missing(&writers::ids_at(&url).await?).len();
            let run = Run::new(method, n, &seen, lost, note);
            say(&describe(&run, &seen));
            runs.push(run);
            // The old primary goes once the new one has settled.
            pf.wait(&name).await?;
            pf.cli(&["addons:destroy", &primary, "--app", APP, "--confirm", APP])
                .await?;
            primary = name;
            on_18 = method == Method::Major;
        }
    }
    Ok(())
}

/// A new PostgreSQL 15 database behind DATABASE_URL (with the writers'
/// table), in place of `old` (an 18 one after a major run), which goes.
async fn fresh_15_primary(
    pf: &Pgfollow,
    api: &Client,
    opts: &Options,
    old: &str,
) -> anyhow::Result<String> {
    let (name, color) = pf.create_version(&opts.plan, None, Some("15")).await?;
    pf.wait(&name).await?;
    let url = config_var(api, &format!("PGFOLLOW_POSTGRESQL_{color}_URL")).await?;
    writers::create_table(&url).await?;
    pf.cli(&["pg:promote", &color, "--app", APP]).await?;
    pf.cli(&["addons:destroy", old, "--app", APP, "--confirm", APP])
        .await?;
    Ok(name)
}

/// `pg:changeover COLOR`; pgfollow's own account of the hold.
async fn changeover(pf: &Pgfollow, color: &str) -> anyhow::Result<String> {
    let t = Instant::now();
    let out = pf.cli(&["pg:changeover", color, "--app", APP]).await?;
    let took = t.elapsed();
    let held = out
        .lines()
        .find_map(|l| l.strip_prefix("Writes were held for "))
        .map(|s| s.trim_end_matches('.').to_string())
        .unwrap_or_else(|| "?".into());
    // The steps inside the hold, as the command printed them
    // (`  freeze   3.1 ms  ...`), and the retarget's own parts.
    let steps: Vec<String> = out
        .lines()
        .filter_map(|l| {
            let (name, detail) = l.strip_prefix("  ")?.split_once(" ms")?;
            let (name, millis) = name.trim().rsplit_once(' ')?;
            let name = name.trim();
            let parts = route_parts(detail);
            (name != "check").then(|| format!("{name} {}{parts}", millis.trim()))
        })
        .collect();
    Ok(format!(
        "pgfollow: writes held {held} ({}); command {} ms",
        steps.join(", "),
        ms(took)
    ))
}

/// ` [config 0.2, RELOAD 0.4, RESUME 0.3]` from the retarget step's detail
/// (`... config write 0.2 ms, RELOAD 0.4 ms, RESUME 0.3 ms`); empty for
/// other steps.
fn route_parts(detail: &str) -> String {
    let after = |key: &str| {
        let rest = &detail[detail.find(key)? + key.len()..];
        rest.split_whitespace().next().map(str::to_string)
    };
    let parts: Vec<String> = [
        ("admin connection ", "admin"),
        ("config write ", "config"),
        ("RELOAD ", "RELOAD"),
        ("RESUME ", "RESUME"),
        ("is writable: ", "pg_promote() until writable"),
    ]
    .iter()
    .filter_map(|(key, label)| Some(format!("{label} {}", after(key)?)))
    .collect();
    match parts.is_empty() {
        true => String::new(),
        false => format!(" [{}]", parts.join(", ")),
    }
}

/// The manual procedure, one command after the other; each one's time.
async fn manual(pf: &Pgfollow, color: &str) -> anyhow::Result<String> {
    let steps: [(&str, Vec<&str>); 5] = [
        ("maintenance:on", vec!["maintenance:on", "--app", APP]),
        (
            "pg:wait",
            vec!["pg:wait", "--app", APP, "--interval-ms", "100"],
        ),
        (
            "pg:unfollow",
            vec!["pg:unfollow", color, "--app", APP, "--confirm", APP],
        ),
        ("pg:promote", vec!["pg:promote", color, "--app", APP]),
        ("maintenance:off", vec!["maintenance:off", "--app", APP]),
    ];
    let mut took = Vec::new();
    for (name, args) in steps {
        let t = Instant::now();
        let result = pf.cli(&args).await;
        took.push(format!("{name} {} ms", ms(t.elapsed())));
        if let Err(e) = result {
            // Never leave the app in maintenance.
            let _ = pf.cli(&["maintenance:off", "--app", APP]).await;
            return Err(e.context(format!("manual procedure, {name}")));
        }
    }
    Ok(took.join(", "))
}

/// Until the database's `Fork/Follow` is `Available` (a fresh fork is
/// `Temporarily Unavailable` until its new timeline is checkpointed).
async fn wait_forkable(api: &Client, db: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + FORKABLE_LIMIT;
    loop {
        let info = api.database(APP, db).await?;
        if info.fork_follow == "Available" {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "{db}: Fork/Follow still {:?} after {FORKABLE_LIMIT:?}",
                info.fork_follow
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The floor's runs: each switches to a fresh standby of the current leader.
async fn floor_runs(floor: &mut Floor, opts: &Options, runs: &mut Vec<Run>) -> anyhow::Result<()> {
    for n in 1..=opts.floor_runs {
        let to = floor.add_standby().await?;
        let w = Writers::start(&floor.endpoint_url(), opts.writers);
        tokio::time::sleep(WARM_UP).await;
        let switch = floor.switch_to(to).await;
        tokio::time::sleep(TAIL).await;
        let seen = w.finish().await;
        let s = switch.with_context(|| format!("floor run {n}"))?;
        let lost = seen
            .missing(&writers::ids_at(&floor.direct_url(to)).await?)
            .len();
        let note = format!(
            "held {} ms: PAUSE {}, catch up {}, pg_promote() {}, RELOAD {}, RESUME {}",
            ms(s.held()),
            ms(s.pause),
            ms(s.catch_up),
            ms(s.promote),
            ms(s.retarget),
            ms(s.resume)
        );
        let run = Run::new(Method::Floor, n, &seen, lost, note);
        say(&describe(&run, &seen));
        runs.push(run);
    }
    Ok(())
}

async fn config_var(api: &Client, var: &str) -> anyhow::Result<String> {
    let vars = api.config(APP).await?.vars;
    vars.get(var)
        .cloned()
        .with_context(|| format!("{APP} has no config var {var}"))
}

fn describe(r: &Run, seen: &Seen) -> String {
    let mut line = format!(
        "{} run {}: longest pause {} ms, longest insert {} ms, {} acknowledged, {} failed, {} lost; {}",
        r.method.label(),
        r.n,
        ms(r.pause),
        ms(r.longest_insert),
        r.acked,
        r.failed,
        r.lost,
        r.note
    );
    if let Some(first) = seen.first_failure() {
        line.push_str(&format!("; first error: {first}"));
    }
    line
}

/// The per-run table, the summary per method and a line per target.
fn render(opts: &Options, runs: &[Run], took: Duration) -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut out = format!(
        "pgfollow changeover benchmark: {} databases on PostgreSQL {}, {} writers committing single-row inserts \
         through DATABASE_URL (PgBouncer, transaction mode, simple protocol), {cores} cores, {:.0} s in all\n\
         longest pause = the longest time in which no writer got a commit acknowledged, from {} s \
         before the switch to {} s after it\n\
         failed = attempts that got an error (writers reconnect after {} ms); lost = acknowledged \
         inserts missing on the new primary (read directly)\n\n",
        opts.plan,
        match (&opts.pg_version, opts.major_runs) {
            (Some(v), _) => v.as_str(),
            (None, 0) => "the server's default major",
            (None, _) => "15",
        },
        opts.writers,
        took.as_secs_f64(),
        WARM_UP.as_secs(),
        TAIL.as_secs(),
        writers::RETRY_AFTER.as_millis()
    );
    out.push_str(&format!(
        "{:<17} {:>3}  {:>10}  {:>10}  {:>6}  {:>6}  {:>4}  {}\n",
        "method", "run", "pause ms", "insert ms", "acked", "failed", "lost", "the switch"
    ));
    for r in runs {
        out.push_str(&format!(
            "{:<17} {:>3}  {:>10}  {:>10}  {:>6}  {:>6}  {:>4}  {}\n",
            r.method.label(),
            r.n,
            ms(r.pause),
            ms(r.longest_insert),
            r.acked,
            r.failed,
            r.lost,
            r.note
        ));
    }
    out.push('\n');
    out.push_str(&format!(
        "{:<17} {:>4}  {:>16}  {:>13}  {:>12}  {:>10}\n",
        "method", "runs", "median pause ms", "max pause ms", "failed total", "lost total"
    ));
    for method in [
        Method::Changeover,
        Method::Manual,
        Method::Floor,
        Method::Major,
    ] {
        let of: Vec<&Run> = runs.iter().filter(|r| r.method == method).collect();
        if of.is_empty() {
            continue;
        }
        let pauses: Vec<Duration> = of.iter().map(|r| r.pause).collect();
        out.push_str(&format!(
            "{:<17} {:>4}  {:>16}  {:>13}  {:>12}  {:>10}\n",
            method.label(),
            of.len(),
            median(&pauses).map_or("-".into(), ms),
            pauses.iter().max().map_or("-".into(), |d| ms(*d)),
            of.iter().map(|r| r.failed).sum::<usize>(),
            of.iter().map(|r| r.lost).sum::<usize>()
        ));
    }
    out.push('\n');
    let ours: Vec<&Run> = runs
        .iter()
        .filter(|r| r.method == Method::Changeover)
        .collect();
    if let Some(max) = ours.iter().map(|r| r.pause).max() {
        let failed: usize = ours.iter().map(|r| r.failed).sum();
        let lost: usize = ours.iter().map(|r| r.lost).sum();
        out.push_str(&format!(
            "{} pg:changeover longest pause: max {} ms over {} runs, target < {} ms\n",
            verdict(max < PAUSE_MAX),
            ms(max),
            ours.len(),
            PAUSE_MAX.as_millis()
        ));
        if let Some(m) = median(&ours.iter().map(|r| r.pause).collect::<Vec<_>>()) {
            out.push_str(&format!(
                "{} pg:changeover median pause: {} ms over {} runs, target ≤ {} ms\n",
                verdict(m <= PAUSE_MEDIAN),
                ms(m),
                ours.len(),
                PAUSE_MEDIAN.as_millis()
            ));
        }
        out.push_str(&format!(
            "{} pg:changeover failed transactions: {failed}, target 0\n",
            verdict(failed == 0)
        ));
        out.push_str(&format!(
            "{} pg:changeover lost commits: {lost}, target 0\n",
            verdict(lost == 0)
        ));
    }
    let major: Vec<&Run> = runs.iter().filter(|r| r.method == Method::Major).collect();
    if let Some(max) = major.iter().map(|r| r.pause).max() {
        let failed: usize = major.iter().map(|r| r.failed).sum();
        let lost: usize = major.iter().map(|r| r.lost).sum();
        let pauses = |of: &[&Run]| of.iter().map(|r| r.pause).collect::<Vec<_>>();
        let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-9);
        if let (Some(m), Some(o), Some(omax)) = (
            median(&pauses(&major)),
            median(&pauses(&ours)),
            ours.iter().map(|r| r.pause).max(),
        ) {
            out.push_str(&format!(
                "major 15 → 18 / pg:changeover: median pause {:.2}×, max pause {:.2}×\n",
                ratio(m, o),
                ratio(max, omax)
            ));
        }
        out.push_str(&format!(
            "{} major 15 → 18 longest pause: max {} ms over {} runs, target < {} ms\n",
            verdict(max < MAJOR_PAUSE_MAX),
            ms(max),
            major.len(),
            MAJOR_PAUSE_MAX.as_millis()
        ));
        out.push_str(&format!(
            "{} major 15 → 18 failed transactions: {failed}, target 0\n",
            verdict(failed == 0)
        ));
        out.push_str(&format!(
            "{} major 15 → 18 lost commits: {lost}, target 0\n",
            verdict(lost == 0)
        ));
    }
    out
}

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
