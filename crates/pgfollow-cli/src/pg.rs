//! `pg:info`, `pg:ps`, `pg:kill`, `pg:killall`.
//!
//! `pg:info` prints one block per database, blocks separated by a blank line:
//!
//! ```text
//! === PGFOLLOW_POSTGRESQL_WHITE_URL, DATABASE_URL
//! Plan:        standard-0
//! Status:      available
//! Connections: 3/120
//! PG Version:  15.18
//! Created:     2026-11-25 08:40 UTC
//! Data Size:   7.6 MB / 64 GB
//! Tables:      3
//! Fork/Follow: Available
//! Following:   PGFOLLOW_POSTGRESQL_CHARCOAL
//! Replication: logical (PostgreSQL 15 → 18)   (a logical follower only)
//! Behind By:   7 commits (1.2 kB of WAL, 0.3 s)
//! Followers:   PGFOLLOW_POSTGRESQL_AMBER, PGFOLLOW_POSTGRESQL_BLUE
//! Read Pool:   PGFOLLOW_POSTGRESQL_AMBER
//! Host:        host-a
//! Add-on:      postgresql-curved-48213
//! ```
//!
//! The heading lists the attachments (the add-on name when there are none).
//! Labels take 13 columns. Status is `available`, `preparing (43%)` (the
//! percentage only when the server reports one) or `failed: <detail>`;
//! unknown connections, sizes and table counts show `?`. `Following` appears
//! only on a follower and `Followers` only when there are some; both name
//! databases by colour as `PGFOLLOW_POSTGRESQL_<COLOUR>`. `Read Pool`
//! (once the app has a read endpoint): on the leader, the followers serving
//! `DATABASE_FOLLOWER_URL` (`none (…)` when none does); on a follower,
//! `Yes` or `No (why)`. With no databases:
//! `APP has no databases.`
//!
//! `pg:ps`: table `PID STATE SOURCE RUNNING FOR QUERY` (source is the
//! application name, else the user; the query on one line), or
//! `No backends on DB.`. `pg:kill`: `Cancelled the query of backend PID.` or,
//! with `--force`, `Terminated backend PID.`. `pg:killall`:
//! `Terminated N backends: P1, P2` or `No backends to terminate on DB.`.

use clap::Args;
use pgfollow_client::Client;
use pgfollow_types::api::{Backend, DatabaseInfo, KillRequest};
use pgfollow_types::names::COLOR_VAR_PREFIX;
use pgfollow_types::Color;

use crate::args::{AppArg, JsonArg, DEFAULT_DB};
use crate::output::{
    aligned, human_bytes, human_duration, human_gb, one_line, print_json, status_label, table,
    utc_minute,
};

/// Width of the `Label:` column of `pg:info`.
pub const INFO_LABEL_WIDTH: usize = 13;

#[derive(Debug, Args)]
pub struct InfoArgs {
    /// Only this database (a colour, config var, OTHERAPP::VAR or add-on name)
    pub db: Option<String>,
    #[command(flatten)]
    pub app: AppArg,
    #[command(flatten)]
    pub json: JsonArg,
}

#[derive(Debug, Args)]
pub struct PsArgs {
    /// The database (default DATABASE_URL)
    #[arg(default_value = DEFAULT_DB)]
    pub db: String,
    #[command(flatten)]
    pub app: AppArg,
    #[command(flatten)]
    pub json: JsonArg,
}

#[derive(Debug, Args)]
pub struct KillArgs {
    /// The backend's process id, from pg:ps
    pub pid: i32,
    /// The database (default DATABASE_URL)
    #[arg(default_value = DEFAULT_DB)]
    pub db: String,
    #[command(flatten)]
    pub app: AppArg,
    /// Terminate the connection instead of cancelling its query
    #[arg(short = 'f', long)]
    pub force: bool,
    #[command(flatten)]
    pub json: JsonArg,
}

#[derive(Debug, Args)]
pub struct KillAllArgs {
    /// The database (default DATABASE_URL)
    #[arg(default_value = DEFAULT_DB)]
    pub db: String,
    #[command(flatten)]
    pub app: AppArg,
    #[command(flatten)]
    pub json: JsonArg,
}

pub async fn info(client: &Client, args: InfoArgs) -> anyhow::Result<()> {
    let app = &args.app.app;
    let dbs = match &args.db {
        Some(db) => vec![client.database(app, db).await?],
        None => client.info(app).await?,
    };
    if args.json.json {
        return match &args.db {
            Some(_) => print_json(&dbs[0]),
            None => print_json(&dbs),
        };
    }
    if dbs.is_empty() {
        println!("{app} has no databases.");
        return Ok(());
    }
    let blocks: Vec<String> = dbs.iter().map(info_block).collect();
    print!("{}", blocks.join("\n"));
    Ok(())
}

/// One database's `pg:info` block (see the module doc for the format).
pub fn info_block(db: &DatabaseInfo) -> String {
    let heading = if db.attachments.is_empty() {
        db.name.clone()
    } else {
        db.attachments.join(", ")
    };
    let or_unknown = |v: Option<String>| v.unwrap_or_else(|| "?".into());
    let mut rows: Vec<(&str, String)> = vec![
        ("Plan", db.plan.clone()),
        (
            "Status",
            status_label(db.state, db.progress_percent, db.status_detail.as_deref()),
        ),
        (
            "Connections",
            format!(
                "{}/{}",
                or_unknown(db.connections_used.map(|n| n.to_string())),
                db.connection_limit
            ),
        ),
        ("PG Version", db.pg_version.clone()),
        ("Created", utc_minute(db.created_at)),
        (
            "Data Size",
            format!(
                "{} / {}",
                or_unknown(db.data_size_bytes.map(human_bytes)),
                human_gb(db.storage_limit_gb)
            ),
        ),
        ("Tables", or_unknown(db.tables.map(|n| n.to_string()))),
        ("Fork/Follow", db.fork_follow.clone()),
    ];
    if let Some(ha) = &db.ha_status {
        rows.push(("HA Status", ha.clone()));
    }
    if let Some(leader) = &db.following {
        rows.push(("Following", color_name(leader)));
        if let Some(r) = &db.replication {
            rows.push(("Replication", r.clone()));
        }
        let behind = match &db.behind_by {
            Some(lag) => format!(
                "{} ({} of WAL, {:.1} s){}",
                lag.commits_label(),
                human_bytes(lag.bytes),
                lag.seconds,
                if lag.streaming { "" } else { ", not streaming" }
            ),
            None => "?".to_string(),
        };
        rows.push(("Behind By", behind));
    }
    if let Some(r) = &db.serves_reads {
        let label = match (&r.serves, &r.why) {
            (true, Some(why)) => format!("Yes ({why})"),
            (true, None) => "Yes".to_string(),
            (false, Some(why)) => format!("No ({why})"),
            (false, None) => "No".to_string(),
        };
        rows.push(("Read Pool", label));
    }
    if !db.followers.is_empty() {
        let names: Vec<String> = db.followers.iter().map(|f| color_name(f)).collect();
        rows.push(("Followers", names.join(", ")));
    }
    if let Some(serving) = &db.serving_reads {
        let label = if serving.is_empty() {
            "none (DATABASE_FOLLOWER_URL refuses connections)".to_string()
        } else {
            serving
                .iter()
                .map(|f| color_name(f))
                .collect::<Vec<_>>()
                .join(", ")
        };
        rows.push(("Read Pool", label));
    }
    if let Some(b) = &db.last_backup {
        rows.push((
            "Last Backup",
            format!(
                "{} ({}, {})",
                b.name,
                utc_minute(b.finished_at),
                human_bytes(b.size_bytes)
            ),
        ));
    }
    if let Some(r) = &db.rollback {
        rows.push(("Rollback", rollback_label(r)));
        if let Some(at) = r.last_base_backup {
            rows.push((
                "Base Backup",
                format!(
                    "{} ({}; archive {})",
                    utc_minute(at),
                    or_unknown(r.last_base_backup_bytes.map(human_bytes)),
                    or_unknown(r.repo_bytes.map(human_bytes))
                ),
            ));
        }
    }
    rows.push(("Host", db.host.clone()));
    rows.push(("Add-on", db.name.clone()));
    format!("=== {heading}\n{}", aligned(&rows, INFO_LABEL_WIDTH))
}

/// `earliest from 2026-12-02 01:50 UTC`, else why not yet.
fn rollback_label(r: &pgfollow_types::archive::RollbackInfo) -> String {
    let at = |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%d %H:%M:%S UTC").to_string();
    match (r.earliest, &r.error, &r.detail) {
        (Some(t), None, _) => format!("earliest from {}", at(t)),
        (Some(t), Some(e), _) => format!("earliest from {} (its last step failed: {e})", at(t)),
        (None, Some(e), _) => format!("unavailable: {e}"),
        (None, None, Some(d)) => format!("not yet ({d})"),
        (None, None, None) => "not yet".to_string(),
    }
}

/// `CHARCOAL` → `PGFOLLOW_POSTGRESQL_CHARCOAL`; anything else as it is.
fn color_name(s: &str) -> String {
    match Color::parse(s) {
        Ok(c) => format!("{COLOR_VAR_PREFIX}{c}"),
        Err(_) => s.to_string(),
    }
}

pub async fn ps(client: &Client, args: PsArgs) -> anyhow::Result<()> {
    let backends = client.ps(&args.app.app, &args.db).await?;
    if args.json.json {
        return print_json(&backends);
    }
    if backends.is_empty() {
        println!("No backends on {}.", args.db);
    } else {
        print!("{}", ps_table(&backends));
    }
    Ok(())
}

pub fn ps_table(backends: &[Backend]) -> String {
    let rows: Vec<Vec<String>> = backends
        .iter()
        .map(|b| {
            let source = if b.application_name.is_empty() {
                b.user.clone()
            } else {
                b.application_name.clone()
            };
            let state = if b.waiting {
                format!("{} (waiting)", b.state)
            } else {
                b.state.clone()
            };
            vec![
                b.pid.to_string(),
                state,
                source,
                human_duration(b.running_for_secs),
                one_line(&b.query),
            ]
        })
        .collect();
    table(&["PID", "STATE", "SOURCE", "RUNNING FOR", "QUERY"], &rows)
}

pub async fn kill(client: &Client, args: KillArgs) -> anyhow::Result<()> {
    let req = KillRequest {
        pid: args.pid,
        force: args.force,
    };
    let resp = client.kill(&args.app.app, &args.db, &req).await?;
    if args.json.json {
        return print_json(&resp);
    }
    if !resp.signalled {
        anyhow::bail!(
            "backend {} was not signalled: it is not running on {} (see pg:ps)",
            resp.pid,
            args.db
        );
    }
    if resp.force {
        println!("Terminated backend {}.", resp.pid);
    } else {
        println!("Cancelled the query of backend {}.", resp.pid);
    }
    Ok(())
}

pub async fn killall(client: &Client, args: KillAllArgs) -> anyhow::Result<()> {
    let resp = client.killall(&args.app.app, &args.db).await?;
    if args.json.json {
        return print_json(&resp);
    }
    if resp.terminated.is_empty() {
        println!("No backends to terminate on {}.", args.db);
    } else {
        let pids: Vec<String> = resp.terminated.iter().map(i32::to_string).collect();
        println!(
            "Terminated {} backends: {}",
            resp.terminated.len(),
            pids.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use pgfollow_types::api::DatabaseState;

    /// Built from JSON so that fields the server adds later (with serde
    /// defaults) do not break these tests.
    pub(crate) fn white() -> DatabaseInfo {
        serde_json::from_value(serde_json::json!({
            "name": "postgresql-curved-48213",
            "color": "WHITE",
            "app": "sushi",
            "attachments": ["PGFOLLOW_POSTGRESQL_WHITE_URL", "DATABASE_URL"],
            "plan": "standard-0",
            "state": "available",
            "status_detail": null,
            "progress_percent": null,
            "connections_used": 3,
            "connection_limit": 120,
            "pg_version": "15.18",
            "created_at": "2026-11-25T08:40:12Z",
            "data_size_bytes": 7_969_177,
            "storage_limit_gb": 64,
            "tables": 3,
            "fork_follow": "Available",
            "host": "host-a",
            "followers": ["AMBER", "BLUE"],
        }))
        .unwrap()
    }

    #[test]
    fn a_leader_block() {
        assert_eq!(
            info_block(&white()),
            "=== PGFOLLOW_POSTGRESQL_WHITE_URL, DATABASE_URL\n\
             Plan:        standard-0\n\
             Status:      available\n\
             Connections: 3/120\n\
             PG Version:  15.18\n\
             Created:     2026-11-25 08:40 UTC\n\
             Data Size:   7.6 MB / 64 GB\n\
             Tables:      3\n\
             Fork/Follow: Available\n\
             Followers:   PGFOLLOW_POSTGRESQL_AMBER, PGFOLLOW_POSTGRESQL_BLUE\n\
             Host:        host-a\n\
             Add-on:      postgresql-curved-48213\n"
        );
    }

    #[test]
    fn a_preparing_follower_block() {
        let mut db = white();
        db.attachments = vec!["PGFOLLOW_POSTGRESQL_AMBER_URL".into()];
        db.state = DatabaseState::Preparing;
        db.progress_percent = Some(43);
        db.connections_used = None;
        db.data_size_bytes = None;
        db.tables = None;
        db.fork_follow = "Unavailable on followers".into();
        db.following = Some("WHITE".into());
        db.followers = vec![];
        let block = info_block(&db);
        assert!(
            block.starts_with("=== PGFOLLOW_POSTGRESQL_AMBER_URL\n"),
            "{block}"
        );
        assert!(
            block.contains("\nStatus:      preparing (43%)\n"),
            "{block}"
        );
        assert!(block.contains("\nConnections: ?/120\n"), "{block}");
        assert!(block.contains("\nData Size:   ? / 64 GB\n"), "{block}");
        assert!(block.contains("\nTables:      ?\n"), "{block}");
        assert!(
            block.contains("\nFollowing:   PGFOLLOW_POSTGRESQL_WHITE\nBehind By:   ?\n"),
            "{block}"
        );
        db.behind_by = Some(pgfollow_types::api::Lag {
            commits: 7,
            more_than: false,
            bytes: 1200,
            seconds: 0.25,
            streaming: true,
        });
        let block = info_block(&db);
        assert!(
            block.contains("\nBehind By:   7 commits (1.2 kB of WAL, 0.2 s)\n"),
            "{block}"
        );
        assert!(!block.contains("Followers"), "{block}");
    }

    #[test]
    fn a_failed_block_without_attachments() {
        let mut db = white();
        db.attachments = vec![];
        db.state = DatabaseState::Failed;
        db.status_detail = Some("pg_basebackup exited with 1".into());
        let block = info_block(&db);
        assert!(
            block.starts_with("=== postgresql-curved-48213\n"),
            "{block}"
        );
        assert!(block.contains("\nStatus:      failed: pg_basebackup exited with 1\n"));
    }

    #[test]
    fn the_ps_table() {
        let b = Backend {
            pid: 4242,
            user: "u_white".into(),
            application_name: String::new(),
            client_addr: Some("127.0.0.1".into()),
            state: "active".into(),
            waiting: false,
            running_for_secs: 245.0,
            query: "SELECT\n  pg_sleep(600)".into(),
        };
        assert_eq!(
            ps_table(&[b]),
            "PID   STATE   SOURCE   RUNNING FOR  QUERY\n\
             4242  active  u_white  4m 05s       SELECT pg_sleep(600)\n"
        );
    }
}
