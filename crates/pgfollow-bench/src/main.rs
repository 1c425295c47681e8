//! `pgfollow-bench`: the benchmarks the README quotes, run against a real
//! `pgfollow serve` started by pgfollow-testkit in a temporary directory.
//! `pgfollow-bench followers` (what `scripts/bench-followers` runs) loads a
//! leader with pgbench and compares, in the same run, pgfollow's followers
//! with a standby made by hand with plain `pg_basebackup -R`: (a) how long
//! each takes to be ready, (b) the leader's pgbench TPS with each attached
//! (and with none), (c) `Behind By` sampled every 100 ms under load and what
//! one sample costs. It prints a table and one PASS/MISS line per target.
//! Everything runs on loopback, bounded in time; Ctrl-C stops it and removes
//! what it made.
//! `pgfollow-bench changeover` (`scripts/bench-changeover`) measures what
//! writers through `DATABASE_URL` see during `pg:changeover`, the manual
//! procedure and a hand-made PgBouncer switch on plain PostgreSQL;
//! `pgfollow-bench failover` (`scripts/bench-failover`) the time to write
//! again after a lost host, a crashed postgres, a frozen (SIGSTOPped)
//! postgres or a host frozen for 4 s, the commits lost, the writes the old
//! primary still acknowledged after the promotion and the failed attempts;
//! `pgfollow-bench endpoint` (`scripts/bench-endpoint`) pgbench through the
//! app endpoints against straight to the database, read TPS through
//! `DATABASE_FOLLOWER_URL` with one and two followers, and the longest
//! transaction of `pgbench -M prepared` across a `pg:changeover`.

mod changeover;
mod endpoint;
mod failover;
mod floor;
mod follower;
mod followers;
mod leader;
mod pgbench;
mod procstat;
mod reference;
mod report;
mod sampler;
mod standby;
mod tools;
mod writers;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "pgfollow-bench",
    about = "Benchmarks of pgfollow against plain PostgreSQL"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Followers: creation time, leader TPS and Behind By, against a
    /// hand-made `pg_basebackup -R` standby of the same leader
    Followers(FollowersArgs),
    /// Changeover: write pause, failed and lost commits of `pg:changeover`,
    /// of the manual procedure and of a hand-made PgBouncer switch
    Changeover(changeover::Options),
    /// Failover: time to write again after a lost host, a crashed or
    /// frozen postgres or a frozen host; commits lost, acknowledged by the
    /// old primary after the promotion, failed attempts (async and sync)
    Failover(failover::Options),
    /// Endpoints: pgbench -M prepared through DATABASE_URL vs straight to
    /// the database, read TPS through DATABASE_FOLLOWER_URL with one and
    /// two followers, the longest transaction across a pg:changeover
    Endpoint(endpoint::Options),
}

#[derive(Debug, clap::Args)]
struct FollowersArgs {
    /// The pgfollow binary (default: the one next to this executable)
    #[arg(long, value_name = "PATH")]
    pgfollow: Option<PathBuf>,
    /// Plan of the leader and of its pgfollow follower
    #[arg(long, default_value = "standard-2")]
    plan: String,
    /// pgbench scale factor of the leader (50 is about 750 MB)
    #[arg(long, default_value_t = 50)]
    scale: u32,
    /// Seconds of each pgbench run
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(3..=3600))]
    seconds: u64,
    /// pgbench clients
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=100))]
    clients: u32,
    /// pgbench threads
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=100))]
    jobs: u32,
    /// Rounds; each measures all three configurations, in rotated order
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    rounds: u32,
    /// Milliseconds between two samples of Behind By
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(10..=10_000))]
    sample_ms: u64,
    /// Samples taken back to back on the idle leader to measure one's CPU cost
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    cost_samples: u32,
    /// Copy `pgfollow serve`'s log here at the end (it is removed with its directory)
    #[arg(long, value_name = "PATH")]
    serve_log: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let args = match cli.command {
        Command::Followers(args) => args,
        Command::Changeover(opts) => return report(&runtime, changeover::run(opts)),
        Command::Failover(opts) => return report(&runtime, failover::run(opts)),
        Command::Endpoint(opts) => return report(&runtime, endpoint::run(opts)),
    };
    let opts = followers::Options {
        pgfollow: args.pgfollow,
        plan: args.plan,
        scale: args.scale,
        load: pgbench::Load {
            clients: args.clients,
            jobs: args.jobs.min(args.clients),
            seconds: args.seconds,
        },
        rounds: args.rounds,
        sample_every: Duration::from_millis(args.sample_ms),
        cost_samples: args.cost_samples,
        serve_log: args.serve_log,
    };
    // Dropping the run (Ctrl-C) kills its children and stops the hand-made
    // standby and the server, whose directories go with them.
    let outcome = runtime.block_on(async {
        tokio::select! {
            r = followers::run(opts) => r.map(Some),
            _ = tokio::signal::ctrl_c() => Ok(None),
        }
    });
    match outcome {
        Ok(Some(results)) => {
            print!("{}", results.render());
            ExitCode::SUCCESS
        }
        Ok(None) => {
            eprintln!("interrupted; cleaned up");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a benchmark that returns its report, printing it; Ctrl-C drops it,
/// which stops and removes everything it started.
fn report(
    runtime: &tokio::runtime::Runtime,
    bench: impl std::future::Future<Output = anyhow::Result<String>>,
) -> ExitCode {
    let outcome = runtime.block_on(async {
        tokio::select! {
            r = bench => r.map(Some),
            _ = tokio::signal::ctrl_c() => Ok(None),
        }
    });
    match outcome {
        Ok(Some(text)) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Ok(None) => {
            eprintln!("interrupted; cleaned up");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
