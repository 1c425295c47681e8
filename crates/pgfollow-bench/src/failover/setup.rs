//! One server with its HA database ready for a fault, and one measured
//! fault: writers through `DATABASE_URL` and one writer on the old
//! primary's own URL, the fault, the wait for the primary that takes over
//! and for writes through `DATABASE_URL` again, then the numbers.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use pgfollow_client::Client;
use pgfollow_testkit::{AgentProcess, EtcdCluster, NetHost, Network, Server};

use super::faults::{self, Frozen};
use super::{Kind, OldAfter, Options, Run, FREEZE};
use crate::follower::{Pgfollow, APP};
use crate::writers::{self, Seen, Writers, WritersOn, CUT_INSERT_LIMIT};

/// How long writes may stay impossible before a run gives up.
const OUTAGE_LIMIT: Duration = Duration::from_secs(60);
/// How long the standby may take to be `Available`.
const HA_READY_LIMIT: Duration = Duration::from_secs(180);
/// Writing before the fault, and after the first write again.
const WARM_UP: Duration = Duration::from_secs(1);
const TAIL: Duration = Duration::from_millis(500);
/// After a frozen host is continued, how long the writers go on (what the
/// old primary does once it runs again).
const AFTER_THAW: Duration = Duration::from_secs(2);

/// How long a control plane replica on etcd may take to lead.
const LEAD_LIMIT: Duration = Duration::from_secs(20);

/// A server, the agent of the primary's host and a premium database whose
/// primary is there and whose standby is available (and, in sync mode,
/// synchronous).
pub struct Setup {
    /// The server the CLI and the API talk to (for the control plane on
    /// etcd: the replica that survives the fault).
    pf: Pgfollow,
    api: Client,
    /// The agent of the primary's host: h2 (m1 on etcd).
    primary: AgentProcess,
    /// That host's name.
    old_host: String,
    main_url: String,
    /// The kinds that cut a host off: hosts in network namespaces.
    hosts: Option<Namespaced>,
}

/// What a namespaced set-up runs besides [`Setup`]'s server and primary
/// agent; fields drop in order, processes before the network.
struct Namespaced {
    /// The other control plane replica (the leader before the fault).
    servers: Vec<Server>,
    /// The other agents.
    agents: Vec<AgentProcess>,
    _etcd: Option<EtcdCluster>,
    /// The primary's host: what the fault cuts off, where the writer on
    /// the old primary's own URL runs.
    cut: NetHost,
    net: Network,
}

impl Setup {
    pub async fn new(bin: &Path, opts: &Options, sync: bool) -> anyhow::Result<Self> {
        let server = tokio::task::block_in_place(|| Server::start(bin))
            .context("starting pgfollow serve")?;
        let h2 =
            tokio::task::block_in_place(|| AgentProcess::start(bin, &server, "h2", Some("zone-b")))
                .context("starting agent h2")?;
        Self::ready(bin, opts, sync, server, h2, "h2", None).await
    }

    /// `serve` (with its embedded agent, host local) on a host of its own
    /// and agent h2 on another, `--sync`.
    pub async fn cut_off(bin: &Path, opts: &Options) -> anyhow::Result<Self> {
        let mut net = Network::new().context("making the test network")?;
        let cp = net.add_host("cp")?;
        let h2_host = net.add_host("h2")?;
        let (server, h2) = tokio::task::block_in_place(|| -> anyhow::Result<_> {
            let server = Server::start_on(bin, &cp, &[]).context("starting pgfollow serve")?;
            let h2 = AgentProcess::start_on(bin, &server, "h2", Some("zone-b"), &h2_host)
                .context("starting agent h2")?;
            Ok((server, h2))
        })?;
        let hosts = Namespaced {
            servers: Vec::new(),
            agents: Vec::new(),
            _etcd: None,
            cut: h2_host,
            net,
        };
        Self::ready(bin, opts, true, server, h2, "h2", Some(hosts)).await
    }

    /// The control plane on etcd: three members on hosts of their own;
    /// machine m1 runs replica a (which leads) and agent m1, machine m2
    /// replica b and agent m2; `--sync`. The primary lands on m1.
    pub async fn leader_cut_off(bin: &Path, opts: &Options) -> anyhow::Result<Self> {
        let mut net = Network::new().context("making the test network")?;
        let members = (1..=3)
            .map(|i| net.add_host(&format!("e{i}")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let m1 = net.add_host("m1")?;
        let m2 = net.add_host("m2")?;
        let started = tokio::task::block_in_place(|| -> anyhow::Result<_> {
            let etcd = EtcdCluster::start_on(&members).context("starting etcd")?;
            let urls = etcd.endpoints_arg();
            let a = Server::start_on(bin, &m1, &["--etcd", &urls, "--name", "a"])
                .context("starting replica a")?;
            wait_log(&a, "control plane replica a leads", LEAD_LIMIT)?;
            let b = Server::start_on(bin, &m2, &["--etcd", &urls, "--name", "b"])
                .context("starting replica b")?;
            let both = format!("{},{}", a.url, b.url);
            let agent_m1 = AgentProcess::start_with_control_on(bin, &both, &a.token(), "m1", &m1)
                .context("starting agent m1")?;
            let agent_m2 = AgentProcess::start_with_control_on(bin, &both, &a.token(), "m2", &m2)
                .context("starting agent m2")?;
            Ok((etcd, a, b, agent_m1, agent_m2))
        })?;
        let (etcd, a, b, agent_m1, agent_m2) = started;
        let api = Client::new(b.url.clone(), b.token());
        wait_hosts(&api, &["m1", "m2"]).await?;
        let hosts = Namespaced {
            servers: vec![a],
            agents: vec![agent_m2],
            _etcd: Some(etcd),
            cut: m1,
            net,
        };
        Self::ready(bin, opts, true, b, agent_m1, "m1", Some(hosts)).await
    }

    /// The app and its premium database, whose primary must be on
    /// `primary_host` (the host of `primary`), HA available, writers'
    /// table made.
    async fn ready(
        bin: &Path,
        opts: &Options,
        sync: bool,
        server: Server,
        primary: AgentProcess,
        primary_host: &str,
        hosts: Option<Namespaced>,
    ) -> anyhow::Result<Self> {
        let api = Client::new(server.url.clone(), server.token());
        let pf = Pgfollow {
            server,
            bin: bin.to_path_buf(),
        };
        pf.cli(&["apps:create", APP]).await?;
        let mut args = vec!["addons:create", opts.plan.as_str(), "--app", APP];
        if sync {
            args.push("--sync");
        }
        pf.cli(&args).await?;
        pf.wait("WHITE").await?;
        let setup = Self {
            main_url: config_var(&api, "DATABASE_URL").await?,
            pf,
            api,
            primary,
            old_host: primary_host.to_string(),
            hosts,
        };
        let host = setup.host().await?;
        if host != primary_host {
            bail!("the primary landed on host {host}, not {primary_host}");
        }
        setup.wait_ha_available().await?;
        if sync {
            setup.wait_sync().await?;
        }
        writers::create_table(&setup.main_url).await?;
        Ok(setup)
    }

    /// The primary's host before the fault.
    pub fn old_host(&self) -> &str {
        &self.old_host
    }

    /// Every control plane server's log, the CLI's first.
    fn logs(&self) -> Vec<(std::path::PathBuf, String)> {
        let mut logs = vec![(self.pf.server.log_path(), "serve".to_string())];
        if let Some(h) = &self.hosts {
            for (i, s) in h.servers.iter().enumerate() {
                logs.push((s.log_path(), format!("serve{}", i + 2)));
            }
            for a in &h.agents {
                logs.push((a.log_path(), a.name.clone()));
            }
        }
        logs.push((self.primary.log_path(), self.old_host.clone()));
        logs
    }

    fn server_logs_contain(&self, what: &str) -> bool {
        self.pf.server.log().contains(what)
            || self
                .hosts
                .as_ref()
                .is_some_and(|h| h.servers.iter().any(|s| s.log().contains(what)))
    }

    /// With `--logs DIR`: copies serve's and h2's logs there as
    /// `<kind>-<n>-serve.log`, `<kind>-<n>-h2.log` and so on for every
    /// server and agent (a failed copy is only reported).
    pub fn keep_logs(&self, opts: &Options, kind: Kind, n: u32) {
        let Some(dir) = &opts.logs else { return };
        let slug = kind
            .label()
            .split(|c: char| !c.is_ascii_alphanumeric())
            .filter(|w| !w.is_empty())
            .collect::<Vec<_>>()
            .join("-");
        for (from, name) in self.logs() {
            let to = dir.join(format!("{slug}-{n}-{name}.log"));
            let copied = std::fs::create_dir_all(dir).and_then(|()| std::fs::copy(&from, &to));
            if let Err(e) = copied {
                eprintln!(
                    "[bench] cannot copy {} to {}: {e}",
                    from.display(),
                    to.display()
                );
            }
        }
    }

    async fn host(&self) -> anyhow::Result<String> {
        Ok(self.api.database(APP, "WHITE").await?.host)
    }

    pub async fn wait_ha_available(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + HA_READY_LIMIT;
        loop {
            let info = self.api.database(APP, "WHITE").await?;
            if info.ha_status.as_deref() == Some("Available") {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "HA Status still {:?} after {HA_READY_LIMIT:?}",
                    info.ha_status
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Sync mode: until the server says commits wait for the standby.
    async fn wait_sync(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + HA_READY_LIMIT;
        while !self.server_logs_contain("now wait for its standby") {
            if Instant::now() >= deadline {
                bail!("commits do not wait for the standby after {HA_READY_LIMIT:?}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Ok(())
    }

    /// The fault of `kind` now: when it was injected and, for the frozen
    /// kinds, the guard of what was stopped (continued after [`FREEZE`]
    /// for a frozen host, when dropped in any case).
    fn inject(&mut self, kind: Kind) -> anyhow::Result<(Instant, Option<Frozen>)> {
        match kind {
            Kind::HostAsync | Kind::HostSync => Ok((faults::lose_host(&mut self.primary)?, None)),
            Kind::Crash => Ok((faults::crash_postgres(&mut self.primary)?, None)),
            Kind::FrozenPostgres => {
                let (frozen, at) = faults::freeze_postgres(&self.primary)?;
                Ok((at, Some(frozen)))
            }
            Kind::HostCutSync | Kind::LeaderAndHostCutSync => {
                let h = self
                    .hosts
                    .as_ref()
                    .context("a cut needs hosts of their own")?;
                let at = Instant::now();
                h.net.cut(&h.cut)?;
                Ok((at, None))
            }
            Kind::FrozenHostAsync | Kind::FrozenHostSync => {
                let (mut frozen, at) = faults::freeze_host(&self.primary)?;
                frozen.thaw_after(FREEZE.saturating_sub(at.elapsed()));
                Ok((at, Some(frozen)))
            }
        }
    }

    /// Writers on (and one on the old primary's own URL), the fault of
    /// `kind`, until an insert sent after the primary was replaced is
    /// acknowledged (for a frozen host: and a while after the thaw), a
    /// little more, writers off; the numbers.
    pub async fn measure(&mut self, opts: &Options, kind: Kind, n: u32) -> anyhow::Result<Run> {
        // Read before the fault: it names the old primary's host and port.
        let old_url = config_var(&self.api, "PGFOLLOW_POSTGRESQL_WHITE_URL").await?;
        let (writers, direct) = match (&self.hosts, kind.cuts()) {
            (Some(h), true) => (
                Writers::start_limited(&self.main_url, opts.writers, CUT_INSERT_LIMIT),
                Direct::On(WritersOn::start(&h.cut, &old_url, 1, CUT_INSERT_LIMIT)),
            ),
            _ => (
                Writers::start(&self.main_url, opts.writers),
                Direct::Here(Writers::start(&old_url, 1)),
            ),
        };
        tokio::time::sleep(WARM_UP).await;
        let before = self.primary.running_postmasters();
        let in_flight = writers.in_flight();
        // Dropped first on any way out of here: nothing stays stopped.
        let (fault, frozen) = self.inject(kind)?;
        let stopped = frozen.as_ref().map_or(0, Frozen::count);
        // The old primary's backends may acknowledge for a while, so wait
        // for the primary that takes over (or the restarted one), then for
        // an insert sent after it was there.
        self.wait_replaced(kind, &before, fault).await?;
        let replaced = fault.elapsed();
        let again = writers.wait_acked_after(Instant::now(), OUTAGE_LIMIT).await;
        if kind.thaws() {
            // Bounded: the thaw is due FREEZE after the fault.
            let until = fault + FREEZE + AFTER_THAW;
            tokio::time::sleep_until(tokio::time::Instant::from_std(until)).await;
        }
        tokio::time::sleep(TAIL).await;
        let (seen, direct_seen) = (writers.finish().await, direct.finish().await?);
        let survivors = frozen.as_ref().map(Frozen::survivors);
        let thawed = frozen
            .as_ref()
            .and_then(Frozen::thawed_at)
            .map(|t| t.saturating_duration_since(fault));
        drop(frozen);
        if !again {
            bail!(
                "no write got through DATABASE_URL within {OUTAGE_LIMIT:?} of the fault (first error: {})",
                seen.first_failure().unwrap_or_default()
            );
        }
        // After a failover the colour var names the new primary.
        let url = config_var(&self.api, "PGFOLLOW_POSTGRESQL_WHITE_URL").await?;
        let present = writers::ids_at(&url).await?;
        let (last_before, first_after) = seen
            .outage_after(fault)
            .context("no acknowledgement after the fault")?;
        let host_after = self.host().await?;
        let promoted = promotion(&seen, fault);
        let old_after = (host_after != self.old_host)
            .then(|| old_acks_after(&seen, &direct_seen, fault, promoted.unwrap_or(first_after)));
        Ok(Run {
            kind,
            n,
            writes_again: first_after.saturating_duration_since(fault),
            promoted: promoted.map(|p| p.saturating_duration_since(fault)),
            old_acked_for: last_before.saturating_duration_since(fault),
            replaced,
            errors: seen.failure_kinds(),
            acked: seen.acks.len(),
            failed: seen.failures.len(),
            in_flight,
            lost: seen.missing(&present),
            old_after,
            direct_acked: direct_seen.acks.len(),
            direct_lost: direct_seen.missing(&present).len(),
            direct_errors: direct_seen.failure_kinds(),
            stopped,
            survivors,
            thawed,
            host_after,
        })
    }

    /// Until WHITE is on another host (failover) or the primary's host runs
    /// a postmaster other than those in `before` (crash). While the control
    /// plane changes leader, a read that fails is tried again.
    async fn wait_replaced(
        &self,
        kind: Kind,
        before: &[i32],
        fault: Instant,
    ) -> anyhow::Result<()> {
        loop {
            let replaced = match kind {
                Kind::Crash => {
                    let now = self.primary.running_postmasters();
                    !now.is_empty() && now.iter().all(|p| !before.contains(p))
                }
                _ => self.host().await.is_ok_and(|h| h != self.old_host),
            };
            if replaced {
                return Ok(());
            }
            if fault.elapsed() >= OUTAGE_LIMIT {
                bail!("the primary was not replaced within {OUTAGE_LIMIT:?} of the fault");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The server that acknowledged the last insert through
/// DATABASE_URL before `fault`: the old primary's.
fn old_server(seen: &Seen, fault: Instant) -> Option<u64> {
    seen.acks
        .iter()
        .rev()
        .find(|a| a.done <= fault && a.server != 0)
        .map(|a| a.server)
}

/// The new primary's promotion as the app sees it: the first
/// acknowledgement through DATABASE_URL after `fault` that another server
/// than the old primary gave (None: only the old primary answered, it was
/// restarted in place).
fn promotion(seen: &Seen, fault: Instant) -> Option<Instant> {
    let old = old_server(seen, fault)?;
    seen.acks
        .iter()
        .find(|a| a.done > fault && a.server != 0 && a.server != old)
        .map(|a| a.done)
}

/// The writes the old primary acknowledged after `promoted`: all that
/// `direct` saw (it only ever talks to the old primary's address) and those
/// through DATABASE_URL that it answered.
fn old_acks_after(seen: &Seen, direct: &Seen, fault: Instant, promoted: Instant) -> OldAfter {
    let old = old_server(seen, fault);
    let through: Vec<_> = seen
        .acks
        .iter()
        .filter(|a| a.done > promoted && Some(a.server) == old)
        .collect();
    let own: Vec<_> = direct.acks.iter().filter(|a| a.done > promoted).collect();
    let latest = through
        .iter()
        .chain(own.iter())
        .map(|a| a.done.saturating_duration_since(promoted))
        .max()
        .unwrap_or_default();
    OldAfter {
        direct: own.len(),
        endpoint: through.len(),
        latest,
    }
}

/// The writer on the old primary's own URL: here, or on the primary's
/// host when it is cut off.
enum Direct {
    Here(Writers),
    On(WritersOn),
}

impl Direct {
    async fn finish(self) -> anyhow::Result<Seen> {
        match self {
            Direct::Here(w) => Ok(w.finish().await),
            Direct::On(w) => w.finish().await,
        }
    }
}

/// Until `server`'s log says `what` (at most `limit`).
fn wait_log(server: &Server, what: &str, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while !server.log().contains(what) {
        if Instant::now() >= deadline {
            bail!("{what:?} not in the server's log after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Until every host in `names` is registered (at most [`LEAD_LIMIT`]).
async fn wait_hosts(api: &Client, names: &[&str]) -> anyhow::Result<()> {
    let deadline = Instant::now() + LEAD_LIMIT;
    loop {
        let known = api.status().await.map(|st| {
            names
                .iter()
                .all(|n| st.hosts.iter().any(|h| h.name.as_str() == *n))
        });
        if known.unwrap_or(false) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("hosts {names:?} not all registered after {LEAD_LIMIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn config_var(api: &Client, var: &str) -> anyhow::Result<String> {
    let vars = api.config(APP).await?.vars;
    vars.get(var)
        .cloned()
        .with_context(|| format!("{APP} has no config var {var}"))
}
