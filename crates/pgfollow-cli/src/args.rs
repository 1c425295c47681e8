//! Options several commands share.

use clap::Args;

/// `-a/--app APP`, also from PGFOLLOW_APP.
#[derive(Debug, Clone, Args)]
pub struct AppArg {
    /// The app to act on
    #[arg(short = 'a', long = "app", env = "PGFOLLOW_APP", value_name = "APP")]
    pub app: String,
}

/// `--json`: print the API's answer as JSON instead of text.
#[derive(Debug, Clone, Copy, Default, Args)]
pub struct JsonArg {
    /// Print the answer as JSON
    #[arg(long)]
    pub json: bool,
}

/// `--confirm NAME` of destructive commands.
#[derive(Debug, Clone, Default, Args)]
pub struct ConfirmArg {
    /// Skip the question by typing the name here
    #[arg(long, value_name = "NAME")]
    pub confirm: Option<String>,
}

/// The database a command is about, `DATABASE_URL` unless given.
pub const DEFAULT_DB: &str = "DATABASE_URL";
