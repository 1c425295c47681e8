//! Physical streaming replication, from both ends (the base backup that
//! makes a follower is in [`crate::basebackup`]).
//!
//! Leader side: replication slots ([`Cluster::create_slot`],
//! [`Cluster::drop_slot`], [`Cluster::slot_status`]; the exact number of
//! commit records a follower is behind is in [`crate::walcount`]). Follower side: how far it has replayed
//! ([`Cluster::replay_status`]), repointing ([`Cluster::set_upstream`]) and
//! promotion ([`Cluster::promote`]). The running follower reads the
//! replication password from `primary_conninfo` in `pgfollow.conf` (mode 0600).

use std::time::{Duration, Instant};

use pgfollow_types::agent::{ClusterSpec, Promotion, ReplayStatus, SlotStatus};
use pgfollow_types::Lsn;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use crate::cluster::Cluster;
use crate::conf;
use crate::error::PgError;
use crate::sql::in_recovery;

pub use crate::basebackup::STANDBY_SIGNAL;

/// Milliseconds, as reports give them.
fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// How long dropping a slot keeps terminating the walsender that holds it.
pub const DROP_SLOT_LIMIT: Duration = Duration::from_secs(5);

/// How long a promotion may take before [`PgError::PromoteTimeout`].
pub const PROMOTE_LIMIT: Duration = Duration::from_secs(60);

/// How often promotion polls `pg_is_in_recovery()`, and
/// [`Cluster::promote_when_replayed`] the replay position: `pg_promote(wait
/// => true)` polls every 100 ms, the promotion itself takes 20–40 ms, and a
/// look is a query on an open connection (well under 0.1 ms).
const PROMOTE_POLL: Duration = Duration::from_millis(1);

impl Cluster {
    /// Leader side. Idempotent: creates the physical slot `slot`, reserving
    /// WAL at once (so nothing a base backup through it needs is removed);
    /// Ok if it exists.
    pub async fn create_slot(&self, slot: &str) -> Result<(), PgError> {
        check_slot_name(slot)?;
        let client = self.connect("postgres").await?;
        if slot_row(&client, slot).await?.is_some() {
            return Ok(());
        }
        match client
            .query_one(
                "SELECT pg_create_physical_replication_slot($1, true)",
                &[&slot],
            )
            .await
        {
            Ok(_) => {
                tracing::info!(root = %self.root().display(), slot, "created replication slot");
                Ok(())
            }
            // Created meanwhile by someone else.
            Err(e) if e.code() == Some(&SqlState::DUPLICATE_OBJECT) => Ok(()),
            Err(e) => Err(PgError::sql("creating the replication slot")(e)),
        }
    }

    /// Leader side. Idempotent: drops the slot; Ok if it does not exist. A
    /// walsender still streaming through it is terminated first (for at most
    /// [`DROP_SLOT_LIMIT`]; a follower that keeps reconnecting should be
    /// stopped or repointed before).
    pub async fn drop_slot(&self, slot: &str) -> Result<(), PgError> {
        check_slot_name(slot)?;
        let client = self.connect("postgres").await?;
        let deadline = Instant::now() + DROP_SLOT_LIMIT;
        loop {
            let active_pid: Option<i32> = match client
                .query_opt(
                    "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
                    &[&slot],
                )
                .await
                .map_err(PgError::sql("looking up the replication slot"))?
            {
                None => return Ok(()),
                Some(row) => row
                    .try_get(0)
                    .map_err(PgError::sql("reading the slot's active_pid"))?,
            };
            if let Some(pid) = active_pid {
                tracing::info!(slot, pid, "terminating the walsender of a slot to drop");
                client
                    .query_one("SELECT pg_terminate_backend($1)", &[&pid])
                    .await
                    .map_err(PgError::sql("terminating the slot's walsender"))?;
            } else {
                match client
                    .query_one("SELECT pg_drop_replication_slot($1)", &[&slot])
                    .await
                {
                    Ok(_) => {
                        tracing::info!(root = %self.root().display(), slot, "dropped replication slot");
                        return Ok(());
                    }
                    Err(e) if e.code() == Some(&SqlState::UNDEFINED_OBJECT) => return Ok(()),
                    // A walsender took it between our look and the drop.
                    Err(e) if e.code() == Some(&SqlState::OBJECT_IN_USE) => {}
                    Err(e) => return Err(PgError::sql("dropping the replication slot")(e)),
                }
            }
            if Instant::now() >= deadline {
                return Err(PgError::SlotBusy {
                    slot: slot.to_string(),
                    secs: DROP_SLOT_LIMIT.as_secs(),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Leader side: the slot `slot`, or None.
    pub async fn slot_status(&self, slot: &str) -> Result<Option<SlotStatus>, PgError> {
        let client = self.connect("postgres").await?;
        slot_row(&client, slot).await
    }

    /// Follower side: how far this standby has received and replayed, and
    /// whether it is streaming from its leader right now. On a leader (or a
    /// promoted follower) `in_recovery` is false and the LSNs are None.
    pub async fn replay_status(&self) -> Result<ReplayStatus, PgError> {
        let client = self.connect("postgres").await?;
        let row = client
            .query_one(
                "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text, \
                 pg_last_wal_receive_lsn()::text, \
                 (extract(epoch FROM pg_last_xact_replay_timestamp()) * 1000)::int8, \
                 EXISTS (SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming')",
                &[],
            )
            .await
            .map_err(PgError::sql("reading the replay status"))?;
        let read = PgError::sql("reading the replay status");
        let lsn = |i: usize| -> Result<Option<Lsn>, PgError> {
            let text: Option<String> = row.try_get(i).map_err(PgError::sql("reading an LSN"))?;
            text.map(|t| parse_lsn(&t)).transpose()
        };
        Ok(ReplayStatus {
            in_recovery: row.try_get(0).map_err(read)?,
            replay_lsn: lsn(1)?,
            receive_lsn: lsn(2)?,
            last_replay_unix_ms: row
                .try_get(3)
                .map_err(PgError::sql("reading the last replay time"))?,
            streaming: row
                .try_get(4)
                .map_err(PgError::sql("reading the WAL receiver status"))?,
        })
    }

    /// Follower → leader. Idempotent: Ok at once when not in recovery.
    /// Signals promotion and polls `pg_is_in_recovery()` every 10 ms (for at
    /// most [`PROMOTE_LIMIT`]). PostgreSQL removes `standby.signal` itself;
    /// the caller should then re-render the configuration without an
    /// upstream ([`Cluster::write_config`]) so `primary_conninfo`, which
    /// holds the old leader's password, goes away.
    pub async fn promote(&self) -> Result<(), PgError> {
        let client = self.connect("postgres").await?;
        if !in_recovery(&client).await? {
            return Ok(());
        }
        self.signal_promotion(&client).await.map(|_| ())
    }

    /// [`Cluster::promote`] as soon as this standby has replayed up to
    /// `lsn` (a leader's flush position), looking every [`PROMOTE_POLL`] on
    /// one connection; unchanged, with `promoted` false, when it has not
    /// got there within `limit`. Already out of recovery: promoted, in no
    /// time.
    pub async fn promote_when_replayed(
        &self,
        lsn: Lsn,
        limit: Duration,
    ) -> Result<Promotion, PgError> {
        let client = self.connect("postgres").await?;
        let started = Instant::now();
        let mut done = Promotion {
            promoted: false,
            replayed: None,
            catch_up_ms: 0.0,
            catch_up_polls: 0,
            promote_ms: 0.0,
            promote_polls: 0,
        };
        loop {
            done.catch_up_polls += 1;
            let row = client
                .query_one(
                    "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text",
                    &[],
                )
                .await
                .map_err(PgError::sql("reading the replay position"))?;
            let recovering: bool = row
                .try_get(0)
                .map_err(PgError::sql("reading the replay position"))?;
            if !recovering {
                done.promoted = true;
                return Ok(done);
            }
            let text: Option<String> = row.try_get(1).map_err(PgError::sql("reading an LSN"))?;
            done.replayed = text.map(|t| parse_lsn(&t)).transpose()?;
            done.catch_up_ms = ms(started.elapsed());
            if done.replayed.is_some_and(|r| r >= lsn) {
                break;
            }
            if started.elapsed() >= limit {
                return Ok(done);
            }
            tokio::time::sleep(PROMOTE_POLL).await;
        }
        let (took, polls) = self.signal_promotion(&client).await?;
        done.promoted = true;
        done.promote_ms = ms(took);
        done.promote_polls = polls;
        Ok(done)
    }

    /// `pg_promote()` without waiting, then [`PROMOTE_POLL`] until out of
    /// recovery: how long that took and how many looks.
    async fn signal_promotion(&self, client: &Client) -> Result<(Duration, u32), PgError> {
        let started = Instant::now();
        client
            .query_one("SELECT pg_promote(wait => false)", &[])
            .await
            .map_err(PgError::sql("signalling promotion"))?;
        let mut polls = 0;
        loop {
            polls += 1;
            if !in_recovery(client).await? {
                tracing::info!(
                    root = %self.root().display(),
                    ms = started.elapsed().as_millis() as u64,
                    polls,
                    "promoted"
                );
                return Ok((started.elapsed(), polls));
            }
            if started.elapsed() >= PROMOTE_LIMIT {
                return Err(PgError::PromoteTimeout {
                    secs: PROMOTE_LIMIT.as_secs(),
                });
            }
            tokio::time::sleep(PROMOTE_POLL).await;
        }
    }

    /// Follower side: rewrites the configuration for `spec` (a new upstream,
    /// or none to stop streaming) and reloads a running server, which
    /// restarts its WAL receiver (`primary_conninfo` and `primary_slot_name`
    /// are reloadable since PostgreSQL 13). Refuses an upstream for a data
    /// directory that is not a standby's: that needs a new base backup.
    /// Runs `CHECKPOINT`: after a promotion, makes the new timeline durable
    /// in the control file, so the fork can be copied and followed.
    pub async fn checkpoint(&self) -> Result<(), PgError> {
        self.connect("postgres")
            .await?
            .batch_execute("CHECKPOINT")
            .await
            .map_err(PgError::sql("running CHECKPOINT"))
    }

    pub async fn set_upstream(&self, spec: &ClusterSpec) -> Result<(), PgError> {
        if spec.upstream.is_some()
            && self.is_initialized()
            && !self.pgdata().join(STANDBY_SIGNAL).exists()
        {
            return Err(PgError::InvalidSpec(format!(
                "cluster {} is not a standby (no {STANDBY_SIGNAL}): \
                 make it a follower with a new base backup",
                spec.id
            )));
        }
        self.write_config(spec)?;
        if self.postmaster().is_some() {
            self.reload().await?;
        }
        Ok(())
    }
}

/// The slot's row of `pg_replication_slots`.
async fn slot_row(client: &Client, slot: &str) -> Result<Option<SlotStatus>, PgError> {
    let Some(row) = client
        .query_opt(
            "SELECT s.active, s.wal_status, s.restart_lsn::text, s.confirmed_flush_lsn::text, r.write_lsn::text \
             FROM pg_replication_slots s LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid \
             WHERE s.slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(PgError::sql("looking up the replication slot"))?
    else {
        return Ok(None);
    };
    let read = PgError::sql("reading the replication slot");
    let restart: Option<String> = row
        .try_get(2)
        .map_err(PgError::sql("reading restart_lsn"))?;
    let confirmed: Option<String> = row
        .try_get(3)
        .map_err(PgError::sql("reading confirmed_flush_lsn"))?;
    let write: Option<String> = row.try_get(4).map_err(PgError::sql("reading write_lsn"))?;
    Ok(Some(SlotStatus {
        confirmed_flush_lsn: confirmed.as_deref().map(parse_lsn).transpose()?,
        write_lsn: write.as_deref().map(parse_lsn).transpose()?,
        active: row.try_get(0).map_err(read)?,
        wal_status: row.try_get(1).map_err(PgError::sql("reading wal_status"))?,
        restart_lsn: restart.as_deref().map(parse_lsn).transpose()?,
    }))
}

fn check_slot_name(slot: &str) -> Result<(), PgError> {
    match conf::slot_name_problem(slot) {
        Some(why) => Err(PgError::InvalidSpec(format!(
            "replication slot name {slot:?} {why}"
        ))),
        None => Ok(()),
    }
}

fn parse_lsn(text: &str) -> Result<Lsn, PgError> {
    text.parse::<Lsn>()
        .map_err(|e| PgError::Unexpected(e.to_string()))
}
