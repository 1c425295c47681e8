//! `addons`, `addons:create`, `addons:destroy`: an app's databases.
//!
//! Formats:
//! - `addons`: table `NAME COLOR PLAN PRICE STATE ATTACHMENTS` (attachments
//!   comma-separated, `DATABASE_URL` first as the server orders them), or
//!   `APP has no add-ons.`.
//! - `addons:create PLAN`: the server's `message`, as it is (several lines).
//!   With `--wait`, then the `pg:wait` lines for the new database. With
//!   `--json`, only the `CreateAddonResponse` JSON on stdout, printed after
//!   the wait; the wait's lines then go to stderr.
//! - `addons:destroy DB`: the server's `message`.

use clap::Args;
use pgfollow_client::Client;
use pgfollow_types::api::{AddonSummary, CreateAddon};

use crate::args::{AppArg, ConfirmArg, JsonArg};
use crate::confirm::confirm;
use crate::output::{print_json, table};
use crate::wait::{wait, Progress, WaitOpts};

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub app: AppArg,
    #[command(flatten)]
    pub json: JsonArg,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The plan, from `pgfollow plans` (`standard-0`)
    pub plan: String,
    #[command(flatten)]
    pub app: AppArg,
    /// Make the new database a follower of this one (a colour, config var,
    /// OTHERAPP::VAR, add-on name or URL)
    #[arg(long, value_name = "DB")]
    pub follow: Option<String>,
    /// Premium and enterprise: commits wait for the HA standby, so a
    /// failover loses no acknowledged commit. A lost standby is given up
    /// after 2 s so commits go on; `--sync strict` keeps waiting instead
    #[arg(long, value_name = "strict", num_args = 0..=1, default_missing_value = "on",
          value_parser = ["on", "strict"])]
    pub sync: Option<String>,
    /// How the app's endpoint (DATABASE_URL) pools server connections:
    /// `transaction` (the default) or `session` (for SET, LISTEN/NOTIFY,
    /// advisory locks, temporary tables, WITH HOLD cursors)
    #[arg(long, value_name = "MODE")]
    pub pool_mode: Option<pgfollow_types::api::PoolMode>,
    /// PostgreSQL major version (`18`); default: the newest every host has
    /// (a follower always runs its leader's)
    #[arg(long = "version", id = "pg_major", value_name = "MAJOR")]
    pub version: Option<u32>,
    /// Make the new database a copy of this one as it was at a moment
    /// (`--to` or `--by`), from its continuous protection
    #[arg(long, value_name = "DB", conflicts_with = "follow")]
    pub rollback: Option<String>,
    /// With --rollback: the moment, in UTC (`'2026-12-02 01:50:00 UTC'`,
    /// or RFC 3339 with an offset)
    #[arg(
        long,
        value_name = "TIME",
        requires = "rollback",
        conflicts_with = "by"
    )]
    pub to: Option<String>,
    /// With --rollback: how long ago (`2h`, `90m`, `1d12h`)
    #[arg(long, value_name = "DURATION", requires = "rollback")]
    pub by: Option<String>,
    /// Then wait until the new database is available, as pg:wait does
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub wait_opts: WaitOpts,
    #[command(flatten)]
    pub json: JsonArg,
}

#[derive(Debug, Args)]
pub struct DestroyArgs {
    /// The database to destroy (a colour, config var or add-on name)
    pub db: String,
    #[command(flatten)]
    pub app: AppArg,
    #[command(flatten)]
    pub confirm: ConfirmArg,
}

pub async fn list(client: &Client, args: ListArgs) -> anyhow::Result<()> {
    let addons = client.addons(&args.app.app).await?;
    if args.json.json {
        return print_json(&addons);
    }
    print!("{}", addons_text(&args.app.app, &addons));
    Ok(())
}

pub async fn create(client: &Client, args: CreateArgs) -> anyhow::Result<()> {
    let app = &args.app.app;
    let req = CreateAddon {
        plan: args.plan.clone(),
        follow: args.follow.clone(),
        sync: args.sync.is_some(),
        sync_strict: args.sync.as_deref() == Some("strict"),
        pool_mode: args.pool_mode,
        version: args.version,
        rollback: args.rollback.clone(),
        to: args.to.clone(),
        by: args.by.clone(),
    };
    let resp = client.create_addon(app, &req).await?;
    if !args.json.json {
        println!("{}", resp.message.trim_end());
    }
    if args.wait {
        let name = resp.database.name.as_str();
        if args.json.json {
            let err = std::io::stderr();
            let live = std::io::IsTerminal::is_terminal(&err);
            wait(
                client,
                app,
                Some(name),
                args.wait_opts,
                &mut Progress::new(err, live),
            )
            .await?;
        } else {
            let out = std::io::stdout();
            let live = std::io::IsTerminal::is_terminal(&out);
            wait(
                client,
                app,
                Some(name),
                args.wait_opts,
                &mut Progress::new(out, live),
            )
            .await?;
        }
    }
    if args.json.json {
        print_json(&resp)?;
    }
    Ok(())
}

pub async fn destroy(client: &Client, args: DestroyArgs) -> anyhow::Result<()> {
    let app = &args.app.app;
    let what = format!(
        "The database {} and all of its data will be destroyed. This cannot be undone.",
        args.db
    );
    let confirmed = confirm(args.confirm.confirm.as_deref(), app, &what)?;
    let resp = client.destroy_addon(app, &args.db, &confirmed).await?;
    println!("{}", resp.message.trim_end());
    Ok(())
}

pub fn addons_text(app: &str, addons: &[AddonSummary]) -> String {
    if addons.is_empty() {
        return format!("{app} has no add-ons.\n");
    }
    let rows: Vec<Vec<String>> = addons
        .iter()
        .map(|a| {
            vec![
                a.name.clone(),
                a.color.to_string(),
                a.plan.clone(),
                a.price.clone(),
                a.state.to_string(),
                a.attachments.join(", "),
            ]
        })
        .collect();
    table(
        &["NAME", "COLOR", "PLAN", "PRICE", "STATE", "ATTACHMENTS"],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgfollow_types::api::DatabaseState;
    use pgfollow_types::Color;

    #[test]
    fn the_addons_table() {
        let a = AddonSummary {
            name: "postgresql-curved-48213".into(),
            color: Color::parse("WHITE").unwrap(),
            app: "sushi".into(),
            plan: "standard-0".into(),
            price: "$50/mo".into(),
            state: DatabaseState::Available,
            attachments: vec![
                "DATABASE_URL".into(),
                "PGFOLLOW_POSTGRESQL_WHITE_URL".into(),
            ],
            created_at: "2026-11-25T08:40:00Z".parse().unwrap(),
        };
        assert_eq!(
            addons_text("sushi", &[a]),
            "NAME                     COLOR  PLAN        PRICE   STATE      ATTACHMENTS\n\
             postgresql-curved-48213  WHITE  standard-0  $50/mo  available  DATABASE_URL, PGFOLLOW_POSTGRESQL_WHITE_URL\n"
        );
        assert_eq!(addons_text("sushi", &[]), "sushi has no add-ons.\n");
    }
}
