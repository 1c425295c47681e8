//! `pg:changeover`: the documented migration to a follower as one command.
//! Writes are held at the app's endpoint (PgBouncer PAUSE: transactions in
//! flight finish, new ones wait), the follower replays up to the last
//! commit, is promoted, the endpoint is pointed at it and released. Before
//! the promotion every failure resumes on the old primary with nothing
//! lost; the old primary takes no write through the endpoint after the
//! freeze.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use pgfollow_planner::{recover_changeover, ChangeoverRecovery, CHANGEOVER_SWITCH};
use pgfollow_types::api::{ChangeoverReport, ChangeoverStep, DatabaseState};
use pgfollow_types::model::{DatabaseRecord, OperationKind, OperationState};

use crate::api::Ctx;
use crate::endpoints::{endpoint_spec, main_database};
use crate::error::ApiErr;
use crate::executor::active_operation;
use crate::provision::{new_operation, next_operation_id};
use crate::resolve::{find_app, resolve_db};
use crate::views::MAIN_ATTACHMENT;

/// How long the follower may take to replay the last commits while writes
/// are held, unless the request says otherwise; past it the changeover
/// gives up and resumes.
pub const CATCH_UP_LIMIT: Duration = Duration::from_secs(30);

struct Steps(Vec<ChangeoverStep>);

impl Steps {
    fn done(&mut self, name: &str, since: Instant, detail: impl Into<String>) -> Instant {
        let now = Instant::now();
        self.0.push(ChangeoverStep {
            name: name.to_string(),
            millis: (now - since).as_secs_f64() * 1000.0,
            detail: detail.into(),
        });
        now
    }
}

/// Runs (or with `dry_run`, checks) a changeover of `app` to `reference`.
pub async fn run(
    ctx: Arc<Ctx>,
    app: &str,
    reference: &str,
    dry_run: bool,
    catch_up_limit: Duration,
    no_kill: bool,
) -> Result<ChangeoverReport, ApiErr> {
    let lock = ctx.endpoints.lock(app);
    let _only_one = lock.lock_owned().await;
    let started = Instant::now();
    let state = ctx.store.read()?;
    let a = find_app(&state, app)?.clone();
    let target = resolve_db(&state, app, reference)?.clone();
    let old = main_database(&state, &a)
        .ok_or_else(|| ApiErr::conflict(format!("app {app} has no DATABASE_URL to move")))?
        .clone();
    check(&ctx, &state, &a, &target, &old)?;
    let ep = a.endpoint.clone().ok_or_else(|| {
        ApiErr::conflict(format!(
            "app {app} has no endpoint yet; try again in a moment"
        ))
    })?;
    let mut steps = Steps(Vec::new());
    let t = steps.done(
        "check",
        started,
        format!(
            "{} is an available follower of {}, the database behind DATABASE_URL",
            target.color, old.color
        ),
    );
    if dry_run {
        let plan = [
            ("freeze", "hold new transactions at the endpoint"),
            ("catch up", "wait until the follower is 0 commits behind"),
            (
                "promote",
                "end the follower's recovery: it becomes writable",
            ),
            (
                "retarget",
                "route the endpoint to it and let transactions through",
            ),
        ];
        for (name, detail) in plan {
            steps.0.push(ChangeoverStep {
                name: name.into(),
                millis: 0.0,
                detail: detail.into(),
            });
        }
        return Ok(ChangeoverReport {
            promoted: target.color.to_string(),
            previous: old.color.to_string(),
            dry_run: true,
            steps: steps.0,
            write_pause_ms: 0.0,
            message: format!(
                "Dry run: {app} would move from {} to {}; nothing was changed.",
                old.color, target.color
            ),
        });
    }

    // The operation and the hold, in the catalog before the freeze: if
    // this process dies from here on, the executor finds the changeover
    // interrupted and finishes or undoes it.
    let mut running = None;
    let op_id = ctx.store.update(|state| {
        let id = next_operation_id(state);
        running = Some(ctx.endpoints.run_op(&id));
        let mut op = new_operation(&id, OperationKind::Changeover, &target.id, Utc::now());
        op.subject = Some(old.id.clone());
        op.state = OperationState::Running;
        state.operations.insert(id.clone(), op);
        if let Some(e) = state.apps.get_mut(app).and_then(|a| a.endpoint.as_mut()) {
            e.held_by = Some(id.clone());
        }
        Ok(id)
    })?;
    // The rest runs in a task of its own: a client that hangs up does not
    // stop it half-way.
    let job = Job {
        ctx: ctx.clone(),
        app: app.to_string(),
        op_id,
        target,
        old,
        ep_id: ep.id,
        catch_up_limit,
        no_kill,
        steps,
        started: t,
    };
    tokio::spawn(async move {
        let _running = running;
        let _only_one = _only_one;
        job.execute().await
    })
    .await
    .map_err(|e| ApiErr::internal(format!("the changeover task ended abruptly: {e}")))?
}

/// A changeover past its checks, with its operation recorded.
struct Job {
    ctx: Arc<Ctx>,
    app: String,
    op_id: String,
    target: DatabaseRecord,
    old: DatabaseRecord,
    ep_id: String,
    catch_up_limit: Duration,
    no_kill: bool,
    steps: Steps,
    started: Instant,
}

impl Job {
    async fn execute(mut self) -> Result<ChangeoverReport, ApiErr> {
        let (ctx, app) = (self.ctx.clone(), self.app.clone());
        let (target, old) = (self.target.clone(), self.old.clone());
        let agent = ctx.endpoints.agent().clone();
        let endpoint = agent.endpoint(&self.ep_id)?;
        let admin = match endpoint.admin().await {
            Ok(a) => a,
            Err(e) => {
                return Err(self
                    .give_up(format!("cannot reach the endpoint: {e}"))
                    .await)
            }
        };
        let mut t = self.started;
        let paused = match admin.pause_within(&old.database, PAUSE_DEADLINE).await {
            Ok(p) => p,
            Err(e) => {
                return Err(self
                    .give_up(format!("could not hold writes at the endpoint: {e}"))
                    .await)
            }
        };
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
            match self.end_open_transactions(&admin).await {
                Ok(detail) => freeze_detail = detail,
                Err(e) => return Err(self.give_up(e).await),
            }
        }
        t = self.steps.done("freeze", t, freeze_detail);

        // Before the promotion anything that fails resumes on the old primary.
        let state = ctx.store.read()?;
        let mut polls = 0u32;
        loop {
            polls += 1;
            match crate::lag::measure(&ctx.hosts, &state, &target).await {
                Ok(lag) if lag.commits == 0 && !lag.more_than => break,
                Ok(_) | Err(_) if frozen.elapsed() < self.catch_up_limit => {
                    tokio::time::sleep(Duration::from_millis(2)).await
                }
                Ok(lag) => {
                    let why = format!(
                        "{} was still {} behind after {} s",
                        target.color,
                        lag.commits_label(),
                        self.catch_up_limit.as_secs_f64()
                    );
                    return Err(self.give_up(why).await);
                }
                Err(e) => {
                    let why = format!("cannot measure {}'s lag: {e}", target.color);
                    return Err(self.give_up(why).await);
                }
            }
        }
        t = self.steps.done(
            "catch up",
            t,
            format!("{} is 0 commits behind ({polls} checks)", target.color),
        );

        let follower_agent = match ctx.hosts.agent(&target.host) {
            Ok(a) => a,
            Err(e) => return Err(self.give_up(e.message).await),
        };
        if let Err(e) = follower_agent.promote(&target.id).await {
            let why = format!("promoting {} failed: {e}", target.color);
            return Err(self.give_up(why).await);
        }
        t = self
            .steps
            .done("promote", t, format!("{} is writable", target.color));

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
        let spec = endpoint_spec(&new_state, rec, promoted)
            .ok_or_else(|| ApiErr::internal("the app lost its endpoint during the changeover"))?;
        endpoint
            .write_config(&spec)
            .map_err(|e| stuck("rewriting the endpoint", &e))?;
        admin
            .reload()
            .await
            .map_err(|e| stuck("reloading the endpoint", &e))?;
        admin
            .resume(&spec.dbname)
            .await
            .map_err(|e| stuck("resuming the endpoint", &e))?;
        let pause = frozen.elapsed();
        finish(&ctx.store, &self.op_id, &app, OperationState::Done, None)?;
        self.steps.done(
            "retarget",
            t,
            format!(
                "the endpoint routes to {} and writes flow again",
                target.color
            ),
        );
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

    /// The pause did not finish in time: end the old primary's backends of
    /// the app's database (their clients get an error, the transactions
    /// roll back), then wait for the pause to complete; if a server
    /// connection still hangs, end every connection of the endpoint.
    async fn end_open_transactions(
        &self,
        admin: &pgfollow_pgbouncer::AdminSession<'_>,
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
            match admin.active_servers(&old.database).await {
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
        admin
            .kill_clients(&old.database)
            .await
            .map_err(|e| format!("could not end the endpoint's connections: {e}"))?;
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

/// How long the freeze waits for transactions in flight before it ends
/// the ones that stay open.
pub const PAUSE_DEADLINE: Duration = Duration::from_millis(1000);

/// The catalog's side of the promotion: `DATABASE` moves to `target`, the
/// rest of its unfollow (drop its slot on the old primary, checkpoint) is
/// an operation of its own, and the changeover records its switch.
fn switch(
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
    }
    if let Some(a) = state.apps.get_mut(app) {
        a.attachments
            .insert(MAIN_ATTACHMENT.to_string(), target.to_string());
    }
    Ok(state.clone())
}

/// Ends changeover `op_id` and clears its hold on `app`'s endpoint.
fn finish(
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
        if let Some(e) = state.apps.get_mut(app).and_then(|a| a.endpoint.as_mut()) {
            if e.held_by.as_deref() == Some(op_id) && to == OperationState::Done {
                e.held_by = None;
                e.applied = state.operations.get(op_id).map(|o| o.database.clone());
            }
        }
        Ok(())
    })
}

/// Finishes or undoes changeover `op_id`, which no task carries out any
/// more (the control plane that ran it died). Returns a sentence.
pub async fn recover(
    store: &crate::store::Store,
    hosts: &crate::hosts::Hosts,
    endpoints: &crate::endpoints::Endpoints,
    op_id: &str,
) -> Result<Option<String>, ApiErr> {
    let state = store.read()?;
    let Some(op) = state.operations.get(op_id).cloned() else {
        return Ok(None);
    };
    let (Some(target), Some(old)) = (
        state.databases.get(&op.database).cloned(),
        op.subject
            .as_ref()
            .and_then(|id| state.databases.get(id))
            .cloned(),
    ) else {
        store.update(|s| {
            if let Some(o) = s.operations.get_mut(op_id) {
                o.state = OperationState::Failed;
                o.last_error = Some("a database vanished during the changeover".into());
            }
            Ok(())
        })?;
        return Ok(Some(format!(
            "changeover {op_id}: a database vanished; it failed"
        )));
    };
    let app = target.app.to_string();
    let in_recovery = match hosts.get(&target.host) {
        Some(a) => a.probe(&target.id).await.ok().map(|p| p.in_recovery),
        None => None,
    };
    let verdict = recover_changeover(op.has_done(CHANGEOVER_SWITCH), in_recovery);
    let sentence = match verdict {
        ChangeoverRecovery::Wait => return Ok(None),
        ChangeoverRecovery::Abort => {
            finish(
                store,
                op_id,
                &app,
                OperationState::Failed,
                Some("interrupted before the promotion"),
            )?;
            format!(
                "{app}: the changeover to {} was interrupted before the promotion; writes resume on {}",
                target.color, old.color
            )
        }
        ChangeoverRecovery::Switch | ChangeoverRecovery::Reroute => {
            if verdict == ChangeoverRecovery::Switch {
                store.update(|s| switch(s, op_id, &app, &target.id, &old.id))?;
            }
            endpoints.reroute_held(&app).await?;
            finish(store, op_id, &app, OperationState::Done, None)?;
            format!(
                "{app}: the interrupted changeover to {} is finished: the endpoint routes to it and writes flow again",
                target.color
            )
        }
    };
    Ok(Some(sentence))
}

/// How long `--leader-lost` waits for `DATABASE_URL` to route to the
/// follower once it is writable.
const LEADER_LOST_WAIT: Duration = Duration::from_secs(60);

/// `pg:changeover DB --leader-lost`: the leader does not answer, so
/// nothing can be held or caught up: the follower is unfollowed at once
/// (what needs the old leader waits for it) and `DATABASE_URL` routes to it
/// once it is writable. Refused while the leader still answers, when the
/// plain changeover loses nothing.
pub async fn run_leader_lost(
    ctx: Arc<Ctx>,
    app: &str,
    reference: &str,
    dry_run: bool,
) -> Result<ChangeoverReport, ApiErr> {
    let started = Instant::now();
    let state = ctx.store.read()?;
    let a = find_app(&state, app)?.clone();
    let target = resolve_db(&state, app, reference)?.clone();
    let old = main_database(&state, &a)
        .ok_or_else(|| ApiErr::conflict(format!("app {app} has no DATABASE_URL to move")))?
        .clone();
    if target.following.as_deref() != Some(old.id.as_str()) {
        return Err(ApiErr::bad_request(format!(
            "{} is not a follower of {}, the database behind DATABASE_URL",
            target.color, old.color
        )));
    }
    let answers = match ctx.hosts.get(&old.host) {
        Some(agent) => agent.probe(&old.id).await.is_ok(),
        None => false,
    };
    if answers {
        return Err(ApiErr::conflict(format!(
            "{} still answers (host {} is up): use `pgfollow pg:changeover {} --app {app}` without --leader-lost, which holds writes and loses nothing",
            old.color, old.host, target.color
        )));
    }
    let received = match ctx.hosts.agent(&target.host) {
        Ok(agent) => agent
            .replay_status(&target.id)
            .await
            .ok()
            .and_then(|r| r.last_replay_unix_ms)
            .and_then(chrono::DateTime::<Utc>::from_timestamp_millis),
        Err(e) => return Err(e),
    };
    let received = received.map_or_else(
        || "no commit replayed since it started".to_string(),
        |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
    );
    let mut steps = Steps(Vec::new());
    let t = steps.done(
        "check",
        started,
        format!(
            "{} does not answer; {} received its commits up to {received}",
            old.color, target.color
        ),
    );
    if dry_run {
        return Ok(ChangeoverReport {
            promoted: target.color.to_string(),
            previous: old.color.to_string(),
            dry_run: true,
            steps: steps.0,
            write_pause_ms: 0.0,
            message: format!(
                "Dry run: {app} would move from {} (lost) to {}, with what it received up to {received}; nothing was changed.",
                old.color, target.color
            ),
        });
    }
    ctx.store.update(|state| {
        crate::api::promotion::start_unfollow(state, &target)?;
        let rec = state
            .apps
            .get_mut(app)
            .ok_or_else(|| ApiErr::not_found(format!("app {app} vanished")))?;
        rec.attachments
            .insert(MAIN_ATTACHMENT.to_string(), target.id.clone());
        Ok(())
    })?;
    ctx.wake.notify_one();
    let t = steps.done(
        "unfollow",
        t,
        format!("{} stops following and becomes writable", target.color),
    );
    let deadline = Instant::now() + LEADER_LOST_WAIT;
    loop {
        let state = ctx.store.read()?;
        let routed = state
            .apps
            .get(app)
            .and_then(|a| a.endpoint.as_ref())
            .and_then(|e| e.applied.as_deref())
            == Some(target.id.as_str());
        if routed {
            break;
        }
        if Instant::now() >= deadline {
            return Err(ApiErr::unavailable(format!(
                "{} is being unfollowed, but DATABASE_URL does not route to it yet after {} s; `pgfollow pg:wait --app {app}` follows it",
                target.color,
                LEADER_LOST_WAIT.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    steps.done(
        "retarget",
        t,
        format!("DATABASE_URL routes to {} and takes writes", target.color),
    );
    tracing::warn!(
        "{app}: moved from the lost {} to {} (it had received commits up to {received})",
        old.color,
        target.color
    );
    Ok(ChangeoverReport {
        promoted: target.color.to_string(),
        previous: old.color.to_string(),
        dry_run: false,
        steps: steps.0,
        write_pause_ms: started.elapsed().as_secs_f64() * 1000.0,
        message: format!(
            "{app} now runs on {}, with {}'s commits up to {received}; anything {} acknowledged later is not on it. {} stays a database of its own (PGFOLLOW_POSTGRESQL_{}_URL) when its host is back.",
            target.color, old.color, old.color, old.color, old.color
        ),
    })
}

/// The rules a changeover must meet before anything is touched.
fn check(
    ctx: &Ctx,
    state: &pgfollow_types::model::State,
    app: &pgfollow_types::model::AppRecord,
    target: &DatabaseRecord,
    old: &DatabaseRecord,
) -> Result<(), ApiErr> {
    if target.following.as_deref() != Some(old.id.as_str()) {
        return Err(ApiErr::bad_request(format!(
            "{} is not a follower of {}, the database behind DATABASE_URL; create one with `pgfollow addons:create PLAN --follow DATABASE_URL --app {}`",
            target.color, old.color, app.name
        )));
    }
    for (db, role) in [(target, "the follower"), (old, "the primary")] {
        if db.state != DatabaseState::Available {
            return Err(ApiErr::conflict(format!(
                "{} ({role}) is {}; wait with `pgfollow pg:wait --app {}`",
                db.color, db.state, app.name
            )));
        }
        if let Some(op) = active_operation(state, &db.id) {
            return Err(ApiErr::conflict(format!(
                "{} is busy with a {} operation; try again when it is done",
                db.color,
                op.kind.as_str()
            )));
        }
    }
    if app.maintenance {
        return Err(ApiErr::conflict(format!(
            "app {} is in maintenance; turn it off first (`pgfollow maintenance:off --app {}`)",
            app.name, app.name
        )));
    }
    if !ctx.endpoints.is_running(app) {
        return Err(ApiErr::unavailable(format!(
            "the endpoint of {} is not running; try again in a moment",
            app.name
        )));
    }
    Ok(())
}
