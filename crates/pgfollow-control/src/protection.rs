//! Continuous protection, carried out by the backups loop: each tick gives
//! new databases their lineage's stanza (`assign_stanzas`), asks the planner
//! which cluster needs its archive configured or a base backup
//! (`protection_steps`), runs those through the database's host's agent
//! (pgBackRest as the OS user) and records the outcome. The repository is
//! `<data dir>/pgbackrest` on the control plane's host, owned by the OS
//! user pgBackRest runs as; a repository on another host is pgBackRest's
//! `repo1-host` (see docs/architecture.md).

use std::sync::Arc;

use chrono::Utc;
use pgfollow_planner::{
    assign_stanzas, orphaned_stanzas, protection_steps, record_protection, ProtectAction,
    ProtectStep,
};
use pgfollow_types::archive::{ArchiveSpec, RollbackInfo};
use pgfollow_types::model::{DatabaseRecord, State};

use crate::backups::Backups;
use crate::error::ApiErr;

/// Days kept when no member's plan says (never shorter than standard's).
const DEFAULT_RETENTION_DAYS: u32 = 4;

/// What an agent is told of `stanza`'s archive: its repository, and the
/// retention of the plan of the lineage's longest-kept member.
pub fn archive_spec(state: &State, stanza: &str) -> Option<ArchiveSpec> {
    let p = state.protection.get(stanza)?;
    let retention_days = state
        .archive_of
        .iter()
        .filter(|(_, s)| s.as_str() == stanza)
        .filter_map(|(id, _)| state.databases.get(id))
        .filter_map(|d| d.plan.tier.rollback_days())
        .max()
        .unwrap_or(DEFAULT_RETENTION_DAYS);
    Some(ArchiveSpec {
        stanza: stanza.to_string(),
        repo_path: p.repo_path.clone(),
        repo_host: p.repo_host.clone(),
        retention_days,
    })
}

/// `pg:info`'s `Rollback` of `db`: none on hobby plans and followers.
pub fn rollback_info(state: &State, db: &DatabaseRecord) -> Option<RollbackInfo> {
    db.plan.tier.rollback_days()?;
    if db.is_follower() {
        return None;
    }
    let p = state
        .archive_of
        .get(&db.id)
        .and_then(|s| state.protection.get(s));
    let Some(p) = p else {
        return Some(RollbackInfo {
            earliest: None,
            detail: Some("starting".into()),
            error: None,
            last_base_backup: None,
            last_base_backup_bytes: None,
            repo_bytes: None,
        });
    };
    let info = p.info.as_ref();
    let earliest = info.and_then(|i| i.earliest);
    Some(RollbackInfo {
        earliest,
        detail: earliest
            .is_none()
            .then(|| "its first base backup is under way".to_string()),
        error: p.last_error.clone(),
        last_base_backup: p.last_full,
        last_base_backup_bytes: info.map(|i| i.newest_bytes),
        repo_bytes: info.map(|i| i.repo_bytes),
    })
}

/// The earliest moment database `id`'s lineage can be rolled back to.
pub fn earliest_of(state: &State, id: &str) -> Option<chrono::DateTime<Utc>> {
    let stanza = state.archive_of.get(id)?;
    state.protection.get(stanza)?.info.as_ref()?.earliest
}

impl Backups {
    /// One protection tick: stanzas assigned, due steps started (one per
    /// lineage at a time).
    pub(crate) fn tick_protection(self: &Arc<Self>) -> Result<(), ApiErr> {
        let now = Utc::now();
        let repo = self.repo_dir().display().to_string();
        let mut state = self.store.read()?;
        let mut trial = state.clone();
        if !assign_stanzas(&mut trial, &repo, now).is_empty() {
            let said = self.store.update(|st| Ok(assign_stanzas(st, &repo, now)))?;
            for s in said {
                tracing::info!("{s}");
            }
            state = self.store.read()?;
        }
        let mut running = crate::executor::lock(&self.protecting);
        running.retain(|_, h| !h.is_finished());
        let orphans: Vec<String> = orphaned_stanzas(&state)
            .into_iter()
            .filter(|s| !running.contains_key(s))
            .collect();
        if !orphans.is_empty() {
            drop(running);
            self.forget_stanzas(&orphans)?;
            state = self.store.read()?;
            running = crate::executor::lock(&self.protecting);
        }
        for step in protection_steps(&state, now) {
            if running.contains_key(&step.stanza) {
                continue;
            }
            tracing::info!("{}", step.sentence);
            let me = self.clone();
            let st = state.clone();
            let key = step.stanza.clone();
            let task = tokio::spawn(async move {
                let outcome = me.protect(&st, &step).await;
                if let Err(e) = &outcome {
                    tracing::warn!("{}: {e}", step.sentence);
                }
                let recorded = me.store.update(|s| {
                    if let Some(p) = s.protection.get_mut(&step.stanza) {
                        record_protection(p, &step, outcome.clone(), Utc::now());
                    }
                    Ok(())
                });
                if let Err(e) = recorded {
                    tracing::warn!("cannot record {}: {e}", step.sentence);
                }
                me.wake.notify_one();
            });
            running.insert(key, task.abort_handle());
        }
        Ok(())
    }

    /// Removes the archives of lineages nothing uses any more, then their
    /// records. Only a repository on this host is removed here.
    fn forget_stanzas(&self, stanzas: &[String]) -> Result<(), ApiErr> {
        let state = self.store.read()?;
        for stanza in stanzas {
            let Some(p) = state.protection.get(stanza) else {
                continue;
            };
            if p.repo_host.is_none() {
                let repo = std::path::Path::new(&p.repo_path);
                for part in ["archive", "backup"] {
                    let dir = repo.join(part).join(stanza);
                    match std::fs::remove_dir_all(&dir) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => {
                            tracing::warn!("cannot remove {}: {e}", dir.display());
                            return Ok(());
                        }
                    }
                }
            }
            tracing::info!(
                "stanza {stanza}: no database archives into it any more; its archive is removed"
            );
        }
        self.store.update(|st| {
            for s in stanzas {
                st.protection.remove(s);
            }
            Ok(())
        })
    }

    async fn protect(
        &self,
        state: &State,
        step: &ProtectStep,
    ) -> Result<Option<pgfollow_types::archive::ArchiveInfo>, String> {
        let db = state
            .databases
            .get(&step.database)
            .ok_or("the database is gone")?;
        let spec = archive_spec(state, &step.stanza).ok_or("the stanza is gone")?;
        let agent = self.hosts.agent(&db.host).map_err(|e| e.to_string())?;
        match step.action {
            ProtectAction::Configure => {
                agent
                    .archive_configure(&db.id, &spec)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(None)
            }
            ProtectAction::BaseBackup => {
                let info = agent
                    .archive_backup(&db.id, &spec)
                    .await
                    .map_err(|e| e.to_string())?;
                tracing::info!(
                    "{} ({} of {}): base backup done; it can be rolled back to {} at the earliest",
                    db.color,
                    db.name,
                    db.app,
                    info.earliest
                        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
                        .unwrap_or_else(|| "?".into())
                );
                Ok(Some(info))
            }
        }
    }
}
