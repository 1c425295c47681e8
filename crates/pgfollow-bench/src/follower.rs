//! pgfollow's side: a follower made and removed with the CLI, exactly as a
//! user types it (`addons:create PLAN --follow LEADER`, then `pg:wait`), and
//! the leader it follows.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use pgfollow_testkit::Server;
use tokio_postgres::Client;

use crate::leader::replication_leftovers;
use crate::tools::{cli, cli_json};

/// The app every database of the benchmark belongs to.
pub const APP: &str = "bench";

/// How long one CLI command may run.
const CLI_LIMIT: Duration = Duration::from_secs(120);
/// How long a database may take to become available or to go away.
const READY_LIMIT: Duration = Duration::from_secs(900);

/// The server under test and how to reach it.
pub struct Pgfollow {
    pub server: Server,
    pub bin: PathBuf,
}

impl Pgfollow {
    pub async fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        cli(&self.server, &self.bin, args, CLI_LIMIT).await
    }

    pub async fn json(&self, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        cli_json(&self.server, &self.bin, args, CLI_LIMIT).await
    }

    /// `addons:create PLAN [--follow LEADER]`; the add-on name and colour.
    pub async fn create(
        &self,
        plan: &str,
        follow: Option<&str>,
    ) -> anyhow::Result<(String, String)> {
        self.create_version(plan, follow, None).await
    }

    /// [`Pgfollow::create`] with `--version MAJOR` (of a leader: a logical
    /// follower).
    pub async fn create_version(
        &self,
        plan: &str,
        follow: Option<&str>,
        version: Option<&str>,
    ) -> anyhow::Result<(String, String)> {
        let mut args = vec!["addons:create", plan, "--app", APP];
        if let Some(leader) = follow {
            args.extend(["--follow", leader]);
        }
        if let Some(v) = version {
            args.extend(["--version", v]);
        }
        let out = self.json(&args).await?;
        let db = &out["database"];
        match (db["name"].as_str(), db["color"].as_str()) {
            (Some(name), Some(color)) => Ok((name.to_string(), color.to_string())),
            _ => bail!("addons:create printed no database name: {out}"),
        }
    }

    /// `pg:wait DB` polling every 100 ms.
    pub async fn wait(&self, db: &str) -> anyhow::Result<()> {
        let timeout = READY_LIMIT.as_secs().to_string();
        let args = [
            "pg:wait",
            db,
            "--app",
            APP,
            "--interval-ms",
            "100",
            "--timeout",
            &timeout,
        ];
        cli(&self.server, &self.bin, &args, READY_LIMIT + CLI_LIMIT).await?;
        Ok(())
    }

    /// A follower of `leader` on `plan`, and the time from `addons:create`
    /// until `pg:wait` says it is available.
    pub async fn create_follower(
        &self,
        plan: &str,
        leader: &str,
    ) -> anyhow::Result<(Follower, Duration)> {
        let started = Instant::now();
        let (name, color) = self.create(plan, Some(leader)).await?;
        self.wait(&name).await?;
        Ok((Follower { name, color }, started.elapsed()))
    }

    /// `addons:destroy`, then waits until the add-on is gone and the leader
    /// has no slot and no walsender left.
    pub async fn destroy_follower(&self, f: Follower, leader_sql: &Client) -> anyhow::Result<()> {
        self.cli(&["addons:destroy", &f.name, "--app", APP, "--confirm", APP])
            .await?;
        let deadline = Instant::now() + READY_LIMIT;
        loop {
            let addons = self.json(&["addons", "--app", APP]).await?;
            let listed = addons
                .as_array()
                .is_some_and(|a| a.iter().any(|d| d["name"] == f.name.as_str()));
            let (slots, senders) = replication_leftovers(leader_sql).await?;
            if !listed && slots == 0 && senders == 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} ({}) still there after {READY_LIMIT:?}: listed {listed}, {slots} slots, {senders} walsenders",
                    f.color,
                    f.name
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A follower pgfollow made.
#[derive(Debug, Clone)]
pub struct Follower {
    pub name: String,
    pub color: String,
}

/// The `pgfollow` binary: `--pgfollow PATH`, else the one next to this
/// executable (`target/release/`).
pub fn pgfollow_bin(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p.to_path_buf());
    }
    let me = std::env::current_exe().context("finding this executable")?;
    let beside = me
        .parent()
        .map(|d| d.join("pgfollow"))
        .context("this executable has no directory")?;
    if !beside.is_file() {
        bail!(
            "no pgfollow binary at {}: build it (cargo build --release -p pgfollow-cli) or pass --pgfollow PATH",
            beside.display()
        );
    }
    Ok(beside)
}
