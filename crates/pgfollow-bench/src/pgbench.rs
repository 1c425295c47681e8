//! `pgbench` against the leader, connecting as the app does (the owner role
//! of its `DATABASE_URL`, password in the environment, not on the command
//! line).

use std::time::{Duration, Instant};

use anyhow::Context;
use pgfollow_types::api::Credentials;
use tokio::process::Command;

use crate::tools::{pg_tool, run};

/// How to load the leader and for how long.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub clients: u32,
    pub jobs: u32,
    pub seconds: u64,
}

fn command(creds: &Credentials) -> anyhow::Result<Command> {
    let mut cmd = Command::new(pg_tool("pgbench")?);
    cmd.env("PGPASSWORD", &creds.password)
        .env("PGCONNECT_TIMEOUT", "10")
        .args(["-h", &creds.host, "-p", &creds.port.to_string()])
        .args(["-U", &creds.user]);
    Ok(cmd)
}

/// `pgbench -i -s SCALE`; how long it took.
pub async fn init(creds: &Credentials, scale: u32) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut cmd = command(creds)?;
    cmd.args(["-i", "-q", "-s", &scale.to_string()])
        .arg(&creds.database);
    // About a minute per 50 on two cores; generous.
    let limit = Duration::from_secs(600 + 30 * u64::from(scale));
    run(cmd, "pgbench -i", limit).await?;
    Ok(started.elapsed())
}

/// The TB-like pgbench workload for `load.seconds`; its TPS.
pub async fn run_tps(creds: &Credentials, load: Load) -> anyhow::Result<f64> {
    let mut cmd = command(creds)?;
    cmd.args(["-c", &load.clients.to_string()])
        .args(["-j", &load.jobs.to_string()])
        .args(["-T", &load.seconds.to_string()])
        .arg(&creds.database);
    let limit = Duration::from_secs(load.seconds + 300);
    let out = run(cmd, "pgbench", limit).await?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_tps(&text).with_context(|| format!("no `tps = ` in pgbench's output:\n{text}"))
}

/// The number of the first `tps = N` line.
fn parse_tps(text: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tps_is_read_from_pgbench_15() {
        let out = "number of failed transactions: 0 (0.000%)\n\
                   latency average = 3.466 ms\n\
                   initial connection time = 9.107 ms\n\
                   tps = 1154.127832 (without initial connection time)\n";
        assert_eq!(parse_tps(out), Some(1154.127832));
        assert_eq!(parse_tps("nothing"), None);
    }
}
