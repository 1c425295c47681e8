//! `pg:diagnose` and the pg-extras commands: `pg:locks`, `pg:blocking`,
//! `pg:outliers`, `pg:bloat`, `pg:vacuum-stats`, `pg:index-usage`.
//!
//! Formats:
//! - `pg:diagnose [DB]`: one line per check, `RED: invalid-indexes: <what
//!   was found>`, its findings below it indented by two spaces; on a
//!   terminal the verdict is coloured (unless `NO_COLOR` is set). `--json`:
//!   the server's `Diagnosis`. The exit code is 0 whatever the verdicts.
//! - the pg-extras commands: a table with the report's columns (empty
//!   cells for NULL), or one sentence when it has no rows; `--json`: an
//!   array of objects, column → value (text, or null).

use std::io::IsTerminal;

use clap::Args;
use pgfollow_client::Client;
use pgfollow_types::api::{CheckStatus, Diagnosis, ExtrasReport, ExtrasTable};

use crate::args::{AppArg, JsonArg, DEFAULT_DB};
use crate::output::{print_json, table};

#[derive(Debug, Args)]
pub struct DiagnoseArgs {
    /// The database (default DATABASE_URL)
    #[arg(default_value = DEFAULT_DB)]
    pub db: String,
    #[command(flatten)]
    pub app: AppArg,
    #[command(flatten)]
    pub json: JsonArg,
}

/// The arguments of every pg-extras command.
#[derive(Debug, Args)]
pub struct ExtrasArgs {
    /// The database (default DATABASE_URL)
    #[arg(default_value = DEFAULT_DB)]
    pub db: String,
    #[command(flatten)]
    pub app: AppArg,
    #[command(flatten)]
    pub json: JsonArg,
}

pub async fn diagnose(client: &Client, args: DiagnoseArgs) -> anyhow::Result<()> {
    let d = client.diagnose(&args.app.app, &args.db).await?;
    if args.json.json {
        return print_json(&d);
    }
    let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    print!("{}", diagnosis_text(&d, colour));
    Ok(())
}

/// `GREEN`, `YELLOW`, `RED`, `SKIPPED`, in ANSI colour when `colour`.
pub fn verdict(status: CheckStatus, colour: bool) -> String {
    let word = status.as_str().to_uppercase();
    if !colour {
        return word;
    }
    let code = match status {
        CheckStatus::Green => "32",
        CheckStatus::Yellow => "33",
        CheckStatus::Red => "31",
        CheckStatus::Skipped => "2",
    };
    format!("\x1b[1;{code}m{word}\x1b[0m")
}

/// The checks, one line each, then their findings indented.
pub fn diagnosis_text(d: &Diagnosis, colour: bool) -> String {
    let mut out = String::new();
    for c in &d.checks {
        out.push_str(&format!(
            "{}: {}: {}\n",
            verdict(c.status, colour),
            c.name,
            c.message
        ));
        for line in &c.details {
            out.push_str(&format!("  {line}\n"));
        }
    }
    out
}

pub async fn extras(client: &Client, args: ExtrasArgs, report: ExtrasReport) -> anyhow::Result<()> {
    let t = client.extras(&args.app.app, &args.db, report).await?;
    if args.json.json {
        return print_json(&as_objects(&t));
    }
    if t.rows.is_empty() {
        println!("{}", nothing(report, &args.db));
    } else {
        print!("{}", extras_text(&t));
    }
    Ok(())
}

/// The table of a report, NULL as an empty cell.
pub fn extras_text(t: &ExtrasTable) -> String {
    let headers: Vec<&str> = t.columns.iter().map(String::as_str).collect();
    let rows: Vec<Vec<String>> = t
        .rows
        .iter()
        .map(|r| r.iter().map(|c| c.clone().unwrap_or_default()).collect())
        .collect();
    table(&headers, &rows)
}

/// Rows as objects, for `--json`.
pub fn as_objects(t: &ExtrasTable) -> Vec<serde_json::Map<String, serde_json::Value>> {
    t.rows
        .iter()
        .map(|r| {
            t.columns
                .iter()
                .zip(r)
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.clone().map_or(serde_json::Value::Null, Into::into),
                    )
                })
                .collect()
        })
        .collect()
}

/// What a report with no rows means.
pub fn nothing(report: ExtrasReport, db: &str) -> String {
    match report {
        ExtrasReport::Locks => format!("No locks held or awaited on {db}."),
        ExtrasReport::Blocking => format!("No query waits for a lock on {db}."),
        ExtrasReport::Outliers => format!("No statements recorded on {db} yet."),
        ExtrasReport::LongRunning => format!("No active queries on {db}."),
        ExtrasReport::IdleInTransaction => format!("No session is idle in a transaction on {db}."),
        ExtrasReport::UnusedIndexes => format!("No unused indexes on {db}."),
        ExtrasReport::InvalidIndexes => format!("No invalid indexes on {db}."),
        ExtrasReport::Sequences => format!("No sequences on {db}."),
        ExtrasReport::Slots => format!("No replication slots on {db}."),
        _ => format!("No tables on {db}."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgfollow_types::api::Check;

    #[test]
    fn checks_are_one_line_each_with_findings_below() {
        let d = Diagnosis {
            database: "WHITE".into(),
            checks: vec![
                Check {
                    name: "connections".into(),
                    status: CheckStatus::Green,
                    message: "3 of 120 connections used (3%)".into(),
                    details: vec![],
                },
                Check {
                    name: "invalid-indexes".into(),
                    status: CheckStatus::Red,
                    message: "1 invalid index".into(),
                    details: vec!["public.t_key".into()],
                },
            ],
        };
        assert_eq!(
            diagnosis_text(&d, false),
            "GREEN: connections: 3 of 120 connections used (3%)\n\
             RED: invalid-indexes: 1 invalid index\n  public.t_key\n"
        );
        assert!(diagnosis_text(&d, true).starts_with("\x1b[1;32mGREEN\x1b[0m: connections"));
        assert_eq!(
            verdict(CheckStatus::Yellow, true),
            "\x1b[1;33mYELLOW\x1b[0m"
        );
    }

    #[test]
    fn reports_print_as_tables_and_objects() {
        let t = ExtrasTable {
            columns: vec!["pid".into(), "relation".into()],
            rows: vec![vec![Some("42".into()), None]],
        };
        assert_eq!(extras_text(&t), "pid  relation\n42\n");
        assert_eq!(
            serde_json::to_value(as_objects(&t)).unwrap(),
            serde_json::json!([{"pid": "42", "relation": null}])
        );
        assert_eq!(nothing(ExtrasReport::Bloat, "WHITE"), "No tables on WHITE.");
    }
}
