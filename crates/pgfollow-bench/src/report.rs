//! What the benchmark prints: a table of every measurement (each round and
//! the median), then one line per target of the issue with PASS or MISS.

use std::fmt::Write;
use std::time::Duration;

use crate::sampler::{Sample, SampleCost};

/// The targets.
pub const READY_RATIO_MAX: f64 = 1.1;
pub const TPS_RATIO_MIN: f64 = 0.97;
pub const LAG_MEDIAN_MAX: u64 = 5;
pub const LAG_P99_MAX: u64 = 50;

/// Everything one run measured.
#[derive(Debug, Default)]
pub struct Results {
    /// One line describing the setup.
    pub setup: String,
    pub init: Duration,
    /// (a) per round.
    pub ready_pgfollow: Vec<Duration>,
    pub ready_handmade: Vec<Duration>,
    /// (b) per round.
    pub tps_none: Vec<f64>,
    pub tps_pgfollow: Vec<f64>,
    pub tps_handmade: Vec<f64>,
    /// CPU seconds `pgfollow serve` used during each TPS run.
    pub serve_cpu_none: Vec<f64>,
    pub serve_cpu_pgfollow: Vec<f64>,
    pub serve_cpu_handmade: Vec<f64>,
    /// The machine's 1-minute load average before and after.
    pub load_before: f64,
    pub load_after: f64,
    /// (c)
    pub samples: Vec<Sample>,
    pub every: Duration,
    pub tps_while_sampling: f64,
    pub cost: Option<SampleCost>,
    /// (c) the same count over connections kept open, for reference.
    pub reference: Vec<u64>,
    /// The same for the leader's `pg:info`, which measures no lag.
    pub leader_cost: Option<SampleCost>,
}

/// The middle value (the mean of the two middle ones for an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Nearest-rank percentile `p` (0..=100) of integers.
pub fn percentile(values: &[u64], p: f64) -> u64 {
    let mut v = values.to_vec();
    v.sort_unstable();
    if v.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

fn secs(d: &[Duration]) -> Vec<f64> {
    d.iter().map(Duration::as_secs_f64).collect()
}

fn row(out: &mut String, label: &str, values: &[f64], fmt: fn(f64) -> String) {
    let cells: String = values.iter().map(|v| format!("{:>9}", fmt(*v))).collect();
    let _ = writeln!(
        out,
        "    {label:<34}{cells}   median {}",
        fmt(median(values))
    );
}

fn pass(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "MISS"
    }
}

impl Results {
    /// The whole printout.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let s1 = |v: f64| format!("{v:.2} s");
        let t0 = |v: f64| format!("{v:.0}");
        let _ = writeln!(out, "\n{}", self.setup);
        let _ = writeln!(
            out,
            "pgbench -i: {:.1} s; machine load average {:.2} before, {:.2} after\n",
            self.init.as_secs_f64(),
            self.load_before,
            self.load_after
        );
        let rounds = self.ready_pgfollow.len().max(self.tps_none.len());
        let heads: String = (1..=rounds)
            .map(|r| format!("{:>9}", format!("round {r}")))
            .collect();
        let _ = writeln!(out, "(a) follower ready{:<20}{heads}", "");
        row(
            &mut out,
            "pgfollow addons:create + pg:wait",
            &secs(&self.ready_pgfollow),
            s1,
        );
        row(
            &mut out,
            "pg_basebackup -R + pg_ctl start",
            &secs(&self.ready_handmade),
            s1,
        );
        let _ = writeln!(out, "(b) leader TPS under pgbench");
        row(&mut out, "no follower", &self.tps_none, t0);
        row(&mut out, "pgfollow follower", &self.tps_pgfollow, t0);
        row(&mut out, "hand-made standby", &self.tps_handmade, t0);
        let _ = writeln!(
            out,
            "    CPU of pgfollow serve itself per run (median): no follower {:.2} s, \
             pgfollow follower {:.2} s, hand-made standby {:.2} s",
            median(&self.serve_cpu_none),
            median(&self.serve_cpu_pgfollow),
            median(&self.serve_cpu_handmade)
        );
        self.render_lag(&mut out);
        out.push('\n');
        self.render_targets(&mut out);
        out
    }

    fn lag_numbers(&self) -> (Vec<u64>, usize) {
        let commits: Vec<u64> = self
            .samples
            .iter()
            .filter_map(|s| s.lag.as_ref().map(|l| l.commits))
            .collect();
        let missing = self.samples.len() - commits.len();
        (commits, missing)
    }

    fn render_lag(&self, out: &mut String) {
        let (commits, missing) = self.lag_numbers();
        let lags: Vec<_> = self.samples.iter().filter_map(|s| s.lag.as_ref()).collect();
        let bytes: Vec<f64> = lags.iter().map(|l| l.bytes as f64).collect();
        let seconds: Vec<f64> = lags.iter().map(|l| l.seconds).collect();
        let more_than = lags.iter().filter(|l| l.more_than).count();
        let not_streaming = lags.iter().filter(|l| !l.streaming).count();
        let ms: Vec<u64> = self
            .samples
            .iter()
            .map(|s| s.latency.as_micros() as u64)
            .collect();
        let _ = writeln!(
            out,
            "(c) Behind By under pgbench: {} samples every {} ms ({missing} without a reading, \
             {more_than} \"more than\", {not_streaming} not streaming); leader TPS meanwhile {:.0}",
            self.samples.len(),
            self.every.as_millis(),
            self.tps_while_sampling
        );
        let _ = writeln!(
            out,
            "    commits behind                    median {}   p99 {}   max {}",
            percentile(&commits, 50.0),
            percentile(&commits, 99.0),
            commits.iter().max().copied().unwrap_or(0)
        );
        let _ = writeln!(
            out,
            "    same count, kept connections      median {}   p99 {}   max {}   \
             (reference taken beside it: {} samples)",
            percentile(&self.reference, 50.0),
            percentile(&self.reference, 99.0),
            self.reference.iter().max().copied().unwrap_or(0),
            self.reference.len()
        );
        let _ = writeln!(
            out,
            "    bytes behind                      median {:.0}   seconds behind median {:.3}",
            median(&bytes),
            median(&seconds)
        );
        let _ = writeln!(
            out,
            "    one sample (GET pg:info), wall    median {:.1} ms   p99 {:.1} ms   max {:.1} ms",
            percentile(&ms, 50.0) as f64 / 1000.0,
            percentile(&ms, 99.0) as f64 / 1000.0,
            ms.iter().max().copied().unwrap_or(0) as f64 / 1000.0
        );
        if let Some(c) = self.cost {
            let _ = writeln!(
                out,
                "    one sample, idle leader           {:.1} ms wall, {:.1} ms CPU on the machine \
                 (client + serve + agent + postgres; {} back to back)",
                c.wall.as_secs_f64() * 1000.0,
                c.cpu.as_secs_f64() * 1000.0,
                c.samples
            );
        }
        if let Some(c) = self.leader_cost {
            let _ = writeln!(
                out,
                "    pg:info of the leader (no lag)    {:.1} ms wall, {:.1} ms CPU on the machine",
                c.wall.as_secs_f64() * 1000.0,
                c.cpu.as_secs_f64() * 1000.0
            );
        }
    }

    fn render_targets(&self, out: &mut String) {
        let pf = median(&secs(&self.ready_pgfollow));
        let hm = median(&secs(&self.ready_handmade));
        let ratio = pf / hm;
        let _ = writeln!(
            out,
            "(a) follower ready: pgfollow {pf:.2} s vs pg_basebackup -R {hm:.2} s → {ratio:.2}× \
             (target ≤ {READY_RATIO_MAX}×) {}",
            pass(ratio <= READY_RATIO_MAX)
        );
        let (none, pf, hm) = (
            median(&self.tps_none),
            median(&self.tps_pgfollow),
            median(&self.tps_handmade),
        );
        let ratio = pf / hm;
        let _ = writeln!(
            out,
            "(b) leader TPS: with pgfollow follower {pf:.0} vs with hand-made standby {hm:.0} → \
             {ratio:.3}× (target ≥ {TPS_RATIO_MIN}×) {}; vs no follower {none:.0}: pgfollow {:.3}×, hand-made {:.3}×",
            pass(ratio >= TPS_RATIO_MIN),
            pf / none,
            hm / none
        );
        let (commits, missing) = self.lag_numbers();
        let (p50, p99) = (percentile(&commits, 50.0), percentile(&commits, 99.0));
        let ok = p50 <= LAG_MEDIAN_MAX && p99 <= LAG_P99_MAX && missing == 0 && !commits.is_empty();
        let _ = writeln!(
            out,
            "(c) Behind By: median {p50} commits (target ≤ {LAG_MEDIAN_MAX}), p99 {p99} \
             (target ≤ {LAG_P99_MAX}), max {} over {} samples {}",
            commits.iter().max().copied().unwrap_or(0),
            commits.len(),
            pass(ok)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_percentiles() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&v, 100.0), 100);
        assert_eq!(percentile(&[7], 99.0), 7);
        assert_eq!(percentile(&[], 50.0), 0);
    }
}
