//! `pgfollow-bench followers`: one run, one leader, three measurements.
//!
//! The leader is a pgfollow database loaded with `pgbench -i`. Each round
//! measures the three configurations of the leader — no follower, a
//! pgfollow follower, a hand-made standby — in a rotated order (a Latin
//! square over three rounds), so drift during the run (the leader's tables
//! and WAL grow) falls on each of them alike: (a) the time each follower
//! takes to become ready, (b) pgbench TPS on the leader while it is
//! attached. (c) samples `Behind By` under pgbench once, in the first
//! round, after that round's TPS run so it does not disturb it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use pgfollow_client::Client;
use pgfollow_testkit::Server;
use rand::Rng;
use tokio_postgres::Client as Sql;

use crate::follower::{pgfollow_bin, Pgfollow, APP};
use crate::leader::{query_text, ClusterDir, HbaLine};
use crate::pgbench::{self, Load};
use crate::procstat::{load_average, process_cpu};
use crate::reference;
use crate::report::Results;
use crate::sampler;
use crate::standby::{HandMadeStandby, REPLICATION_ROLE};

/// What to run; see `pgfollow-bench followers --help`.
#[derive(Debug, Clone)]
pub struct Options {
    pub pgfollow: Option<PathBuf>,
    pub plan: String,
    pub scale: u32,
    pub load: Load,
    pub rounds: u32,
    pub sample_every: Duration,
    pub cost_samples: u32,
    pub serve_log: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Config {
    NoFollower,
    Pgfollow,
    HandMade,
}

const CONFIGS: [Config; 3] = [Config::NoFollower, Config::Pgfollow, Config::HandMade];

/// The leader and the ways to reach it.
struct Bench<'a> {
    pf: &'a Pgfollow,
    api: Client,
    opts: Options,
    leader: String,
    creds: pgfollow_types::api::Credentials,
    cluster: ClusterDir,
    sql: Sql,
}

/// Runs the whole benchmark and returns what it measured.
pub async fn run(opts: Options) -> anyhow::Result<Results> {
    let bin = pgfollow_bin(opts.pgfollow.as_deref())?;
    say(&format!("starting pgfollow serve ({})", bin.display()));
    let server = Server::start(&bin).context("starting pgfollow serve")?;
    let api = Client::discover(Some(server.data_dir())).context("finding the API")?;
    let pf = Pgfollow { server, bin };
    let log = opts.serve_log.clone();
    let result = measure(&pf, api, opts).await;
    // Before `pf` drops and its directory with the log goes.
    if let Some(path) = &log {
        if let Err(e) = std::fs::copy(pf.server.log_path(), path) {
            eprintln!("could not copy the serve log to {}: {e}", path.display());
        }
    }
    result
}

/// Everything after the server started.
async fn measure(pf: &Pgfollow, api: Client, opts: Options) -> anyhow::Result<Results> {
    pf.cli(&["apps:create", APP]).await?;
    let (leader, color) = pf.create(&opts.plan, None).await?;
    pf.wait(&leader).await?;
    let creds = api.credentials(APP, &leader).await?;
    let cluster = ClusterDir::find(&pf.server.data_dir(), creds.port)?;
    let sql = cluster.superuser().await?;
    say(&format!(
        "leader {color} ({}) on port {}; pgbench -i -s {}",
        opts.plan, creds.port, opts.scale
    ));
    let mut bench = Bench {
        pf,
        api,
        opts,
        leader: color,
        creds,
        cluster,
        sql,
    };
    let mut results = Results {
        every: bench.opts.sample_every,
        load_before: load_average(),
        ..Results::default()
    };
    results.init = pgbench::init(&bench.creds, bench.opts.scale).await?;
    results.setup = bench.describe().await?;
    say(&results.setup);

    // The baseline's own replication role and the one hba line it needs:
    // pgfollow's pg_hba.conf admits replication only for its own role.
    let password: String = hex_password();
    bench
        .sql
        .batch_execute(&format!(
            "CREATE ROLE {REPLICATION_ROLE} WITH REPLICATION LOGIN PASSWORD '{password}'"
        ))
        .await
        .context("creating the baseline's replication role")?;
    let hba = HbaLine::new(
        bench.cluster.clone(),
        &format!("host replication {REPLICATION_ROLE} 127.0.0.1/32 scram-sha-256"),
    );
    for round in 0..bench.opts.rounds {
        for i in 0..CONFIGS.len() {
            let config = CONFIGS[(i + round as usize) % CONFIGS.len()];
            bench
                .measure(config, round, &hba, &password, &mut results)
                .await
                .with_context(|| format!("round {}: {config:?}", round + 1))?;
        }
    }
    drop(hba);
    results.load_after = load_average();

    bench
        .sql
        .batch_execute(&format!("DROP ROLE {REPLICATION_ROLE}"))
        .await
        .context("dropping the baseline's replication role")?;
    Ok(results)
}

impl Bench<'_> {
    async fn describe(&self) -> anyhow::Result<String> {
        let version = query_text(&self.sql, "SHOW server_version").await?;
        let size = query_text(
            &self.sql,
            &format!(
                "SELECT pg_size_pretty(pg_database_size('{}'))",
                self.creds.database.replace('\'', "''")
            ),
        )
        .await?;
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        let l = self.opts.load;
        Ok(format!(
            "pgfollow followers benchmark: {} leader with pgbench scale {} ({}), PostgreSQL {}, {cores} cores\n\
             load: pgbench -c {} -j {} -T {} (simple protocol); {} rounds, configurations in rotated order",
            self.opts.plan,
            self.opts.scale,
            size.unwrap_or_default(),
            version.unwrap_or_default(),
            l.clients,
            l.jobs,
            l.seconds,
            self.opts.rounds
        ))
    }

    async fn checkpoint(&self) -> anyhow::Result<()> {
        self.sql
            .batch_execute("CHECKPOINT")
            .await
            .context("CHECKPOINT on the leader")
    }

    /// Before timing a copy: the leader's dirty buffers and the kernel's
    /// dirty pages written out, so the copy does not compete with writeback
    /// of what came before (right after `pgbench -i` that is most of the
    /// database, and whichever copy came first paid for it).
    async fn settle(&self) -> anyhow::Result<()> {
        self.checkpoint().await?;
        tokio::task::spawn_blocking(nix::unistd::sync)
            .await
            .context("sync")
    }

    /// A pgbench run's TPS, and the CPU `pgfollow serve` used meanwhile.
    async fn tps(&self) -> anyhow::Result<(f64, f64)> {
        self.checkpoint().await?;
        let before = self.serve_cpu()?;
        let tps = pgbench::run_tps(&self.creds, self.opts.load).await?;
        Ok((tps, self.serve_cpu()? - before))
    }

    fn serve_cpu(&self) -> anyhow::Result<f64> {
        let pid = self
            .pf
            .server
            .pid()
            .context("pgfollow serve is not running")?;
        process_cpu(pid)
    }

    async fn measure(
        &mut self,
        config: Config,
        round: u32,
        hba: &HbaLine,
        password: &str,
        results: &mut Results,
    ) -> anyhow::Result<()> {
        let r = round + 1;
        match config {
            Config::NoFollower => {
                let (tps, cpu) = self.tps().await?;
                say(&format!("round {r}: no follower: {tps:.0} TPS"));
                results.tps_none.push(tps);
                results.serve_cpu_none.push(cpu);
            }
            Config::Pgfollow => {
                self.settle().await?;
                let (f, took) = self
                    .pf
                    .create_follower(&self.opts.plan, &self.leader)
                    .await?;
                say(&format!(
                    "round {r}: pgfollow follower {} ready in {:.2} s",
                    f.color,
                    took.as_secs_f64()
                ));
                results.ready_pgfollow.push(took);
                let (tps, cpu) = self.tps().await?;
                say(&format!("round {r}: with pgfollow follower: {tps:.0} TPS"));
                results.tps_pgfollow.push(tps);
                results.serve_cpu_pgfollow.push(cpu);
                if round == 0 {
                    self.sample_lag(&f.name, results).await?;
                }
                self.pf.destroy_follower(f, &self.sql).await?;
            }
            Config::HandMade => {
                if hba.ensure().await? && round > 0 {
                    say("note: pgfollow had rewritten pg_hba.conf; the baseline's line is back");
                }
                self.settle().await?;
                let (mut standby, took) =
                    HandMadeStandby::create(&self.cluster, &self.sql, password).await?;
                say(&format!(
                    "round {r}: hand-made standby ready in {:.2} s",
                    took.as_secs_f64()
                ));
                results.ready_handmade.push(took);
                let (tps, cpu) = self.tps().await?;
                say(&format!("round {r}: with hand-made standby: {tps:.0} TPS"));
                results.tps_handmade.push(tps);
                results.serve_cpu_handmade.push(cpu);
                standby.stop().await?;
            }
        }
        Ok(())
    }

    /// (c): what one sample costs on the idle leader, then samples under
    /// pgbench for as long as it runs (less its first and last second).
    async fn sample_lag(&self, follower: &str, results: &mut Results) -> anyhow::Result<()> {
        let n = self.opts.cost_samples;
        results.cost = Some(sampler::cost(&self.api, follower, n).await?);
        results.leader_cost = Some(sampler::cost(&self.api, &self.leader, n).await?);
        self.checkpoint().await?;
        let load = self.opts.load;
        let length = Duration::from_secs(load.seconds.saturating_sub(2).max(1));
        let sampling = async {
            // pgbench vacuums and connects first.
            tokio::time::sleep(Duration::from_secs(1)).await;
            sampler::sample(&self.api, follower, self.opts.sample_every, length).await
        };
        let follower_port = self.api.credentials(APP, follower).await?.port;
        let follower_sql = ClusterDir::find(&self.pf.server.data_dir(), follower_port)?
            .superuser()
            .await?;
        let every = self.opts.sample_every;
        let kept = async {
            // Half a period after pgfollow's samples.
            tokio::time::sleep(Duration::from_secs(1) + every / 2).await;
            reference::sample(&self.sql, &follower_sql, every, length).await
        };
        let (tps, samples, kept) =
            tokio::join!(pgbench::run_tps(&self.creds, load), sampling, kept);
        results.tps_while_sampling = tps?;
        results.samples = samples?;
        results.reference = kept?;
        say(&format!(
            "(c): {} samples of Behind By; TPS meanwhile {:.0}",
            results.samples.len(),
            results.tps_while_sampling
        ));
        Ok(())
    }
}

/// A password for the baseline's role: 32 hex digits.
fn hex_password() -> String {
    let mut rng = rand::thread_rng();
    (0..16)
        .map(|_| format!("{:02x}", rng.gen::<u8>()))
        .collect()
}

/// A progress line on stderr (the results go to stdout).
fn say(line: &str) {
    eprintln!("[bench] {line}");
}
