//! The agents the control plane can reach, by host name: the embedded one,
//! and agents on other hosts that registered over HTTP and keep sending
//! heartbeats. [`AgentHandle`] gives both the same async methods.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use pgfollow_client::agent::{AgentCallError, AgentClient, EmbeddedAgent};
use pgfollow_types::agent::{
    AgentCall, AgentRegistration, ClusterSpec, ClusterStats, ClusterStatus, CommitCount,
    EndpointSpec, EndpointStatus, LogicalFacts, Probe, Promotion, ReplayStatus, RoleSecret,
    RouteTimings, SequenceValue, SlotStatus, SubscriptionSpec,
};
use pgfollow_types::api::Backend;
use pgfollow_types::backup::DumpTarget;
use pgfollow_types::Lsn;
use serde::de::DeserializeOwned;

use crate::error::ApiErr;

pub use pgfollow_types::timing::HOST_LEASE;
/// How long a look at a remote cluster may take: the executor waits for it.
const GLANCE: Duration = Duration::from_secs(1);
/// How long a quick call to a remote agent may take.
const QUICK: Duration = Duration::from_secs(5);
/// How long a probe of a remote cluster may take in all (the agent's own
/// deadline for the query is 1 s).
const PROBE: Duration = Duration::from_millis(1500);
/// How long fencing a remote cluster may take.
const FENCE: Duration = Duration::from_millis(1500);
/// How long a slow step (initdb, start, promote) may take.
const SLOW: Duration = Duration::from_secs(180);
/// How long a base backup may take.
const COPY: Duration = Duration::from_secs(6 * 3600);

#[derive(Clone)]
pub struct Hosts {
    local: Option<Arc<dyn EmbeddedAgent>>,
    remote: Arc<RwLock<BTreeMap<String, Remote>>>,
    token: String,
    /// When this control plane started: a host not heard from since has
    /// been silent (to this control plane) at least this long.
    started: Instant,
}

#[derive(Clone)]
struct Remote {
    client: AgentClient,
    last_seen: Instant,
}

impl Hosts {
    /// The embedded agent (if any); remote agents join with [`Hosts::register`].
    pub fn new(local: Option<Arc<dyn EmbeddedAgent>>, token: String) -> Self {
        Self {
            local,
            remote: Arc::default(),
            token,
            started: Instant::now(),
        }
    }

    fn remotes(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Remote>> {
        self.remote.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a registration or heartbeat of a remote agent.
    pub fn register(&self, reg: &AgentRegistration) -> Result<(), ApiErr> {
        if self.local.as_ref().is_some_and(|a| a.name() == reg.name) {
            return Err(ApiErr::conflict(format!(
                "host name {} is the control plane's own; give the agent another --name",
                reg.name
            )));
        }
        let mut map = self.remote.write().unwrap_or_else(|p| p.into_inner());
        let entry = map.entry(reg.name.clone()).or_insert_with(|| Remote {
            client: AgentClient::new(reg.url.clone(), self.token.clone()),
            last_seen: Instant::now(),
        });
        if entry.client.url() != reg.url {
            entry.client = AgentClient::new(reg.url.clone(), self.token.clone());
        }
        entry.last_seen = Instant::now();
        Ok(())
    }

    /// Counts every remote agent as just heard from: after the control
    /// plane itself stalled, their silence says nothing about them.
    pub fn forgive_silence(&self) {
        let mut map = self.remote.write().unwrap_or_else(|p| p.into_inner());
        for r in map.values_mut() {
            r.last_seen = Instant::now();
        }
    }

    /// The agent of `host` if it is up.
    pub fn get(&self, host: &str) -> Option<AgentHandle> {
        if let Some(a) = self.local.as_ref().filter(|a| a.name() == host) {
            return Some(AgentHandle::Local(a.clone()));
        }
        self.remotes()
            .get(host)
            .filter(|r| r.last_seen.elapsed() < HOST_LEASE)
            .map(|r| AgentHandle::Remote(r.client.clone()))
    }

    /// The agent of `host` even when its lease has run out: to fence a
    /// primary, any answer is worth trying for.
    pub fn reach(&self, host: &str) -> Option<AgentHandle> {
        if let Some(a) = self.local.as_ref().filter(|a| a.name() == host) {
            return Some(AgentHandle::Local(a.clone()));
        }
        self.remotes()
            .get(host)
            .map(|r| AgentHandle::Remote(r.client.clone()))
    }

    /// The agent of `host`, or an error that says it does not answer.
    pub fn agent(&self, host: &str) -> Result<AgentHandle, ApiErr> {
        self.get(host).ok_or_else(|| {
            ApiErr::unavailable(format!(
                "host {host} does not answer; check that `pgfollow agent --name {host}` runs there"
            ))
        })
    }

    /// How long `host`'s agent has been silent (zero for the embedded one);
    /// a host not heard from since this control plane started has been
    /// silent since then. Always some: the option is for callers' sake.
    pub fn silence(&self, host: &str) -> Option<Duration> {
        if self.local.as_ref().is_some_and(|a| a.name() == host) {
            return Some(Duration::ZERO);
        }
        Some(
            self.remotes()
                .get(host)
                .map_or_else(|| self.started.elapsed(), |r| r.last_seen.elapsed()),
        )
    }

    pub fn is_up(&self, host: &str) -> bool {
        self.get(host).is_some()
    }

    /// Up and heard from within [`crate::ha::SUSPECT_AFTER`]: worth a look
    /// the executor waits for (a host that has missed heartbeats either
    /// answers again soon or is failed over).
    pub fn is_answering(&self, host: &str) -> bool {
        self.is_up(host)
            && self
                .silence(host)
                .is_some_and(|s| s < crate::ha::SUSPECT_AFTER)
    }

    /// The names of every host whose agent is up.
    pub fn up(&self) -> Vec<String> {
        let mut names: Vec<String> = self.local.iter().map(|a| a.name().to_string()).collect();
        names.extend(
            self.remotes()
                .iter()
                .filter(|(_, r)| r.last_seen.elapsed() < HOST_LEASE)
                .map(|(n, _)| n.clone()),
        );
        names
    }

    /// Asks every host that is up for `count` free ports of its own, all at
    /// once; a host that does not answer offers none.
    pub async fn port_offers(&self, count: u16) -> crate::provision::PortOffers {
        let mut asks = tokio::task::JoinSet::new();
        for name in self.up() {
            let Some(agent) = self.get(&name) else {
                continue;
            };
            asks.spawn(async move {
                let ports: Vec<u16> = agent
                    .call(AgentCall::OfferPorts { count })
                    .await
                    .unwrap_or_else(|e| {
                        tracing::warn!("host {name} offered no ports: {e}");
                        Vec::new()
                    });
                (name, ports)
            });
        }
        let mut offers = crate::provision::PortOffers::default();
        while let Some(done) = asks.join_next().await {
            if let Ok((name, ports)) = done {
                offers.0.insert(name, ports);
            }
        }
        offers
    }
}

/// One agent, embedded or remote. Every call is an [`AgentCall`]: the
/// embedded agent answers it through the same dispatch as the agent's HTTP
/// API, a remote one over HTTP, so the two cannot drift apart.
#[derive(Clone)]
pub enum AgentHandle {
    Local(Arc<dyn EmbeddedAgent>),
    Remote(AgentClient),
}

/// What an agent call can come to.
pub type AgentError = AgentCallError;

/// How long a remote agent may take to answer `call`.
fn timeout_of(call: &AgentCall) -> Duration {
    match call {
        // Looks the executor's tick waits for: a host cut off between two
        // heartbeats (its link down: no reset, no answer) holds the tick
        // for this long before its silence shows.
        AgentCall::Status { .. }
        | AgentCall::EndpointStatus { .. }
        | AgentCall::OfferPorts { .. } => GLANCE,
        AgentCall::Probe { .. } => PROBE,
        AgentCall::Fence { .. } => FENCE,
        AgentCall::BaseBackup { .. }
        | AgentCall::Dump { .. }
        | AgentCall::Restore { .. }
        | AgentCall::ArchiveBackup { .. }
        | AgentCall::ArchiveRestore { .. }
        | AgentCall::Upgrade { .. }
        | AgentCall::UpgradeDryRun { .. }
        | AgentCall::CopySchema { .. } => COPY,
        AgentCall::ArchiveConfigure { .. } | AgentCall::ArchiveSeal { .. } => SLOW,
        AgentCall::EndpointHold { limit_ms, .. }
        | AgentCall::EndpointPauseWithin { limit_ms, .. } => {
            QUICK + Duration::from_millis(*limit_ms)
        }
        AgentCall::Initialize { .. }
        | AgentCall::Start { .. }
        | AgentCall::Bootstrap { .. }
        | AgentCall::Destroy { .. }
        | AgentCall::Promote { .. }
        | AgentCall::PromoteAt { .. }
        | AgentCall::Checkpoint { .. }
        | AgentCall::Rewind { .. }
        | AgentCall::SetUpstream { .. }
        | AgentCall::Subscribe { .. } => SLOW,
        _ => QUICK,
    }
}

impl AgentHandle {
    /// Makes `call` and reads its answer as `T`.
    pub async fn call<T: DeserializeOwned>(&self, call: AgentCall) -> Result<T, AgentError> {
        match self {
            Self::Local(a) => {
                let name = call.name();
                let value = a.call(call).await.map_err(AgentCallError::Failed)?;
                serde_json::from_value(value).map_err(|e| AgentCallError::Unreachable {
                    url: format!("the embedded agent ({name})"),
                    cause: format!("its answer could not be read: {e}"),
                })
            }
            Self::Remote(c) => {
                let timeout = timeout_of(&call);
                c.call(&call, timeout).await
            }
        }
    }

    pub async fn status(&self, id: &str) -> Result<ClusterStatus, AgentError> {
        self.call(AgentCall::Status { id: id.into() }).await
    }

    pub async fn initialize(&self, spec: &ClusterSpec) -> Result<(), AgentError> {
        self.call(AgentCall::Initialize { spec: spec.clone() })
            .await
    }

    pub async fn start(&self, spec: &ClusterSpec) -> Result<(), AgentError> {
        self.call(AgentCall::Start { spec: spec.clone() }).await
    }

    pub async fn bootstrap(&self, spec: &ClusterSpec) -> Result<(), AgentError> {
        self.call(AgentCall::Bootstrap { spec: spec.clone() }).await
    }

    pub async fn stats(&self, id: &str, database: &str) -> Result<ClusterStats, AgentError> {
        let (id, database) = (id.into(), database.into());
        self.call(AgentCall::Stats { id, database }).await
    }

    pub async fn backends(&self, id: &str, database: &str) -> Result<Vec<Backend>, AgentError> {
        let (id, database) = (id.into(), database.into());
        self.call(AgentCall::Backends { id, database }).await
    }

    pub async fn kill(
        &self,
        id: &str,
        database: &str,
        pid: i32,
        force: bool,
    ) -> Result<bool, AgentError> {
        let (id, database) = (id.into(), database.into());
        self.call(AgentCall::Kill {
            id,
            database,
            pid,
            force,
        })
        .await
    }

    pub async fn kill_all(&self, id: &str, database: &str) -> Result<Vec<i32>, AgentError> {
        let (id, database) = (id.into(), database.into());
        self.call(AgentCall::KillAll { id, database }).await
    }

    pub async fn set_password(&self, id: &str, role: &RoleSecret) -> Result<(), AgentError> {
        let (id, role) = (id.into(), role.clone());
        self.call(AgentCall::SetPassword { id, role }).await
    }

    pub async fn destroy(&self, id: &str) -> Result<(), AgentError> {
        self.call(AgentCall::Destroy { id: id.into() }).await
    }

    pub async fn create_slot(&self, id: &str, slot: &str) -> Result<(), AgentError> {
        let (id, slot) = (id.into(), slot.into());
        self.call(AgentCall::CreateSlot { id, slot }).await
    }

    pub async fn drop_slot(&self, id: &str, slot: &str) -> Result<(), AgentError> {
        let (id, slot) = (id.into(), slot.into());
        self.call(AgentCall::DropSlot { id, slot }).await
    }

    pub async fn slot_status(
        &self,
        id: &str,
        slot: &str,
    ) -> Result<Option<SlotStatus>, AgentError> {
        let (id, slot) = (id.into(), slot.into());
        self.call(AgentCall::SlotStatus { id, slot }).await
    }

    pub async fn logical_facts(
        &self,
        id: &str,
        database: &str,
        subscription: Option<&str>,
    ) -> Result<LogicalFacts, AgentError> {
        self.call(AgentCall::LogicalFacts {
            id: id.into(),
            database: database.into(),
            subscription: subscription.map(str::to_string),
        })
        .await
    }

    pub async fn publish(
        &self,
        id: &str,
        database: &str,
        name: &str,
        reader: &str,
    ) -> Result<(), AgentError> {
        let (id, database, name, reader) = (id.into(), database.into(), name.into(), reader.into());
        self.call(AgentCall::Publish {
            id,
            database,
            name,
            reader,
        })
        .await
    }

    pub async fn unpublish(&self, id: &str, database: &str, name: &str) -> Result<(), AgentError> {
        let (id, database, name) = (id.into(), database.into(), name.into());
        self.call(AgentCall::Unpublish { id, database, name }).await
    }

    pub async fn copy_schema(
        &self,
        spec: &ClusterSpec,
        from: &DumpTarget,
    ) -> Result<(), AgentError> {
        let (spec, from) = (spec.clone(), from.clone());
        self.call(AgentCall::CopySchema { spec, from }).await
    }

    pub async fn subscribe(
        &self,
        id: &str,
        database: &str,
        sub: &SubscriptionSpec,
    ) -> Result<(), AgentError> {
        let (id, database, sub) = (id.into(), database.into(), sub.clone());
        self.call(AgentCall::Subscribe { id, database, sub }).await
    }

    pub async fn unsubscribe(
        &self,
        id: &str,
        database: &str,
        name: &str,
    ) -> Result<(), AgentError> {
        let (id, database, name) = (id.into(), database.into(), name.into());
        self.call(AgentCall::Unsubscribe { id, database, name })
            .await
    }

    pub async fn sequences(
        &self,
        id: &str,
        database: &str,
    ) -> Result<Vec<SequenceValue>, AgentError> {
        let (id, database) = (id.into(), database.into());
        self.call(AgentCall::Sequences { id, database }).await
    }

    pub async fn set_sequences(
        &self,
        id: &str,
        database: &str,
        values: Vec<SequenceValue>,
    ) -> Result<(), AgentError> {
        let (id, database) = (id.into(), database.into());
        self.call(AgentCall::SetSequences {
            id,
            database,
            values,
        })
        .await
    }

    /// Copies the leader; its progress is polled twice a second.
    pub async fn basebackup(
        &self,
        spec: &ClusterSpec,
        progress: impl Fn(u64, u64) + Send + Sync,
    ) -> Result<(), AgentError> {
        let copy = self.call::<()>(AgentCall::BaseBackup { spec: spec.clone() });
        tokio::pin!(copy);
        loop {
            tokio::select! {
                result = &mut copy => return result,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {
                    let call = AgentCall::Progress { id: spec.id.clone() };
                    if let Ok(Some((done, total))) = self.call::<Option<(u64, u64)>>(call).await {
                        progress(done, total);
                    }
                }
            }
        }
    }

    pub async fn replay_status(&self, id: &str) -> Result<ReplayStatus, AgentError> {
        self.call(AgentCall::ReplayStatus { id: id.into() }).await
    }

    pub async fn commits_since(
        &self,
        id: &str,
        from: Lsn,
        max_bytes: u64,
    ) -> Result<CommitCount, AgentError> {
        let id = id.into();
        self.call(AgentCall::CommitsSince {
            id,
            from,
            max_bytes,
        })
        .await
    }

    pub async fn promote(&self, id: &str) -> Result<(), AgentError> {
        self.call(AgentCall::Promote { id: id.into() }).await
    }

    /// Promotes `id` once it has replayed to `lsn`, if within `limit`.
    pub async fn promote_at(
        &self,
        id: &str,
        lsn: Lsn,
        limit: Duration,
    ) -> Result<Promotion, AgentError> {
        self.call(AgentCall::PromoteAt {
            id: id.into(),
            lsn,
            limit_ms: limit.as_millis() as u64,
        })
        .await
    }

    pub async fn rewind(&self, spec: &ClusterSpec) -> Result<(), AgentError> {
        self.call(AgentCall::Rewind { spec: spec.clone() }).await
    }

    pub async fn checkpoint(&self, id: &str) -> Result<(), AgentError> {
        self.call(AgentCall::Checkpoint { id: id.into() }).await
    }

    /// Kills the cluster so it can take no write.
    pub async fn fence(&self, id: &str) -> Result<(), AgentError> {
        self.call(AgentCall::Fence { id: id.into() }).await
    }

    /// One query within the agent's probe deadline.
    pub async fn probe(&self, id: &str) -> Result<Probe, AgentError> {
        self.call(AgentCall::Probe { id: id.into() }).await
    }

    pub async fn set_upstream(&self, spec: &ClusterSpec) -> Result<(), AgentError> {
        self.call(AgentCall::SetUpstream { spec: spec.clone() })
            .await
    }

    pub async fn endpoint_status(&self, id: &str) -> Result<EndpointStatus, AgentError> {
        self.call(AgentCall::EndpointStatus { id: id.into() }).await
    }

    /// Starts or retargets the endpoint; how long clients were held, if so.
    pub async fn endpoint_apply(
        &self,
        spec: &EndpointSpec,
    ) -> Result<Option<Duration>, AgentError> {
        let held: Option<u64> = self
            .call(AgentCall::EndpointApply { spec: spec.clone() })
            .await?;
        Ok(held.map(Duration::from_millis))
    }

    /// PAUSE, or past `limit` end every connection; whether they were ended.
    pub async fn endpoint_hold(
        &self,
        id: &str,
        dbname: &str,
        limit: Duration,
    ) -> Result<bool, AgentError> {
        let (id, dbname, limit_ms) = (id.into(), dbname.into(), limit.as_millis() as u64);
        self.call(AgentCall::EndpointHold {
            id,
            dbname,
            limit_ms,
        })
        .await
    }

    /// PAUSE within `limit`: whether it finished.
    pub async fn endpoint_pause_within(
        &self,
        id: &str,
        dbname: &str,
        limit: Duration,
    ) -> Result<bool, AgentError> {
        let (id, dbname, limit_ms) = (id.into(), dbname.into(), limit.as_millis() as u64);
        self.call(AgentCall::EndpointPauseWithin {
            id,
            dbname,
            limit_ms,
        })
        .await
    }

    pub async fn endpoint_active_servers(&self, id: &str, dbname: &str) -> Result<u32, AgentError> {
        let (id, dbname) = (id.into(), dbname.into());
        self.call(AgentCall::EndpointActiveServers { id, dbname })
            .await
    }

    pub async fn endpoint_kill(&self, id: &str, dbname: &str) -> Result<(), AgentError> {
        let (id, dbname) = (id.into(), dbname.into());
        self.call(AgentCall::EndpointKill { id, dbname }).await
    }

    /// New configuration and RELOAD (with `rewrite`), then RESUME.
    pub async fn endpoint_route(
        &self,
        spec: &EndpointSpec,
        rewrite: bool,
    ) -> Result<RouteTimings, AgentError> {
        self.call(AgentCall::EndpointRoute {
            spec: spec.clone(),
            rewrite,
        })
        .await
    }

    /// RESUME: clients held by a PAUSE go on.
    pub async fn endpoint_resume(&self, id: &str, dbname: &str) -> Result<(), AgentError> {
        let (id, dbname) = (id.into(), dbname.into());
        self.call(AgentCall::EndpointResume { id, dbname }).await
    }

    pub async fn endpoint_block(&self, id: &str, dbname: &str) -> Result<(), AgentError> {
        let (id, dbname) = (id.into(), dbname.into());
        self.call(AgentCall::EndpointBlock { id, dbname }).await
    }

    pub async fn endpoint_unblock(&self, id: &str, dbname: &str) -> Result<(), AgentError> {
        let (id, dbname) = (id.into(), dbname.into());
        self.call(AgentCall::EndpointUnblock { id, dbname }).await
    }

    pub async fn endpoint_destroy(&self, id: &str) -> Result<(), AgentError> {
        self.call(AgentCall::EndpointDestroy { id: id.into() })
            .await
    }

    pub async fn endpoint_paused(
        &self,
        id: &str,
        dbname: &str,
    ) -> Result<Option<bool>, AgentError> {
        let (id, dbname) = (id.into(), dbname.into());
        self.call(AgentCall::EndpointPaused { id, dbname }).await
    }

    // backups branch: logical backups through the (embedded) agent.

    /// `pg_dump -Fc` of `target` into the agent's backups directory's
    /// `file`; answers its size.
    pub async fn dump(
        &self,
        major: u32,
        target: &pgfollow_types::backup::DumpTarget,
        file: &str,
    ) -> Result<u64, AgentError> {
        let call = AgentCall::Dump {
            major,
            target: target.clone(),
            file: file.into(),
        };
        self.call(call).await
    }

    /// `pg_restore` of the backups directory's `file` into `target`; its
    /// progress is polled twice a second.
    pub async fn restore(
        &self,
        major: u32,
        target: &pgfollow_types::backup::DumpTarget,
        file: &str,
        progress: impl Fn(u64, u64) + Send + Sync,
    ) -> Result<(), AgentError> {
        let run = self.call::<()>(AgentCall::Restore {
            major,
            target: target.clone(),
            file: file.into(),
        });
        tokio::pin!(run);
        loop {
            tokio::select! {
                result = &mut run => return result,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {
                    let call = AgentCall::RestoreProgress { file: file.into() };
                    if let Ok(Some((done, total))) = self.call::<Option<(u64, u64)>>(call).await {
                        progress(done, total);
                    }
                }
            }
        }
    }

    /// Continuous protection: the cluster's archive configuration (and
    /// its stanza, on a primary).
    pub async fn archive_configure(
        &self,
        id: &str,
        archive: &pgfollow_types::archive::ArchiveSpec,
    ) -> Result<(), AgentError> {
        self.call(AgentCall::ArchiveConfigure {
            id: id.into(),
            archive: archive.clone(),
        })
        .await
    }

    /// A full base backup of primary `id`.
    pub async fn archive_backup(
        &self,
        id: &str,
        archive: &pgfollow_types::archive::ArchiveSpec,
    ) -> Result<pgfollow_types::archive::ArchiveInfo, AgentError> {
        self.call(AgentCall::ArchiveBackup {
            id: id.into(),
            archive: archive.clone(),
        })
        .await
    }

    /// Everything primary `id` committed until now is in the archive.
    pub async fn archive_seal(
        &self,
        id: &str,
        archive: &pgfollow_types::archive::ArchiveSpec,
    ) -> Result<(), AgentError> {
        self.call(AgentCall::ArchiveSeal {
            id: id.into(),
            archive: archive.clone(),
        })
        .await
    }

    /// Cluster `spec` made from `archive` as it was at `target`.
    pub async fn archive_restore(
        &self,
        spec: &ClusterSpec,
        archive: &pgfollow_types::archive::ArchiveSpec,
        target: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), AgentError> {
        self.call(AgentCall::ArchiveRestore {
            spec: spec.clone(),
            archive: archive.clone(),
            target,
        })
        .await
    }

    /// `pg_upgrade` of cluster `id` to `major` in place; milliseconds.
    pub async fn upgrade(&self, id: &str, major: u32) -> Result<u64, AgentError> {
        self.call(AgentCall::Upgrade {
            id: id.into(),
            major,
        })
        .await
    }

    /// A dry-run upgrade on a throwaway copy of `db`'s cluster.
    pub async fn upgrade_dry_run(
        &self,
        id: &str,
        major: u32,
        host: &str,
        replication: &pgfollow_types::agent::RoleSecret,
    ) -> Result<pgfollow_types::agent::UpgradeReport, AgentError> {
        self.call(AgentCall::UpgradeDryRun {
            id: id.into(),
            major,
            host: host.into(),
            replication: replication.clone(),
        })
        .await
    }
}
