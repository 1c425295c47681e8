//! Several `serve` replicas on one etcd cluster (`serve --etcd`). One leads
//! by holding the etcd lease `leader` (renewed every quarter of its TTL);
//! only the leader runs the executor (and with it the HA monitor) and the
//! backups loop, and its catalog writes are guarded by that lease, so a
//! deposed leader's writes fail. A leader that cannot renew for three
//! quarters of the TTL, or finds another holder, stops them at once.
//!
//! Every replica answers reads from the catalog and forwards (proxies) every
//! other request to the leader, whose URL it finds in etcd (each replica
//! registers its URL under `replicas/<name>` with a lease of its own). An
//! agent's heartbeat is answered by whichever replica gets it: it is put
//! under `heartbeats/<host>` in etcd, and every replica watches those keys to
//! know which hosts are alive, so a leader change does not silence them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use pgfollow_catalog::{Catalog, EtcdCatalog};
use pgfollow_types::agent::AgentRegistration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::api::Shared;
use crate::error::ApiErr;
use crate::hosts::Hosts;

/// The lease the leading replica holds.
pub const LEADER_LEASE: &str = "leader";
/// Marks a request one replica forwarded to another: it is never forwarded
/// again (no loops while the replicas disagree on who leads).
const FORWARDED: &str = "x-pgfollow-forwarded-by";
/// How often a replica that does not lead looks whether the lease is free.
const FOLLOWER_LOOKS_EVERY: Duration = Duration::from_millis(100);
/// How long a forwarded request may take (as long as a client waits).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(300);

/// This replica, as the API and the leadership loop see it.
pub struct Replica {
    pub name: String,
    /// This replica's own API URL.
    pub url: String,
    pub catalog: Arc<EtcdCatalog>,
    pub ttl: Duration,
    /// The API token every replica shares (from etcd).
    token: String,
    leading: AtomicBool,
    /// When the last renewal of the leader lease that succeeded was sent.
    confirmed: std::sync::Mutex<Instant>,
    http: reqwest::Client,
}

/// How one attempt to take or renew the leader lease came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// This replica holds the lease (taken or renewed).
    Won,
    /// Another replica holds it.
    Lost,
    /// etcd did not answer (or not in time).
    Failed,
}

/// What the replica does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// Start leading: the executor, the HA monitor and the backups loop.
    Lead,
    KeepLeading,
    /// Stop leading at once, for this reason.
    StepDown(&'static str),
    /// Serve reads and forward writes.
    Follow,
}

/// The leader stops when it could not renew for this long: a quarter of the
/// TTL before etcd would let the lease go (measured from when the last
/// renewal that succeeded was sent, so never later than etcd's own clock).
pub fn renew_deadline(ttl: Duration) -> Duration {
    ttl - ttl / 4
}

/// The next turn of a replica that is `leading` (or not), after `attempt`,
/// its last confirmed renewal having been sent `since_confirmed` ago.
pub fn next_turn(
    leading: bool,
    attempt: Attempt,
    since_confirmed: Duration,
    ttl: Duration,
) -> Turn {
    match (leading, attempt) {
        (false, Attempt::Won) => Turn::Lead,
        (false, _) => Turn::Follow,
        (true, Attempt::Won) => Turn::KeepLeading,
        (true, Attempt::Lost) => Turn::StepDown("another replica holds the leader lease"),
        (true, Attempt::Failed) if since_confirmed >= renew_deadline(ttl) => {
            Turn::StepDown("the leader lease could not be renewed in time")
        }
        (true, Attempt::Failed) => Turn::KeepLeading,
    }
}

/// Whether a request is forwarded to the leader: everything but reads and
/// agents' heartbeats (which every replica answers itself).
pub fn forwards(method: &Method, path: &str, leading: bool) -> bool {
    !leading && !matches!(*method, Method::GET | Method::HEAD) && path != "/v1/hosts"
}

impl Replica {
    pub fn new(
        name: String,
        url: String,
        token: String,
        catalog: Arc<EtcdCatalog>,
        ttl: Duration,
    ) -> Self {
        Self {
            name,
            url,
            token,
            catalog,
            ttl,
            leading: AtomicBool::new(false),
            confirmed: std::sync::Mutex::new(Instant::now()),
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(2))
                .timeout(FORWARD_TIMEOUT)
                .build()
                .unwrap_or_default(),
        }
    }

    pub fn is_leader(&self) -> bool {
        self.leading.load(Ordering::SeqCst)
    }

    /// Whether this replica leads and its lease was renewed within the
    /// renewal deadline, by the clock, whatever the leadership loop has
    /// had the chance to see (after a freeze the executor may wake first).
    pub fn leads_now(&self) -> bool {
        let confirmed = *self.confirmed.lock().unwrap_or_else(|p| p.into_inner());
        self.is_leader() && confirmed.elapsed() < renew_deadline(self.ttl)
    }

    /// The leader's name and API URL, if a replica leads.
    pub async fn leader(&self) -> Result<Option<(String, String)>, ApiErr> {
        let Some(holder) = self.catalog.get(&format!("leases/{LEADER_LEASE}")).await? else {
            return Ok(None);
        };
        let holder = String::from_utf8_lossy(&holder).to_string();
        let url = self.catalog.get(&format!("replicas/{holder}")).await?;
        Ok(url.map(|u| (holder, String::from_utf8_lossy(&u).to_string())))
    }

    /// Every replica's API URL, this one's first.
    pub async fn urls(&self) -> Vec<String> {
        let mut urls = vec![self.url.clone()];
        if let Ok(list) = self.catalog.list("replicas").await {
            for (_, u) in list {
                let u = String::from_utf8_lossy(&u).to_string();
                if !urls.contains(&u) {
                    urls.push(u);
                }
            }
        }
        urls
    }

    /// Records an agent's heartbeat in etcd, where every replica sees it.
    pub async fn heartbeat(&self, reg: &AgentRegistration) -> Result<(), ApiErr> {
        let value = serde_json::to_vec(reg).map_err(|e| ApiErr::internal(e.to_string()))?;
        self.catalog
            .put("heartbeats", &reg.name, value, None)
            .await?;
        Ok(())
    }

    /// Hands an agent's registration to the leader, which records the host
    /// in the catalog; when nobody leads, a later heartbeat does it.
    pub async fn forward_registration(&self, reg: &AgentRegistration) {
        let Ok(Some((name, url))) = self.leader().await else {
            return;
        };
        if name == self.name {
            return;
        }
        let sent = self
            .http
            .post(format!("{url}/v1/hosts"))
            .bearer_auth(&self.token)
            .header(FORWARDED, self.name.as_str())
            .timeout(Duration::from_secs(2))
            .json(reg)
            .send()
            .await;
        if let Err(e) = sent {
            tracing::warn!(
                "cannot hand host {}'s registration to the leader at {url}: {e}",
                reg.name
            );
        }
    }

    /// Sends `req` to the leader and gives back its answer.
    async fn forward(&self, req: Request) -> Response {
        if req.headers().contains_key(FORWARDED) {
            return ApiErr::unavailable(
                "the control plane replicas disagree on who leads (an election is under way); try again in a moment",
            )
            .into_response();
        }
        let leader = match self.leader().await {
            Ok(Some((name, _))) if name == self.name => {
                return ApiErr::unavailable(
                    "this replica is taking the lead; try again in a moment",
                )
                .into_response()
            }
            Ok(Some((_, url))) => url,
            Ok(None) => {
                return ApiErr::unavailable(format!(
                    "no control plane replica leads right now (a new leader is chosen within {} s); try again in a moment",
                    self.ttl.as_secs()
                ))
                .into_response()
            }
            Err(e) => return e.into_response(),
        };
        let (parts, body) = req.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path().to_string(), |p| p.as_str().to_string());
        let Ok(bytes) = axum::body::to_bytes(body, 64 * 1024 * 1024).await else {
            return ApiErr::bad_request("the request body could not be read").into_response();
        };
        let mut out = self
            .http
            .request(parts.method.clone(), format!("{leader}{path}"))
            .header(FORWARDED, self.name.as_str())
            .body(bytes);
        for name in [
            axum::http::header::AUTHORIZATION,
            axum::http::header::CONTENT_TYPE,
        ] {
            if let Some(v) = parts.headers.get(&name) {
                out = out.header(name, v);
            }
        }
        let answer = match out.send().await {
            Ok(a) => a,
            Err(e) => {
                return ApiErr::unavailable(format!(
                    "the leading control plane replica at {leader} did not answer ({e}); try again in a moment"
                ))
                .into_response()
            }
        };
        let status = StatusCode::from_u16(answer.status().as_u16())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let content_type = answer.headers().get(reqwest::header::CONTENT_TYPE).cloned();
        let body = answer.bytes().await.unwrap_or_default();
        let mut resp = Response::new(Body::from(body));
        *resp.status_mut() = status;
        if let Some(ct) = content_type.and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok()) {
            resp.headers_mut()
                .insert(axum::http::header::CONTENT_TYPE, ct);
        }
        resp
    }
}

/// Middleware: a replica that does not lead forwards writes to the leader.
pub async fn forward_writes(State(ctx): Shared, req: Request, next: Next) -> Response {
    match &ctx.replica {
        Some(r) if forwards(req.method(), req.uri().path(), r.is_leader()) => r.forward(req).await,
        _ => next.run(req).await,
    }
}

/// Makes every replica's [`Hosts`] follow the agents' heartbeats in etcd.
pub fn watch_heartbeats(
    catalog: &EtcdCatalog,
    hosts: Hosts,
    wake: Arc<Notify>,
) -> tokio::task::JoinHandle<()> {
    let forgive = hosts.clone();
    catalog.watch(
        "heartbeats",
        move |name, value| {
            let Ok(reg) = serde_json::from_slice::<AgentRegistration>(value) else {
                tracing::warn!("heartbeat of {name} in etcd is not readable; ignored");
                return;
            };
            let was_up = hosts.is_up(&reg.name);
            if hosts.register(&reg).is_ok() && !was_up {
                tracing::info!("host {} is up: agent at {}", reg.name, reg.url);
                wake.notify_one();
            }
        },
        // Heartbeats may have been missed while the watch was down: that
        // says nothing about the hosts.
        move || forgive.forgive_silence(),
    )
}

/// Keeps this replica's URL under `replicas/<name>` with a lease of its
/// own, until `shutdown`.
pub async fn advertise(replica: Arc<Replica>, shutdown: CancellationToken) {
    loop {
        let granted = replica.catalog.keep_lease(replica.ttl).await;
        match granted {
            Ok((id, mut keeper)) => {
                let put = replica
                    .catalog
                    .put(
                        "replicas",
                        &replica.name,
                        replica.url.clone().into_bytes(),
                        Some(id),
                    )
                    .await;
                if let Err(e) = put {
                    tracing::warn!("cannot record this replica's URL in etcd: {e}");
                    keeper.abort();
                } else {
                    tokio::select! {
                        _ = shutdown.cancelled() => { keeper.abort(); return }
                        _ = &mut keeper => {}
                    }
                }
            }
            Err(e) => tracing::warn!("cannot record this replica's URL in etcd: {e}"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// What runs while this replica leads; stopped by [`LeaderTasks::stop`].
pub struct LeaderTasks {
    pub cancel: CancellationToken,
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl LeaderTasks {
    /// Stops at once: steps in flight are aborted, not waited for (their
    /// catalog writes would fail anyway; the next leader redoes them).
    fn abort(self) {
        self.cancel.cancel();
        for t in self.tasks {
            t.abort();
        }
    }

    /// Stops in order: steps in flight finish (bounded by the executor).
    async fn stop(self) {
        self.cancel.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Takes and renews the leader lease until `shutdown`, starting the
/// leader's tasks with `start` whenever this replica comes to lead and
/// stopping them at once when it no longer does. On shutdown a leader
/// stops them in order and gives the lease up, so another replica leads
/// without waiting for the TTL.
pub async fn lead(
    replica: Arc<Replica>,
    start: impl Fn() -> LeaderTasks,
    shutdown: CancellationToken,
) {
    let mut running: Option<LeaderTasks> = None;
    let mut confirmed = Instant::now();
    loop {
        let sent = Instant::now();
        let leading = running.is_some();
        let deadline = tokio::time::Instant::from_std(confirmed + renew_deadline(replica.ttl));
        let catalog = replica.catalog.clone();
        let (name, ttl) = (replica.name.clone(), replica.ttl);
        let call =
            tokio::task::spawn_blocking(move || catalog.acquire_lease(LEADER_LEASE, &name, ttl));
        let attempt = tokio::select! {
            _ = shutdown.cancelled() => break,
            // A leader whose renewal hangs stops at its deadline, not
            // when etcd finally answers.
            _ = tokio::time::sleep_until(deadline), if leading => Attempt::Failed,
            r = call => match r {
                Ok(Ok(true)) => Attempt::Won,
                Ok(Ok(false)) => Attempt::Lost,
                Ok(Err(e)) => {
                    if leading {
                        tracing::warn!("cannot renew the leader lease: {e}");
                    }
                    Attempt::Failed
                }
                Err(_) => Attempt::Failed,
            },
        };
        if attempt == Attempt::Won {
            confirmed = sent;
            *replica.confirmed.lock().unwrap_or_else(|p| p.into_inner()) = sent;
        }
        match next_turn(leading, attempt, confirmed.elapsed(), replica.ttl) {
            Turn::Lead => {
                replica.leading.store(true, Ordering::SeqCst);
                tracing::info!(
                    "control plane replica {} leads (lease TTL {} s): running the executor, the HA monitor and the backups loop",
                    replica.name,
                    replica.ttl.as_secs()
                );
                running = Some(start());
            }
            Turn::StepDown(why) => {
                // First the flag and the tasks, before anything else can
                // happen here: writes are forwarded from now on.
                replica.leading.store(false, Ordering::SeqCst);
                if let Some(t) = running.take() {
                    t.abort();
                }
                tracing::warn!(
                    "control plane replica {} stopped leading: {why}",
                    replica.name
                );
            }
            Turn::KeepLeading | Turn::Follow => {}
        }
        // A leader renews every quarter of the TTL; the others look every
        // 100 ms (one read), so a lease let go is taken up at once.
        let every = if running.is_some() {
            replica.ttl / 4
        } else {
            FOLLOWER_LOOKS_EVERY
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
        }
    }
    if let Some(t) = running.take() {
        tracing::info!("stopping the executor, then giving the leader lease up");
        t.stop().await;
        replica.leading.store(false, Ordering::SeqCst);
        let catalog = replica.catalog.clone();
        let name = replica.name.clone();
        let released =
            tokio::task::spawn_blocking(move || catalog.release_lease(LEADER_LEASE, &name)).await;
        if let Ok(Err(e)) = released {
            tracing::warn!("cannot give the leader lease up ({e}); it runs out by itself");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(2);

    #[test]
    fn who_leads() {
        let ms = Duration::from_millis;
        let table = [
            (false, Attempt::Won, ms(0), Turn::Lead),
            (false, Attempt::Lost, ms(0), Turn::Follow),
            (false, Attempt::Failed, ms(0), Turn::Follow),
            (true, Attempt::Won, ms(1900), Turn::KeepLeading),
            (
                true,
                Attempt::Lost,
                ms(0),
                Turn::StepDown("another replica holds the leader lease"),
            ),
            (true, Attempt::Failed, ms(1000), Turn::KeepLeading),
            (
                true,
                Attempt::Failed,
                ms(1500),
                Turn::StepDown("the leader lease could not be renewed in time"),
            ),
        ];
        for (leading, attempt, since, turn) in table {
            assert_eq!(
                next_turn(leading, attempt, since, TTL),
                turn,
                "{leading} {attempt:?} {since:?}"
            );
        }
        assert_eq!(renew_deadline(TTL), ms(1500));
    }

    #[test]
    fn only_writes_of_a_follower_are_forwarded() {
        assert!(forwards(&Method::POST, "/v1/apps", false));
        assert!(forwards(&Method::DELETE, "/v1/apps/sushi", false));
        assert!(forwards(&Method::PATCH, "/v1/apps/sushi/config", false));
        assert!(!forwards(&Method::GET, "/v1/apps", false));
        assert!(!forwards(&Method::POST, "/v1/hosts", false));
        assert!(!forwards(&Method::POST, "/v1/apps", true));
    }
}
