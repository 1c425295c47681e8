//! What the read endpoint (`DATABASE_FOLLOWER_URL`) should do, decided
//! purely: which of an app's followers serve reads ([`judge`]: preparing,
//! down, or past the lag limit is out; back in once within it again; one
//! whose leader does not answer keeps its last verdict), and where each of
//! its PgBouncers routes ([`routes`]). The loop in
//! `read_endpoint.rs` measures, calls these and applies the answer.
//!
//! Why several PgBouncers: PgBouncer (1.24, and its master today) takes a
//! comma-separated `host=` list but one `port=` for all of them
//! (`dns_connect` in `src/objects.c` uses `db->port` for every host), and
//! each follower listens on a port of its own that its agent chose. So the
//! read endpoint is one PgBouncer per follower ("slot"), all listening on
//! the same port with `so_reuseport = 1`: the kernel spreads new client
//! connections over them (PgBouncer's documented use of the option), and
//! each routes to one follower. A slot whose follower is out routes to
//! another that serves, so no listener ever sends reads to a follower that
//! is out; with none serving every slot refuses (DISABLE + KILL: clients
//! get `database "…" is disabled` at once) or, with `--fallback-to-leader`,
//! routes to the leader.

use std::collections::BTreeMap;

use pgfollow_types::api::DatabaseState;
use pgfollow_types::reads::{MaxLag, ReadPlace};

/// What was seen of one follower at the last measurement.
#[derive(Debug, Clone, PartialEq)]
pub struct FollowerSeen {
    pub id: String,
    pub state: DatabaseState,
    /// The measurement of Behind By, or why there is none.
    pub lag: Result<LagSeen, Unmeasured>,
}

/// Why a follower's Behind By could not be measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unmeasured {
    /// The follower itself did not answer (or is not available).
    Down(String),
    /// The follower answered but its leader did not (its host cut off, its
    /// postmaster hung or gone): nothing says the follower fell behind,
    /// and the leader takes no new commits that anyone can see.
    LeaderSilent(String),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LagSeen {
    pub commits: u64,
    /// Counting stopped short: more than `commits` behind.
    pub more_than: bool,
    pub seconds: f64,
}

/// Whether a follower serves reads, and if not, why (a phrase for
/// `pg:info`'s `Serves reads: No (…)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Serves,
    /// Serves without a fresh measurement (its leader is silent), as it did
    /// at the last one: why, for `pg:info`.
    ServesUnmeasured(String),
    Out(String),
}

/// Whether `f` may serve reads under `limit`; `served`: whether it served
/// at the last decision (what a silent leader leaves in place).
pub fn judge(f: &FollowerSeen, limit: MaxLag, served: bool) -> Verdict {
    match f.state {
        DatabaseState::Available => {}
        DatabaseState::Preparing => return Verdict::Out("preparing".into()),
        other => return Verdict::Out(format!("{other:?}").to_lowercase()),
    }
    let lag = match &f.lag {
        Ok(l) => l,
        Err(Unmeasured::Down(why)) => return Verdict::Out(format!("down: {why}")),
        Err(Unmeasured::LeaderSilent(why)) => {
            let why = format!("Behind By unknown, its leader does not answer: {why}");
            return match served {
                true => Verdict::ServesUnmeasured(why),
                false => Verdict::Out(why),
            };
        }
    };
    match is_lag_over(lag, limit) {
        None => Verdict::Serves,
        Some(why) => Verdict::Out(why),
    }
}

/// Why `lag` is past `limit`, if it is.
fn is_lag_over(lag: &LagSeen, limit: MaxLag) -> Option<String> {
    match limit {
        MaxLag::Commits(max) if lag.commits > max || (lag.more_than && lag.commits >= max) => {
            Some(format!(
                "{}{} commits behind, limit {max}",
                if lag.more_than { "more than " } else { "" },
                lag.commits
            ))
        }
        MaxLag::Seconds(max) if lag.seconds > max as f64 => {
            Some(format!("{:.1} s behind, limit {max}s", lag.seconds))
        }
        _ => None,
    }
}

/// Where one slot (PgBouncer) of the read endpoint routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// To this database (a follower, or the leader when falling back).
    To(String),
    /// Refuse connections (no follower serves, no fallback).
    Refuse,
}

impl Route {
    /// As recorded in `ReadEndpointRecord.applied`.
    pub fn applied(&self) -> Option<String> {
        match self {
            Route::To(id) => Some(id.clone()),
            Route::Refuse => None,
        }
    }
}

/// Where each slot routes. There is a slot per follower (`slots`, in a
/// stable order); a slot routes to its own follower while it serves, else
/// to the serving ones in turn, else to the leader if `fallback`, else it
/// refuses.
pub fn routes(
    slots: &[String],
    serving: &[String],
    leader: &str,
    fallback: bool,
) -> BTreeMap<String, Route> {
    let mut spare = serving.iter().cycle();
    slots
        .iter()
        .map(|slot| {
            let route = if serving.contains(slot) {
                Route::To(slot.clone())
            } else if let Some(other) = spare.next() {
                Route::To(other.clone())
            } else if fallback {
                Route::To(leader.to_string())
            } else {
                Route::Refuse
            };
            (slot.clone(), route)
        })
        .collect()
}

/// The decision for one app: which followers serve (and which of them
/// with no fresh measurement, and why), why the others do not, and each
/// slot's route.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub serving: Vec<String>,
    pub unmeasured: BTreeMap<String, String>,
    pub out: BTreeMap<String, String>,
    pub routes: BTreeMap<String, Route>,
}

/// Judges every follower in `seen`; `served`: the followers that served at
/// the last decision.
pub fn decide(
    seen: &[FollowerSeen],
    limit: MaxLag,
    leader: &str,
    fallback: bool,
    served: &[String],
) -> Decision {
    let mut serving = Vec::new();
    let mut unmeasured = BTreeMap::new();
    let mut out = BTreeMap::new();
    for f in seen {
        match judge(f, limit, served.contains(&f.id)) {
            Verdict::Serves => serving.push(f.id.clone()),
            Verdict::ServesUnmeasured(why) => {
                serving.push(f.id.clone());
                unmeasured.insert(f.id.clone(), why);
            }
            Verdict::Out(why) => {
                out.insert(f.id.clone(), why);
            }
        }
    }
    let slots: Vec<String> = seen.iter().map(|f| f.id.clone()).collect();
    let routes = routes(&slots, &serving, leader, fallback);
    Decision {
        serving,
        unmeasured,
        out,
        routes,
    }
}

/// Where the read endpoint runs: a place on the host of each of the app's
/// endpoints (`endpoint_hosts`, in their order), so that losing one host
/// leaves `DATABASE_FOLLOWER_URL` an address on another. Answers the hosts
/// that lack a place and the hosts of places no endpoint is on any more.
pub fn layout(endpoint_hosts: &[String], places: &[ReadPlace]) -> (Vec<String>, Vec<String>) {
    let missing = endpoint_hosts
        .iter()
        .filter(|h| !places.iter().any(|p| &p.host == *h))
        .cloned()
        .collect();
    let extra = places
        .iter()
        .filter(|p| !endpoint_hosts.contains(&p.host))
        .map(|p| p.host.clone())
        .collect();
    (missing, extra)
}

/// The slots of a place that no route names any more (their followers are
/// gone): they are stopped and removed.
pub fn gone_slots(
    applied: &BTreeMap<String, Option<String>>,
    routes: &BTreeMap<String, Route>,
) -> Vec<String> {
    applied
        .keys()
        .filter(|s| !routes.contains_key(*s))
        .cloned()
        .collect()
}

/// What one slot needs for its route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotStep {
    /// It routes so already.
    Keep,
    /// Write its configuration and start it (or retarget it in place, with
    /// PgBouncer's PAUSE, when it runs with a route not known here).
    Apply,
    /// It routed to another follower, which may be gone silent (a host cut
    /// off answers nothing, so a PAUSE could wait for its queries forever):
    /// hold it for at most [`MOVE_HOLD`], ending the connections still busy
    /// then, and route it anew (its whole configuration written). With
    /// `and_apply` (a new password or pool mode too), then retarget it in
    /// place, now that its PAUSE waits only for a follower that serves.
    Move { and_apply: bool },
    /// It refused: route it, then let clients in again.
    ApplyAndUnblock,
    /// No follower serves: (start it if need be, then) refuse connections.
    Refuse { apply_first: bool },
}

/// How long a slot moving to another follower waits for its busy
/// connections before ending them.
pub const MOVE_HOLD: std::time::Duration = std::time::Duration::from_secs(2);

/// What slot `route` needs, from whether it runs, the route it was last
/// given (`was`: none when not known, `Some(None)` while it refuses), and
/// whether its configuration must be written again anyway (`rewrite`: a new
/// password or pool mode, or a control plane that has just started).
pub fn slot_step(
    running: bool,
    was: Option<&Option<String>>,
    route: &Route,
    rewrite: bool,
) -> SlotStep {
    if running && was == Some(&route.applied()) && !rewrite {
        return SlotStep::Keep;
    }
    match route {
        Route::To(_) if !running => SlotStep::Apply,
        Route::To(_) => match was {
            Some(Some(_)) if was != Some(&route.applied()) => SlotStep::Move { and_apply: rewrite },
            Some(None) => SlotStep::ApplyAndUnblock,
            _ => SlotStep::Apply,
        },
        Route::Refuse => SlotStep::Refuse {
            apply_first: !running || rewrite,
        },
    }
}

/// The sentence logged when the serving set changes.
pub fn sentence(app: &str, d: &Decision, names: &dyn Fn(&str) -> String, fallback: bool) -> String {
    let list = |ids: &[String]| {
        ids.iter()
            .map(|i| match d.unmeasured.get(i) {
                Some(why) => format!("{} ({why})", names(i)),
                None => names(i),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let outs: Vec<String> = d
        .out
        .iter()
        .map(|(id, why)| format!("{} ({why})", names(id)))
        .collect();
    match (d.serving.is_empty(), fallback) {
        (false, _) if outs.is_empty() => {
            format!("{app}: reads are served by {}", list(&d.serving))
        }
        (false, _) => format!(
            "{app}: reads are served by {}; out: {}",
            list(&d.serving),
            outs.join(", ")
        ),
        (true, true) => format!(
            "{app}: no follower serves reads ({}): they go to the leader (--fallback-to-leader)",
            outs.join(", ")
        ),
        (true, false) => format!(
            "{app}: no follower serves reads ({}): DATABASE_FOLLOWER_URL refuses connections",
            outs.join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(id: &str, state: DatabaseState, lag: Result<(u64, f64), &str>) -> FollowerSeen {
        FollowerSeen {
            id: id.into(),
            state,
            lag: lag
                .map(|(commits, seconds)| LagSeen {
                    commits,
                    more_than: false,
                    seconds,
                })
                .map_err(|why| Unmeasured::Down(why.to_string())),
        }
    }

    /// `id` answers, its leader does not.
    fn silent_leader(id: &str) -> FollowerSeen {
        FollowerSeen {
            lag: Err(Unmeasured::LeaderSilent("timed out".into())),
            ..seen(id, Available, Ok((0, 0.0)))
        }
    }

    use DatabaseState::{Available, Preparing};

    #[test]
    fn judge_takes_out_what_is_preparing_down_or_too_far_behind() {
        let c1000 = MaxLag::Commits(1000);
        let s30 = MaxLag::Seconds(30);
        let serves = Verdict::Serves;
        let out = |w: &str| Verdict::Out(w.into());
        let more_than = FollowerSeen {
            lag: Ok(LagSeen {
                commits: 1000,
                more_than: true,
                seconds: 1.0,
            }),
            ..seen("a", Available, Ok((0, 0.0)))
        };
        let table: Vec<(FollowerSeen, MaxLag, Verdict)> = vec![
            (seen("a", Available, Ok((0, 0.0))), c1000, serves.clone()),
            (seen("a", Available, Ok((1000, 0.0))), c1000, serves.clone()),
            (
                seen("a", Available, Ok((1001, 0.0))),
                c1000,
                out("1001 commits behind, limit 1000"),
            ),
            (
                more_than,
                c1000,
                out("more than 1000 commits behind, limit 1000"),
            ),
            // Seconds ignore commits and the other way round.
            (seen("a", Available, Ok((5000, 2.0))), s30, serves.clone()),
            (
                seen("a", Available, Ok((3, 31.5))),
                s30,
                out("31.5 s behind, limit 30s"),
            ),
            (seen("a", Available, Ok((3, 31.5))), c1000, serves.clone()),
            (seen("a", Preparing, Ok((0, 0.0))), c1000, out("preparing")),
            (
                seen("a", Available, Err("connection refused")),
                c1000,
                out("down: connection refused"),
            ),
            (
                seen("a", DatabaseState::Failed, Ok((0, 0.0))),
                c1000,
                out("failed"),
            ),
            // Back in as soon as it is within the limit again.
            (seen("a", Available, Ok((999, 0.0))), c1000, serves),
        ];
        for (f, limit, want) in table {
            assert_eq!(judge(&f, limit, true), want, "{f:?} under {limit}");
            assert_eq!(judge(&f, limit, false), want, "{f:?} under {limit}");
        }
    }

    #[test]
    fn a_silent_leader_leaves_each_follower_as_it_was() {
        let c5 = MaxLag::Commits(5);
        let why = "Behind By unknown, its leader does not answer: timed out";
        type Row = (FollowerSeen, bool, Verdict);
        let table: Vec<Row> = vec![
            // It served: it goes on serving, with the reason shown.
            (
                silent_leader("a"),
                true,
                Verdict::ServesUnmeasured(why.into()),
            ),
            // It was out (behind, or not judged yet): it stays out.
            (silent_leader("a"), false, Verdict::Out(why.into())),
            // The follower's own state still counts first.
            (
                FollowerSeen {
                    state: Preparing,
                    ..silent_leader("a")
                },
                true,
                Verdict::Out("preparing".into()),
            ),
            // A follower that does not answer is down whatever it was.
            (
                seen("a", Available, Err("connection refused")),
                true,
                Verdict::Out("down: connection refused".into()),
            ),
        ];
        for (f, served, want) in table {
            assert_eq!(judge(&f, c5, served), want, "{f:?} served {served}");
        }
        let seen = [silent_leader("amber"), silent_leader("coral")];
        let d = decide(&seen, c5, "white", false, &["amber".to_string()]);
        assert_eq!(d.serving, vec!["amber".to_string()]);
        assert_eq!(d.routes["coral"], Route::To("amber".into()));
        assert_eq!(
            sentence("sushi", &d, &|id: &str| id.to_uppercase(), false),
            format!("sushi: reads are served by AMBER ({why}); out: CORAL ({why})")
        );
    }

    #[test]
    fn routes_keep_each_slot_on_its_follower_and_spread_the_spares() {
        let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let to = |s: &str| Route::To(s.into());
        type Row<'a> = (&'a [&'a str], &'a [&'a str], bool, Vec<Route>);
        let table: Vec<Row> = vec![
            (&["a", "b"], &["a", "b"], false, vec![to("a"), to("b")]),
            // b is out: its slot routes to a serving follower.
            (&["a", "b"], &["a"], false, vec![to("a"), to("a")]),
            (
                &["a", "b", "c"],
                &["c"],
                false,
                vec![to("c"), to("c"), to("c")],
            ),
            (
                &["a", "b", "c", "d"],
                &["b", "d"],
                false,
                vec![to("b"), to("b"), to("d"), to("d")],
            ),
            // None serves: refuse, or the leader when asked.
            (&["a", "b"], &[], false, vec![Route::Refuse, Route::Refuse]),
            (&["a", "b"], &[], true, vec![to("L"), to("L")]),
            (&[], &[], true, vec![]),
        ];
        for (slots, serving, fallback, want) in table {
            let got = routes(&ids(slots), &ids(serving), "L", fallback);
            let got: Vec<Route> = ids(slots).iter().map(|s| got[s].clone()).collect();
            assert_eq!(
                got, want,
                "slots {slots:?} serving {serving:?} fallback {fallback}"
            );
        }
    }

    #[test]
    fn layout_puts_a_place_on_every_endpoint_host() {
        let place = |h: &str| ReadPlace {
            host: h.into(),
            port: 1,
            applied: BTreeMap::new(),
        };
        let hosts = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        type Row<'a> = (&'a [&'a str], Vec<ReadPlace>, &'a [&'a str], &'a [&'a str]);
        let table: Vec<Row> = vec![
            (&["h1"], vec![], &["h1"], &[]),
            (&["h1", "h2"], vec![place("h1")], &["h2"], &[]),
            (&["h1", "h2"], vec![place("h2"), place("h1")], &[], &[]),
            // An endpoint host that is gone takes its place with it.
            (&["h2"], vec![place("h1"), place("h2")], &[], &["h1"]),
            (&[], vec![place("h1")], &[], &["h1"]),
        ];
        for (eps, places, missing, extra) in table {
            let got = layout(&hosts(eps), &places);
            assert_eq!(got, (hosts(missing), hosts(extra)), "{eps:?} {places:?}");
        }
    }

    #[test]
    fn gone_slots_are_those_no_route_names() {
        let applied: BTreeMap<String, Option<String>> = [
            ("a".to_string(), Some("a".to_string())),
            ("b".to_string(), None),
            ("c".to_string(), Some("a".to_string())),
        ]
        .into();
        let routes: BTreeMap<String, Route> = [
            ("a".to_string(), Route::To("a".into())),
            ("c".to_string(), Route::Refuse),
        ]
        .into();
        assert_eq!(gone_slots(&applied, &routes), vec!["b".to_string()]);
        assert!(gone_slots(&BTreeMap::new(), &routes).is_empty());
    }

    #[test]
    fn slot_step_holds_a_slot_that_moves_to_another_follower() {
        let (a, b) = (Some("a".to_string()), Some("b".to_string()));
        let to_a = Route::To("a".into());
        use SlotStep::*;
        type Row<'a> = (bool, Option<&'a Option<String>>, &'a Route, bool, SlotStep);
        let table: Vec<Row> = vec![
            (true, Some(&a), &to_a, false, Keep),
            (true, Some(&a), &to_a, true, Apply),
            (false, Some(&a), &to_a, false, Apply),
            (false, None, &to_a, false, Apply),
            // Its follower went out (or came back): held, then routed.
            (true, Some(&b), &to_a, false, Move { and_apply: false }),
            // A new password or pool mode too (or a new control plane,
            // which rewrites every slot): moved the same way first, so
            // that no PAUSE waits on the follower it leaves.
            (true, Some(&b), &to_a, true, Move { and_apply: true }),
            (true, None, &to_a, false, Apply),
            (true, Some(&None), &to_a, false, ApplyAndUnblock),
            (true, Some(&None), &to_a, true, ApplyAndUnblock),
            (true, Some(&None), &Route::Refuse, false, Keep),
            (
                true,
                Some(&a),
                &Route::Refuse,
                false,
                Refuse { apply_first: false },
            ),
            (
                true,
                Some(&None),
                &Route::Refuse,
                true,
                Refuse { apply_first: true },
            ),
            (
                false,
                None,
                &Route::Refuse,
                false,
                Refuse { apply_first: true },
            ),
        ];
        for (running, was, route, rewrite, want) in table {
            assert_eq!(
                slot_step(running, was, route, rewrite),
                want,
                "running {running} was {was:?} route {route:?} rewrite {rewrite}"
            );
        }
    }

    #[test]
    fn decide_and_its_sentence() {
        let name = |id: &str| id.to_uppercase();
        let both = [
            seen("amber", Available, Ok((0, 0.0))),
            seen("coral", Available, Ok((2000, 9.0))),
        ];
        let d = decide(&both, MaxLag::Commits(1000), "white", false, &[]);
        assert_eq!(d.serving, vec!["amber".to_string()]);
        assert_eq!(d.routes["coral"], Route::To("amber".into()));
        assert_eq!(
            sentence("sushi", &d, &name, false),
            "sushi: reads are served by AMBER; out: CORAL (2000 commits behind, limit 1000)"
        );
        let none = [seen("amber", Preparing, Ok((0, 0.0)))];
        let d = decide(&none, MaxLag::Commits(1000), "white", false, &[]);
        assert_eq!(d.routes["amber"], Route::Refuse);
        assert_eq!(
            sentence("sushi", &d, &name, false),
            "sushi: no follower serves reads (AMBER (preparing)): DATABASE_FOLLOWER_URL refuses connections"
        );
        let d = decide(&none, MaxLag::Commits(1000), "white", true, &[]);
        assert_eq!(d.routes["amber"], Route::To("white".into()));
        assert!(sentence("sushi", &d, &name, true)
            .ends_with("they go to the leader (--fallback-to-leader)"));
    }
}
