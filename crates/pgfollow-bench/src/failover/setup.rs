//! One server with its HA database ready for a fault, and one measured
//! fault: writers through `DATABASE_URL` and one writer on the old
//! primary's own URL, the fault, the wait for the primary that takes over
//! and for writes through `DATABASE_URL` again, then the numbers.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use pgfollow_client::Client;
use pgfollow_testkit::{AgentProcess, Server};

use super::faults::{self, Frozen};
use super::{Kind, OldAfter, Options, Run, FREEZE};
use crate::follower::{Pgfollow, APP};
use crate::writers::{self, Seen, Writers};

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

/// A server, agent h2 and a premium database whose primary is on h2 and
/// whose standby is available (and, in sync mode, synchronous).
pub struct Setup {
    pf: Pgfollow,
    api: Client,
    h2: AgentProcess,
    main_url: String,
}

impl Setup {
    pub async fn new(bin: &Path, opts: &Options, sync: bool) -> anyhow::Result<Self> {
        let server = tokio::task::block_in_place(|| Server::start(bin))
            .context("starting pgfollow serve")?;
        let h2 =
            tokio::task::block_in_place(|| AgentProcess::start(bin, &server, "h2", Some("zone-b")))
                .context("starting agent h2")?;
        let api = Client::discover(Some(server.data_dir())).context("finding the API")?;
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
            h2,
        };
        let host = setup.host().await?;
        if host != "h2" {
            bail!("the primary landed on host {host}, not h2");
        }
        setup.wait_ha_available().await?;
        if sync {
            setup.wait_sync().await?;
        }
        writers::create_table(&setup.main_url).await?;
        Ok(setup)
    }

    /// With `--logs DIR`: copies serve's and h2's logs there as
    /// `<kind>-<n>-serve.log` and `<kind>-<n>-h2.log` (a failed copy is
    /// only reported).
    pub fn keep_logs(&self, opts: &Options, kind: Kind, n: u32) {
        let Some(dir) = &opts.logs else { return };
        let slug = kind
            .label()
            .split(|c: char| !c.is_ascii_alphanumeric())
            .filter(|w| !w.is_empty())
            .collect::<Vec<_>>()
            .join("-");
        let copies = [
            (self.pf.server.log_path(), "serve"),
            (self.h2.log_path(), "h2"),
        ];
        for (from, name) in copies {
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
        while !self.pf.server.log().contains("now wait for its standby") {
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
            Kind::HostAsync | Kind::HostSync => Ok((faults::lose_host(&mut self.h2)?, None)),
            Kind::Crash => Ok((faults::crash_postgres(&mut self.h2)?, None)),
            Kind::FrozenPostgres => {
                let (frozen, at) = faults::freeze_postgres(&self.h2)?;
                Ok((at, Some(frozen)))
            }
            Kind::FrozenHostAsync | Kind::FrozenHostSync => {
                let (mut frozen, at) = faults::freeze_host(&self.h2)?;
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
        let writers = Writers::start(&self.main_url, opts.writers);
        let direct = Writers::start(&old_url, 1);
        tokio::time::sleep(WARM_UP).await;
        let before = self.h2.running_postmasters();
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
        let (seen, direct_seen) = (writers.finish().await, direct.finish().await);
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
        let old_after = (host_after != "h2")
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

    /// Until WHITE is on host local (failover) or h2 runs a postmaster
    /// other than those in `before` (crash).
    async fn wait_replaced(
        &self,
        kind: Kind,
        before: &[i32],
        fault: Instant,
    ) -> anyhow::Result<()> {
        loop {
            let replaced = match kind {
                Kind::Crash => {
                    let now = self.h2.running_postmasters();
                    !now.is_empty() && now.iter().all(|p| !before.contains(p))
                }
                _ => self.host().await? == "local",
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

/// The port of the server that acknowledged the last insert through
/// DATABASE_URL before `fault`: the old primary's.
fn old_port(seen: &Seen, fault: Instant) -> Option<u16> {
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
    let old = old_port(seen, fault)?;
    seen.acks
        .iter()
        .find(|a| a.done > fault && a.server != 0 && a.server != old)
        .map(|a| a.done)
}

/// The writes the old primary acknowledged after `promoted`: all that
/// `direct` saw (it only ever talks to the old primary's address) and those
/// through DATABASE_URL that its port answered.
fn old_acks_after(seen: &Seen, direct: &Seen, fault: Instant, promoted: Instant) -> OldAfter {
    let old = old_port(seen, fault);
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

pub async fn config_var(api: &Client, var: &str) -> anyhow::Result<String> {
    let vars = api.config(APP).await?.vars;
    vars.get(var)
        .cloned()
        .with_context(|| format!("{APP} has no config var {var}"))
}
