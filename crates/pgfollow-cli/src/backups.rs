//! `pg:backups` and its subcommands: logical backups (pg_dump's custom
//! format) kept on the control plane's host, Heroku's words and names
//! (`b001`, scheduled `a001`).
//!
//! Formats:
//! - `pg:backups`: table `ID CREATED AT STATUS SIZE DATABASE`, or `No backups.`
//! - `pg:backups:capture`: the server's lines, then `Backing up ... done`.
//! - `pg:backups:restore`: `Restoring ... N%` lines, then `done`.
//! - `pg:backups:info`: aligned `Name`, `Database`, `Status`, `Type`,
//!   `PG Version`, `Started at`, `Finished at`, `Size`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;
use pgfollow_client::Client;
use pgfollow_types::backup::{BackupInfo, RestoreBackup, ScheduleBackups};

use crate::args::{AppArg, ConfirmArg, JsonArg, DEFAULT_DB};
use crate::confirm::confirm;
use crate::output::{aligned, human_bytes, print_json, table, utc_minute};

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub app: AppArg,
    #[command(flatten)]
    pub json: JsonArg,
}

#[derive(Debug, Args)]
pub struct CaptureArgs {
    /// The database to back up (default DATABASE_URL)
    pub db: Option<String>,
    #[command(flatten)]
    pub app: AppArg,
    /// Start it and return at once
    #[arg(long)]
    pub no_wait: bool,
    /// Give up waiting after this many seconds
    #[arg(long, default_value_t = 3600)]
    pub timeout: u64,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The backup (`b001`, `OTHERAPP::b001`) or a database (its latest backup)
    pub backup: String,
    /// The database to restore into (default DATABASE_URL); everything in it is replaced
    pub target: Option<String>,
    #[command(flatten)]
    pub app: AppArg,
    #[command(flatten)]
    pub confirm: ConfirmArg,
    /// Give up waiting after this many seconds
    #[arg(long, default_value_t = 3600)]
    pub timeout: u64,
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// The backup (default: the newest completed one)
    pub backup: Option<String>,
    #[command(flatten)]
    pub app: AppArg,
    #[command(flatten)]
    pub json: JsonArg,
}

#[derive(Debug, Args)]
pub struct DownloadArgs {
    /// The backup (default: the newest completed one)
    pub backup: Option<String>,
    #[command(flatten)]
    pub app: AppArg,
    /// Where to write it (default latest.dump, as Heroku's CLI does)
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    pub backup: String,
    #[command(flatten)]
    pub app: AppArg,
    #[command(flatten)]
    pub confirm: ConfirmArg,
}

#[derive(Debug, Args)]
pub struct AppOnlyArgs {
    #[command(flatten)]
    pub app: AppArg,
    #[command(flatten)]
    pub json: JsonArg,
}

#[derive(Debug, Args)]
pub struct ScheduleArgs {
    /// The database (default DATABASE_URL)
    pub db: Option<String>,
    #[command(flatten)]
    pub app: AppArg,
    /// The time of day, in UTC: '02:00 UTC'
    #[arg(long, value_name = "TIME")]
    pub at: String,
}

#[derive(Debug, Args)]
pub struct UnscheduleArgs {
    /// The database (default DATABASE_URL)
    pub db: Option<String>,
    #[command(flatten)]
    pub app: AppArg,
}

fn size(b: &BackupInfo) -> String {
    b.size_bytes.map(human_bytes).unwrap_or_else(|| "-".into())
}

pub fn backups_table(list: &[BackupInfo]) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|b| {
            vec![
                b.name.clone(),
                utc_minute(b.created_at),
                b.status.clone(),
                size(b),
                b.database.clone(),
            ]
        })
        .collect();
    table(&["ID", "CREATED AT", "STATUS", "SIZE", "DATABASE"], &rows)
}

pub fn info_text(b: &BackupInfo) -> String {
    let mut rows = vec![
        ("Name", b.name.clone()),
        ("Database", format!("{} ({})", b.database, b.database_name)),
        ("Status", b.status.clone()),
        (
            "Type",
            if b.scheduled { "Scheduled" } else { "Manual" }.to_string(),
        ),
        ("PG Version", b.pg_major.to_string()),
        ("Started at", utc_minute(b.created_at)),
        (
            "Finished at",
            b.finished_at.map(utc_minute).unwrap_or_else(|| "-".into()),
        ),
        ("Size", size(b)),
    ];
    if let Some(e) = &b.error {
        rows.push(("Error", e.clone()));
    }
    format!("=== Backup {}\n{}", b.name, aligned(&rows, 13))
}

pub async fn list(client: &Client, args: ListArgs) -> anyhow::Result<()> {
    let list = client.backups(&args.app.app).await?;
    if args.json.json {
        return print_json(&list);
    }
    if list.is_empty() {
        println!(
            "No backups. Capture one with `pgfollow pg:backups:capture --app {}`.",
            args.app.app
        );
    } else {
        println!("=== Backups");
        print!("{}", backups_table(&list));
    }
    Ok(())
}

/// Polls operation `id` every 300 ms until it is done (bounded), printing
/// `label... N%` whenever the percentage changes.
async fn follow(client: &Client, id: &str, label: &str, timeout: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(timeout);
    let mut last = None;
    loop {
        let op = client.operation(id).await?;
        match op.state.as_str() {
            "done" => {
                println!("{label}... done");
                return Ok(());
            }
            "failed" => bail!(
                "{label} failed: {}",
                op.error.unwrap_or_else(|| "no reason given".into())
            ),
            _ => {}
        }
        if op.progress_percent.is_some() && op.progress_percent != last {
            last = op.progress_percent;
            println!("{label}... {}%", op.progress_percent.unwrap_or(0));
        }
        if Instant::now() > deadline {
            bail!("{label} is still running after {timeout} s (operation {id}); check `pgfollow pg:backups`");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

pub async fn capture(client: &Client, args: CaptureArgs) -> anyhow::Result<()> {
    let app = &args.app.app;
    let started = client.capture_backup(app, args.db.as_deref()).await?;
    println!("{}", started.message.trim_end());
    if args.no_wait {
        return Ok(());
    }
    let label = format!(
        "Backing up {} to {}",
        started.backup.database, started.backup.name
    );
    follow(client, &started.operation, &label, args.timeout).await?;
    let b = client.backup(app, &started.backup.name).await?;
    println!("Backup {} complete: {}.", b.name, size(&b));
    Ok(())
}

pub async fn restore(client: &Client, args: RestoreArgs) -> anyhow::Result<()> {
    let app = &args.app.app;
    let target = args
        .target
        .clone()
        .unwrap_or_else(|| DEFAULT_DB.to_string());
    let confirmed = confirm(
        args.confirm.confirm.as_deref(),
        app,
        &format!("This replaces everything in {target} with {}", args.backup),
    )?;
    let req = RestoreBackup {
        backup: args.backup.clone(),
        target: args.target.clone(),
    };
    let started = client.restore_backup(app, &req, &confirmed).await?;
    println!("{}", started.message.trim_end());
    let label = format!("Restoring {} into {target}", started.backup.name);
    follow(client, &started.operation, &label, args.timeout).await
}

pub async fn info(client: &Client, args: BackupArgs) -> anyhow::Result<()> {
    let name = args.backup.as_deref().unwrap_or("latest");
    let b = client.backup(&args.app.app, name).await?;
    if args.json.json {
        return print_json(&b);
    }
    print!("{}", info_text(&b));
    Ok(())
}

pub async fn url(client: &Client, args: BackupArgs) -> anyhow::Result<()> {
    let name = args.backup.as_deref().unwrap_or("latest");
    let b = client.backup(&args.app.app, name).await?;
    let url = client.url(&["v1", "apps", &args.app.app, "backups", &b.name, "download"]);
    if args.json.json {
        return print_json(&serde_json::json!({ "backup": b.name, "url": url }));
    }
    println!("{url}");
    eprintln!("(the URL needs the API token: `Authorization: Bearer <token>`; `pgfollow pg:backups:download` sends it)");
    Ok(())
}

pub async fn download(client: &Client, args: DownloadArgs) -> anyhow::Result<()> {
    let name = args.backup.as_deref().unwrap_or("latest");
    let out = args
        .output
        .clone()
        .unwrap_or_else(|| PathBuf::from("latest.dump"));
    let n = client.download_backup(&args.app.app, name, &out).await?;
    println!(
        "Downloaded {name} to {} ({}).",
        out.display(),
        human_bytes(n)
    );
    Ok(())
}

pub async fn delete(client: &Client, args: DeleteArgs) -> anyhow::Result<()> {
    let app = &args.app.app;
    let confirmed = confirm(
        args.confirm.confirm.as_deref(),
        app,
        &format!("This deletes backup {}", args.backup),
    )?;
    let b = client.delete_backup(app, &args.backup, &confirmed).await?;
    println!("Deleting backup {} on {app}... done", b.name);
    Ok(())
}

pub async fn cancel(client: &Client, args: AppOnlyArgs) -> anyhow::Result<()> {
    let what = client.cancel_backups(&args.app.app).await?;
    for w in what {
        println!("Cancelled {w}.");
    }
    Ok(())
}

pub async fn schedule(client: &Client, args: ScheduleArgs) -> anyhow::Result<()> {
    let req = ScheduleBackups {
        database: args.db.clone(),
        at: args.at.clone(),
    };
    let s = client.schedule_backups(&args.app.app, &req).await?;
    println!("Scheduled daily backups of {} at {}.", s.database, s.at);
    Ok(())
}

pub async fn schedules(client: &Client, args: AppOnlyArgs) -> anyhow::Result<()> {
    let list = client.backup_schedules(&args.app.app).await?;
    if args.json.json {
        return print_json(&list);
    }
    if list.is_empty() {
        println!("No backup schedules on {}.", args.app.app);
    }
    for s in list {
        println!("{}: daily at {}", s.database, s.at);
    }
    Ok(())
}

pub async fn unschedule(client: &Client, args: UnscheduleArgs) -> anyhow::Result<()> {
    let db = args.db.clone().unwrap_or_else(|| DEFAULT_DB.to_string());
    let s = client.unschedule_backups(&args.app.app, &db).await?;
    println!(
        "Stopped daily backups of {} (they ran at {}).",
        s.database, s.at
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn b(name: &str, status: &str, size: Option<u64>) -> BackupInfo {
        let t = chrono::Utc
            .with_ymd_and_hms(2026, 12, 1, 22, 10, 0)
            .unwrap();
        BackupInfo {
            name: name.into(),
            app: "sushi".into(),
            database: "WHITE".into(),
            database_name: "postgresql-calm-1".into(),
            status: status.into(),
            scheduled: name.starts_with('a'),
            pg_major: 15,
            created_at: t,
            finished_at: size.map(|_| t),
            size_bytes: size,
            error: None,
            operation: "op-1".into(),
        }
    }

    #[test]
    fn the_backups_table() {
        assert_eq!(
            backups_table(&[
                b("b002", "running", None),
                b("a001", "completed", Some(1_258_291))
            ]),
            "ID    CREATED AT            STATUS     SIZE    DATABASE\n\
             b002  2026-12-01 22:10 UTC  running    -       WHITE\n\
             a001  2026-12-01 22:10 UTC  completed  1.2 MB  WHITE\n"
        );
    }

    #[test]
    fn backup_info_block() {
        let text = info_text(&b("a001", "completed", Some(2048)));
        assert!(
            text.starts_with("=== Backup a001\nName:        a001\n"),
            "{text}"
        );
        assert!(text.contains("Type:        Scheduled\n"), "{text}");
        assert!(
            text.contains("Finished at: 2026-12-01 22:10 UTC\n"),
            "{text}"
        );
        assert!(text.contains("Size:        2 kB\n"), "{text}");
    }
}
