//! A changeover past its checks: freeze, catch up, promote, switch,
//! retarget, with its operation in the catalog.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures_util::future::join_all;
use pgfollow_planner::CHANGEOVER_SWITCH;
use pgfollow_types::agent::RouteTimings;
use pgfollow_types::api::{ChangeoverReport, ChangeoverStep};
use pgfollow_types::model::{DatabaseRecord, EndpointRecord, OperationKind, OperationState};

use super::Steps;
use crate::api::Ctx;
use crate::endpoints::endpoint_spec;
use crate::error::ApiErr;
use crate::hosts::AgentHandle;
use crate::provision::{new_operation, next_operation_id};
use crate::views::MAIN_ATTACHMENT;

/// A changeover past its checks, with its operation recorded.
pub(super) struct Job {
    pub(super) ctx: Arc<Ctx>,
    pub(super) app: String,
    pub(super) op_id: String,
    pub(super) target: DatabaseRecord,
    pub(super) old: DatabaseRecord,
    /// Every endpoint of the app: all are held and all are rerouted.
    pub(super) eps: Vec<EndpointRecord>,
    pub(super) catch_up_limit: Duration,
    pub(super) no_kill: bool,
    pub(super) steps: Steps,
    pub(super) started: Instant,
}

impl Job {
    pub(super) async fn execute(mut self) -> Result<ChangeoverReport, ApiErr> {
        let (ctx, app) = (self.ctx.clone(), self.app.clone());
        let (target, old) = (self.target.clone(), self.old.clone());
        let mut admins = Vec::new();
        for ep in &self.eps {
            match ctx.endpoints.agent_of(ep) {
                Ok(a) => admins.push((a, ep.clone())),
                Err(e) => {
                    return Err(self
                        .give_up(format!(
                            "cannot reach the endpoint on host {}: {e}",
                            ep.host
                        ))
                        .await)
                }
            }
        }
        let mut t = self.started;
        let pauses = join_all(
            admins
                .iter()
                .map(|(a, ep)| a.endpoint_pause_within(&ep.id, &old.database, PAUSE_DEADLINE)),
        )
        .await;
        let mut paused = true;
        for (r, (_, ep)) in pauses.into_iter().zip(&admins) {
            match r {
                Ok(p) => paused &= p,
                Err(e) => {
                    return Err(self
                        .give_up(format!(
                            "could not hold writes at the endpoint on host {}: {e}",
                            ep.host
                        ))
                        .await)
                }
            }
        }
        let frozen = Instant::now();
        let mut freeze_detail = "new transactions wait at the endpoint".to_string();
        if !paused {
            if self.no_kill {
                return Err(self
                    .give_up(format!(
                        "a client kept a transaction open for more than {} ms (--no-kill: its connection was left alone)",
                        PAUSE_DEADLINE.as_millis()
                    ))
                    .await);
            }
            match self.end_open_transactions(&admins).await {
                Ok(detail) => freeze_detail = detail,
                Err(e) => return Err(self.give_up(e).await),
            }
        }
        t = self.steps.done("freeze", t, freeze_detail);

        // Before the promotion anything that fails resumes on the old primary.
        let state = ctx.store.read()?;
        if target.is_logical_follower() {
            let polls = match self.wait_for_no_lag(&state, frozen).await {
                Ok(polls) => polls,
                Err(why) => return Err(self.give_up(why).await),
            };
            t = self.steps.done(
                "catch up",
                t,
                format!("{} is 0 commits behind ({polls} checks)", target.color),
            );
            match super::logical::hand_over(&ctx.hosts, &target, &old).await {
                Ok(detail) => t = self.steps.done("hand over", t, detail),
                Err(e) => {
                    let why = format!("handing over to {} failed: {e}", target.color);
                    return Err(self.give_up(why).await);
                }
            }
        } else {
            t = match self.catch_up_and_promote(&state, frozen, t).await {
                Ok(t) => t,
                Err(why) => return Err(self.give_up(why).await),
            };
        }

        // Past the promotion: the old primary must never take writes again
        // through the endpoint, so nothing below resumes on it; what fails
        // here is finished by the executor (the operation stays active).
        let new_state = ctx
            .store
            .update(|state| switch(state, &self.op_id, &app, &target.id, &old.id))?;
        crate::failover::crash_point("changeover:switch");
        let stuck = |what: &str, e: &dyn std::fmt::Display| {
            ApiErr::internal(format!(
                "{} is promoted, but {what} failed ({e}); writes are held until pgfollow routes the endpoint to {} (it retries by itself)",
                target.color, target.color
            ))
        };
        let rec = new_state
            .apps
            .get(&app)
            .ok_or_else(|| ApiErr::internal("the app vanished during the changeover"))?;
        let promoted = new_state
            .databases
            .get(&target.id)
            .ok_or_else(|| ApiErr::internal("the database vanished during the changeover"))?;
        t = self.steps.done(
            "switch",
            t,
            format!("the catalog has DATABASE_URL on {}", target.color),
        );
        let routes = join_all(admins.iter().map(|(a, ep)| {
            let spec = endpoint_spec(&new_state, rec, ep, promoted);
            async move { a.endpoint_route(&spec, true).await }
        }))
        .await;
        let mut slowest = RouteTimings::default();
        for r in routes {
            let took = r.map_err(|e| stuck("routing the endpoint", &e))?;
            if total(&took) >= total(&slowest) {
                slowest = took;
            }
        }
        let pause = frozen.elapsed();
        self.steps.done(
            "retarget",
            t,
            format!(
                "the endpoint routes to {} and writes flow again; on the slowest of {} endpoint(s): \
                 admin connection {:.1} ms, config write {:.1} ms, RELOAD {:.1} ms, RESUME {:.1} ms",
                target.color,
                admins.len(),
                slowest.admin_ms,
                slowest.config_ms,
                slowest.reload_ms,
                slowest.resume_ms
            ),
        );
        finish(&ctx.store, &self.op_id, &app, OperationState::Done, None)?;
        tracing::info!(
            "{app}: changeover from {} to {} done; writes held {:.1} ms",
            old.color,
            target.color,
            pause.as_secs_f64() * 1000.0
        );
        Ok(ChangeoverReport {
            promoted: target.color.to_string(),
            previous: old.color.to_string(),
            dry_run: false,
            steps: std::mem::take(&mut self.steps.0),
            write_pause_ms: pause.as_secs_f64() * 1000.0,
            message: format!(
                "{app} now runs on {}; {} stays reachable as PGFOLLOW_POSTGRESQL_{}_URL.",
                target.color, old.color, old.color
            ),
        })
    }

    /// Reads where the old primary has flushed its WAL (every commit it
    /// acknowledged is before it, and the freeze lets no new one through
    /// the endpoint), and has the follower's agent promote it the moment it
    /// has replayed that far: one call, looking every millisecond. A
    /// follower that does not get there within [`FAST_CATCH_UP`] (far
    /// behind, or the primary's WAL ends in a record flushed only in part)
    /// is waited for by counting the commits it lacks until there are
    /// none, then promoted. Records the "catch up" and "promote" steps; an
    /// `Err` is why the changeover gives up.
    async fn catch_up_and_promote(
        &mut self,
        state: &pgfollow_types::model::State,
        frozen: Instant,
        t: Instant,
    ) -> Result<Instant, String> {
        let (target, old) = (self.target.clone(), self.old.clone());
        let hosts = &self.ctx.hosts;
        let (leader, follower) = match (hosts.agent(&old.host), hosts.agent(&target.host)) {
            (Ok(l), Ok(f)) => (l, f),
            (Err(e), _) | (_, Err(e)) => return Err(e.message),
        };
        let flushed = leader
            .commits_since(&old.id, crate::lag::PAST_THE_END, 0)
            .await
            .map_err(|e| format!("cannot read where {} has flushed: {e}", old.color))?
            .current;
        let read_at = Instant::now();
        let fast = follower
            .promote_at(&target.id, flushed, FAST_CATCH_UP)
            .await
            .map_err(|e| format!("promoting {} failed: {e}", target.color))?;
        if fast.promoted {
            let called = read_at.elapsed().as_secs_f64() * 1000.0;
            let catch_up = (read_at - t).as_secs_f64() * 1000.0 + fast.catch_up_ms;
            self.steps.0.push(ChangeoverStep {
                name: "catch up".into(),
                millis: catch_up,
                detail: format!(
                    "{} replayed to {flushed}, where {} had flushed ({} looks)",
                    target.color, old.color, fast.catch_up_polls
                ),
            });
            self.steps.0.push(ChangeoverStep {
                name: "promote".into(),
                millis: (called - fast.catch_up_ms).max(0.0),
                detail: format!(
                    "{} is writable: {:.1} ms from pg_promote() ({} looks)",
                    target.color, fast.promote_ms, fast.promote_polls
                ),
            });
            return Ok(Instant::now());
        }
        let polls = self.wait_for_no_lag(state, frozen).await?;
        let t = self.steps.done(
            "catch up",
            t,
            format!(
                "{} is 0 commits behind ({} looks at its position, then {polls} counts)",
                target.color, fast.catch_up_polls
            ),
        );
        follower
            .promote(&target.id)
            .await
            .map_err(|e| format!("promoting {} failed: {e}", target.color))?;
        Ok(self
            .steps
            .done("promote", t, format!("{} is writable", target.color)))
    }

    /// Counts the commits the follower lacks until there are none (or the
    /// catch-up limit is past): how many counts it took.
    async fn wait_for_no_lag(
        &self,
        state: &pgfollow_types::model::State,
        frozen: Instant,
    ) -> Result<u32, String> {
        let target = &self.target;
        let mut polls = 0u32;
        loop {
            polls += 1;
            match crate::lag::measure(&self.ctx.hosts, state, target).await {
                Ok(lag) if lag.commits == 0 && !lag.more_than => return Ok(polls),
                Ok(_) | Err(_) if frozen.elapsed() < self.catch_up_limit => {
                    tokio::time::sleep(Duration::from_millis(2)).await
                }
                Ok(lag) => {
                    return Err(format!(
                        "{} was still {} behind after {} s",
                        target.color,
                        lag.commits_label(),
                        self.catch_up_limit.as_secs_f64()
                    ))
                }
                Err(e) => return Err(format!("cannot measure {}'s lag: {e}", target.color)),
            }
        }
    }

    /// The pause did not finish in time: end the old primary's backends of
    /// the app's database (their clients get an error, the transactions
    /// roll back), then wait for the pause to complete; if a server
    /// connection still hangs, end every connection of the endpoint.
    async fn end_open_transactions(
        &self,
        admins: &[(AgentHandle, EndpointRecord)],
    ) -> Result<String, String> {
        let old = &self.old;
        let ended = match self.ctx.hosts.agent(&old.host) {
            Ok(a) => a
                .kill_all(&old.id, &old.database)
                .await
                .map(|v| v.len())
                .ok(),
            Err(_) => None,
        };
        let started = Instant::now();
        while started.elapsed() < PAUSE_DEADLINE {
            let active = join_all(
                admins
                    .iter()
                    .map(|(a, ep)| a.endpoint_active_servers(&ep.id, &old.database)),
            )
            .await
            .into_iter()
            .try_fold(0u32, |n, r| r.map(|a| n + a));
            match active {
                Ok(0) => {
                    return Ok(format!(
                        "new transactions wait at the endpoint; {} backend(s) of {} whose transactions stayed open past {} ms were ended",
                        ended.unwrap_or(0),
                        old.color,
                        PAUSE_DEADLINE.as_millis()
                    ))
                }
                Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                Err(e) => return Err(format!("cannot watch the endpoint's pause: {e}")),
            }
        }
        for r in join_all(
            admins
                .iter()
                .map(|(a, ep)| a.endpoint_kill(&ep.id, &old.database)),
        )
        .await
        {
            r.map_err(|e| format!("could not end the endpoint's connections: {e}"))?;
        }
        Ok(format!(
            "new transactions wait at the endpoint; its connections were ended (a server connection still hung after {} ms)",
            2 * PAUSE_DEADLINE.as_millis()
        ))
    }

    /// Before the promotion: the changeover fails and writes resume on the
    /// old primary (held endpoints of a failed operation are released by
    /// reconciliation too, should this not get through).
    async fn give_up(&self, why: String) -> ApiErr {
        let _ = finish(
            &self.ctx.store,
            &self.op_id,
            &self.app,
            OperationState::Failed,
            Some(&why),
        );
        // This job holds the app's endpoint lock.
        let how = match self.ctx.endpoints.reroute_held_locked(&self.app).await {
            Ok(()) => format!(
                "resumed on {}; no acknowledged commit was lost",
                self.old.color
            ),
            Err(e) => format!(
                "and resuming on {} failed too ({e}); pgfollow retries it by itself",
                self.old.color
            ),
        };
        ApiErr::conflict(format!("changeover stopped: {why}; {how}"))
    }
}

/// How long the follower may take to replay to the old primary's flush
/// position before the changeover counts the commits it lacks instead.
const FAST_CATCH_UP: Duration = Duration::from_millis(25);

/// All of an endpoint's route.
fn total(t: &RouteTimings) -> f64 {
    t.admin_ms + t.config_ms + t.reload_ms + t.resume_ms
}

/// How long the freeze waits for transactions in flight before it ends
/// the ones that stay open.
pub const PAUSE_DEADLINE: Duration = Duration::from_millis(1000);

/// The catalog's side of the promotion: `DATABASE` moves to `target`, the
/// rest of its unfollow (drop its slot on the old primary, checkpoint) is
/// an operation of its own, and the changeover records its switch.
pub(super) fn switch(
    state: &mut pgfollow_types::model::State,
    op_id: &str,
    app: &str,
    target: &str,
    old: &str,
) -> Result<pgfollow_types::model::State, ApiErr> {
    let now = Utc::now();
    let id = next_operation_id(state);
    let mut op = new_operation(&id, OperationKind::Unfollow, target, now);
    op.subject = Some(old.to_string());
    op.done.push("promote".into());
    state.operations.insert(id, op);
    if let Some(o) = state.operations.get_mut(op_id) {
        o.done.push(CHANGEOVER_SWITCH.to_string());
        o.updated_at = now;
    }
    if let Some(d) = state.databases.get_mut(target) {
        d.following = None;
        d.fork_pending = true;
        d.ha_released = false;
    }
    if let Some(a) = state.apps.get_mut(app) {
        a.attachments
            .insert(MAIN_ATTACHMENT.to_string(), target.to_string());
    }
    // The old primary's HA standby runs its major: it cannot follow a
    // logical follower that runs a newer one.
    let logical = state.databases.get(target).is_some_and(|d| d.logical);
    let repoint = next_operation_id(state);
    let handed = match logical {
        true => None,
        false => pgfollow_planner::hand_over_standby(state, old, target, repoint, now),
    };
    if let Some(sentence) = handed {
        tracing::info!("{sentence}");
    }
    Ok(state.clone())
}

/// Ends changeover `op_id` and clears its hold on `app`'s endpoint.
pub(super) fn finish(
    store: &crate::store::Store,
    op_id: &str,
    app: &str,
    to: OperationState,
    why: Option<&str>,
) -> Result<(), ApiErr> {
    store.update(|state| {
        if let Some(o) = state.operations.get_mut(op_id) {
            o.state = to;
            o.last_error = why.map(str::to_string);
            o.updated_at = Utc::now();
        }
        for e in state
            .apps
            .get_mut(app)
            .into_iter()
            .flat_map(|a| a.endpoints.iter_mut())
        {
            if e.held_by.as_deref() == Some(op_id) && to == OperationState::Done {
                e.held_by = None;
                e.applied = state.operations.get(op_id).map(|o| o.database.clone());
            }
        }
        Ok(())
    })
}
