//! `pgfollow`: the command line of pgfollow. `pgfollow serve` runs the
//! control plane; every other command is a thin client of its HTTP API that
//! speaks the Heroku CLI's words (`addons:create --follow`, `pg:info`,
//! `pg:wait`, ...). It finds the API through PGFOLLOW_API/PGFOLLOW_TOKEN or
//! the API file in the data directory. A failure prints one line,
//! `error: <message>`, on stderr and exits 1; usage errors exit 2.

mod addons;
mod agent;
mod apps;
mod args;
mod backups;
mod billing;
mod child;
mod config;
mod confirm;
mod credentials;
mod diagnose;
mod maintenance;
mod output;
mod pg;
mod progress;
mod promotion;
mod psql;
mod run;
mod serve;
mod server;
mod upgrade;
mod wait;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pgfollow_client::Client;
use pgfollow_types::api::ExtrasReport;

use crate::args::JsonArg;

/// Follower databases on your own machines, with PostgreSQL streaming replication.
#[derive(Debug, Parser)]
#[command(name = "pgfollow", version, propagate_version = true)]
pub struct Cli {
    /// Data directory of `pgfollow serve` (its catalog and API file)
    #[arg(long, global = true, env = "PGFOLLOW_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the control plane and a local agent in the foreground
    Serve(serve::ServeArgs),
    /// Run an agent for another host, registered with a control plane
    Agent(agent::AgentArgs),
    /// Show the server's version and hosts
    Status(JsonArg),
    /// List the hosts that run databases
    Hosts(JsonArg),
    /// List the plans databases can be created on
    Plans(JsonArg),
    /// Show what an app's databases have cost so far
    Billing(billing::BillingArgs),
    /// List apps
    Apps(JsonArg),
    /// Create an app
    #[command(name = "apps:create")]
    AppsCreate(apps::CreateArgs),
    /// Destroy an app
    #[command(name = "apps:destroy")]
    AppsDestroy(apps::DestroyArgs),
    /// Show an app's config vars
    Config(config::ShowArgs),
    /// Print one config var's value
    #[command(name = "config:get")]
    ConfigGet(config::GetArgs),
    /// Set config vars
    #[command(name = "config:set")]
    ConfigSet(config::SetArgs),
    /// Remove config vars
    #[command(name = "config:unset")]
    ConfigUnset(config::UnsetArgs),
    /// Run a command with the app's config vars in its environment
    Run(run::RunArgs),
    /// List an app's databases
    Addons(addons::ListArgs),
    /// Create a database, or a follower with --follow (also addons:add)
    #[command(
        name = "addons:create",
        alias = "addons:add",
        disable_version_flag = true
    )]
    AddonsCreate(addons::CreateArgs),
    /// Destroy a database (also addons:remove)
    #[command(name = "addons:destroy", alias = "addons:remove")]
    AddonsDestroy(addons::DestroyArgs),
    /// Show details of an app's databases
    #[command(name = "pg:info")]
    PgInfo(pg::InfoArgs),
    /// Wait until databases are available
    #[command(name = "pg:wait")]
    PgWait(wait::WaitArgs),
    /// Open psql on a database
    #[command(name = "pg:psql")]
    PgPsql(psql::PsqlArgs),
    /// List a database's connections and their queries
    #[command(name = "pg:ps")]
    PgPs(pg::PsArgs),
    /// Cancel a backend's query, or end its connection with --force
    #[command(name = "pg:kill")]
    PgKill(pg::KillArgs),
    /// End every connection to a database
    #[command(name = "pg:killall")]
    PgKillall(pg::KillAllArgs),
    /// Check a database: connections, long queries, locks, bloat, indexes, lag, ...
    #[command(name = "pg:diagnose")]
    PgDiagnose(diagnose::DiagnoseArgs),
    /// Show the locks held or awaited on a database
    #[command(name = "pg:locks")]
    PgLocks(diagnose::ExtrasArgs),
    /// Show queries waiting for a lock and who holds it
    #[command(name = "pg:blocking")]
    PgBlocking(diagnose::ExtrasArgs),
    /// Show the statements that took the most time (pg_stat_statements)
    #[command(name = "pg:outliers")]
    PgOutliers(diagnose::ExtrasArgs),
    /// Show estimated table and index bloat
    #[command(name = "pg:bloat")]
    PgBloat(diagnose::ExtrasArgs),
    /// Show dead rows and (auto)vacuum of each table
    #[command(name = "pg:vacuum-stats")]
    PgVacuumStats(diagnose::ExtrasArgs),
    /// Show how often each table is read through an index
    #[command(name = "pg:index-usage")]
    PgIndexUsage(diagnose::ExtrasArgs),
    /// Stop a follower following: it becomes a writable fork
    #[command(name = "pg:unfollow")]
    PgUnfollow(promotion::UnfollowArgs),
    /// Upgrade a database to a newer PostgreSQL major with pg_upgrade (a
    /// follower is unfollowed first), or --dry-run it on a throwaway copy
    #[command(name = "pg:upgrade", disable_version_flag = true)]
    PgUpgrade(upgrade::UpgradeArgs),
    /// Put a database behind the app's DATABASE_URL
    #[command(name = "pg:promote")]
    PgPromote(promotion::PromoteArgs),
    /// Move the app to a follower with a write pause of milliseconds
    #[command(name = "pg:changeover")]
    PgChangeover(maintenance::ChangeoverArgs),
    /// Show whether the app is in maintenance mode
    Maintenance(maintenance::ShowArgs),
    /// Refuse connections through DATABASE_URL
    #[command(name = "maintenance:on")]
    MaintenanceOn(maintenance::SetArgs),
    /// Take connections through DATABASE_URL again
    #[command(name = "maintenance:off")]
    MaintenanceOff(maintenance::SetArgs),
    /// Show or set how DATABASE_URL's endpoint pools: transaction or session
    #[command(name = "pg:endpoint:mode")]
    PgEndpointMode(maintenance::EndpointModeArgs),
    /// Show or set DATABASE_FOLLOWER_URL's lag limit and fallback
    #[command(name = "pg:endpoint:read")]
    PgEndpointRead(maintenance::EndpointReadArgs),
    /// Show how to connect to a database, password included
    #[command(name = "pg:credentials:url")]
    PgCredentialsUrl(credentials::UrlArgs),
    /// Give a database a new password
    #[command(name = "pg:credentials:rotate")]
    PgCredentialsRotate(credentials::RotateArgs),
    /// List an app's backups
    #[command(name = "pg:backups")]
    PgBackups(backups::ListArgs),
    /// Back a database up (pg_dump's custom format)
    #[command(name = "pg:backups:capture")]
    PgBackupsCapture(backups::CaptureArgs),
    /// Restore a backup into a database, replacing its contents
    #[command(name = "pg:backups:restore")]
    PgBackupsRestore(backups::RestoreArgs),
    /// Show one backup
    #[command(name = "pg:backups:info")]
    PgBackupsInfo(backups::BackupArgs),
    /// Print where a backup can be downloaded
    #[command(name = "pg:backups:url")]
    PgBackupsUrl(backups::BackupArgs),
    /// Download a backup into a file
    #[command(name = "pg:backups:download")]
    PgBackupsDownload(backups::DownloadArgs),
    /// Delete a backup
    #[command(name = "pg:backups:delete")]
    PgBackupsDelete(backups::DeleteArgs),
    /// Cancel the app's running backups and restores
    #[command(name = "pg:backups:cancel")]
    PgBackupsCancel(backups::AppOnlyArgs),
    /// Back a database up every day at a UTC time
    #[command(name = "pg:backups:schedule")]
    PgBackupsSchedule(backups::ScheduleArgs),
    /// List the app's backup schedules
    #[command(name = "pg:backups:schedules")]
    PgBackupsSchedules(backups::AppOnlyArgs),
    /// Stop a database's daily backups
    #[command(name = "pg:backups:unschedule")]
    PgBackupsUnschedule(backups::UnscheduleArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", error_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error on one line: its message, then each cause it does not
/// already quote (library errors often repeat their source's words). A
/// list the server sends as lines starting `- ` (one per problem) keeps a
/// line per item.
pub fn error_line(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !line.contains(&cause) {
            line.push_str(": ");
            line.push_str(&cause);
        }
    }
    line.split("\n- ")
        .map(output::one_line)
        .collect::<Vec<_>>()
        .join("\n- ")
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let command = match cli.command {
        Command::Serve(args) => {
            serve::serve(args, cli.data_dir).await?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Agent(args) => {
            agent::agent(args, cli.data_dir).await?;
            return Ok(ExitCode::SUCCESS);
        }
        other => other,
    };
    let client = Client::discover(cli.data_dir)?;
    let c = &client;
    match command {
        Command::Serve(_) | Command::Agent(_) => unreachable!("handled above"),
        Command::Run(a) => return run::run(c, a).await,
        Command::PgPsql(a) => return psql::psql(c, a).await,
        Command::Status(a) => server::status(c, a).await?,
        Command::PgUnfollow(a) => promotion::unfollow(c, a).await?,
        Command::PgUpgrade(a) => upgrade::upgrade(c, a).await?,
        Command::PgChangeover(a) => maintenance::changeover(c, a).await?,
        Command::Maintenance(a) => maintenance::show(c, a).await?,
        Command::MaintenanceOn(a) => maintenance::set(c, a, true).await?,
        Command::MaintenanceOff(a) => maintenance::set(c, a, false).await?,
        Command::PgEndpointMode(a) => maintenance::endpoint_mode(c, a).await?,
        Command::PgEndpointRead(a) => maintenance::endpoint_read(c, a).await?,
        Command::PgPromote(a) => promotion::promote(c, a).await?,
        Command::Hosts(a) => server::hosts(c, a).await?,
        Command::Plans(a) => server::plans(c, a).await?,
        Command::Billing(a) => billing::billing(c, a).await?,
        Command::Apps(a) => apps::list(c, a).await?,
        Command::AppsCreate(a) => apps::create(c, a).await?,
        Command::AppsDestroy(a) => apps::destroy(c, a).await?,
        Command::Config(a) => config::show(c, a).await?,
        Command::ConfigGet(a) => config::get(c, a).await?,
        Command::ConfigSet(a) => config::set(c, a).await?,
        Command::ConfigUnset(a) => config::unset(c, a).await?,
        Command::Addons(a) => addons::list(c, a).await?,
        Command::AddonsCreate(a) => addons::create(c, a).await?,
        Command::AddonsDestroy(a) => addons::destroy(c, a).await?,
        Command::PgInfo(a) => pg::info(c, a).await?,
        Command::PgWait(a) => wait::wait_command(c, a).await?,
        Command::PgPs(a) => pg::ps(c, a).await?,
        Command::PgKill(a) => pg::kill(c, a).await?,
        Command::PgKillall(a) => pg::killall(c, a).await?,
        Command::PgDiagnose(a) => diagnose::diagnose(c, a).await?,
        Command::PgLocks(a) => diagnose::extras(c, a, ExtrasReport::Locks).await?,
        Command::PgBlocking(a) => diagnose::extras(c, a, ExtrasReport::Blocking).await?,
        Command::PgOutliers(a) => diagnose::extras(c, a, ExtrasReport::Outliers).await?,
        Command::PgBloat(a) => diagnose::extras(c, a, ExtrasReport::Bloat).await?,
        Command::PgVacuumStats(a) => diagnose::extras(c, a, ExtrasReport::VacuumStats).await?,
        Command::PgIndexUsage(a) => diagnose::extras(c, a, ExtrasReport::IndexUsage).await?,
        Command::PgCredentialsUrl(a) => credentials::url(c, a).await?,
        Command::PgCredentialsRotate(a) => credentials::rotate(c, a).await?,
        Command::PgBackups(a) => backups::list(c, a).await?,
        Command::PgBackupsCapture(a) => backups::capture(c, a).await?,
        Command::PgBackupsRestore(a) => backups::restore(c, a).await?,
        Command::PgBackupsInfo(a) => backups::info(c, a).await?,
        Command::PgBackupsUrl(a) => backups::url(c, a).await?,
        Command::PgBackupsDownload(a) => backups::download(c, a).await?,
        Command::PgBackupsDelete(a) => backups::delete(c, a).await?,
        Command::PgBackupsCancel(a) => backups::cancel(c, a).await?,
        Command::PgBackupsSchedule(a) => backups::schedule(c, a).await?,
        Command::PgBackupsSchedules(a) => backups::schedules(c, a).await?,
        Command::PgBackupsUnschedule(a) => backups::unschedule(c, a).await?,
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(line: &str) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("pgfollow").chain(line.split_whitespace()))
    }

    #[test]
    fn the_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_command_parses() {
        for line in [
            "serve",
            "serve --data-dir /tmp/d --listen 127.0.0.1:9000 --pg-bin /usr/lib/postgresql/15/bin --os-user pg --plans p.toml --pg-listen 0.0.0.0 --pg-ports 20000-20010",
            "status",
            "status --json",
            "hosts --json",
            "plans",
            "billing -a sushi --json",
            "apps",
            "apps:create sushi",
            "apps:destroy sushi --confirm sushi",
            "config --app sushi",
            "config:get DATABASE_URL -a sushi",
            "config:set A=1 B=2 -a sushi",
            "config:unset A B -a sushi",
            "run -a sushi -- env -0",
            "addons -a sushi --json",
            "addons:create standard-0 -a sushi --follow DATABASE_URL --wait --timeout 60 --json",
            "addons:create standard-0 -a sushi --version 18",
            "pg:backups -a sushi --json",
            "pg:backups:capture WHITE -a sushi",
            "pg:backups:restore b001 CHARCOAL -a sushi --confirm sushi",
            "pg:backups:restore sushi::b001 -a ramen --confirm ramen",
            "pg:backups:info b001 -a sushi",
            "pg:backups:url -a sushi",
            "pg:backups:download b001 -a sushi -o /tmp/x.dump",
            "pg:backups:delete b001 -a sushi --confirm sushi",
            "pg:backups:cancel -a sushi",
            "pg:backups:schedule DATABASE_URL -a sushi --at 02:00",
            "pg:backups:schedules -a sushi",
            "pg:backups:unschedule -a sushi",
            "addons:destroy WHITE -a sushi --confirm sushi",
            "addons:add heroku-postgresql:standard-0 -a sushi --follow HEROKU_POSTGRESQL_WHITE_URL",
            "addons:remove HEROKU_POSTGRESQL_WHITE -a sushi --confirm sushi",
            "pg:info -a sushi",
            "pg:info WHITE -a sushi --json",
            "pg:wait -a sushi --timeout 30 --interval-ms 100",
            "pg:wait sushi::DATABASE_URL -a other",
            "pg:psql -a sushi -c select",
            "pg:ps -a sushi",
            "pg:kill 42 WHITE -a sushi --force",
            "pg:kill 42 -a sushi",
            "pg:killall -a sushi",
            "pg:diagnose -a sushi --json",
            "pg:diagnose CHARCOAL -a sushi",
            "pg:locks -a sushi",
            "pg:blocking WHITE -a sushi --json",
            "pg:outliers -a sushi",
            "pg:bloat -a sushi",
            "pg:vacuum-stats -a sushi",
            "pg:index-usage -a sushi",
            "pg:credentials:url -a sushi --json",
            "pg:credentials:rotate WHITE -a sushi --confirm sushi",
        ] {
            if let Err(e) = parse(line) {
                panic!("{line}: {e}");
            }
        }
    }

    #[test]
    fn defaults_and_trailing_commands() {
        let Command::PgKill(k) = parse("pg:kill 42 -a sushi").unwrap().command else {
            panic!()
        };
        assert_eq!((k.pid, k.db.as_str(), k.force), (42, "DATABASE_URL", false));
        let Command::Run(r) = parse("run -a sushi -- ls -la --color").unwrap().command else {
            panic!()
        };
        assert_eq!(r.command, ["ls", "-la", "--color"]);
        let Command::Serve(s) = parse("serve").unwrap().command else {
            panic!()
        };
        assert_eq!(
            s.listen.to_string(),
            pgfollow_control::config::DEFAULT_LISTEN
        );
        assert_eq!(
            (s.pg_ports.0, s.pg_ports.1),
            pgfollow_control::config::DEFAULT_PG_PORTS
        );
        let Command::PgWait(w) = parse("pg:wait -a sushi").unwrap().command else {
            panic!()
        };
        assert_eq!((w.opts.interval_ms, w.opts.timeout), (500, None));
    }

    #[test]
    fn usage_errors() {
        for line in [
            "serve --pg-ports 9-1",
            "serve --listen nowhere",
            "pg:kill notapid -a sushi",
            "nosuchcommand",
            "config:set -a sushi",
        ] {
            let e = parse(line).map(|_| ()).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{line}");
        }
    }

    #[test]
    fn errors_fit_on_one_line_without_repeats() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = anyhow::Error::new(io).context("cannot read x: no such file; start it");
        assert_eq!(error_line(&e), "cannot read x: no such file; start it");
        let e = anyhow::anyhow!("disk\nfull").context("cannot run psql");
        assert_eq!(error_line(&e), "cannot run psql: disk full");
        let e = anyhow::anyhow!("refused:\n- one\n  thing\n- another");
        assert_eq!(error_line(&e), "refused:\n- one thing\n- another");
    }

    #[test]
    fn help_lists_every_command() {
        let help = Cli::command().render_long_help().to_string();
        for name in [
            "serve",
            "status",
            "hosts",
            "plans",
            "billing",
            "apps",
            "apps:create",
            "apps:destroy",
            "config",
            "config:get",
            "config:set",
            "config:unset",
            "run",
            "addons",
            "addons:create",
            "addons:destroy",
            "pg:info",
            "pg:wait",
            "pg:psql",
            "pg:ps",
            "pg:kill",
            "pg:killall",
            "pg:diagnose",
            "pg:locks",
            "pg:blocking",
            "pg:outliers",
            "pg:bloat",
            "pg:vacuum-stats",
            "pg:index-usage",
            "pg:credentials:url",
            "pg:credentials:rotate",
        ] {
            assert!(
                help.contains(&format!("  {name} ")),
                "{name} missing from\n{help}"
            );
        }
    }
}
