//! `pg:unfollow` and `pg:promote`.
//!
//! Formats:
//! - `pg:unfollow DB`: after the confirmation, the server's message
//!   (`Unfollowing CHARCOAL... started: ...`); with `--wait`, then the
//!   operation's steps until it is done (`Unfollowing CHARCOAL... done`;
//!   see `progress.rs` for the terminal and plain forms).
//! - `pg:promote DB`: the server's message, one line per fact
//!   (`Promoting CHARCOAL to DATABASE_URL on sushi... done`, warnings).

use clap::Args;
use pgfollow_client::Client;
use pgfollow_types::api::PromoteRequest;

use crate::args::{AppArg, ConfirmArg, JsonArg};
use crate::confirm::confirm;
use crate::output::print_json;
use crate::progress::{follow, LiveLine};

#[derive(Debug, Args)]
pub struct UnfollowArgs {
    /// The follower
    pub db: String,
    #[command(flatten)]
    pub app: AppArg,
    #[command(flatten)]
    pub confirm: ConfirmArg,
    /// Then wait until the fork is writable, showing each step
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up waiting after this many seconds
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub timeout: u64,
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
    if !args.json.json {
        println!("{}", answer.message);
    }
    if args.wait {
        // With --json, stdout carries the JSON only: the steps go to stderr.
        let what = format!("Unfollowing {}", answer.color);
        let limit = std::time::Duration::from_secs(args.timeout);
        if args.json.json {
            let err = std::io::stderr();
            let live = std::io::IsTerminal::is_terminal(&err);
            follow(
                client,
                &answer.operation,
                &what,
                limit,
                &mut LiveLine::new(err, live),
            )
            .await?;
        } else {
            let out = std::io::stdout();
            let live = std::io::IsTerminal::is_terminal(&out);
            follow(
                client,
                &answer.operation,
                &what,
                limit,
                &mut LiveLine::new(out, live),
            )
            .await?;
        }
    }
    if args.json.json {
        return print_json(&answer);
    }
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
