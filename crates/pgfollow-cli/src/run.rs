//! `run --app APP -- CMD ARGS...`: runs a program with the app's config vars
//! (its database URLs included) added to its environment, and exits with its
//! exit code.

use clap::Args;
use pgfollow_client::Client;
use tokio::process::Command;

use crate::args::AppArg;
use crate::child::run_foreground;

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub app: AppArg,
    /// The program and its arguments, after `--`
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub command: Vec<String>,
}

pub async fn run(client: &Client, args: RunArgs) -> anyhow::Result<std::process::ExitCode> {
    let vars = client.config(&args.app.app).await?.vars;
    let Some((program, rest)) = args.command.split_first() else {
        anyhow::bail!("give the command to run after --");
    };
    let mut cmd = Command::new(program);
    cmd.args(rest).envs(&vars);
    run_foreground(cmd, program).await
}
