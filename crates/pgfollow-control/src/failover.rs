//! The failover runner: carries a failover operation out step by step, in
//! the order the planner's `decide_failover` gives (hold, fence, promote,
//! confirm, switch, reroute), recording each step in the catalog as soon as
//! it is done. A control plane killed at any point finds the operation
//! active at its next start and runs it on from the step it was on; an
//! endpoint the operation held is resumed by reconciliation if the
//! operation ends without releasing it.

use std::time::{Duration, Instant};

use chrono::Utc;
use pgfollow_planner::{
    decide_failover, is_promoted, self_fence_is_certain, switch_roles, FailoverAction,
    FailoverStep, HUNG,
};
use pgfollow_types::model::{DatabaseRecord, OperationRecord, OperationState, State};
use pgfollow_types::timing::FENCE_AFTER;

use crate::endpoints::Endpoints;
use crate::error::ApiErr;
use crate::hosts::{Hosts, HOST_LEASE};
use crate::provision::next_operation_id;
use crate::store::Store;

/// How long a PAUSE may take before the endpoint's connections are ended:
/// the old primary is presumed lost, so what it still holds is lost too.
pub const HOLD_DEADLINE: Duration = Duration::from_millis(500);
/// The same for a primary that answers no query or whose host is silent:
/// what is in flight there will never finish.
pub const HOLD_DEADLINE_LOST: Duration = Duration::from_millis(20);
/// The self-fence deadline plus what the agent may need to act on it
/// (`HOST_LEASE` − `FENCE_AFTER`: the whole margin the lease leaves).
const FENCE_MARGIN: Duration = HOST_LEASE.saturating_sub(FENCE_AFTER);
/// Pause between tries of a step that failed.
const RETRY: Duration = Duration::from_millis(250);
/// At most this many passes (steps and retries) per run: about 10 minutes.
const MAX_PASSES: u32 = 2400;

/// The sentence for an old primary whose agent fenced it by itself.
fn self_fenced(host: &str, silence: Option<Duration>) -> String {
    format!(
        "host {host} has been silent for {:.1} s: its agent fenced the old primary by itself (deadline {:.1} s)",
        silence.unwrap_or_default().as_secs_f64(),
        FENCE_AFTER.as_secs_f64()
    )
}

/// Fault injection for the tests that kill the control plane in the
/// middle of an operation: with `PGFOLLOW_CRASH_AFTER=<point>` in its
/// environment, `serve` aborts (as abruptly as SIGKILL: no cleanup, no
/// flush) right after it recorded that point, e.g. `failover:promote`.
pub fn crash_point(point: &str) {
    if std::env::var("PGFOLLOW_CRASH_AFTER").is_ok_and(|p| p == point) {
        eprintln!("PGFOLLOW_CRASH_AFTER={point}: aborting here");
        std::process::abort();
    }
}

pub struct Runner<'a> {
    pub store: &'a Store,
    pub hosts: &'a Hosts,
    pub endpoints: &'a Endpoints,
}

struct Parties {
    op: OperationRecord,
    old: DatabaseRecord,
    new: DatabaseRecord,
}

fn parties(state: &State, op_id: &str) -> Option<Parties> {
    let op = state.operations.get(op_id)?.clone();
    let old = state.databases.get(&op.database)?.clone();
    let new = state.databases.get(op.subject.as_ref()?)?.clone();
    Some(Parties { op, old, new })
}

impl Runner<'_> {
    /// Runs failover `op_id` to its end (done or given up). Returns the
    /// sentence to log.
    pub async fn run(&self, op_id: &str) -> String {
        let started = Instant::now();
        let mut last_sentence = String::new();
        for _ in 0..MAX_PASSES {
            let state = match self.store.read() {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("failover {op_id}: cannot read the catalog: {e}");
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            };
            let Some(p) = parties(&state, op_id) else {
                let _ = self.end(op_id, OperationState::Failed, "a database vanished");
                return format!("failover {op_id}: its primary or standby vanished; stopped");
            };
            if !p.op.state.is_active() {
                return format!("failover {op_id} is no longer active");
            }
            let d = decide_failover(&p.op, p.old.color.as_str());
            if d.sentence != last_sentence {
                tracing::info!("{}", d.sentence);
                last_sentence = d.sentence.clone();
            }
            match d.action {
                FailoverAction::Finish => {
                    let _ = self.end(op_id, OperationState::Done, "");
                    crate::metrics::record_failover("promoted");
                    crate::metrics::record_write_pause("failover", started.elapsed());
                    return format!(
                        "{} ({} of {}): failed over in {:.0} ms because {}; now on host {}, the old primary rejoins as its standby",
                        p.old.color,
                        p.old.name,
                        p.old.app,
                        started.elapsed().as_secs_f64() * 1000.0,
                        p.op.reason.as_deref().unwrap_or("its primary was lost"),
                        p.new.host
                    );
                }
                FailoverAction::Abort(why) => {
                    let _ = self.end(op_id, OperationState::Failed, &why);
                    crate::metrics::record_failover("failed");
                    return format!(
                        "HA: the failover of {} was given up: {why}; its endpoints are released",
                        p.old.color
                    );
                }
                FailoverAction::Step(step) => match self.act(&state, &p, step).await {
                    Ok(detail) => {
                        if !detail.is_empty() {
                            tracing::info!("HA failover of {}: {detail}", p.old.color);
                        }
                        if let Err(e) = self.record(op_id, step) {
                            tracing::warn!(
                                "failover {op_id}: cannot record step {}: {e}",
                                step.as_str()
                            );
                            tokio::time::sleep(RETRY).await;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(
                            "HA failover of {}: {} failed: {e}",
                            p.old.color,
                            step.as_str()
                        );
                        let _ = self.record_failure(op_id, &e.message);
                        tokio::time::sleep(RETRY).await;
                    }
                },
            }
        }
        format!("failover {op_id}: still not finished after {MAX_PASSES} passes; it goes on at the next start")
    }

    /// Carries one step out; a sentence about what happened, if worth one.
    async fn act(&self, state: &State, p: &Parties, step: FailoverStep) -> Result<String, ApiErr> {
        match step {
            FailoverStep::Hold => {
                // A hung primary's server connections never finish, nor do
                // those to a host that is silent: end them at once instead
                // of waiting for a PAUSE.
                let hung = p.op.reason.as_deref().is_some_and(|r| r.starts_with(HUNG));
                let silent = self
                    .hosts
                    .silence(&p.old.host)
                    .is_some_and(|s| s >= HOST_LEASE);
                let limit = if hung || silent {
                    HOLD_DEADLINE_LOST
                } else {
                    HOLD_DEADLINE
                };
                let mut killed = Vec::new();
                for app in Endpoints::routing_to(state, &p.old.id) {
                    if self.endpoints.hold(&app, &p.op.id, limit).await? {
                        killed.push(app);
                    }
                }
                Ok(if killed.is_empty() {
                    String::new()
                } else {
                    format!(
                        "the endpoints of {} ended their connections to the old primary",
                        killed.join(", ")
                    )
                })
            }
            FailoverStep::Fence => {
                // Past its self-fence deadline the agent has stopped the
                // old primary by itself: asking a frozen agent would only
                // wait for its timeout.
                let certain = |silence| self_fence_is_certain(silence, FENCE_AFTER, FENCE_MARGIN);
                let silence = self.hosts.silence(&p.old.host);
                if certain(silence) {
                    return Ok(self_fenced(&p.old.host, silence));
                }
                if let Some(agent) = self.hosts.reach(&p.old.host) {
                    match agent.fence(&p.old.id).await {
                        Ok(()) => {
                            return Ok(format!(
                                "host {}'s agent stopped the old primary",
                                p.old.host
                            ))
                        }
                        Err(e) => tracing::info!(
                            "HA failover of {}: the old primary's agent could not fence it ({e})",
                            p.old.color
                        ),
                    }
                }
                // Not yet past the deadline: waiting for it is no failure.
                let mut silence = self.hosts.silence(&p.old.host);
                if let Some(left) =
                    silence.and_then(|s| (FENCE_AFTER + FENCE_MARGIN).checked_sub(s))
                {
                    tokio::time::sleep(left).await;
                    silence = self.hosts.silence(&p.old.host);
                }
                if certain(silence) {
                    return Ok(self_fenced(&p.old.host, silence));
                }
                Err(ApiErr::unavailable(format!(
                    "host {} neither stopped the old primary nor has been silent past its self-fence deadline",
                    p.old.host
                )))
            }
            FailoverStep::Promote => {
                let agent = self.hosts.agent(&p.new.host)?;
                if agent.probe(&p.new.id).await.is_ok_and(|pr| !pr.in_recovery) {
                    return Ok("the standby was already promoted".into());
                }
                agent.promote(&p.new.id).await?;
                Ok(String::new())
            }
            FailoverStep::Confirm => {
                let probe = self.hosts.agent(&p.new.host)?.probe(&p.new.id).await?;
                is_promoted(&probe, p.old.timeline).map_err(|why| {
                    ApiErr::unavailable(format!("the promoted standby is not confirmed: {why}"))
                })?;
                let (id, tl) = (p.new.id.clone(), probe.timeline);
                self.store.update(|s| {
                    if let Some(d) = s.databases.get_mut(&id) {
                        d.timeline = tl;
                    }
                    Ok(())
                })?;
                Ok(format!(
                    "the standby is out of recovery on timeline {}",
                    tl.unwrap_or_default()
                ))
            }
            FailoverStep::Switch => {
                let why = p.op.reason.clone().unwrap_or_default();
                let op = p.op.clone();
                self.store.update(|s| {
                    switch_roles(s, &op, &why, Utc::now(), &mut next_operation_id)
                        .map_err(ApiErr::conflict)
                })?;
                Ok(format!("{} now lives on host {}", p.old.color, p.new.host))
            }
            FailoverStep::Reroute => {
                let held: Vec<String> = state
                    .apps
                    .values()
                    .filter(|a| {
                        a.endpoints
                            .iter()
                            .any(|e| e.held_by.as_deref() == Some(p.op.id.as_str()))
                    })
                    .map(|a| a.name.to_string())
                    .collect();
                for app in &held {
                    self.endpoints.reroute_held(app).await?;
                }
                Ok(String::new())
            }
        }
    }

    fn record(&self, op_id: &str, step: FailoverStep) -> Result<(), ApiErr> {
        let recorded = self.store.update(|s| {
            if let Some(o) = s.operations.get_mut(op_id) {
                o.done.push(step.as_str().to_string());
                o.state = OperationState::Running;
                o.failures = 0;
                o.last_error = None;
                o.updated_at = Utc::now();
            }
            Ok(())
        });
        crash_point(&format!("failover:{}", step.as_str()));
        recorded
    }

    fn record_failure(&self, op_id: &str, message: &str) -> Result<(), ApiErr> {
        self.store.update(|s| {
            if let Some(o) = s.operations.get_mut(op_id) {
                o.failures += 1;
                o.last_error = Some(message.to_string());
                o.updated_at = Utc::now();
            }
            Ok(())
        })
    }

    fn end(&self, op_id: &str, to: OperationState, why: &str) -> Result<(), ApiErr> {
        self.store.update(|s| {
            if let Some(o) = s.operations.get_mut(op_id) {
                o.state = to;
                if !why.is_empty() {
                    o.last_error = Some(why.to_string());
                }
                o.updated_at = Utc::now();
            }
            Ok(())
        })
    }
}
