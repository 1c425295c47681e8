//! `config`, `config:get`, `config:set`, `config:unset`: an app's config vars.
//! These commands exist to show values, database URLs (with passwords) included.
//!
//! Formats:
//! - `config`: `=== APP Config Vars`, then `KEY: value` lines aligned on the
//!   longest key; `APP has no config vars.` when empty.
//! - `config:get VAR`: the value alone; exit 1 when unset.
//! - `config:set K=V...`: `Setting K1, K2 on APP... done`.
//! - `config:unset K...`: `Unsetting K1, K2 on APP... done`.

use std::collections::BTreeMap;

use anyhow::bail;
use clap::Args;
use pgfollow_client::Client;
use pgfollow_types::api::{ConfigChange, ConfigVars};
use pgfollow_types::names::check_config_var;

use crate::args::{AppArg, JsonArg};
use crate::output::{aligned, label_width, print_json};

#[derive(Debug, Args)]
pub struct ShowArgs {
    #[command(flatten)]
    pub app: AppArg,
    #[command(flatten)]
    pub json: JsonArg,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// The config var to print
    pub var: String,
    #[command(flatten)]
    pub app: AppArg,
}

#[derive(Debug, Args)]
pub struct SetArgs {
    /// KEY=VALUE pairs
    #[arg(required = true, value_name = "KEY=VALUE")]
    pub pairs: Vec<String>,
    #[command(flatten)]
    pub app: AppArg,
}

#[derive(Debug, Args)]
pub struct UnsetArgs {
    /// Names of the config vars to remove
    #[arg(required = true, value_name = "KEY")]
    pub keys: Vec<String>,
    #[command(flatten)]
    pub app: AppArg,
}

pub async fn show(client: &Client, args: ShowArgs) -> anyhow::Result<()> {
    let vars = client.config(&args.app.app).await?;
    if args.json.json {
        return print_json(&vars);
    }
    print!("{}", config_text(&args.app.app, &vars));
    Ok(())
}

pub async fn get(client: &Client, args: GetArgs) -> anyhow::Result<()> {
    let vars = client.config(&args.app.app).await?;
    match vars.vars.get(&args.var) {
        Some(v) => {
            println!("{v}");
            Ok(())
        }
        None => bail!("config var {} is not set on {}", args.var, args.app.app),
    }
}

pub async fn set(client: &Client, args: SetArgs) -> anyhow::Result<()> {
    let set = parse_pairs(&args.pairs)?;
    let keys: Vec<&str> = set.keys().map(String::as_str).collect();
    let line = format!("Setting {} on {}... done", keys.join(", "), args.app.app);
    let change = ConfigChange {
        set: set.clone(),
        unset: vec![],
    };
    client.change_config(&args.app.app, &change).await?;
    println!("{line}");
    Ok(())
}

pub async fn unset(client: &Client, args: UnsetArgs) -> anyhow::Result<()> {
    for k in &args.keys {
        check_config_var(k)?;
    }
    let change = ConfigChange {
        set: BTreeMap::new(),
        unset: args.keys.clone(),
    };
    client.change_config(&args.app.app, &change).await?;
    println!(
        "Unsetting {} on {}... done",
        args.keys.join(", "),
        args.app.app
    );
    Ok(())
}

/// `K=V` arguments into a map; the value may contain `=` and be empty.
pub fn parse_pairs(pairs: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for p in pairs {
        let Some((k, v)) = p.split_once('=') else {
            bail!("{p:?} is not KEY=VALUE: write config:set KEY=VALUE ...");
        };
        check_config_var(k)?;
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

pub fn config_text(app: &str, vars: &ConfigVars) -> String {
    if vars.vars.is_empty() {
        return format!("{app} has no config vars.\n");
    }
    let rows: Vec<(&str, String)> = vars
        .vars
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    let width = label_width(rows.iter().map(|r| r.0));
    format!("=== {app} Config Vars\n{}", aligned(&rows, width))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs() {
        let m = parse_pairs(&["A=1".into(), "B=x=y".into(), "C=".into()]).unwrap();
        assert_eq!(m["A"], "1");
        assert_eq!(m["B"], "x=y");
        assert_eq!(m["C"], "");
        assert!(parse_pairs(&["A".into()]).is_err());
        assert!(parse_pairs(&["1A=2".into()]).is_err());
    }

    #[test]
    fn the_config_listing() {
        let mut vars = ConfigVars::default();
        vars.vars
            .insert("DATABASE_URL".into(), "postgres://x".into());
        vars.vars.insert("LANG".into(), "C".into());
        assert_eq!(
            config_text("sushi", &vars),
            "=== sushi Config Vars\nDATABASE_URL: postgres://x\nLANG:         C\n"
        );
        assert_eq!(
            config_text("sushi", &ConfigVars::default()),
            "sushi has no config vars.\n"
        );
    }
}
