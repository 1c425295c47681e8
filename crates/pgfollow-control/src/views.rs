//! What the API shows of the state: config vars with their database URLs,
//! add-on summaries, credentials and bills. Pure functions of a snapshot.

use chrono::{DateTime, Utc};
use pgfollow_types::api::{AddonSummary, Billing, BillingLine, ConfigVars, Credentials};
use pgfollow_types::dbref::attachment_var;
use pgfollow_types::model::{AppRecord, DatabaseRecord, State};

/// The attachment that makes a database the app's main one.
pub const MAIN_ATTACHMENT: &str = "DATABASE";

/// `Fork/Follow` when the database can be followed.
pub const FORK_FOLLOW_AVAILABLE: &str = "Available";

/// `Fork/Follow` of a database.
pub fn fork_follow(db: &DatabaseRecord) -> String {
    if db.is_follower() {
        "Unavailable on followers".to_string()
    } else if db.plan.tier == pgfollow_types::Tier::Hobby {
        "Unsupported on the hobby tier".to_string()
    } else if db.state == pgfollow_types::api::DatabaseState::Available && !db.fork_pending {
        FORK_FOLLOW_AVAILABLE.to_string()
    } else {
        "Temporarily Unavailable".to_string()
    }
}

/// The live followers of database `id`.
pub fn followers_of<'a>(state: &'a State, id: &str) -> Vec<&'a DatabaseRecord> {
    state
        .databases
        .values()
        .filter(|d| d.is_live() && !d.hidden && d.following.as_deref() == Some(id))
        .collect()
}

/// How to reach `db`.
pub fn credentials(state: &State, db: &DatabaseRecord) -> Credentials {
    let host = state
        .hosts
        .get(&db.host)
        .map(|h| h.address.clone())
        .unwrap_or_else(|| "127.0.0.1".to_string());
    let url = format!(
        "postgres://{}:{}@{}:{}/{}",
        db.owner.name,
        db.owner.password,
        url_host(&host),
        db.port,
        db.database
    );
    Credentials {
        url,
        host,
        port: db.port,
        database: db.database.clone(),
        user: db.owner.name.clone(),
        password: db.owner.password.clone(),
    }
}

fn url_host(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// The config vars `db` is attached as in `app`, `DATABASE_URL` first.
pub fn attachment_vars(app: &AppRecord, db: &DatabaseRecord) -> Vec<String> {
    let mut names: Vec<&String> = app
        .attachments
        .iter()
        .filter(|(_, id)| **id == db.id)
        .map(|(name, _)| name)
        .collect();
    names.sort_by_key(|n| (n.as_str() != MAIN_ATTACHMENT, n.as_str()));
    names.into_iter().map(|n| attachment_var(n)).collect()
}

/// The attachments of `db` in the app that owns it.
pub fn owner_attachment_vars(state: &State, db: &DatabaseRecord) -> Vec<String> {
    state
        .apps
        .get(db.app.as_str())
        .map(|a| attachment_vars(a, db))
        .unwrap_or_default()
}

/// `DATABASE_URL`: the app's endpoints, in the order clients try them. With
/// several it is libpq's multi-host form: it asks for a writable server (an
/// endpoint on a host that was cut off may still route to the old primary,
/// now a standby: clients pass it by) and gives each host 2 s to answer
/// before the next is tried (a host that is cut off does not refuse, it is
/// silent).
pub fn database_url(state: &State, app: &AppRecord, db: &DatabaseRecord) -> String {
    let hosts: Vec<String> = app
        .endpoints
        .iter()
        .map(|ep| {
            format!(
                "{}:{}",
                url_host(&crate::provision::host_address(state, &ep.host)),
                ep.port
            )
        })
        .collect();
    let attrs = if hosts.len() > 1 {
        "?target_session_attrs=read-write&connect_timeout=2"
    } else {
        ""
    };
    format!(
        "postgres://{}:{}@{}/{}{attrs}",
        db.owner.name,
        db.owner.password,
        hosts.join(","),
        db.database
    )
}

/// The user's vars plus one URL per attachment. `DATABASE_URL` goes
/// through the app's endpoint, the colour vars straight to each database.
pub fn config_vars(state: &State, app: &AppRecord) -> ConfigVars {
    let mut vars = app.config.clone();
    for (name, id) in &app.attachments {
        if let Some(db) = state.databases.get(id) {
            let url = match (app.has_endpoint(), name.as_str() == MAIN_ATTACHMENT) {
                (true, true) => database_url(state, app, db),
                _ => credentials(state, db).url,
            };
            vars.insert(attachment_var(name), url);
        }
    }
    ConfigVars { vars }
}

pub fn addon_summary(state: &State, db: &DatabaseRecord) -> AddonSummary {
    AddonSummary {
        name: db.name.clone(),
        color: db.color.clone(),
        app: db.app.to_string(),
        plan: db.plan.name.clone(),
        price: db.plan.price_label(),
        state: db.state,
        attachments: owner_attachment_vars(state, db),
        created_at: db.created_at,
    }
}

/// What each database of `app` has cost so far, charged by the second.
pub fn billing(state: &State, app: &str, now: DateTime<Utc>) -> Billing {
    let lines: Vec<BillingLine> = state
        .billing
        .iter()
        .filter(|b| b.app.as_str() == app)
        .map(|b| {
            let end = b.ended_at.unwrap_or(now);
            let seconds = (end - b.started_at).num_seconds().max(0);
            let cost_usd = f64::from(b.price_per_month) * seconds as f64
                / pgfollow_types::plan::SECONDS_PER_BILLING_MONTH as f64;
            BillingLine {
                database: b.database.clone(),
                color: b.color.clone(),
                plan: b.plan.clone(),
                price_per_month: b.price_per_month,
                started_at: b.started_at,
                ended_at: b.ended_at,
                seconds,
                cost_usd,
            }
        })
        .collect();
    let total_usd = lines.iter().map(|l| l.cost_usd).sum();
    Billing {
        app: app.to_string(),
        lines,
        total_usd,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgfollow_types::model::BillingRecord;
    use pgfollow_types::{AppName, Color};

    #[test]
    fn billing_is_pro_rata_and_stops_at_destroy() {
        let start: DateTime<Utc> = "2026-11-01T00:00:00Z".parse().unwrap();
        let now: DateTime<Utc> = "2026-11-16T00:00:00Z".parse().unwrap();
        let rec = |db: &str, price, ended: Option<&str>| BillingRecord {
            app: AppName::parse("sushi").unwrap(),
            database: db.into(),
            color: Color::parse("WHITE").unwrap(),
            plan: "standard-0".into(),
            price_per_month: price,
            started_at: start,
            ended_at: ended.map(|e| e.parse().unwrap()),
        };
        let mut state = State::default();
        state.billing.push(rec("a", 60, None));
        state
            .billing
            .push(rec("b", 30, Some("2026-11-04T00:00:00Z")));
        let mut other = rec("c", 1000, None);
        other.app = AppName::parse("other").unwrap();
        state.billing.push(other);
        let b = billing(&state, "sushi", now);
        assert_eq!(b.lines.len(), 2);
        assert!(
            (b.lines[0].cost_usd - 30.0).abs() < 1e-9,
            "{:?}",
            b.lines[0]
        );
        assert!((b.lines[1].cost_usd - 3.0).abs() < 1e-9, "{:?}", b.lines[1]);
        assert!((b.total_usd - 33.0).abs() < 1e-9);
    }
}
