//! `billing`: what each of an app's databases has cost so far.
//!
//! Format: table `ADD-ON COLOR PLAN PRICE SINCE UNTIL COST` (price `$50/mo`,
//! times `2026-11-25 08:40 UTC`, until `running` while it runs, cost `$1.23`),
//! then `Total: $1.23`. With no databases, only the total line. Then, when
//! the app keeps any, its backup storage: `=== Backup storage` and a table
//! `ADD-ON COLOR PLAN LOGICAL ARCHIVE INCLUDED EXTRA` (logical backups,
//! the continuous-protection archive, what the plan includes, and what the
//! storage beyond that costs per month).

use clap::Args;
use pgfollow_client::Client;
use pgfollow_types::api::Billing;

use crate::args::{AppArg, JsonArg};
use crate::output::{human_bytes, money, print_json, table, utc_minute};

#[derive(Debug, Args)]
pub struct BillingArgs {
    #[command(flatten)]
    pub app: AppArg,
    #[command(flatten)]
    pub json: JsonArg,
}

pub async fn billing(client: &Client, args: BillingArgs) -> anyhow::Result<()> {
    let bill = client.billing(&args.app.app).await?;
    if args.json.json {
        return print_json(&bill);
    }
    print!("{}", billing_text(&bill));
    Ok(())
}

pub fn billing_text(bill: &Billing) -> String {
    let rows: Vec<Vec<String>> = bill
        .lines
        .iter()
        .map(|l| {
            vec![
                l.database.clone(),
                l.color.to_string(),
                l.plan.clone(),
                format!("${}/mo", l.price_per_month),
                utc_minute(l.started_at),
                l.ended_at
                    .map(utc_minute)
                    .unwrap_or_else(|| "running".into()),
                money(l.cost_usd),
            ]
        })
        .collect();
    let mut out = String::new();
    if !rows.is_empty() {
        out.push_str(&table(
            &["ADD-ON", "COLOR", "PLAN", "PRICE", "SINCE", "UNTIL", "COST"],
            &rows,
        ));
    }
    out.push_str(&format!("Total: {}\n", money(bill.total_usd)));
    if !bill.backup_storage.is_empty() {
        let rows: Vec<Vec<String>> = bill
            .backup_storage
            .iter()
            .map(|l| {
                vec![
                    l.database.clone(),
                    l.color.to_string(),
                    l.plan.clone(),
                    human_bytes(l.logical_bytes),
                    human_bytes(l.archive_bytes),
                    human_bytes(l.included_bytes),
                    format!("{}/mo", money(l.extra_usd_per_month)),
                ]
            })
            .collect();
        out.push_str("\n=== Backup storage\n");
        out.push_str(&table(
            &[
                "ADD-ON", "COLOR", "PLAN", "LOGICAL", "ARCHIVE", "INCLUDED", "EXTRA",
            ],
            &rows,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgfollow_types::api::BillingLine;
    use pgfollow_types::Color;

    #[test]
    fn a_line_per_database_and_the_total() {
        let bill = Billing {
            app: "sushi".into(),
            lines: vec![
                BillingLine {
                    database: "postgresql-curved-1".into(),
                    color: Color::parse("WHITE").unwrap(),
                    plan: "standard-0".into(),
                    price_per_month: 50,
                    started_at: "2026-11-25T08:40:00Z".parse().unwrap(),
                    ended_at: None,
                    seconds: 3600,
                    cost_usd: 0.0694,
                },
                BillingLine {
                    database: "postgresql-old-2".into(),
                    color: Color::parse("AMBER").unwrap(),
                    plan: "standard-2".into(),
                    price_per_month: 200,
                    started_at: "2026-11-24T08:00:00Z".parse().unwrap(),
                    ended_at: Some("2026-11-24T09:00:00Z".parse().unwrap()),
                    seconds: 3600,
                    cost_usd: 0.2778,
                },
            ],
            total_usd: 0.3472,
            backup_storage: vec![],
            backup_extra_usd_per_month: 0.0,
        };
        assert_eq!(
            billing_text(&bill),
            "ADD-ON               COLOR  PLAN        PRICE    SINCE                 UNTIL                 COST\n\
             postgresql-curved-1  WHITE  standard-0  $50/mo   2026-11-25 08:40 UTC  running               $0.07\n\
             postgresql-old-2     AMBER  standard-2  $200/mo  2026-11-24 08:00 UTC  2026-11-24 09:00 UTC  $0.28\n\
             Total: $0.35\n"
        );
        let mut with_backups = bill.clone();
        with_backups.backup_storage = vec![pgfollow_types::api::BackupStorageLine {
            database: "postgresql-curved-1".into(),
            color: Color::parse("WHITE").unwrap(),
            plan: "standard-0".into(),
            logical_bytes: 1 << 20,
            archive_bytes: 5 << 20,
            included_bytes: 64 << 30,
            extra_usd_per_month: 0.0,
        }];
        let text = billing_text(&with_backups);
        assert!(
            text.ends_with(
                "=== Backup storage\n\
                 ADD-ON               COLOR  PLAN        LOGICAL  ARCHIVE  INCLUDED  EXTRA\n\
                 postgresql-curved-1  WHITE  standard-0  1 MB     5 MB     64 GB     $0.00/mo\n"
            ),
            "{text}"
        );
    }
}
