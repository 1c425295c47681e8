//! What the failover benchmark prints: a progress line per run, then a
//! table of every run, a summary per kind and one PASS/MISS (or info) line
//! per target.

use std::fmt::Write;
use std::time::Duration;

use super::{Kind, Options, Run};
use crate::writers::{self, median};

/// The targets.
const HOST_LOST_MEDIAN_MAX: Duration = Duration::from_secs(3);
const CRASH_MEDIAN_MAX: Duration = Duration::from_secs(2);
const FROZEN_POSTGRES_MEDIAN_MAX: Duration = Duration::from_secs(5);
const HOST_CUT_MEDIAN_MAX: Duration = Duration::from_secs(3);
const LEADER_AND_HOST_CUT_MEDIAN_MAX: Duration = Duration::from_secs(5);

const RETRY_MS: u128 = writers::RETRY_AFTER.as_millis();

/// The progress line of one run.
pub(super) fn describe(r: &Run) -> String {
    let mut line = format!(
        "{} run {}: writes again after {:.2} s (the new primary's first acknowledgement at {}; the old primary \
         acknowledged until +{} ms; replaced at +{:.2} s); \
         {} acknowledged, {} failed attempts ({} in flight at the fault), {} lost; ",
        r.kind.label(),
        r.n,
        r.writes_again.as_secs_f64(),
        r.promoted.map_or("- (none)".into(), |p| format!("+{:.2} s", p.as_secs_f64())),
        writers::ms(r.old_acked_for),
        r.replaced.as_secs_f64(),
        r.acked,
        r.failed,
        r.in_flight,
        r.lost.len(),
    );
    match r.old_after {
        Some(o) => {
            let _ = write!(
                line,
                "the old primary acknowledged {} after the promotion ({} on its own connection, {} through DATABASE_URL",
                o.total(),
                o.direct,
                o.endpoint
            );
            if o.total() > 0 {
                let _ = write!(line, "; the last +{} ms after it", writers::ms(o.latest));
            }
            line.push(')');
        }
        None => line.push_str("no failover (restarted in place)"),
    }
    let _ = write!(
        line,
        "; its own connection: {} acknowledged in all, {} lost; ",
        r.direct_acked, r.direct_lost
    );
    if let Some(left) = r.survivors {
        let _ = write!(
            line,
            "{} processes stopped, {left} of postgres's still there at the end",
            r.stopped
        );
        if let Some(t) = r.thawed {
            let _ = write!(line, ", continued at +{:.2} s", t.as_secs_f64());
        }
        line.push_str("; ");
    }
    let _ = write!(
        line,
        "primary now on {}; errors: {}; old primary's connection: {}",
        r.host_after, r.errors, r.direct_errors
    );
    line
}

fn secs(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| format!("{:.2} s", d.as_secs_f64()))
}

fn verdict(pass: bool) -> &'static str {
    if pass {
        "PASS"
    } else {
        "MISS"
    }
}

fn old_after_cell(r: &Run) -> String {
    r.old_after.map_or("-".into(), |o| o.total().to_string())
}

/// The per-run table, the summary per kind and a line per target.
pub(super) fn render(opts: &Options, runs: &[Run], took: Duration) -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut out = format!(
        "pgfollow failover benchmark: {} primary on host h2, HA standby on host local, {} writers \
         committing single-row inserts through DATABASE_URL and one on the old primary's own URL, \
         {cores} cores, {:.0} s in all\n\
         cut off = hosts in network namespaces, the primary's link taken down (the writer on the old \
         primary's own URL runs on that host; every writer gives up on an insert after {} s and \
         reconnects); leader+host = the control plane on etcd, the leading replica and the primary on \
         machine m1, the standby and the other replica on m2, m1's link taken down\n\
         writes again = from the fault (SIGKILL, SIGSTOP or link down) to the end of the outage after it (the \
         first acknowledgement after the longest time in which no writer got one): the promotion, as \
         the app sees it\n\
         promoted = from the fault to the first acknowledgement through DATABASE_URL by another \
         server than the old primary (- : none, restarted in place)\n\
         old acks = how long after the fault the old primary's backends still acknowledged inserts \
         through DATABASE_URL (they outlive their postmaster while busy)\n\
         lost = acknowledged inserts through DATABASE_URL missing on the primary afterwards; failed = \
         attempts through DATABASE_URL that got an error (writers retry every {RETRY_MS} ms); in flight \
         = inserts sent and unanswered at the fault\n\
         old after = inserts the old primary acknowledged after the promotion, on its own connection \
         (its colour URL read before the fault) or through DATABASE_URL (- : no failover); direct lost = that writer's \
         acknowledged inserts missing on the primary afterwards\n\n",
        opts.plan,
        opts.writers,
        took.as_secs_f64(),
        writers::CUT_INSERT_LIMIT.as_secs_f64(),
    );
    let _ = writeln!(
        out,
        "{:<28} {:>3}  {:>12}  {:>8}  {:>11}  {:>9}  {:>6}  {:>7}  {:>4}  {:>9}  {:>11}  primary after",
        "kind",
        "run",
        "writes again",
        "promoted",
        "old acks ms",
        "in flight",
        "failed",
        "acked",
        "lost",
        "old after",
        "direct lost"
    );
    for r in runs {
        let _ = writeln!(
            out,
            "{:<28} {:>3}  {:>12}  {:>8}  {:>11}  {:>9}  {:>6}  {:>7}  {:>4}  {:>9}  {:>11}  {}",
            r.kind.label(),
            r.n,
            secs(Some(r.writes_again)),
            secs(r.promoted),
            writers::ms(r.old_acked_for),
            r.in_flight,
            r.failed,
            r.acked,
            r.lost.len(),
            old_after_cell(r),
            r.direct_lost,
            r.host_after
        );
    }
    out.push('\n');
    let _ = writeln!(
        out,
        "{:<28} {:>4}  {:>8}  {:>8}  {:>10}  {:>14}  {:>15}  {:>18}",
        "kind",
        "runs",
        "median",
        "max",
        "lost total",
        "runs with loss",
        "old after total",
        "failed ≤ in flight"
    );
    let mut summary = Vec::new();
    for kind in Kind::ALL {
        let of: Vec<&Run> = runs.iter().filter(|r| r.kind == kind).collect();
        if of.is_empty() {
            continue;
        }
        let s = Summary::of(kind, &of);
        let _ = writeln!(
            out,
            "{:<28} {:>4}  {:>8}  {:>8}  {:>10}  {:>14}  {:>15}  {:>18}",
            kind.label(),
            s.runs,
            secs(s.median),
            secs(s.max),
            s.lost,
            s.with_loss,
            s.old_after.map_or("-".into(), |n| n.to_string()),
            format!("{} of {}", s.failed_ok, s.runs)
        );
        summary.push(s);
    }
    out.push('\n');
    render_times(&mut out, runs, &summary);
    render_safety(&mut out, &summary);
    out
}

/// One kind's numbers over its runs.
struct Summary {
    kind: Kind,
    runs: usize,
    median: Option<Duration>,
    max: Option<Duration>,
    /// Through DATABASE_URL.
    lost: usize,
    with_loss: usize,
    /// On the old primary's own connection.
    direct_lost: usize,
    /// Summed over the runs that failed over (None: none did).
    old_after: Option<usize>,
    /// Runs whose failed attempts were no more than the inserts in flight.
    failed_ok: usize,
    failed_median: usize,
    in_flight_median: u32,
}

impl Summary {
    fn of(kind: Kind, of: &[&Run]) -> Self {
        let times: Vec<Duration> = of.iter().map(|r| r.writes_again).collect();
        let counted: Vec<usize> = of
            .iter()
            .filter_map(|r| r.old_after.map(|o| o.total()))
            .collect();
        let mut failed: Vec<usize> = of.iter().map(|r| r.failed).collect();
        failed.sort_unstable();
        let mut in_flight: Vec<u32> = of.iter().map(|r| r.in_flight).collect();
        in_flight.sort_unstable();
        Self {
            kind,
            runs: of.len(),
            median: median(&times),
            max: times.iter().max().copied(),
            lost: of.iter().map(|r| r.lost.len()).sum(),
            with_loss: of.iter().filter(|r| !r.lost.is_empty()).count(),
            direct_lost: of.iter().map(|r| r.direct_lost).sum(),
            old_after: (!counted.is_empty()).then(|| counted.iter().sum()),
            failed_ok: of
                .iter()
                .filter(|r| r.failed <= r.in_flight as usize)
                .count(),
            failed_median: failed[failed.len() / 2],
            in_flight_median: in_flight[in_flight.len() / 2],
        }
    }
}

/// The time targets.
fn render_times(out: &mut String, runs: &[Run], summary: &[Summary]) {
    let host_times: Vec<Duration> = runs
        .iter()
        .filter(|r| matches!(r.kind, Kind::HostAsync | Kind::HostSync))
        .map(|r| r.writes_again)
        .collect();
    if let Some(med) = median(&host_times) {
        let _ = writeln!(
            out,
            "{} host lost -> writes again: median {} over {} runs (async and sync), target <= {}",
            verdict(med <= HOST_LOST_MEDIAN_MAX),
            secs(Some(med)),
            host_times.len(),
            secs(Some(HOST_LOST_MEDIAN_MAX))
        );
    }
    for s in summary {
        let Some(med) = s.median else { continue };
        match s.kind {
            Kind::Crash => {
                let _ = writeln!(
                    out,
                    "{} crashed postgres -> writes again: median {}, target <= {}",
                    verdict(med <= CRASH_MEDIAN_MAX),
                    secs(Some(med)),
                    secs(Some(CRASH_MEDIAN_MAX))
                );
            }
            Kind::FrozenPostgres => {
                let _ = writeln!(
                    out,
                    "{} frozen postgres -> writes again: median {} over {} runs, target <= {}",
                    verdict(med <= FROZEN_POSTGRES_MEDIAN_MAX),
                    secs(Some(med)),
                    s.runs,
                    secs(Some(FROZEN_POSTGRES_MEDIAN_MAX))
                );
            }
            Kind::FrozenHostAsync | Kind::FrozenHostSync => {
                let _ = writeln!(
                    out,
                    "info {} -> writes again: median {} over {} runs (no target)",
                    s.kind.label(),
                    secs(Some(med)),
                    s.runs
                );
            }
            Kind::HostCutSync | Kind::LeaderAndHostCutSync => {
                let max = if s.kind == Kind::HostCutSync {
                    HOST_CUT_MEDIAN_MAX
                } else {
                    LEADER_AND_HOST_CUT_MEDIAN_MAX
                };
                let _ = writeln!(
                    out,
                    "{} {} -> writes again: median {} over {} runs, target <= {}",
                    verdict(med <= max),
                    s.kind.label(),
                    secs(Some(med)),
                    s.runs,
                    secs(Some(max))
                );
            }
            Kind::HostAsync | Kind::HostSync => {}
        }
    }
}

/// The targets on what is lost, acknowledged by the old primary, failed.
fn render_safety(out: &mut String, summary: &[Summary]) {
    for s in summary {
        let label = s.kind.label();
        match (s.kind, s.kind.sync()) {
            (Kind::HostSync, _) => {
                let _ = writeln!(
                    out,
                    "{} sync mode: {} acknowledged commits lost in {} failovers, target 0",
                    verdict(s.lost == 0),
                    s.lost,
                    s.runs
                );
            }
            (Kind::HostAsync, _) => {
                let _ = writeln!(
                    out,
                    "info async mode: {} acknowledged commits lost in {} failovers (asynchronous \
                     replication may lose the last ones)",
                    s.lost, s.runs
                );
            }
            (_, true) => {
                let _ = writeln!(
                    out,
                    "{} {label}: {} acknowledged commits lost in {} failovers, target 0",
                    verdict(s.lost == 0),
                    s.lost,
                    s.runs
                );
            }
            (_, false) => {
                let _ = writeln!(
                    out,
                    "info {label}: {} acknowledged commits lost in {} runs",
                    s.lost, s.runs
                );
            }
        }
        if let Some(old) = s.old_after {
            if s.kind.sync() {
                let _ = writeln!(
                    out,
                    "{} {label}: {old} writes acknowledged by the old primary after the promotion \
                     ({} lost on its own connection), target 0",
                    verdict(old == 0 && s.direct_lost == 0),
                    s.direct_lost
                );
            } else {
                let _ = writeln!(
                    out,
                    "info {label}: {old} writes acknowledged by the old primary after the promotion \
                     ({} lost on its own connection; async: report only, backends that thaw with a \
                     query already queued can commit before any agent runs, which only sync mode \
                     prevents)",
                    s.direct_lost
                );
            }
        }
        let _ = writeln!(
            out,
            "{} {label}: failed attempts <= inserts in flight at the fault in {} of {} runs \
             (median {} failed, {} in flight)",
            verdict(s.failed_ok == s.runs),
            s.failed_ok,
            s.runs,
            s.failed_median,
            s.in_flight_median
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failover::OldAfter;
    use std::time::Duration;

    fn run(kind: Kind, n: u32, secs: u64, failed: usize, old_after: Option<usize>) -> Run {
        Run {
            kind,
            n,
            writes_again: Duration::from_secs(secs),
            old_acked_for: Duration::ZERO,
            replaced: Duration::from_secs(secs),
            errors: "none".into(),
            acked: 100,
            failed,
            in_flight: 4,
            lost: Vec::new(),
            promoted: Some(Duration::from_secs(secs)),
            old_after: old_after.map(|n| OldAfter {
                direct: n,
                endpoint: 0,
                latest: Duration::from_millis(5),
            }),
            direct_acked: 20,
            direct_lost: 0,
            direct_errors: "none".into(),
            stopped: 0,
            survivors: None,
            thawed: None,
            host_after: "local".into(),
        }
    }

    #[test]
    fn targets_read_pass_or_miss() {
        let opts = Options {
            pgfollow: None,
            plan: "premium-0".into(),
            runs: 0,
            sync_runs: 0,
            crash_runs: 0,
            frozen_postgres_runs: 1,
            frozen_host_runs: 1,
            frozen_host_sync_runs: 1,
            cut_runs: 1,
            leader_cut_runs: 0,
            writers: 4,
            logs: None,
        };
        let runs = [
            run(Kind::FrozenPostgres, 1, 4, 2, Some(0)),
            run(Kind::FrozenHostAsync, 1, 3, 9, Some(7)),
            run(Kind::FrozenHostSync, 1, 3, 4, Some(1)),
            run(Kind::Crash, 1, 1, 1, None),
            run(Kind::HostCutSync, 1, 4, 0, Some(0)),
        ];
        let text = render(&opts, &runs, Duration::from_secs(60));
        assert!(
            text.contains("PASS frozen postgres -> writes again: median 4.00 s"),
            "{text}"
        );
        assert!(
            text.contains("MISS frozen host 4 s, --sync: 1 writes acknowledged"),
            "{text}"
        );
        assert!(
            text.contains("info frozen host 4 s, async: 7 writes acknowledged"),
            "{text}"
        );
        assert!(
            text.contains("MISS frozen host 4 s, async: failed attempts"),
            "{text}"
        );
        assert!(
            text.contains("PASS frozen postgres: failed attempts"),
            "{text}"
        );
        assert!(
            !text.contains("crashed postgres: 0 writes acknowledged"),
            "{text}"
        );
        assert!(describe(&runs[3]).contains("no failover"));
        assert!(
            text.contains("MISS host cut off, --sync -> writes again: median 4.00 s over 1 runs, target <= 3.00 s"),
            "{text}"
        );
    }
}
