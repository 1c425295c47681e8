//! `pg:credentials:url` (shows a password: that is its purpose) and
//! `pg:credentials:rotate` (never shows one).
//!
//! Formats:
//! - `pg:credentials:url DB`:
//!   ```text
//!   Connection information for DATABASE_URL on sushi:
//!     Host:     127.0.0.1
//!     Port:     15400
//!     Database: d_white
//!     User:     u_white
//!     Password: ...
//!   Connection URL:
//!     postgres://u_white:...@127.0.0.1:15400/d_white
//!   ```
//! - `pg:credentials:rotate DB`: `Rotating credentials of DB on APP... done`.

use clap::Args;
use pgfollow_client::Client;
use pgfollow_types::api::Credentials;

use crate::args::{AppArg, ConfirmArg, JsonArg, DEFAULT_DB};
use crate::confirm::confirm;
use crate::output::{aligned, print_json};

#[derive(Debug, Args)]
pub struct UrlArgs {
    /// The database (default DATABASE_URL)
    #[arg(default_value = DEFAULT_DB)]
    pub db: String,
    #[command(flatten)]
    pub app: AppArg,
    #[command(flatten)]
    pub json: JsonArg,
}

#[derive(Debug, Args)]
pub struct RotateArgs {
    /// The database (default DATABASE_URL)
    #[arg(default_value = DEFAULT_DB)]
    pub db: String,
    #[command(flatten)]
    pub app: AppArg,
    #[command(flatten)]
    pub confirm: ConfirmArg,
}

pub async fn url(client: &Client, args: UrlArgs) -> anyhow::Result<()> {
    let creds = client.credentials(&args.app.app, &args.db).await?;
    if args.json.json {
        return print_json(&creds);
    }
    print!("{}", credentials_text(&args.db, &args.app.app, &creds));
    Ok(())
}

pub async fn rotate(client: &Client, args: RotateArgs) -> anyhow::Result<()> {
    let app = &args.app.app;
    let what = format!(
        "{} will get a new password; anything still using the old one will no longer be able to connect.",
        args.db
    );
    let confirmed = confirm(args.confirm.confirm.as_deref(), app, &what)?;
    client.rotate_credentials(app, &args.db, &confirmed).await?;
    println!("Rotating credentials of {} on {app}... done", args.db);
    Ok(())
}

pub fn credentials_text(db: &str, app: &str, c: &Credentials) -> String {
    let rows = [
        ("Host", c.host.clone()),
        ("Port", c.port.to_string()),
        ("Database", c.database.clone()),
        ("User", c.user.clone()),
        ("Password", c.password.clone()),
    ];
    let details: String = aligned(&rows, 10)
        .lines()
        .map(|l| format!("  {l}\n"))
        .collect();
    format!(
        "Connection information for {db} on {app}:\n{details}Connection URL:\n  {}\n",
        c.url
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_details_and_the_url() {
        let c = Credentials {
            url: "postgres://u:p@127.0.0.1:15400/d".into(),
            host: "127.0.0.1".into(),
            port: 15400,
            database: "d".into(),
            user: "u".into(),
            password: "p".into(),
        };
        assert_eq!(
            credentials_text("DATABASE_URL", "sushi", &c),
            "Connection information for DATABASE_URL on sushi:\n  \
             Host:     127.0.0.1\n  \
             Port:     15400\n  \
             Database: d\n  \
             User:     u\n  \
             Password: p\n\
             Connection URL:\n  \
             postgres://u:p@127.0.0.1:15400/d\n"
        );
    }
}
