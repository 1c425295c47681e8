//! `pg:diagnose`: Heroku's checks of a database, each a verdict (green,
//! yellow, red) and a sentence. The thresholds and verdicts are pure
//! functions over plain values (below, with table tests); [`diagnose`]
//! gathers those values with the agent's read-only reports
//! ([`ExtrasReport`]) and [`crate::lag::measure`], and runs them.

mod checks;

pub use checks::*;

use pgfollow_types::api::{Check, Diagnosis, ExtrasReport, ExtrasTable};
use pgfollow_types::model::{DatabaseRecord, State as Catalog};

use crate::api::Ctx;
use crate::error::ApiErr;

// ------------------------------------------------------------ gathering

/// Runs `report` on `db` through its agent.
pub async fn report(
    ctx: &Ctx,
    db: &DatabaseRecord,
    report: ExtrasReport,
) -> Result<ExtrasTable, ApiErr> {
    let agent = ctx.hosts.agent(&db.host)?;
    let call = pgfollow_types::agent::AgentCall::Extras {
        id: db.id.clone(),
        database: db.database.clone(),
        report,
    };
    Ok(agent.call::<ExtrasTable>(call).await?)
}

fn rows(t: &ExtrasTable) -> impl Iterator<Item = usize> {
    0..t.rows.len()
}

fn text(t: &ExtrasTable, row: usize, column: &str) -> String {
    t.cell(row, column).unwrap_or_default().to_string()
}

fn whole(t: &ExtrasTable, row: usize, column: &str) -> u64 {
    t.number(row, column).map_or(0, |v| v.max(0.0) as u64)
}

fn aged(t: &ExtrasTable, secs: &str, query: &str) -> Vec<Aged> {
    rows(t)
        .map(|r| Aged {
            pid: t.number(r, "pid").unwrap_or(0.0) as i64,
            secs: whole(t, r, secs),
            query: text(t, r, query),
        })
        .collect()
}

fn qualified(t: &ExtrasTable, r: usize, name: &str) -> String {
    format!("{}.{}", text(t, r, "schema"), text(t, r, name))
}

/// Every check on `db`.
pub async fn diagnose(ctx: &Ctx, state: &Catalog, db: &DatabaseRecord) -> Diagnosis {
    let mut checks = Vec::new();
    type Judge = fn(&ExtrasTable, &DatabaseRecord) -> Vec<Check>;
    let plan: [(ExtrasReport, &str, Judge); 11] = [
        (ExtrasReport::Connections, "connections", |t, db| {
            vec![connections(
                whole(t, 0, "connections"),
                u64::from(db.plan.connection_limit),
            )]
        }),
        (ExtrasReport::LongRunning, "long-running-queries", |t, _| {
            vec![long_running(&aged(t, "running_secs", "query"))]
        }),
        (
            ExtrasReport::IdleInTransaction,
            "idle-in-transaction",
            |t, _| vec![idle_in_transaction(&aged(t, "idle_secs", "last_query"))],
        ),
        (ExtrasReport::UnusedIndexes, "unused-indexes", |t, _| {
            let list: Vec<Measured> = rows(t)
                .map(|r| Measured {
                    name: qualified(t, r, "index"),
                    value: 0.0,
                    bytes: whole(t, r, "size_bytes"),
                })
                .collect();
            vec![unused_indexes(&list)]
        }),
        (ExtrasReport::InvalidIndexes, "invalid-indexes", |t, _| {
            let names: Vec<String> = rows(t).map(|r| qualified(t, r, "index")).collect();
            vec![invalid_indexes(&names)]
        }),
        (ExtrasReport::Bloat, "bloat", |t, _| {
            let list: Vec<Measured> = rows(t)
                .map(|r| Measured {
                    name: format!("{} {}", text(t, r, "type"), qualified(t, r, "object")),
                    value: t.number(r, "bloat").unwrap_or(0.0),
                    bytes: whole(t, r, "waste_bytes"),
                })
                .collect();
            vec![bloat(&list)]
        }),
        (ExtrasReport::CacheHit, "cache-hit-rate", |t, _| {
            rows(t)
                .map(|r| {
                    cache_hit(
                        &text(t, r, "kind"),
                        whole(t, r, "hits"),
                        whole(t, r, "reads"),
                    )
                })
                .collect()
        }),
        (ExtrasReport::Blocking, "blocking-queries", |t, _| {
            let list: Vec<Blocked> = rows(t)
                .map(|r| Blocked {
                    pid: t.number(r, "blocked_pid").unwrap_or(0.0) as i64,
                    secs: whole(t, r, "blocked_secs"),
                    blocking_pid: t.number(r, "blocking_pid").unwrap_or(0.0) as i64,
                    blocking_state: text(t, r, "blocking_state"),
                })
                .collect();
            vec![blocking(&list)]
        }),
        (ExtrasReport::Sequences, "sequences", |t, _| {
            let list: Vec<Measured> = rows(t)
                .map(|r| Measured {
                    name: qualified(t, r, "sequence"),
                    value: t.number(r, "used_percent").unwrap_or(0.0),
                    bytes: 0,
                })
                .collect();
            vec![sequences(&list)]
        }),
        (
            ExtrasReport::Wraparound,
            "transaction-id-wraparound",
            |t, _| {
                let list: Vec<Measured> = rows(t)
                    .map(|r| Measured {
                        name: text(t, r, "database"),
                        value: t.number(r, "used_percent").unwrap_or(0.0),
                        bytes: 0,
                    })
                    .collect();
                vec![wraparound(&list)]
            },
        ),
        (ExtrasReport::Slots, "replication-slots", |t, _| {
            let list: Vec<Slot> = rows(t)
                .map(|r| Slot {
                    name: text(t, r, "slot"),
                    active: t.cell(r, "active") == Some("t"),
                    retained_bytes: t.number(r, "retained_bytes").map(|v| v.max(0.0) as u64),
                    wal_status: text(t, r, "wal_status"),
                })
                .collect();
            vec![slots(&list)]
        }),
    ];
    for (which, name, judge) in plan {
        match report(ctx, db, which).await {
            Ok(t) => checks.extend(judge(&t, db)),
            Err(e) => checks.push(skipped(name, e.to_string())),
        }
    }
    let concerned: Vec<&DatabaseRecord> = if db.is_follower() {
        vec![db]
    } else {
        crate::views::followers_of(state, &db.id)
    };
    let mut lags = Vec::new();
    for f in concerned {
        let lag = tokio::time::timeout(
            std::time::Duration::from_secs(3),
            crate::lag::measure(&ctx.hosts, state, f),
        )
        .await
        .ok()
        .and_then(Result::ok);
        lags.push((f.color.to_string(), lag));
    }
    checks.push(follower_lag(&lags));
    Diagnosis {
        database: db.color.to_string(),
        checks,
    }
}
