//! `maintenance`, `maintenance:on`, `maintenance:off`, `pg:changeover` and
//! `pg:endpoint:mode`.
//!
//! Formats:
//! - `maintenance`: `on` or `off`.
//! - `maintenance:on`: `Enabling maintenance mode for APP... done`, and what
//!   it means for clients; `maintenance:off`: `Disabling maintenance mode for APP... done`.
//! - `pg:changeover DB`: one line per step with its duration,
//!   `  freeze      0.4 ms  new transactions wait at the endpoint`, then
//!   `Writes were held for 52.3 ms.` and the server's message. Before it,
//!   on a terminal only, a line redrawn while the server works:
//!   `Changing over to AMBER... AMBER is 3 commits behind (2 kB of WAL) (1s)`.
//! - `pg:endpoint:mode`: `transaction` or `session`; with a mode,
//!   `Setting the endpoint of APP to session pooling... done` and what it
//!   means for clients.
//! - `pg:endpoint:read`: `DATABASE_FOLLOWER_URL`'s lag limit, fallback and
//!   the followers serving it, as `Max Lag:`, `Fallback:`, `Serving:`, and
//!   one `Out:` line per follower that does not serve, with why; after a
//!   change, `Setting the read endpoint of APP... done` first.

use clap::Args;
use pgfollow_client::Client;
use std::time::{Duration, Instant};

use pgfollow_types::api::{ChangeoverReport, Lag};

use crate::args::{AppArg, JsonArg};
use crate::output::{human_bytes, human_secs, print_json};
use crate::progress::LiveLine;

#[derive(Debug, Args)]
pub struct ShowArgs {
    #[command(flatten)]
    pub app: AppArg,
    #[command(flatten)]
    pub json: JsonArg,
}

#[derive(Debug, Args)]
pub struct SetArgs {
    #[command(flatten)]
    pub app: AppArg,
}

#[derive(Debug, Args)]
pub struct ChangeoverArgs {
    /// The follower to move the app to
    pub db: String,
    #[command(flatten)]
    pub app: AppArg,
    /// Only check, and say what would be done
    #[arg(long)]
    pub dry_run: bool,
    /// How long the follower may take to catch up while writes are held
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub catch_up_timeout: u64,
    /// When a client keeps a transaction open past the 1 s freeze
    /// deadline, stop (writes resume on the old primary) instead of ending
    /// that client's connection
    #[arg(long)]
    pub no_kill: bool,
    /// The leader's host is gone: make the follower writable at once and
    /// route DATABASE_URL to it with what it had received (refused while
    /// the leader still answers)
    #[arg(long)]
    pub leader_lost: bool,
    #[command(flatten)]
    pub json: JsonArg,
}

#[derive(Debug, Args)]
pub struct EndpointModeArgs {
    /// `transaction` or `session`; without it, show the current mode
    pub mode: Option<pgfollow_types::api::PoolMode>,
    #[command(flatten)]
    pub app: AppArg,
    #[command(flatten)]
    pub json: JsonArg,
}

#[derive(Debug, Args)]
pub struct EndpointReadArgs {
    #[command(flatten)]
    pub app: AppArg,
    /// How far behind a follower may be and still serve reads: commits
    /// (`1000`) or seconds (`30s`)
    #[arg(long, value_name = "LIMIT")]
    pub max_lag: Option<pgfollow_types::reads::MaxLag>,
    /// With no follower serving, send reads to the leader
    #[arg(long, conflicts_with = "no_fallback")]
    pub fallback_to_leader: bool,
    /// With no follower serving, refuse connections (the default)
    #[arg(long)]
    pub no_fallback: bool,
    #[command(flatten)]
    pub json: JsonArg,
}

pub async fn endpoint_read(client: &Client, args: EndpointReadArgs) -> anyhow::Result<()> {
    let app = &args.app.app;
    let fallback = match (args.fallback_to_leader, args.no_fallback) {
        (true, _) => Some(true),
        (_, true) => Some(false),
        _ => None,
    };
    let change = pgfollow_types::reads::ReadEndpointChange {
        max_lag: args.max_lag,
        fallback_to_leader: fallback,
    };
    let setting = change != Default::default();
    let r = if setting {
        client.set_read_endpoint(app, &change).await?
    } else {
        client.read_endpoint(app).await?
    };
    if args.json.json {
        return print_json(&r);
    }
    if setting {
        println!("Setting the read endpoint of {app}... done");
    }
    print!("{}", read_block(&r));
    Ok(())
}

fn read_block(r: &pgfollow_types::reads::ReadEndpoint) -> String {
    let mut rows = vec![
        ("Max Lag", r.max_lag.to_string()),
        (
            "Fallback",
            if r.fallback_to_leader {
                "to the leader when no follower serves".to_string()
            } else {
                "none: with no follower serving, DATABASE_FOLLOWER_URL refuses connections"
                    .to_string()
            },
        ),
        (
            "Serving",
            match (r.serving.is_empty(), r.on_leader) {
                (false, _) => r.serving.join(", "),
                (true, true) => "the leader (no follower serves)".to_string(),
                (true, false) => "none".to_string(),
            },
        ),
    ];
    for (color, why) in &r.out {
        rows.push(("Out", format!("{color}: {why}")));
    }
    crate::output::aligned(&rows, 10)
}

pub async fn endpoint_mode(client: &Client, args: EndpointModeArgs) -> anyhow::Result<()> {
    let app = &args.app.app;
    let Some(mode) = args.mode else {
        let m = client.endpoint_mode(app).await?;
        if args.json.json {
            return print_json(&m);
        }
        println!("{}", m.pool_mode);
        return Ok(());
    };
    let m = client.set_endpoint_mode(app, mode).await?;
    if args.json.json {
        return print_json(&m);
    }
    println!("Setting the endpoint of {app} to {mode} pooling... done");
    println!("{}", mode_meaning(mode));
    Ok(())
}

fn mode_meaning(mode: pgfollow_types::api::PoolMode) -> &'static str {
    match mode {
        pgfollow_types::api::PoolMode::Transaction => {
            "Clients share server connections transaction by transaction; session state (SET, LISTEN, advisory locks, temporary tables) does not last past a transaction. Open connections were closed: clients reconnect."
        }
        pgfollow_types::api::PoolMode::Session => {
            "Each client keeps one server connection until it disconnects (clients beyond the pool wait for one); a changeover ends open sessions. Open connections were closed: clients reconnect."
        }
    }
}

pub async fn show(client: &Client, args: ShowArgs) -> anyhow::Result<()> {
    let m = client.maintenance(&args.app.app).await?;
    if args.json.json {
        return print_json(&m);
    }
    println!("{}", if m.on { "on" } else { "off" });
    Ok(())
}

pub async fn set(client: &Client, args: SetArgs, on: bool) -> anyhow::Result<()> {
    let app = &args.app.app;
    client.set_maintenance(app, on).await?;
    if on {
        println!("Enabling maintenance mode for {app}... done");
        println!("Connections through DATABASE_URL are refused (clients get an error) until `pgfollow maintenance:off --app {app}`.");
    } else {
        println!("Disabling maintenance mode for {app}... done");
    }
    Ok(())
}

pub async fn changeover(client: &Client, args: ChangeoverArgs) -> anyhow::Result<()> {
    let request = pgfollow_types::api::ChangeoverRequest {
        dry_run: args.dry_run,
        catch_up_timeout_secs: Some(args.catch_up_timeout),
        no_kill: args.no_kill,
        leader_lost: args.leader_lost,
    };
    let app = &args.app.app;
    let out = std::io::stdout();
    let live = std::io::IsTerminal::is_terminal(&out) && !args.json.json && !args.dry_run;
    let call = client.changeover(app, &args.db, &request);
    let report = if live {
        // While the server works (mostly: waiting for the follower to
        // catch up), a line says how far behind the follower is.
        let mut line = LiveLine::new(out, true);
        let started = Instant::now();
        tokio::pin!(call);
        loop {
            tokio::select! {
                answer = &mut call => {
                    line.clear()?;
                    break answer?;
                }
                // Once a second, and not at all in the usual changeover of
                // tens of milliseconds: pg:info's measurement must not
                // compete with the freeze it shows.
                _ = tokio::time::sleep(Duration::from_secs(1)) => {
                    let lag = client.database(app, &args.db).await.ok().and_then(|d| d.behind_by);
                    line.show(&changeover_line(&args.db, lag.as_ref(), started.elapsed()))?;
                }
            }
        }
    } else {
        call.await?
    };
    if args.json.json {
        return print_json(&report);
    }
    print!("{}", report_text(&report));
    Ok(())
}

/// The live line of a changeover in progress:
/// `Changing over to AMBER... AMBER is 3 commits behind (2s)`.
pub fn changeover_line(db: &str, lag: Option<&Lag>, waited: Duration) -> String {
    let behind = match lag {
        Some(l) => format!(
            "{db} is {} behind ({} of WAL)",
            l.commits_label(),
            human_bytes(l.bytes)
        ),
        None => "holding writes and catching up".to_string(),
    };
    format!(
        "Changing over to {db}... {behind} ({})",
        human_secs(waited.as_secs())
    )
}

/// The steps, their durations, the pause and the message.
pub fn report_text(r: &ChangeoverReport) -> String {
    let width = r.steps.iter().map(|s| s.name.len()).max().unwrap_or(0);
    let mut out = String::new();
    for s in &r.steps {
        if r.dry_run {
            out.push_str(&format!("  {:width$}  {}\n", s.name, s.detail));
        } else {
            out.push_str(&format!(
                "  {:width$}  {:>8.1} ms  {}\n",
                s.name, s.millis, s.detail
            ));
        }
    }
    if !r.dry_run {
        out.push_str(&format!(
            "Writes were held for {:.1} ms.\n",
            r.write_pause_ms
        ));
    }
    out.push_str(&r.message);
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgfollow_types::api::ChangeoverStep;

    #[test]
    fn the_live_line_says_how_far_behind() {
        let lag = Lag {
            commits: 3,
            more_than: false,
            bytes: 2048,
            seconds: 0.2,
            streaming: true,
        };
        assert_eq!(
            changeover_line("AMBER", Some(&lag), Duration::from_secs(2)),
            "Changing over to AMBER... AMBER is 3 commits behind (2 kB of WAL) (2s)"
        );
        assert_eq!(
            changeover_line("AMBER", None, Duration::ZERO),
            "Changing over to AMBER... holding writes and catching up (0s)"
        );
    }

    #[test]
    fn a_report_lists_steps_with_durations() {
        let step = |name: &str, millis: f64| ChangeoverStep {
            name: name.into(),
            millis,
            detail: format!("{name} detail"),
        };
        let r = ChangeoverReport {
            promoted: "CHARCOAL".into(),
            previous: "WHITE".into(),
            dry_run: false,
            steps: vec![step("freeze", 0.42), step("catch up", 12.0)],
            write_pause_ms: 52.34,
            message: "sushi now runs on CHARCOAL".into(),
        };
        assert_eq!(
            report_text(&r),
            "  freeze         0.4 ms  freeze detail\n  \
             catch up      12.0 ms  catch up detail\n\
             Writes were held for 52.3 ms.\n\
             sushi now runs on CHARCOAL\n"
        );
    }
}
