//! `pg:changeover DB --leader-lost`: the reference's manual failover in
//! one command.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use pgfollow_types::api::ChangeoverReport;

use super::Steps;
use crate::api::Ctx;
use crate::endpoints::main_database;
use crate::error::ApiErr;
use crate::resolve::{find_app, resolve_db};
use crate::views::MAIN_ATTACHMENT;

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
        let routed = state.apps.get(app).is_some_and(|a| {
            a.endpoints
                .iter()
                .any(|e| e.applied.as_deref() == Some(target.id.as_str()))
        });
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
