//! `pgfollow-bench endpoint`: what the app endpoints cost and give, each
//! against a baseline measured in the same run:
//!
//! (a) `pgbench -M prepared` with more clients than the endpoint's pool,
//!     through `DATABASE_URL` (PgBouncer, transaction pooling, prepared
//!     statements carried) vs the same workload straight to the database:
//!     TPS ratio and failed transactions;
//! (b) read-only TPS (`pgbench -S -M prepared`) through
//!     `DATABASE_FOLLOWER_URL` with two followers serving vs one;
//! (c) a `pg:changeover` while `pgbench -M prepared` runs through
//!     `DATABASE_URL`: the longest transaction (from pgbench's per
//!     transaction log) against the median one, and failures.
//!
//! pgbench gets its password from the environment, never the command line.
//! (a) runs one pgbench thread per client (`-j` = `-c`): pgbench 15
//! prepares a client's statements with the synchronous `PQprepare`, which
//! blocks its whole thread; through transaction pooling with more clients
//! than server connections, that thread's other clients hold every server
//! connection mid-transaction, waiting for the blocked thread, and the
//! prepare waits for a server connection: the run stalls until PgBouncer's
//! `query_wait_timeout` (seen here with `-c 110 -j 2`: 29 transactions in
//! 5 s; with `-j 110`: 950). A driver with a connection per thread, or an
//! asynchronous one, does not do this.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use pgfollow_client::Client;
use pgfollow_testkit::Server;
use tokio::process::Command;

use crate::follower::{pgfollow_bin, Pgfollow, APP};
use crate::tools::{pg_tool, run as run_tool};

/// What to run: `pgfollow-bench endpoint --help`.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// The pgfollow binary (default: the one next to this executable)
    #[arg(long, value_name = "PATH")]
    pub pgfollow: Option<PathBuf>,
    /// Plan of the leader and its followers (standard-0: a pool of 100)
    #[arg(long, default_value = "standard-0")]
    pub plan: String,
    /// pgbench scale factor
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub scale: u32,
    /// Seconds of each pgbench run
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(3..=600))]
    pub seconds: u64,
    /// Clients of (a): more than the endpoint's pool (100 on standard-0),
    /// fewer than the database's connection limit
    #[arg(long, default_value_t = 110, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub clients: u32,
    /// Clients of (b) and (c)
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub read_clients: u32,
}

/// Where pgbench connects: from a `postgres://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    host: String,
    port: String,
    user: String,
    password: String,
    database: String,
}

/// `postgres://USER:PASSWORD@HOST:PORT[,HOST:PORT]/DB[?...]`: the first host.
fn parse_url(url: &str) -> anyhow::Result<Target> {
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        .context("not a postgres:// URL")?;
    let (auth, rest) = rest.rsplit_once('@').context("no user in the URL")?;
    let (user, password) = auth.split_once(':').context("no password in the URL")?;
    let (hosts, db) = rest.split_once('/').context("no database in the URL")?;
    let first = hosts.split(',').next().unwrap_or_default();
    let (host, port) = first.rsplit_once(':').context("no port in the URL")?;
    let database = db.split('?').next().unwrap_or_default();
    Ok(Target {
        host: host.to_string(),
        port: port.to_string(),
        user: user.to_string(),
        password: password.to_string(),
        database: database.to_string(),
    })
}

/// What one pgbench run reported.
#[derive(Debug, Clone, Default)]
struct Bench {
    tps: f64,
    transactions: u64,
    failed: u64,
    /// Clients pgbench aborted after an error.
    aborted: bool,
    /// From `-l`: longest and median transaction.
    longest: Option<Duration>,
    median: Option<Duration>,
}

fn pgbench(t: &Target) -> anyhow::Result<Command> {
    let mut cmd = Command::new(pg_tool("pgbench")?);
    cmd.env("PGPASSWORD", &t.password)
        .env("PGCONNECT_TIMEOUT", "10")
        .args(["-h", &t.host, "-p", &t.port, "-U", &t.user]);
    Ok(cmd)
}

async fn init(t: &Target, scale: u32) -> anyhow::Result<()> {
    let mut cmd = pgbench(t)?;
    cmd.args(["-i", "-q", "-s", &scale.to_string(), &t.database]);
    run_tool(cmd, "pgbench -i", Duration::from_secs(600)).await?;
    Ok(())
}

/// `pgbench -M prepared` (read-only with `select_only`) for `seconds`;
/// with `log_dir`, per-transaction latencies are read from its `-l` log.
async fn load(
    t: &Target,
    clients: u32,
    jobs: u32,
    seconds: u64,
    select_only: bool,
    log_dir: Option<&std::path::Path>,
) -> anyhow::Result<Bench> {
    let mut cmd = pgbench(t)?;
    cmd.args(["-n", "-M", "prepared"])
        .args(["-c", &clients.to_string(), "-j", &jobs.to_string()])
        .args(["-T", &seconds.to_string()]);
    if select_only {
        cmd.arg("-S");
    }
    if let Some(dir) = log_dir {
        cmd.current_dir(dir).args(["-l", "--log-prefix", "tx"]);
    }
    cmd.arg(&t.database);
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().context("starting pgbench")?;
    let out = tokio::time::timeout(Duration::from_secs(seconds + 120), child.wait_with_output())
        .await
        .context("pgbench ran too long; killed")??;
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    let mut b = Bench {
        tps: number_after(&text, "tps = ").unwrap_or(0.0),
        transactions: number_after(&text, "number of transactions actually processed: ")
            .unwrap_or(0.0) as u64,
        failed: number_after(&text, "number of failed transactions: ").unwrap_or(0.0) as u64,
        aborted: !out.status.success() || err.contains("aborted"),
        ..Bench::default()
    };
    if b.transactions == 0 {
        bail!("pgbench made no transaction: {}{}", err.trim(), text.trim());
    }
    if let Some(dir) = log_dir {
        let mut lat = Vec::new();
        for entry in std::fs::read_dir(dir)?.flatten() {
            if entry.file_name().to_string_lossy().starts_with("tx.") {
                let text = std::fs::read_to_string(entry.path())?;
                lat.extend(
                    text.lines()
                        .filter_map(|l| l.split_whitespace().nth(2)?.parse::<u64>().ok()),
                );
            }
        }
        lat.sort_unstable();
        b.longest = lat.last().map(|us| Duration::from_micros(*us));
        b.median = lat.get(lat.len() / 2).map(|us| Duration::from_micros(*us));
    }
    if b.aborted {
        say(&format!("pgbench reported errors: {}", last_lines(&err, 3)));
    }
    Ok(b)
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// The number at the start of what follows `label` on some line.
fn number_after(text: &str, label: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

async fn config_var(api: &Client, var: &str) -> anyhow::Result<String> {
    let vars = api.config(APP).await?.vars;
    vars.get(var)
        .cloned()
        .with_context(|| format!("{APP} has no config var {var}"))
}

/// Waits until `n` followers serve the read endpoint.
async fn wait_serving(api: &Client, n: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let r = api.read_endpoint(APP).await?;
        if r.serving.len() == n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{} followers serve reads, not {n}, after 120 s: {:?}",
                r.serving.len(),
                r.out
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub async fn run(opts: Options) -> anyhow::Result<String> {
    let started = Instant::now();
    let bin = pgfollow_bin(opts.pgfollow.as_deref())?;
    say(&format!("starting pgfollow serve ({})", bin.display()));
    let server =
        tokio::task::block_in_place(|| Server::start(&bin)).context("starting pgfollow serve")?;
    let api = Client::discover(Some(server.data_dir())).context("finding the API")?;
    let pf = Pgfollow { server, bin };
    let result = measure(&pf, &api, &opts).await;
    tokio::task::block_in_place(move || drop(pf));
    let r = result?;
    Ok(render(&opts, &r, started.elapsed()))
}

struct Results {
    direct: Bench,
    endpoint: Bench,
    one: Bench,
    two: Bench,
    changeover: Bench,
    changeover_said: String,
}

async fn measure(pf: &Pgfollow, api: &Client, opts: &Options) -> anyhow::Result<Results> {
    pf.cli(&["apps:create", APP]).await?;
    let (leader, _) = pf.create(&opts.plan, None).await?;
    pf.wait(&leader).await?;
    let creds = api.credentials(APP, &leader).await?;
    let direct_t = Target {
        host: creds.host.clone(),
        port: creds.port.to_string(),
        user: creds.user.clone(),
        password: creds.password.clone(),
        database: creds.database.clone(),
    };
    let main_t = parse_url(&config_var(api, "DATABASE_URL").await?)?;
    say(&format!("pgbench -i -s {}", opts.scale));
    init(&direct_t, opts.scale).await?;

    say(&format!(
        "(a) {} clients straight to the database",
        opts.clients
    ));
    let direct = load(
        &direct_t,
        opts.clients,
        opts.clients,
        opts.seconds,
        false,
        None,
    )
    .await?;
    say(&format!(
        "(a) {} clients through DATABASE_URL",
        opts.clients
    ));
    let endpoint = load(
        &main_t,
        opts.clients,
        opts.clients,
        opts.seconds,
        false,
        None,
    )
    .await?;

    say("(b) one follower");
    let (f1, _) = pf.create(&opts.plan, Some(&leader)).await?;
    pf.wait(&f1).await?;
    wait_serving(api, 1).await?;
    let read_t = parse_url(&config_var(api, "DATABASE_FOLLOWER_URL").await?)?;
    let one = load(&read_t, opts.read_clients, 2, opts.seconds, true, None).await?;
    say("(b) two followers");
    let (f2, _) = pf.create(&opts.plan, Some(&leader)).await?;
    pf.wait(&f2).await?;
    wait_serving(api, 2).await?;
    let two = load(&read_t, opts.read_clients, 2, opts.seconds, true, None).await?;

    say("(c) pg:changeover under pgbench -M prepared through DATABASE_URL");
    let logs = tempfile::tempdir()?;
    let seconds = opts.seconds.max(6);
    let bench = load(
        &main_t,
        opts.read_clients,
        2,
        seconds,
        false,
        Some(logs.path()),
    );
    let switch = async {
        tokio::time::sleep(Duration::from_secs(seconds / 2)).await;
        pf.cli(&["pg:changeover", &f1, "--app", APP]).await
    };
    let (changeover, said) = tokio::join!(bench, switch);
    Ok(Results {
        direct,
        endpoint,
        one,
        two,
        changeover: changeover?,
        changeover_said: said?,
    })
}

fn render(opts: &Options, r: &Results, took: Duration) -> String {
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    let errs = |b: &Bench| {
        format!(
            "{}{}",
            b.failed,
            if b.aborted { " (clients aborted)" } else { "" }
        )
    };
    let ms = |d: Option<Duration>| {
        d.map_or("?".into(), |d| {
            format!("{:.1} ms", d.as_secs_f64() * 1000.0)
        })
    };
    let mut out = format!(
        "pgfollow-bench endpoint: plan {}, scale {}, {} s per run, took {:.0} s\n\n",
        opts.plan,
        opts.scale,
        opts.seconds,
        took.as_secs_f64()
    );
    out.push_str("| | measured | baseline, same run | ratio | failed |\n|---|---|---|---|---|\n");
    out.push_str(&format!(
        "| (a) `-M prepared`, {} clients, through DATABASE_URL | {:.0} TPS | {:.0} TPS straight to the database | {:.3}× | {} (direct: {}) |\n",
        opts.clients,
        r.endpoint.tps,
        r.direct.tps,
        ratio(r.endpoint.tps, r.direct.tps),
        errs(&r.endpoint),
        errs(&r.direct)
    ));
    out.push_str(&format!(
        "| (b) `-S -M prepared`, {} clients, DATABASE_FOLLOWER_URL, two followers | {:.0} TPS | {:.0} TPS with one | {:.3}× | {} / {} |\n",
        opts.read_clients,
        r.two.tps,
        r.one.tps,
        ratio(r.two.tps, r.one.tps),
        errs(&r.two),
        errs(&r.one)
    ));
    let c = &r.changeover;
    out.push_str(&format!(
        "| (c) `-M prepared`, {} clients, through DATABASE_URL, `pg:changeover` mid-run | longest transaction {} | median {} | {:.0}× | {} |\n",
        opts.read_clients,
        ms(c.longest),
        ms(c.median),
        match (c.longest, c.median) {
            (Some(l), Some(m)) if !m.is_zero() => l.as_secs_f64() / m.as_secs_f64(),
            _ => 0.0,
        },
        errs(c)
    ));
    out.push_str("\npg:changeover said:\n");
    out.push_str(&r.changeover_said);
    out
}

fn say(line: &str) {
    eprintln!("[bench] {line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_pgbench_numbers_are_read() {
        let t = parse_url("postgres://u1:p@ss@127.0.0.1:15400,127.0.0.2:15401/db1?target_session_attrs=read-write").unwrap();
        assert_eq!(
            t,
            Target {
                host: "127.0.0.1".into(),
                port: "15400".into(),
                user: "u1".into(),
                password: "p@ss".into(),
                database: "db1".into(),
            }
        );
        assert!(parse_url("mysql://x").is_err());
        let out = "number of transactions actually processed: 9030\n\
                   number of failed transactions: 0 (0.000%)\n\
                   tps = 903.2 (without initial connection time)\n";
        assert_eq!(number_after(out, "tps = "), Some(903.2));
        assert_eq!(
            number_after(out, "number of failed transactions: "),
            Some(0.0)
        );
        assert_eq!(
            number_after(out, "number of transactions actually processed: "),
            Some(9030.0)
        );
    }
}
