//! What the API shows of the state: config vars with their database URLs,
//! add-on summaries, credentials and bills. Pure functions of a snapshot.

use chrono::{DateTime, Utc};
use pgfollow_types::api::{
    AddonSummary, BackupStorageLine, Billing, BillingLine, ConfigVars, Credentials,
};
use pgfollow_types::dbref::attachment_var;
use pgfollow_types::model::{AppRecord, DatabaseRecord, State};

/// The attachment that makes a database the app's main one.
pub const MAIN_ATTACHMENT: &str = "DATABASE";

/// `Fork/Follow` when the database can be followed.
pub const FORK_FOLLOW_AVAILABLE: &str = "Available";

/// `Fork/Follow` of a database.
pub fn fork_follow(db: &DatabaseRecord) -> String {
    if db.is_follower() {
        "Unavailable on followers".to_string()
    } else if db.plan.tier == pgfollow_types::Tier::Hobby {
        "Unsupported on the hobby tier".to_string()
    } else if db.state == pgfollow_types::api::DatabaseState::Available && !db.fork_pending {
        FORK_FOLLOW_AVAILABLE.to_string()
    } else {
        "Temporarily Unavailable".to_string()
    }
}

/// The live followers of database `id`.
pub fn followers_of<'a>(state: &'a State, id: &str) -> Vec<&'a DatabaseRecord> {
    state
        .databases
        .values()
        .filter(|d| d.is_live() && !d.hidden && d.following.as_deref() == Some(id))
        .collect()
}

/// How to reach `db`.
pub fn credentials(state: &State, db: &DatabaseRecord) -> Credentials {
    let host = state
        .hosts
        .get(&db.host)
        .map(|h| h.address.clone())
        .unwrap_or_else(|| "127.0.0.1".to_string());
    let url = format!(
        "postgres://{}:{}@{}:{}/{}",
        db.owner.name,
        db.owner.password,
        url_host(&host),
        db.port,
        db.database
    );
    Credentials {
        url,
        host,
        port: db.port,
        database: db.database.clone(),
        user: db.owner.name.clone(),
        password: db.owner.password.clone(),
    }
}

fn url_host(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// The config vars `db` is attached as in `app`, `DATABASE_URL` first.
pub fn attachment_vars(app: &AppRecord, db: &DatabaseRecord) -> Vec<String> {
    let mut names: Vec<&String> = app
        .attachments
        .iter()
        .filter(|(_, id)| **id == db.id)
        .map(|(name, _)| name)
        .collect();
    names.sort_by_key(|n| (n.as_str() != MAIN_ATTACHMENT, n.as_str()));
    names.into_iter().map(|n| attachment_var(n)).collect()
}

/// The attachments of `db` in the app that owns it.
pub fn owner_attachment_vars(state: &State, db: &DatabaseRecord) -> Vec<String> {
    state
        .apps
        .get(db.app.as_str())
        .map(|a| attachment_vars(a, db))
        .unwrap_or_default()
}

/// `DATABASE_URL`: the app's endpoints, in the order clients try them. With
/// several it is libpq's multi-host form: it asks for a writable server (an
/// endpoint on a host that was cut off may still route to the old primary,
/// now a standby: clients pass it by) and gives each host 2 s to answer
/// before the next is tried (a host that is cut off does not refuse, it is
/// silent).
pub fn database_url(state: &State, app: &AppRecord, db: &DatabaseRecord) -> String {
    let hosts: Vec<String> = app
        .endpoints
        .iter()
        .map(|ep| {
            format!(
                "{}:{}",
                url_host(&crate::provision::host_address(state, &ep.host)),
                ep.port
            )
        })
        .collect();
    let attrs = if hosts.len() > 1 {
        "?target_session_attrs=read-write&connect_timeout=2"
    } else {
        ""
    };
    format!(
        "postgres://{}:{}@{}/{}{attrs}",
        db.owner.name,
        db.owner.password,
        hosts.join(","),
        db.database
    )
}

/// The config var of the read endpoint.
pub const FOLLOWER_URL_VAR: &str = "DATABASE_FOLLOWER_URL";

/// `DATABASE_FOLLOWER_URL`: the read endpoint, once the app's main
/// database has followers and the endpoint has its places, one on the host
/// of each of the app's endpoints, in the same order. With several it is
/// libpq's multi-host form, each host given 2 s to answer before the next
/// is tried (as `DATABASE_URL`). Followers log in with their leader's role,
/// so the URL carries its credentials.
pub fn follower_url(state: &State, app: &AppRecord) -> Option<String> {
    let db = crate::endpoints::main_database(state, app)?;
    if crate::read_endpoint::read_followers(state, &db.id).is_empty() {
        return None;
    }
    let hosts: Vec<String> = app
        .endpoints
        .iter()
        .filter_map(|ep| app.read.place_on(&ep.host))
        .map(|p| {
            format!(
                "{}:{}",
                url_host(&crate::provision::host_address(state, &p.host)),
                p.port
            )
        })
        .collect();
    if hosts.is_empty() {
        return None;
    }
    let attrs = if hosts.len() > 1 {
        "?connect_timeout=2"
    } else {
        ""
    };
    Some(format!(
        "postgres://{}:{}@{}/{}{attrs}",
        db.owner.name,
        db.owner.password,
        hosts.join(","),
        db.database
    ))
}

/// The user's vars plus one URL per attachment. `DATABASE_URL` goes
/// through the app's endpoint, the colour vars straight to each database.
pub fn config_vars(state: &State, app: &AppRecord) -> ConfigVars {
    let mut vars = app.config.clone();
    for (name, id) in &app.attachments {
        if let Some(db) = state.databases.get(id) {
            let url = match (app.has_endpoint(), name.as_str() == MAIN_ATTACHMENT) {
                (true, true) => database_url(state, app, db),
                _ => credentials(state, db).url,
            };
            vars.insert(attachment_var(name), url);
        }
    }
    if let Some(url) = follower_url(state, app) {
        vars.insert(FOLLOWER_URL_VAR.to_string(), url);
    }
    ConfigVars { vars }
}

pub fn addon_summary(state: &State, db: &DatabaseRecord) -> AddonSummary {
    AddonSummary {
        name: db.name.clone(),
        color: db.color.clone(),
        app: db.app.to_string(),
        plan: db.plan.name.clone(),
        price: db.plan.price_label(),
        state: db.state,
        attachments: owner_attachment_vars(state, db),
        created_at: db.created_at,
    }
}

/// What each database of `app` has cost so far, charged by the second.
pub fn billing(state: &State, app: &str, now: DateTime<Utc>) -> Billing {
    let lines: Vec<BillingLine> = state
        .billing
        .iter()
        .filter(|b| b.app.as_str() == app)
        .map(|b| {
            let end = b.ended_at.unwrap_or(now);
            let seconds = (end - b.started_at).num_seconds().max(0);
            let cost_usd = f64::from(b.price_per_month) * seconds as f64
                / pgfollow_types::plan::SECONDS_PER_BILLING_MONTH as f64;
            BillingLine {
                database: b.database.clone(),
                color: b.color.clone(),
                plan: b.plan.clone(),
                price_per_month: b.price_per_month,
                started_at: b.started_at,
                ended_at: b.ended_at,
                seconds,
                cost_usd,
            }
        })
        .collect();
    let total_usd = lines.iter().map(|l| l.cost_usd).sum();
    let backup_storage = backup_storage(state, app);
    Billing {
        app: app.to_string(),
        lines,
        total_usd,
        backup_extra_usd_per_month: backup_storage.iter().map(|l| l.extra_usd_per_month).sum(),
        backup_storage,
    }
}

/// Backup storage of `app`, per database its backups were taken of (also
/// one since destroyed, whose backups are kept), against its plan.
pub fn backup_storage(state: &State, app: &str) -> Vec<BackupStorageLine> {
    use std::collections::BTreeMap;
    let mut by_db: BTreeMap<String, BackupStorageLine> = BTreeMap::new();
    let line = |id: &str, name: &str, color: &pgfollow_types::Color| {
        let plan = state.databases.get(id).map(|d| &d.plan);
        BackupStorageLine {
            database: name.to_string(),
            color: color.clone(),
            plan: plan.map_or_else(|| "-".to_string(), |p| p.name.clone()),
            logical_bytes: 0,
            archive_bytes: 0,
            included_bytes: plan.map_or(0, |p| p.backup_storage_included_bytes()),
            extra_usd_per_month: 0.0,
        }
    };
    for b in state.backups.values().filter(|b| b.app.as_str() == app) {
        by_db
            .entry(b.database.clone())
            .or_insert_with(|| line(&b.database, &b.database_name, &b.color))
            .logical_bytes += b.size_bytes.unwrap_or(0);
    }
    for db in state
        .databases
        .values()
        .filter(|d| d.app.as_str() == app && !d.hidden && !d.is_follower())
    {
        let archive = state
            .archive_of
            .get(&db.id)
            .and_then(|s| state.protection.get(s))
            .and_then(|p| p.info.as_ref())
            .map_or(0, |i| i.repo_bytes);
        if archive > 0 {
            by_db
                .entry(db.id.clone())
                .or_insert_with(|| line(&db.id, &db.name, &db.color))
                .archive_bytes += archive;
        }
    }
    by_db
        .into_values()
        .map(|mut l| {
            let over = (l.logical_bytes + l.archive_bytes).saturating_sub(l.included_bytes);
            l.extra_usd_per_month = over as f64 / f64::from(1u32 << 30)
                * pgfollow_types::plan::BACKUP_STORAGE_USD_PER_GB_MONTH;
            l
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgfollow_types::model::BillingRecord;
    use pgfollow_types::{AppName, Color};

    #[test]
    fn billing_is_pro_rata_and_stops_at_destroy() {
        let start: DateTime<Utc> = "2026-11-01T00:00:00Z".parse().unwrap();
        let now: DateTime<Utc> = "2026-11-16T00:00:00Z".parse().unwrap();
        let rec = |db: &str, price, ended: Option<&str>| BillingRecord {
            app: AppName::parse("sushi").unwrap(),
            database: db.into(),
            color: Color::parse("WHITE").unwrap(),
            plan: "standard-0".into(),
            price_per_month: price,
            started_at: start,
            ended_at: ended.map(|e| e.parse().unwrap()),
        };
        let mut state = State::default();
        state.billing.push(rec("a", 60, None));
        state
            .billing
            .push(rec("b", 30, Some("2026-11-04T00:00:00Z")));
        let mut other = rec("c", 1000, None);
        other.app = AppName::parse("other").unwrap();
        state.billing.push(other);
        let b = billing(&state, "sushi", now);
        assert_eq!(b.lines.len(), 2);
        assert!(
            (b.lines[0].cost_usd - 30.0).abs() < 1e-9,
            "{:?}",
            b.lines[0]
        );
        assert!((b.lines[1].cost_usd - 3.0).abs() < 1e-9, "{:?}", b.lines[1]);
        assert!((b.total_usd - 33.0).abs() < 1e-9);
    }

    #[test]
    fn backup_storage_counts_logical_backups_and_the_archive_against_the_plan() {
        let plan = |name: &str| {
            pgfollow_types::PlanCatalog::default()
                .get(name)
                .unwrap()
                .clone()
        };
        let db: DatabaseRecord = serde_json::from_value(serde_json::json!({
            "id": "db-1", "name": "postgresql-calm-1", "app": "sushi", "color": "WHITE",
            "plan": plan("hobby-dev"), "host": "local", "port": 5432, "database": "d1",
            "owner": {"name": "u", "password": "p"},
            "replication": {"name": "r", "password": "p"},
            "pg_major": 15, "created_at": Utc::now(), "desired": "running",
            "state": "available", "status_detail": null, "pg_version": null,
        }))
        .unwrap();
        let included = db.plan.backup_storage_included_bytes();
        let mut state = State::default();
        state.databases.insert(db.id.clone(), db.clone());
        let backup = |name: &str, database: &str, size: u64| pgfollow_types::backup::BackupRecord {
            name: name.into(),
            app: AppName::parse("sushi").unwrap(),
            database: database.into(),
            color: Color::parse("WHITE").unwrap(),
            database_name: format!("postgresql-{database}"),
            pg_major: 15,
            operation: "op".into(),
            created_at: Utc::now(),
            finished_at: Some(Utc::now()),
            size_bytes: Some(size),
            file: "x".into(),
        };
        state
            .backups
            .insert("sushi/b001".into(), backup("b001", "db-1", included));
        state
            .backups
            .insert("sushi/b002".into(), backup("b002", "db-1", 1 << 30));
        state
            .backups
            .insert("sushi/b003".into(), backup("b003", "db-gone", 10));
        state.archive_of.insert("db-1".into(), "db-1".into());
        state.protection.insert(
            "db-1".into(),
            pgfollow_types::archive::ProtectionRecord {
                stanza: "db-1".into(),
                created_at: Utc::now(),
                repo_path: "/r".into(),
                repo_host: None,
                configured: Default::default(),
                last_full: None,
                last_full_of: None,
                info: Some(pgfollow_types::archive::ArchiveInfo {
                    earliest: None,
                    newest: None,
                    backups: 1,
                    repo_bytes: 1 << 30,
                    newest_bytes: 0,
                }),
                last_error: None,
                failures: 0,
                failed_at: None,
            },
        );
        let lines = backup_storage(&state, "sushi");
        assert_eq!(lines.len(), 2, "{lines:?}");
        let white = &lines[0];
        assert_eq!(white.logical_bytes, included + (1 << 30));
        assert_eq!(white.archive_bytes, 1 << 30);
        // Two GB beyond what hobby-dev includes.
        assert!((white.extra_usd_per_month - 0.04).abs() < 1e-9, "{white:?}");
        let gone = &lines[1];
        assert_eq!((gone.plan.as_str(), gone.included_bytes), ("-", 0));
        assert!(gone.extra_usd_per_month > 0.0);
        assert!(backup_storage(&state, "other").is_empty());
    }
}
