//! `pg:changeover`: the documented migration to a follower as one command.
//! Writes are held at the app's endpoint (PgBouncer PAUSE: transactions in
//! flight finish, new ones wait), the follower replays up to the last
//! commit, is promoted, the endpoint is pointed at it and released. Before
//! the promotion every failure resumes on the old primary with nothing
//! lost; the old primary takes no write through the endpoint after the
//! freeze.

use std::time::{Duration, Instant};

use chrono::Utc;
use pgfollow_types::api::{ChangeoverReport, ChangeoverStep, DatabaseState};
use pgfollow_types::model::{DatabaseRecord, OperationKind};

use crate::api::Ctx;
use crate::endpoints::{endpoint_spec, main_database};
use crate::error::ApiErr;
use crate::executor::active_operation;
use crate::provision::new_operation;
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
    ctx: &Ctx,
    app: &str,
    reference: &str,
    dry_run: bool,
    catch_up_limit: Duration,
) -> Result<ChangeoverReport, ApiErr> {
    let lock = ctx.endpoints.lock(app);
    let _only_one = lock.lock().await;
    let started = Instant::now();
    let state = ctx.store.read()?;
    let a = find_app(&state, app)?.clone();
    let target = resolve_db(&state, app, reference)?.clone();
    let old = main_database(&state, &a)
        .ok_or_else(|| ApiErr::conflict(format!("app {app} has no DATABASE_URL to move")))?
        .clone();
    check(ctx, &state, &a, &target, &old)?;
    let ep = a.endpoint.clone().ok_or_else(|| {
        ApiErr::conflict(format!(
            "app {app} has no endpoint yet; try again in a moment"
        ))
    })?;
    let mut steps = Steps(Vec::new());
    let mut t = steps.done(
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

    let agent = ctx.endpoints.agent().clone();
    let endpoint = agent.endpoint(&ep.id)?;
    let admin = endpoint
        .admin()
        .await
        .map_err(|e| ApiErr::unavailable(e.to_string()))?;
    admin.pause(&old.database).await.map_err(|e| {
        ApiErr::conflict(format!(
            "could not hold writes at the endpoint: {e}; nothing was changed"
        ))
    })?;
    let frozen = Instant::now();
    t = steps.done("freeze", t, "new transactions wait at the endpoint");

    // Before the promotion anything that fails resumes on the old primary.
    let (admin, old_db) = (&admin, old.database.clone());
    let old_color = old.color.to_string();
    let resume_old = |why: String| {
        let (old_db, old_color) = (old_db.clone(), old_color.clone());
        async move {
            let resumed = admin.resume(&old_db).await;
            let how = match resumed {
            Ok(()) => format!("resumed on {old_color}; no acknowledged commit was lost"),
            Err(e) => format!("and resuming on {old_color} failed too ({e}): run `pgfollow maintenance:off --app {app}`"),
        };
            ApiErr::conflict(format!("changeover stopped: {why}; {how}"))
        }
    };
    let mut polls = 0u32;
    loop {
        polls += 1;
        match crate::lag::measure(&ctx.hosts, &state, &target).await {
            Ok(lag) if lag.commits == 0 && !lag.more_than => break,
            Ok(_) | Err(_) if frozen.elapsed() < catch_up_limit => {
                tokio::time::sleep(Duration::from_millis(2)).await
            }
            Ok(lag) => {
                return Err(resume_old(format!(
                    "{} was still {} behind after {} s",
                    target.color,
                    lag.commits_label(),
                    catch_up_limit.as_secs_f64()
                ))
                .await)
            }
            Err(e) => {
                return Err(resume_old(format!("cannot measure {}'s lag: {e}", target.color)).await)
            }
        }
    }
    t = steps.done(
        "catch up",
        t,
        format!("{} is 0 commits behind ({polls} checks)", target.color),
    );

    let follower_agent = match ctx.hosts.agent(&target.host) {
        Ok(a) => a,
        Err(e) => return Err(resume_old(e.message).await),
    };
    if let Err(e) = follower_agent.promote(&target.id).await {
        return Err(resume_old(format!("promoting {} failed: {e}", target.color)).await);
    }
    t = steps.done("promote", t, format!("{} is writable", target.color));

    // Past the promotion: the old primary must never take writes again
    // through the endpoint, so nothing below resumes on it.
    let now = Utc::now();
    let new_state = ctx.store.update(|state| {
        state.next_serial += 1;
        let op_id = format!(
            "op-{:06}-{}",
            state.next_serial,
            hex::encode(rand::random::<[u8; 2]>())
        );
        let mut op = new_operation(&op_id, OperationKind::Unfollow, &target.id, now);
        op.subject = Some(old.id.clone());
        op.done.push("promote".into());
        state.operations.insert(op_id, op);
        if let Some(d) = state.databases.get_mut(&target.id) {
            d.following = None;
            d.fork_pending = true;
        }
        if let Some(a) = state.apps.get_mut(app) {
            a.attachments
                .insert(MAIN_ATTACHMENT.to_string(), target.id.clone());
            if let Some(e) = a.endpoint.as_mut() {
                e.applied = Some(target.id.clone());
            }
        }
        Ok(state.clone())
    })?;
    let rec = new_state
        .apps
        .get(app)
        .ok_or_else(|| ApiErr::internal("the app vanished during the changeover"))?;
    let promoted = new_state
        .databases
        .get(&target.id)
        .ok_or_else(|| ApiErr::internal("the database vanished during the changeover"))?;
    let spec = endpoint_spec(&new_state, rec, promoted)
        .ok_or_else(|| ApiErr::internal("the app lost its endpoint during the changeover"))?;
    let stuck = |what: &str, e: &dyn std::fmt::Display| {
        ApiErr::internal(format!(
            "{} is promoted, but {what} failed ({e}); writes are still held: run `pgfollow maintenance:off --app {app}` once the endpoint routes to {}",
            target.color, target.color
        ))
    };
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
    steps.done(
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
        steps: steps.0,
        write_pause_ms: pause.as_secs_f64() * 1000.0,
        message: format!(
            "{app} now runs on {}; {} stays reachable as PGFOLLOW_POSTGRESQL_{}_URL.",
            target.color, old.color, old.color
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
