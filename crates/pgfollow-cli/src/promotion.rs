//! `pg:unfollow` and `pg:promote`.
//!
//! Formats:
//! - `pg:unfollow DB`: after the confirmation, the server's message
//!   (`Unfollowing CHARCOAL... started: ...`); with `--wait`, then waits like
//!   `pg:wait` until the fork is ready.
//! - `pg:promote DB`: the server's message, one line per fact
//!   (`Promoting CHARCOAL to DATABASE_URL on sushi... done`, warnings).

use clap::Args;
use pgfollow_client::Client;
use pgfollow_types::api::PromoteRequest;

use crate::args::{AppArg, ConfirmArg, JsonArg};
use crate::confirm::confirm;
use crate::output::print_json;

#[derive(Debug, Args)]
pub struct UnfollowArgs {
    /// The follower
    pub db: String,
    #[command(flatten)]
    pub app: AppArg,
    #[command(flatten)]
    pub confirm: ConfirmArg,
    #[command(flatten)]
    pub json: JsonArg,
}

#[derive(Debug, Args)]
pub struct PromoteArgs {
    /// The database to put behind DATABASE_URL
    pub db: String,
    #[command(flatten)]
    pub app: AppArg,
    /// Promote it even while it is still preparing
    #[arg(long)]
    pub force: bool,
    /// If it is a follower, unfollow it first so that it becomes writable
    #[arg(long)]
    pub unfollow: bool,
    #[command(flatten)]
    pub json: JsonArg,
}

pub async fn unfollow(client: &Client, args: UnfollowArgs) -> anyhow::Result<()> {
    let app = &args.app.app;
    let what = format!(
        "{} will become writable and stop following its leader. This cannot be undone.",
        args.db
    );
    let confirmed = confirm(args.confirm.confirm.as_deref(), app, &what)?;
    let answer = client.unfollow(app, &args.db, &confirmed).await?;
    if args.json.json {
        return print_json(&answer);
    }
    println!("{}", answer.message);
    Ok(())
}

pub async fn promote(client: &Client, args: PromoteArgs) -> anyhow::Result<()> {
    let request = PromoteRequest {
        force: args.force,
        unfollow: args.unfollow,
    };
    let answer = client.promote(&args.app.app, &args.db, &request).await?;
    if args.json.json {
        return print_json(&answer);
    }
    println!("{}", answer.message);
    Ok(())
}
