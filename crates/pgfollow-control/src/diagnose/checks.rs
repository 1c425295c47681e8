//! The checks of `pg:diagnose` as pure functions over plain values: the
//! thresholds, the verdict (green, yellow, red) and the sentence of each.

use pgfollow_types::api::{Check, CheckStatus, Lag};

// ------------------------------------------------------------ thresholds

/// Connections used, percent of the plan's limit: yellow, red.
pub const CONNECTIONS_PERCENT: (f64, f64) = (70.0, 90.0);
/// An active query's age, seconds: yellow, red.
pub const LONG_RUNNING_SECS: (u64, u64) = (60, 300);
/// Idle inside a transaction, seconds: yellow, red.
pub const IDLE_IN_TRANSACTION_SECS: (u64, u64) = (10, 300);
/// A query waiting for a lock, seconds: yellow from the first, red.
pub const BLOCKED_RED_SECS: u64 = 60;
/// An unused index is reported from this size.
pub const UNUSED_INDEX_BYTES: u64 = 1024 * 1024;
/// Bloat (pages over the expected pages) and bytes wasted: yellow, red.
pub const BLOAT_YELLOW: (f64, u64) = (2.0, 1024 * 1024);
pub const BLOAT_RED: (f64, u64) = (10.0, 100 * 1024 * 1024);
/// Cache hit rate, percent: below the first yellow, below the second red;
/// fewer block reads than [`CACHE_MIN_BLOCKS`] are not judged.
pub const CACHE_HIT_PERCENT: (f64, f64) = (99.0, 95.0);
pub const CACHE_MIN_BLOCKS: u64 = 1000;
/// A sequence's range used, percent: yellow, red.
pub const SEQUENCE_PERCENT: (f64, f64) = (75.0, 90.0);
/// Transaction IDs used before wraparound, percent: yellow, red.
pub const WRAPAROUND_PERCENT: (f64, f64) = (50.0, 75.0);
/// WAL a slot holds: an inactive slot from the first is yellow, any slot
/// from the second yellow, from the third red.
pub const SLOT_BYTES: (u64, u64, u64) = (16 << 20, 256 << 20, 1 << 30);
/// A follower behind: commits or seconds for yellow, seconds for red.
pub const LAG_YELLOW: (u64, f64) = (200, 30.0);
pub const LAG_RED_SECS: f64 = 300.0;

// ---------------------------------------------------------------- inputs

/// A session or query with its age.
#[derive(Debug, Clone, PartialEq)]
pub struct Aged {
    pub pid: i64,
    pub secs: u64,
    pub query: String,
}

/// A named thing with a size, a share or a ratio.
#[derive(Debug, Clone, PartialEq)]
pub struct Measured {
    pub name: String,
    pub value: f64,
    pub bytes: u64,
}

/// A query waiting for a lock.
#[derive(Debug, Clone, PartialEq)]
pub struct Blocked {
    pub pid: i64,
    pub secs: u64,
    pub blocking_pid: i64,
    pub blocking_state: String,
}

/// A replication slot.
#[derive(Debug, Clone, PartialEq)]
pub struct Slot {
    pub name: String,
    pub active: bool,
    pub retained_bytes: Option<u64>,
    pub wal_status: String,
}

// -------------------------------------------------------------- verdicts

/// A check that could not run, and why.
pub fn skipped(name: &str, why: String) -> Check {
    check(name, CheckStatus::Skipped, why, vec![])
}

fn check(name: &str, status: CheckStatus, message: String, details: Vec<String>) -> Check {
    Check {
        name: name.to_string(),
        status,
        message,
        details,
    }
}

/// `1 query`, `2 queries`.
fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// `42s`, `4m 05s`, `2h 03m`.
pub fn age(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m {:02}s", secs / 60, secs % 60),
        _ => format!("{}h {:02}m", secs / 3600, secs % 3600 / 60),
    }
}

/// `1.5 MB`, 1024-based as `pg:info`.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["kB", "MB", "GB", "TB", "PB"];
    if bytes < 1024 {
        return format!("{bytes} bytes");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    let n = format!("{v:.1}");
    format!("{} {}", n.strip_suffix(".0").unwrap_or(&n), UNITS[unit])
}

fn level<T: PartialOrd>(v: T, yellow: T, red: T) -> CheckStatus {
    if v >= red {
        CheckStatus::Red
    } else if v >= yellow {
        CheckStatus::Yellow
    } else {
        CheckStatus::Green
    }
}

pub fn connections(used: u64, limit: u64) -> Check {
    let percent = if limit == 0 {
        100.0
    } else {
        used as f64 * 100.0 / limit as f64
    };
    let (y, r) = CONNECTIONS_PERCENT;
    check(
        "connections",
        level(percent, y, r),
        format!("{used} of {limit} connections used ({percent:.0}%)"),
        vec![],
    )
}

fn aged_check(
    name: &str,
    what: (&str, &str),
    doing: &str,
    items: &[Aged],
    limits: (u64, u64),
) -> Check {
    let over: Vec<&Aged> = items.iter().filter(|a| a.secs >= limits.0).collect();
    let status = over
        .iter()
        .map(|a| level(a.secs, limits.0, limits.1))
        .max()
        .unwrap_or(CheckStatus::Green);
    let message = if over.is_empty() {
        format!("no {} {doing} for {} or more", what.0, age(limits.0))
    } else {
        format!(
            "{} {doing} for {} or more",
            count(over.len(), what.0, what.1),
            age(limits.0)
        )
    };
    let details = over
        .iter()
        .map(|a| format!("pid {}  {}  {}", a.pid, age(a.secs), a.query))
        .collect();
    check(name, status, message, details)
}

pub fn long_running(queries: &[Aged]) -> Check {
    aged_check(
        "long-running-queries",
        ("query", "queries"),
        "running",
        queries,
        LONG_RUNNING_SECS,
    )
}

pub fn idle_in_transaction(sessions: &[Aged]) -> Check {
    aged_check(
        "idle-in-transaction",
        ("session", "sessions"),
        "idle in a transaction",
        sessions,
        IDLE_IN_TRANSACTION_SECS,
    )
}

pub fn unused_indexes(indexes: &[Measured]) -> Check {
    let big: Vec<&Measured> = indexes
        .iter()
        .filter(|i| i.bytes >= UNUSED_INDEX_BYTES)
        .collect();
    let message = if big.is_empty() {
        format!(
            "every index of {} or more has been scanned",
            size(UNUSED_INDEX_BYTES)
        )
    } else {
        format!(
            "{} of {} or more never scanned: drop them if no query needs them",
            count(big.len(), "index", "indexes"),
            size(UNUSED_INDEX_BYTES)
        )
    };
    let status = if big.is_empty() {
        CheckStatus::Green
    } else {
        CheckStatus::Yellow
    };
    let details = big
        .iter()
        .map(|i| format!("{} ({})", i.name, size(i.bytes)))
        .collect();
    check("unused-indexes", status, message, details)
}

pub fn invalid_indexes(names: &[String]) -> Check {
    if names.is_empty() {
        return check(
            "invalid-indexes",
            CheckStatus::Green,
            "no invalid index".into(),
            vec![],
        );
    }
    check(
        "invalid-indexes",
        CheckStatus::Red,
        format!(
            "{}, left by a failed CREATE INDEX CONCURRENTLY: drop and create again (queries do not use it, writes still maintain it)",
            count(names.len(), "invalid index", "invalid indexes")
        ),
        names.to_vec(),
    )
}

/// `value` is the bloat ratio, `bytes` the bytes wasted.
pub fn bloat(objects: &[Measured]) -> Check {
    let judged: Vec<(CheckStatus, &Measured)> = objects
        .iter()
        .map(|o| {
            let s = if o.value >= BLOAT_RED.0 && o.bytes >= BLOAT_RED.1 {
                CheckStatus::Red
            } else if o.value >= BLOAT_YELLOW.0 && o.bytes >= BLOAT_YELLOW.1 {
                CheckStatus::Yellow
            } else {
                CheckStatus::Green
            };
            (s, o)
        })
        .filter(|(s, _)| *s != CheckStatus::Green)
        .collect();
    let status = judged
        .iter()
        .map(|(s, _)| *s)
        .max()
        .unwrap_or(CheckStatus::Green);
    let message = if judged.is_empty() {
        format!(
            "no table or index is bloated {}x with {} or more wasted",
            BLOAT_YELLOW.0,
            size(BLOAT_YELLOW.1)
        )
    } else {
        format!(
            "{} bloated {}x or more with {} or more wasted: VACUUM FULL or pg_repack gives the space back",
            count(judged.len(), "table or index", "tables or indexes"),
            BLOAT_YELLOW.0,
            size(BLOAT_YELLOW.1)
        )
    };
    let details = judged
        .iter()
        .map(|(_, o)| format!("{}: {:.1}x, {} wasted", o.name, o.value, size(o.bytes)))
        .collect();
    check("bloat", status, message, details)
}

/// `kind` is `table` or `index`.
pub fn cache_hit(kind: &str, hits: u64, reads: u64) -> Check {
    let name = format!("{kind}-cache-hit-rate");
    let total = hits + reads;
    if total < CACHE_MIN_BLOCKS {
        return check(
            &name,
            CheckStatus::Green,
            format!("too few {kind} blocks read to judge ({total})"),
            vec![],
        );
    }
    let rate = hits as f64 * 100.0 / total as f64;
    let (yellow, red) = CACHE_HIT_PERCENT;
    let status = if rate < red {
        CheckStatus::Red
    } else if rate < yellow {
        CheckStatus::Yellow
    } else {
        CheckStatus::Green
    };
    let advice = if status == CheckStatus::Green {
        ""
    } else {
        ": a plan with more memory would keep more of it in the cache"
    };
    check(
        &name,
        status,
        format!("{rate:.1}% of {kind} block reads came from the cache{advice}"),
        vec![],
    )
}

pub fn blocking(blocked: &[Blocked]) -> Check {
    if blocked.is_empty() {
        return check(
            "blocking-queries",
            CheckStatus::Green,
            "no query waits for a lock".into(),
            vec![],
        );
    }
    let status = if blocked.iter().any(|b| b.secs >= BLOCKED_RED_SECS) {
        CheckStatus::Red
    } else {
        CheckStatus::Yellow
    };
    let details = blocked
        .iter()
        .map(|b| {
            format!(
                "pid {} has waited {} for pid {} ({})",
                b.pid,
                age(b.secs),
                b.blocking_pid,
                b.blocking_state
            )
        })
        .collect();
    check(
        "blocking-queries",
        status,
        format!(
            "{} for a lock: see `pg:blocking`, end the blocker with `pg:kill`",
            count(blocked.len(), "query waits", "queries wait")
        ),
        details,
    )
}

/// `value` is the percent of the sequence's range used.
pub fn sequences(seqs: &[Measured]) -> Check {
    percent_check(
        "sequences",
        seqs,
        SEQUENCE_PERCENT,
        ("sequence", "sequences"),
        "of its range used: move the column to bigint before it runs out",
        "every sequence has less than",
    )
}

/// `value` is the percent of transaction IDs used before wraparound.
pub fn wraparound(databases: &[Measured]) -> Check {
    percent_check(
        "transaction-id-wraparound",
        databases,
        WRAPAROUND_PERCENT,
        ("database", "databases"),
        "of its transaction IDs used before wraparound: VACUUM (FREEZE) it",
        "every database has used less than",
    )
}

fn percent_check(
    name: &str,
    items: &[Measured],
    (yellow, red): (f64, f64),
    what: (&str, &str),
    bad: &str,
    good: &str,
) -> Check {
    let over: Vec<&Measured> = items.iter().filter(|i| i.value >= yellow).collect();
    let status = over
        .iter()
        .map(|i| level(i.value, yellow, red))
        .max()
        .unwrap_or(CheckStatus::Green);
    let message = if over.is_empty() {
        format!("{good} {yellow}%")
    } else {
        format!(
            "{} with {yellow}% or more {bad}",
            count(over.len(), what.0, what.1)
        )
    };
    let details = over
        .iter()
        .map(|i| format!("{}: {:.1}%", i.name, i.value))
        .collect();
    check(name, status, message, details)
}

pub fn slots(slots: &[Slot]) -> Check {
    let (inactive_yellow, yellow, red) = SLOT_BYTES;
    let judged: Vec<(CheckStatus, &Slot)> = slots
        .iter()
        .map(|s| {
            let held = s.retained_bytes.unwrap_or(0);
            let st = if matches!(s.wal_status.as_str(), "lost" | "unreserved") || held >= red {
                CheckStatus::Red
            } else if held >= yellow || (!s.active && held >= inactive_yellow) {
                CheckStatus::Yellow
            } else {
                CheckStatus::Green
            };
            (st, s)
        })
        .filter(|(st, _)| *st != CheckStatus::Green)
        .collect();
    let status = judged
        .iter()
        .map(|(s, _)| *s)
        .max()
        .unwrap_or(CheckStatus::Green);
    let message = if judged.is_empty() {
        format!(
            "no replication slot holds much WAL ({})",
            count(slots.len(), "slot", "slots")
        )
    } else {
        format!(
            "{} WAL back on this server: a follower that does not stream keeps WAL from being removed",
            count(judged.len(), "slot holds", "slots hold")
        )
    };
    let details = judged
        .iter()
        .map(|(_, s)| {
            format!(
                "{} ({}, {}, WAL {})",
                s.name,
                if s.active { "active" } else { "inactive" },
                size(s.retained_bytes.unwrap_or(0)),
                s.wal_status
            )
        })
        .collect();
    check("replication-slots", status, message, details)
}

/// The lag of each follower concerned (the database itself, or its
/// followers), by colour; `None` when it could not be measured.
pub fn follower_lag(followers: &[(String, Option<Lag>)]) -> Check {
    if followers.is_empty() {
        return check(
            "follower-lag",
            CheckStatus::Green,
            "no followers".into(),
            vec![],
        );
    }
    let judged: Vec<(CheckStatus, String)> = followers
        .iter()
        .map(|(color, lag)| match lag {
            None => (CheckStatus::Red, format!("{color}: could not be measured")),
            Some(l) => {
                let st = if !l.streaming || l.seconds >= LAG_RED_SECS {
                    CheckStatus::Red
                } else if l.commits > LAG_YELLOW.0 || l.seconds >= LAG_YELLOW.1 {
                    CheckStatus::Yellow
                } else {
                    CheckStatus::Green
                };
                let streaming = if l.streaming { "" } else { ", not streaming" };
                (
                    st,
                    format!(
                        "{color}: {} ({:.1} s){streaming}",
                        l.commits_label(),
                        l.seconds
                    ),
                )
            }
        })
        .collect();
    let status = judged
        .iter()
        .map(|(s, _)| *s)
        .max()
        .unwrap_or(CheckStatus::Green);
    let message = match status {
        CheckStatus::Green => format!(
            "{} within {} commits and {} s",
            count(followers.len(), "follower", "followers"),
            LAG_YELLOW.0,
            LAG_YELLOW.1
        ),
        _ => "a follower is far behind or not streaming: see `pg:info`".to_string(),
    };
    check(
        "follower-lag",
        status,
        message,
        judged.into_iter().map(|(_, d)| d).collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use CheckStatus::{Green, Red, Yellow};

    fn aged_list(secs: &[u64]) -> Vec<Aged> {
        secs.iter()
            .enumerate()
            .map(|(i, s)| Aged {
                pid: i as i64 + 100,
                secs: *s,
                query: "select 1".into(),
            })
            .collect()
    }

    fn measured(value: f64, bytes: u64) -> Measured {
        Measured {
            name: "public.t".into(),
            value,
            bytes,
        }
    }

    #[test]
    fn connections_against_the_limit() {
        for (used, limit, status, message) in [
            (0, 120, Green, "0 of 120 connections used (0%)"),
            (83, 120, Green, "83 of 120 connections used (69%)"),
            (84, 120, Yellow, "84 of 120 connections used (70%)"),
            (108, 120, Red, "108 of 120 connections used (90%)"),
            (3, 0, Red, "3 of 0 connections used (100%)"),
        ] {
            let c = connections(used, limit);
            assert_eq!(
                (c.status, c.message.as_str()),
                (status, message),
                "{used}/{limit}"
            );
        }
    }

    #[test]
    fn long_queries_and_idle_transactions() {
        for (secs, status) in [
            (vec![], Green),
            (vec![59], Green),
            (vec![60, 5], Yellow),
            (vec![300], Red),
            (vec![61, 301], Red),
        ] {
            assert_eq!(long_running(&aged_list(&secs)).status, status, "{secs:?}");
        }
        let c = long_running(&aged_list(&[125, 3]));
        assert_eq!(c.message, "1 query running for 1m 00s or more");
        assert_eq!(c.details, ["pid 100  2m 05s  select 1"]);
        for (secs, status) in [(vec![9], Green), (vec![10], Yellow), (vec![299, 300], Red)] {
            assert_eq!(
                idle_in_transaction(&aged_list(&secs)).status,
                status,
                "{secs:?}"
            );
        }
        assert_eq!(
            idle_in_transaction(&[]).message,
            "no session idle in a transaction for 10s or more"
        );
    }

    #[test]
    fn indexes() {
        assert_eq!(unused_indexes(&[]).status, Green);
        assert_eq!(
            unused_indexes(&[measured(0.0, 1024 * 1024 - 1)]).status,
            Green
        );
        let c = unused_indexes(&[measured(0.0, 3 * 1024 * 1024)]);
        assert_eq!(c.status, Yellow);
        assert_eq!(c.details, ["public.t (3 MB)"]);
        assert_eq!(invalid_indexes(&[]).status, Green);
        let c = invalid_indexes(&["public.t_key".to_string()]);
        assert_eq!((c.status, c.details.len()), (Red, 1));
    }

    #[test]
    fn bloat_needs_both_ratio_and_waste() {
        const MB: u64 = 1024 * 1024;
        for (ratio, waste, status) in [
            (1.9, 500 * MB, Green),
            (5.0, MB - 1, Green),
            (2.0, MB, Yellow),
            (50.0, 99 * MB, Yellow),
            (9.9, 500 * MB, Yellow),
            (10.0, 100 * MB, Red),
        ] {
            assert_eq!(
                bloat(&[measured(ratio, waste)]).status,
                status,
                "{ratio} {waste}"
            );
        }
        let c = bloat(&[measured(9.84, 3 * MB + MB / 2)]);
        assert_eq!(c.details, ["public.t: 9.8x, 3.5 MB wasted"]);
    }

    #[test]
    fn cache_hit_rates() {
        for (hits, reads, status) in [
            (10, 900, Green),
            (990, 10, Green),
            (9899, 101, Yellow),
            (9500, 500, Yellow),
            (9499, 501, Red),
        ] {
            assert_eq!(
                cache_hit("table", hits, reads).status,
                status,
                "{hits}/{reads}"
            );
        }
        assert_eq!(
            cache_hit("index", 5, 5).message,
            "too few index blocks read to judge (10)"
        );
        assert_eq!(
            cache_hit("table", 999, 1).message,
            "99.9% of table block reads came from the cache"
        );
    }

    #[test]
    fn blocked_queries() {
        let b = |secs| Blocked {
            pid: 2,
            secs,
            blocking_pid: 1,
            blocking_state: "idle in transaction".into(),
        };
        assert_eq!(blocking(&[]).status, Green);
        let c = blocking(&[b(5)]);
        assert_eq!(c.status, Yellow);
        assert_eq!(
            c.details,
            ["pid 2 has waited 5s for pid 1 (idle in transaction)"]
        );
        assert_eq!(blocking(&[b(5), b(60)]).status, Red);
    }

    #[test]
    fn sequences_and_wraparound() {
        for (percent, status) in [(10.0, Green), (75.0, Yellow), (89.9, Yellow), (91.5, Red)] {
            assert_eq!(
                sequences(&[measured(percent, 0)]).status,
                status,
                "{percent}"
            );
        }
        for (percent, status) in [(0.01, Green), (50.0, Yellow), (75.0, Red)] {
            assert_eq!(
                wraparound(&[measured(percent, 0)]).status,
                status,
                "{percent}"
            );
        }
        assert_eq!(sequences(&[measured(91.5, 0)]).details, ["public.t: 91.5%"]);
    }

    #[test]
    fn slots_holding_wal() {
        let s = |active, mb: u64, wal: &str| Slot {
            name: "s".into(),
            active,
            retained_bytes: Some(mb << 20),
            wal_status: wal.into(),
        };
        for (slot, status) in [
            (s(true, 100, "reserved"), Green),
            (s(false, 15, "reserved"), Green),
            (s(false, 16, "reserved"), Yellow),
            (s(true, 256, "extended"), Yellow),
            (s(true, 1024, "extended"), Red),
            (s(false, 0, "lost"), Red),
        ] {
            assert_eq!(
                slots(std::slice::from_ref(&slot)).status,
                status,
                "{slot:?}"
            );
        }
        assert_eq!(slots(&[]).status, Green);
    }

    #[test]
    fn follower_lag_verdicts() {
        let lag = |commits, seconds, streaming| Lag {
            commits,
            more_than: false,
            bytes: 0,
            seconds,
            streaming,
        };
        let one = |l: Option<Lag>| follower_lag(&[("CHARCOAL".to_string(), l)]);
        assert_eq!(follower_lag(&[]).status, Green);
        assert_eq!(one(Some(lag(2, 0.1, true))).status, Green);
        assert_eq!(one(Some(lag(201, 0.1, true))).status, Yellow);
        assert_eq!(one(Some(lag(1, 30.0, true))).status, Yellow);
        assert_eq!(one(Some(lag(1, 300.0, true))).status, Red);
        assert_eq!(one(Some(lag(0, 0.0, false))).status, Red);
        assert_eq!(one(None).status, Red);
        assert_eq!(
            one(Some(lag(201, 0.1, true))).details,
            ["CHARCOAL: 201 commits (0.1 s)"]
        );
    }
}
