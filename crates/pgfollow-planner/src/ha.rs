//! The HA monitor's verdict on one primary: healthy, watched, failed over
//! or (when it should be but must not) refused, with the sentence the
//! monitor logs.

use std::time::Duration;

/// What the HA monitor saw of a primary and its standby.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaObservation {
    /// The primary's agent heartbeats within its lease.
    pub host_up: bool,
    /// Time since the primary's agent was last heard from.
    pub silent_for: Duration,
    pub running: bool,
    /// Failed attempts to start the primary in a row.
    pub start_failures: u32,
    /// How long a running primary has answered no query (none while it
    /// answers, or when it does not run).
    pub unresponsive_for: Option<Duration>,
    /// The standby is available (built and caught up once).
    pub standby_ready: bool,
    /// The last measurement of the standby's lag: WAL bytes behind, and
    /// how long ago it was taken.
    pub standby_lag: Option<(u64, Duration)>,
}

/// The limits a verdict is judged by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HaLimits {
    /// A host silent this long is lost.
    pub grace: Duration,
    /// A running primary that answers no query this long is lost.
    pub hung_after: Duration,
    /// A standby further behind is not promoted.
    pub max_lag_bytes: u64,
    /// A lag measurement older than this says nothing.
    pub max_lag_age: Duration,
}

/// What the HA monitor does about one primary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HaVerdict {
    Healthy,
    /// Something is off but within what a restart or the grace covers.
    Watch(String),
    Failover(String),
    /// It should fail over but must not (why).
    Refuse(String),
}

impl HaVerdict {
    /// The sentence the monitor logs about the primary called `color`;
    /// none when it is healthy.
    pub fn sentence(&self, color: &str) -> Option<String> {
        match self {
            HaVerdict::Healthy => None,
            HaVerdict::Watch(w) => Some(format!("HA: {color} is being watched: {w}")),
            HaVerdict::Refuse(r) => Some(format!("HA: {color} is not failed over: {r}")),
            HaVerdict::Failover(f) => Some(format!("HA: failing {color} over to its standby: {f}")),
        }
    }
}

/// How a failover of a primary that answers no query begins its reason:
/// its server connections hang, so holding its endpoints waits for nothing.
pub const HUNG: &str = "postgres runs but has answered no query";

/// Whether the primary looks as if it may be lost, before the grace has
/// passed: its host silent for `suspect_after`, postgres not running, or
/// probes unanswered. Its endpoints then hold new transactions so that
/// clients wait for the verdict rather than fail against a dead server.
pub fn is_suspect(o: &HaObservation, suspect_after: Duration) -> bool {
    (!o.host_up || o.silent_for >= suspect_after) || !o.running || o.unresponsive_for.is_some()
}

/// Failed starts after which a primary counts as lost.
pub const MAX_START_FAILURES: u32 = 6;

/// Fail over when the primary's host is silent past the grace, postgres
/// will not start, or it runs but answers no query; only to a ready
/// standby whose fresh lag is within the limit.
pub fn ha_verdict(o: &HaObservation, l: &HaLimits) -> HaVerdict {
    let why = if !o.host_up && o.silent_for >= l.grace {
        format!(
            "its host has been silent for {:.1} s",
            o.silent_for.as_secs_f64()
        )
    } else if o.host_up && !o.running && o.start_failures >= MAX_START_FAILURES {
        format!("postgres failed to start {} times", o.start_failures)
    } else if let Some(hung) = o
        .unresponsive_for
        .filter(|h| o.host_up && *h >= l.hung_after)
    {
        format!("{HUNG} for {:.1} s", hung.as_secs_f64())
    } else if !o.host_up {
        return HaVerdict::Watch(format!(
            "its host has been silent for {:.1} s (grace {:.1} s)",
            o.silent_for.as_secs_f64(),
            l.grace.as_secs_f64()
        ));
    } else if !o.running {
        return HaVerdict::Watch("postgres is down; restarting it".into());
    } else if let Some(hung) = o.unresponsive_for {
        return HaVerdict::Watch(format!(
            "postgres has answered no query for {:.1} s (limit {:.1} s)",
            hung.as_secs_f64(),
            l.hung_after.as_secs_f64()
        ));
    } else {
        return HaVerdict::Healthy;
    };
    if !o.standby_ready {
        return HaVerdict::Refuse(format!("{why}, but its standby is not ready"));
    }
    match o.standby_lag {
        Some((_, age)) if age > l.max_lag_age => HaVerdict::Refuse(format!(
            "{why}, but its standby's lag was last measured {:.1} s ago (limit {:.1} s)",
            age.as_secs_f64(),
            l.max_lag_age.as_secs_f64()
        )),
        Some((lag, _)) if lag <= l.max_lag_bytes => HaVerdict::Failover(why),
        Some((lag, _)) => HaVerdict::Refuse(format!(
            "{why}, but its standby is {} kB behind (limit {} kB)",
            lag / 1024,
            l.max_lag_bytes / 1024
        )),
        None => HaVerdict::Refuse(format!("{why}, but its standby's lag is unknown")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HaLimits = HaLimits {
        grace: Duration::from_secs(2),
        hung_after: Duration::from_secs(3),
        max_lag_bytes: 16 << 20,
        max_lag_age: Duration::from_secs(5),
    };

    fn ok() -> HaObservation {
        HaObservation {
            host_up: true,
            silent_for: Duration::from_millis(200),
            running: true,
            start_failures: 0,
            unresponsive_for: None,
            standby_ready: true,
            standby_lag: Some((1000, Duration::from_millis(300))),
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn each_observation_gets_its_verdict_and_sentence() {
        let lost = HaObservation {
            host_up: false,
            silent_for: ms(3000),
            ..ok()
        };
        let rows: Vec<(HaObservation, Option<&str>)> = vec![
            (ok(), None),
            (
                HaObservation { host_up: false, silent_for: ms(1200), ..ok() },
                Some("HA: WHITE is being watched: its host has been silent for 1.2 s (grace 2.0 s)"),
            ),
            (
                HaObservation { running: false, start_failures: 1, ..ok() },
                Some("HA: WHITE is being watched: postgres is down; restarting it"),
            ),
            (
                HaObservation { unresponsive_for: Some(ms(1500)), ..ok() },
                Some("HA: WHITE is being watched: postgres has answered no query for 1.5 s (limit 3.0 s)"),
            ),
            (
                lost.clone(),
                Some("HA: failing WHITE over to its standby: its host has been silent for 3.0 s"),
            ),
            (
                HaObservation { running: false, start_failures: MAX_START_FAILURES, ..ok() },
                Some("HA: failing WHITE over to its standby: postgres failed to start 6 times"),
            ),
            (
                HaObservation { unresponsive_for: Some(ms(3000)), ..ok() },
                Some("HA: failing WHITE over to its standby: postgres runs but has answered no query for 3.0 s"),
            ),
            (
                HaObservation { standby_lag: Some((17 << 20, ms(300))), ..lost.clone() },
                Some("HA: WHITE is not failed over: its host has been silent for 3.0 s, but its standby is 17408 kB behind (limit 16384 kB)"),
            ),
            (
                HaObservation { standby_lag: Some((0, ms(5001))), ..lost.clone() },
                Some("HA: WHITE is not failed over: its host has been silent for 3.0 s, but its standby's lag was last measured 5.0 s ago (limit 5.0 s)"),
            ),
            (
                HaObservation { standby_lag: None, ..lost.clone() },
                Some("HA: WHITE is not failed over: its host has been silent for 3.0 s, but its standby's lag is unknown"),
            ),
            (
                HaObservation { standby_ready: false, ..lost },
                Some("HA: WHITE is not failed over: its host has been silent for 3.0 s, but its standby is not ready"),
            ),
        ];
        for (o, want) in rows {
            let got = ha_verdict(&o, &LIMITS).sentence("WHITE");
            assert_eq!(got.as_deref(), want, "{o:?}");
        }
    }

    #[test]
    fn a_primary_is_suspected_before_the_grace_passes() {
        let after = ms(750);
        let rows = [
            (ok(), false),
            (
                HaObservation {
                    silent_for: ms(500),
                    ..ok()
                },
                false,
            ),
            (
                HaObservation {
                    silent_for: ms(750),
                    ..ok()
                },
                true,
            ),
            (
                HaObservation {
                    host_up: false,
                    silent_for: ms(2500),
                    ..ok()
                },
                true,
            ),
            (
                HaObservation {
                    running: false,
                    ..ok()
                },
                true,
            ),
            (
                HaObservation {
                    unresponsive_for: Some(ms(1)),
                    ..ok()
                },
                true,
            ),
        ];
        for (o, want) in rows {
            assert_eq!(is_suspect(&o, after), want, "{o:?}");
        }
    }
}
