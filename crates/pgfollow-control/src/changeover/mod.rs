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
use pgfollow_types::api::{ChangeoverReport, ChangeoverStep, DatabaseState};
use pgfollow_types::model::{DatabaseRecord, OperationKind, OperationState};

use crate::api::Ctx;
use crate::endpoints::main_database;
use crate::error::ApiErr;
use crate::executor::active_operation;
use crate::provision::{new_operation, next_operation_id};
use crate::resolve::{find_app, resolve_db};

mod job;
mod leader_lost;
mod logical;
mod recover;

use job::Job;
pub use leader_lost::run_leader_lost;
pub use recover::recover;

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
    check(&ctx, &state, &a, &target, &old).await?;
    if !a.has_endpoint() {
        return Err(ApiErr::conflict(format!(
            "app {app} has no endpoint yet; try again in a moment"
        )));
    }
    let eps = a.endpoints.clone();
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
            if target.is_logical_follower() {
                (
                    "hand over",
                    "carry every sequence over and drop the subscription: it becomes the primary",
                )
            } else {
                (
                    "promote",
                    "end the follower's recovery: it becomes writable",
                )
            },
            ("switch", "record DATABASE_URL on it in the catalog"),
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
        for e in state
            .apps
            .get_mut(app)
            .into_iter()
            .flat_map(|a| a.endpoints.iter_mut())
        {
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
        eps,
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

/// The rules a changeover must meet before anything is touched.
async fn check(
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
    if target.is_logical_follower() {
        logical::check(&ctx.hosts, target, old).await?;
    }
    if app.maintenance {
        return Err(ApiErr::conflict(format!(
            "app {} is in maintenance; turn it off first (`pgfollow maintenance:off --app {}`)",
            app.name, app.name
        )));
    }
    // Every endpoint must hold: one left routing to the old primary, which
    // stays writable, would split the app's writes.
    for ep in &app.endpoints {
        if !ctx.endpoints.is_running(ep).await {
            return Err(ApiErr::unavailable(format!(
                "the endpoint of {} on host {} is not running or its host does not answer; try again when it does",
                app.name, ep.host
            )));
        }
    }
    Ok(())
}
