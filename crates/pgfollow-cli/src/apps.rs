//! `apps`, `apps:create`, `apps:destroy`.
//!
//! Formats:
//! - `apps`: table `NAME CREATED DATABASES`, or `No apps yet: create one with
//!   \`pgfollow apps:create NAME\`.` when there are none.
//! - `apps:create NAME`: `Creating NAME... done`.
//! - `apps:destroy NAME`: `Destroying NAME... done`.

use clap::Args;
use pgfollow_client::Client;
use pgfollow_types::api::App;

use crate::args::{ConfirmArg, JsonArg};
use crate::confirm::confirm;
use crate::output::{list_or_dash, print_json, table, utc_minute};

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Name of the new app: 3 to 30 lowercase letters, digits and dashes
    pub name: String,
}

#[derive(Debug, Args)]
pub struct DestroyArgs {
    /// The app to destroy
    pub name: String,
    #[command(flatten)]
    pub confirm: ConfirmArg,
}

pub async fn list(client: &Client, args: JsonArg) -> anyhow::Result<()> {
    let apps = client.apps().await?;
    if args.json {
        return print_json(&apps);
    }
    print!("{}", apps_text(&apps));
    Ok(())
}

pub async fn create(client: &Client, args: CreateArgs) -> anyhow::Result<()> {
    let app = client.create_app(&args.name).await?;
    println!("Creating {}... done", app.name);
    Ok(())
}

pub async fn destroy(client: &Client, args: DestroyArgs) -> anyhow::Result<()> {
    let what = format!(
        "The app {} will be destroyed, with its config vars and the databases it owns. This cannot be undone.",
        args.name
    );
    let confirmed = confirm(args.confirm.confirm.as_deref(), &args.name, &what)?;
    let app = client.destroy_app(&args.name, &confirmed).await?;
    println!("Destroying {}... done", app.name);
    Ok(())
}

pub fn apps_text(apps: &[App]) -> String {
    if apps.is_empty() {
        return "No apps yet: create one with `pgfollow apps:create NAME`.\n".into();
    }
    let rows: Vec<Vec<String>> = apps
        .iter()
        .map(|a| {
            vec![
                a.name.clone(),
                utc_minute(a.created_at),
                list_or_dash(&a.databases),
            ]
        })
        .collect();
    table(&["NAME", "CREATED", "DATABASES"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_apps_table() {
        let apps = [App {
            name: "sushi".into(),
            created_at: "2026-11-25T08:40:00Z".parse().unwrap(),
            databases: vec!["postgresql-curved-1".into(), "postgresql-solid-2".into()],
        }];
        assert_eq!(
            apps_text(&apps),
            "NAME   CREATED               DATABASES\n\
             sushi  2026-11-25 08:40 UTC  postgresql-curved-1, postgresql-solid-2\n"
        );
        assert!(apps_text(&[]).contains("apps:create"));
    }
}
