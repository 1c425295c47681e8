//! `status`, `hosts` and `plans`: what the control plane runs on and sells.
//!
//! Formats:
//! - `status`: aligned `Server: pgfollow VERSION`, `API: URL`,
//!   `Hosts: N`, then a blank line and the `hosts` table.
//! - `hosts`: table `NAME ZONE AGENT PG DATABASES` (zone `-` when none, agent `up`/`down`,
//!   databases comma-separated add-on names or `-`).
//! - `plans`: table `NAME TIER CONNECTIONS MEMORY STORAGE PRICE`
//!   (memory is shared_buffers, `128 MB`; storage `64 GB`; price `$50/mo` or `free`).

use pgfollow_client::Client;
use pgfollow_types::api::{HostSummary, ServerStatus};
use pgfollow_types::Plan;

use crate::args::JsonArg;
use crate::output::{aligned, human_gb, human_mb, label_width, list_or_dash, print_json, table};

pub async fn status(client: &Client, args: JsonArg) -> anyhow::Result<()> {
    let status = client.status().await?;
    if args.json {
        return print_json(&status);
    }
    print!("{}", status_text(&status, client.base_url()));
    Ok(())
}

pub async fn hosts(client: &Client, args: JsonArg) -> anyhow::Result<()> {
    let status = client.status().await?;
    if args.json {
        return print_json(&status.hosts);
    }
    print!("{}", hosts_table(&status.hosts));
    Ok(())
}

pub async fn plans(client: &Client, args: JsonArg) -> anyhow::Result<()> {
    let plans = client.plans().await?;
    if args.json {
        return print_json(&plans);
    }
    print!("{}", plans_table(&plans));
    Ok(())
}

pub fn status_text(status: &ServerStatus, url: &str) -> String {
    let rows = [
        ("Server", format!("pgfollow {}", status.version)),
        ("API", url.to_string()),
        ("Hosts", status.hosts.len().to_string()),
    ];
    let mut out = aligned(&rows, label_width(rows.iter().map(|r| r.0)));
    if !status.hosts.is_empty() {
        out.push('\n');
        out.push_str(&hosts_table(&status.hosts));
    }
    out
}

pub fn hosts_table(hosts: &[HostSummary]) -> String {
    let rows: Vec<Vec<String>> = hosts
        .iter()
        .map(|h| {
            vec![
                h.name.clone(),
                h.zone.clone().unwrap_or_else(|| "-".into()),
                if h.address.is_empty() { "-".into() } else { h.address.clone() },
                if h.reachable { "up" } else { "down" }.to_string(),
                if h.pg_versions.is_empty() {
                    h.pg_version.clone()
                } else {
                    h.pg_versions.join(", ")
                },
                list_or_dash(&h.databases),
            ]
        })
        .collect();
    table(&["NAME", "ZONE", "ADDRESS", "AGENT", "PG", "DATABASES"], &rows)
}

pub fn plans_table(plans: &[Plan]) -> String {
    let rows: Vec<Vec<String>> = plans
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                p.tier.to_string(),
                p.connection_limit.to_string(),
                human_mb(p.shared_buffers_mb),
                human_gb(p.storage_limit_gb),
                p.price_label(),
            ]
        })
        .collect();
    table(
        &["NAME", "TIER", "CONNECTIONS", "MEMORY", "STORAGE", "PRICE"],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plans_table() {
        let plans = pgfollow_types::PlanCatalog::default();
        let t = plans_table(&plans.all()[..3]);
        assert_eq!(
            t,
            "NAME         TIER      CONNECTIONS  MEMORY  STORAGE  PRICE\n\
             hobby-dev    hobby     20           32 MB   1 GB     free\n\
             hobby-basic  hobby     20           32 MB   10 GB    $9/mo\n\
             standard-0   standard  120          128 MB  64 GB    $50/mo\n"
        );
    }

    #[test]
    fn hosts_lists_every_major() {
        let h = HostSummary {
            name: "local".into(),
            zone: None,
            address: "10.231.0.2".into(),
            pg_bin: "/opt/pgfollow/postgresql/18/bin".into(),
            pg_version: "18.6".into(),
            pg_versions: vec!["18.6".into(), "15.18".into()],
            databases: vec![],
            reachable: true,
        };
        assert_eq!(
            hosts_table(&[h]),
            "NAME   ZONE  ADDRESS     AGENT  PG           DATABASES\n\
             local  -     10.231.0.2  up     18.6, 15.18  -\n"
        );
    }

    #[test]
    fn status_lists_hosts() {
        let s = ServerStatus {
            version: "0.1.0".into(),
            hosts: vec![HostSummary {
                name: "local".into(),
                zone: None,
                address: "127.0.0.1".into(),
                pg_bin: "/usr/lib/postgresql/15/bin".into(),
                pg_version: "15".into(),
                pg_versions: vec![],
                databases: vec![],
                reachable: true,
            }],
        };
        assert_eq!(
            status_text(&s, "http://127.0.0.1:7480"),
            "Server: pgfollow 0.1.0\n\
             API:    http://127.0.0.1:7480\n\
             Hosts:  1\n\
             \n\
             NAME   ZONE  ADDRESS    AGENT  PG  DATABASES\n\
             local  -     127.0.0.1  up     15  -\n"
        );
    }
}
