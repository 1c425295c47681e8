//! `pg:upgrade DB --version 18 [--dry-run]`: starts the upgrade (after the
//! confirmation, unless a dry run) and waits, bounded, until it is done.
//!
//! Format: the server's first line (`Upgrading CHARCOAL to PostgreSQL 18:
//! ...`), then `done: <what it found>` (a dry run: how long pg_upgrade
//! took on the copy), or the failure as an error.

use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;
use pgfollow_client::Client;
use pgfollow_types::api::UpgradeRequest;

use crate::args::{AppArg, ConfirmArg};
use crate::confirm::confirm;

#[derive(Debug, Args)]
pub struct UpgradeArgs {
    /// The database (a follower: it is unfollowed first, as a fork)
    pub db: String,
    #[command(flatten)]
    pub app: AppArg,
    /// The PostgreSQL major to upgrade to
    #[arg(long = "version", id = "pg_major", value_name = "MAJOR")]
    pub version: u32,
    /// Upgrade a throwaway copy and report how long it took; DB is not touched
    #[arg(long)]
    pub dry_run: bool,
    /// Seconds to wait for the upgrade
    #[arg(long, default_value_t = 3600)]
    pub timeout: u64,
    #[command(flatten)]
    pub confirm: ConfirmArg,
}

pub async fn upgrade(client: &Client, args: UpgradeArgs) -> anyhow::Result<()> {
    let app = &args.app.app;
    let confirmed = if args.dry_run {
        None
    } else {
        let what = format!(
            "{} will be upgraded to PostgreSQL {} (a follower stops following first). This cannot be undone.",
            args.db, args.version
        );
        Some(confirm(args.confirm.confirm.as_deref(), app, &what)?)
    };
    let request = UpgradeRequest {
        version: args.version,
        dry_run: args.dry_run,
        confirm: confirmed,
    };
    let answer = client.upgrade(app, &args.db, &request).await?;
    println!("{}", answer.message);
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    loop {
        let op = client.operation(&answer.operation).await?;
        match op.state.as_str() {
            "done" => {
                println!("done: {}", op.detail.unwrap_or_default());
                return Ok(());
            }
            "failed" => bail!(
                "the upgrade of {} failed: {}",
                answer.color,
                op.error.unwrap_or_else(|| "no reason given".into())
            ),
            _ => {}
        }
        if Instant::now() >= deadline {
            bail!(
                "the upgrade of {} is still running after {} s (operation {}); `pgfollow pg:info` shows when it is done",
                answer.color,
                args.timeout,
                answer.operation
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
