//! `Behind By` as a user's monitoring would read it: `pg:info`'s route of
//! the API (`GET /v1/apps/APP/databases/DB`) through the typed client, every
//! 100 ms, each sample timed; and what one sample costs in CPU across the
//! whole machine (client, control plane, agent and both PostgreSQL
//! backends), measured back to back against an idle baseline.

use std::time::{Duration, Instant};

use anyhow::Context;
use pgfollow_client::Client;
use pgfollow_types::api::Lag;
use tokio::time::MissedTickBehavior;

use crate::follower::APP;
use crate::procstat::busy_cpu;

/// One reading of `behind_by`.
#[derive(Debug, Clone)]
pub struct Sample {
    pub latency: Duration,
    pub lag: Option<Lag>,
}

/// Samples `db`'s `behind_by` every `every` for `length`.
pub async fn sample(
    client: &Client,
    db: &str,
    every: Duration,
    length: Duration,
) -> anyhow::Result<Vec<Sample>> {
    let deadline = Instant::now() + length;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut out = Vec::new();
    while Instant::now() < deadline {
        tick.tick().await;
        out.push(one(client, db).await?);
    }
    Ok(out)
}

async fn one(client: &Client, db: &str) -> anyhow::Result<Sample> {
    let started = Instant::now();
    let info = client
        .database(APP, db)
        .await
        .with_context(|| format!("reading pg:info of {db}"))?;
    Ok(Sample {
        latency: started.elapsed(),
        lag: info.behind_by,
    })
}

/// What one sample costs, measured on a quiet machine.
#[derive(Debug, Clone, Copy)]
pub struct SampleCost {
    /// Wall time of one sample, back to back.
    pub wall: Duration,
    /// CPU time of the whole machine per sample, above its idle rate.
    pub cpu: Duration,
    pub samples: u32,
}

/// Takes `n` samples back to back and compares the machine's busy CPU time
/// with that of an equally long quiet stretch just before.
pub async fn cost(client: &Client, db: &str, n: u32) -> anyhow::Result<SampleCost> {
    // Warm up: connections, caches.
    for _ in 0..5 {
        one(client, db).await?;
    }
    let (busy_before, started) = (busy_cpu()?, Instant::now());
    for _ in 0..n {
        one(client, db).await?;
    }
    let (busy, wall) = (busy_cpu()? - busy_before, started.elapsed());
    let quiet_start = busy_cpu()?;
    tokio::time::sleep(wall).await;
    let quiet = busy_cpu()? - quiet_start;
    let per = (busy - quiet).max(0.0) / f64::from(n);
    Ok(SampleCost {
        wall: wall / n,
        cpu: Duration::from_secs_f64(per),
        samples: n,
    })
}
