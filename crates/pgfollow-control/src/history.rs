//! Behind By over the last hour, for the dashboard's charts and
//! `GET /v1/apps/{app}/lag-history`: every [`INTERVAL`] a task measures each
//! follower with [`crate::lag::measure`] (the numbers of `pg:info` and
//! `/metrics`) and keeps the samples in memory, per follower a ring bounded
//! in time ([`WINDOW`]) and in count ([`MAX_POINTS`]). Nothing is written
//! to disk: after a restart the charts start empty. Markers are the
//! failovers and changeovers the catalog records as finished in the window.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use pgfollow_types::api::{DatabaseState, FollowerLag, LagHistory, LagMarker, LagPoint};
use pgfollow_types::model::{OperationKind, State};
use tokio_util::sync::CancellationToken;

use crate::hosts::Hosts;
use crate::store::Store;

/// Time between two samples of one follower.
pub const INTERVAL: Duration = Duration::from_secs(2);

/// How far back the charts go.
pub const WINDOW: Duration = Duration::from_secs(3600);

/// Samples kept per follower at most: the window at the interval, with
/// room for a slow tick.
pub const MAX_POINTS: usize = (WINDOW.as_secs() / INTERVAL.as_secs()) as usize + 60;

/// `PGFOLLOW_LAG_HISTORY=off` in `serve`'s environment stops the sampling
/// (each sample costs the follower's and the leader's agents a call).
pub const OFF_ENV: &str = "PGFOLLOW_LAG_HISTORY";

/// How long one follower's measurement may take before the sample is
/// skipped.
const MEASURE_LIMIT: Duration = Duration::from_secs(3);

/// The samples of every follower, by database id.
#[derive(Debug, Default)]
pub struct LagSamples {
    by_db: Mutex<BTreeMap<String, VecDeque<LagPoint>>>,
}

/// Adds `point` to `ring` and drops what is older than the window before
/// `point`, or beyond [`MAX_POINTS`].
pub fn keep(ring: &mut VecDeque<LagPoint>, point: LagPoint) {
    let oldest = point.at - chrono::Duration::from_std(WINDOW).unwrap_or_default();
    ring.push_back(point);
    while ring.front().is_some_and(|p| p.at < oldest) || ring.len() > MAX_POINTS {
        ring.pop_front();
    }
}

impl LagSamples {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, VecDeque<LagPoint>>> {
        self.by_db.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn record(&self, db: &str, point: LagPoint) {
        keep(self.lock().entry(db.to_string()).or_default(), point);
    }

    /// Forgets databases that are not in `live`.
    fn retain(&self, live: &[String]) {
        self.lock().retain(|id, _| live.contains(id));
    }

    fn points(&self, db: &str) -> Vec<LagPoint> {
        self.lock()
            .get(db)
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Samples every follower every [`INTERVAL`] until cancelled; not at
    /// all when [`OFF_ENV`] is `off` (the charts then stay empty).
    pub async fn run(self: Arc<Self>, store: Store, hosts: Hosts, cancel: CancellationToken) {
        if std::env::var(OFF_ENV).is_ok_and(|v| v == "off") {
            tracing::info!("{OFF_ENV}=off: followers' lag is not sampled for the dashboard");
            return;
        }
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(INTERVAL) => {}
            }
            let Ok(state) = store.read() else { continue };
            let followers: Vec<_> = state
                .databases
                .values()
                .filter(|d| d.is_live() && d.is_follower() && !d.hidden)
                .filter(|d| d.state == DatabaseState::Available)
                .cloned()
                .collect();
            // A promoted follower keeps its samples for the window; a
            // destroyed database's go.
            let live: Vec<String> = state
                .databases
                .values()
                .filter(|d| d.is_live())
                .map(|d| d.id.clone())
                .collect();
            self.retain(&live);
            // Side by side, each bounded: one slow host holds no other.
            let state = Arc::new(state);
            let mut tasks = tokio::task::JoinSet::new();
            for db in followers {
                let (hosts, state) = (hosts.clone(), state.clone());
                tasks.spawn(async move {
                    let lag = tokio::time::timeout(
                        MEASURE_LIMIT,
                        crate::lag::measure(&hosts, &state, &db),
                    )
                    .await;
                    (db.id, lag)
                });
            }
            while let Some(done) = tasks.join_next().await {
                if let Ok((id, Ok(Ok(lag)))) = done {
                    self.record(
                        &id,
                        LagPoint {
                            at: Utc::now(),
                            commits: lag.commits,
                            seconds: lag.seconds,
                            bytes: lag.bytes,
                        },
                    );
                }
            }
        }
    }

    /// The history of `app`'s followers (every app's when `None`).
    pub fn history(&self, state: &State, app: Option<&str>, now: DateTime<Utc>) -> LagHistory {
        let in_app = |a: &str| app.is_none_or(|x| x == a);
        // A database promoted in the window keeps its chart, which then
        // ends at the marker of its changeover or failover.
        let followers = state
            .databases
            .values()
            .filter(|d| d.is_live() && !d.hidden && in_app(d.app.as_str()))
            .filter(|d| d.is_follower() || self.lock().contains_key(&d.id))
            .map(|d| FollowerLag {
                app: d.app.to_string(),
                color: d.color.clone(),
                name: d.name.clone(),
                leader: d
                    .following
                    .as_ref()
                    .and_then(|l| state.databases.get(l))
                    .map(|l| l.color.to_string())
                    .unwrap_or_default(),
                points: self.points(&d.id),
            })
            .collect();
        LagHistory {
            interval_secs: INTERVAL.as_secs(),
            followers,
            markers: markers(state, app, now),
        }
    }
}

/// Failovers and changeovers that finished in the window before `now`.
pub fn markers(state: &State, app: Option<&str>, now: DateTime<Utc>) -> Vec<LagMarker> {
    let oldest = now - chrono::Duration::from_std(WINDOW).unwrap_or_default();
    let mut out: Vec<LagMarker> = state
        .operations
        .values()
        .filter(|o| matches!(o.kind, OperationKind::Failover | OperationKind::Changeover))
        .filter(|o| !o.state.is_active() && o.updated_at >= oldest)
        .filter_map(|o| {
            let db = state.databases.get(&o.database)?;
            app.is_none_or(|a| a == db.app.as_str()).then(|| LagMarker {
                at: o.updated_at,
                kind: o.kind.as_str().to_string(),
                app: db.app.to_string(),
                database: db.color.to_string(),
                state: o.state.as_str().to_string(),
            })
        })
        .collect();
    out.sort_by_key(|m| m.at);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    fn point(secs: i64, commits: u64) -> LagPoint {
        LagPoint {
            at: at(secs),
            commits,
            seconds: 0.0,
            bytes: 0,
        }
    }

    #[test]
    fn the_ring_keeps_one_hour() {
        let mut ring = VecDeque::new();
        keep(&mut ring, point(0, 1));
        keep(&mut ring, point(1800, 2));
        keep(&mut ring, point(3600, 3));
        assert_eq!(ring.len(), 3, "a point exactly an hour old stays");
        keep(&mut ring, point(3601, 4));
        let commits: Vec<u64> = ring.iter().map(|p| p.commits).collect();
        assert_eq!(commits, [2, 3, 4]);
    }

    fn db(id: &str, app: &str, color: &str) -> pgfollow_types::model::DatabaseRecord {
        let plan = pgfollow_types::PlanCatalog::default()
            .get("standard-0")
            .unwrap()
            .clone();
        serde_json::from_value(serde_json::json!({
            "id": id, "name": format!("postgresql-calm-{id}"), "app": app, "color": color,
            "plan": plan, "host": "local", "port": 5432, "database": "d1",
            "owner": {"name": "u", "password": "p"},
            "replication": {"name": "r", "password": "p"},
            "pg_major": 15, "created_at": at(0), "desired": "running",
            "state": "available", "status_detail": null, "pg_version": null,
        }))
        .unwrap()
    }

    #[test]
    fn markers_are_finished_failovers_and_changeovers_of_the_hour() {
        use pgfollow_types::model::{OperationRecord, OperationState};
        let mut state = State::default();
        for d in [db("a", "sushi", "AMBER"), db("b", "ramen", "BLUE")] {
            state.databases.insert(d.id.clone(), d);
        }
        let rows = [
            (
                "1",
                OperationKind::Changeover,
                "a",
                OperationState::Done,
                3000,
                true,
            ),
            (
                "2",
                OperationKind::Failover,
                "a",
                OperationState::Failed,
                3500,
                true,
            ),
            (
                "3",
                OperationKind::Changeover,
                "a",
                OperationState::Running,
                3500,
                false,
            ),
            (
                "4",
                OperationKind::Unfollow,
                "a",
                OperationState::Done,
                3500,
                false,
            ),
            (
                "5",
                OperationKind::Changeover,
                "a",
                OperationState::Done,
                100,
                false,
            ),
            (
                "6",
                OperationKind::Changeover,
                "b",
                OperationState::Done,
                3500,
                false,
            ),
        ];
        for (id, kind, db, st, secs, _) in rows {
            let mut op = OperationRecord::new(id, kind, db, at(secs));
            op.state = st;
            state.operations.insert(id.to_string(), op);
        }
        let now = at(4000);
        let got: Vec<(String, String)> = markers(&state, Some("sushi"), now)
            .into_iter()
            .map(|m| (m.kind, m.state))
            .collect();
        let want: Vec<(String, String)> = rows
            .iter()
            .filter(|r| r.5)
            .map(|r| (r.1.as_str().to_string(), r.3.as_str().to_string()))
            .collect();
        assert_eq!(got, want);
        assert_eq!(markers(&state, None, now).len(), 3, "every app's");
    }

    #[test]
    fn the_ring_is_bounded_in_count() {
        let mut ring = VecDeque::new();
        for i in 0..(MAX_POINTS as i64 + 10) {
            keep(&mut ring, point(i / 10, i as u64));
        }
        assert_eq!(ring.len(), MAX_POINTS);
        assert_eq!(ring.back().map(|p| p.commits), Some(MAX_POINTS as u64 + 9));
    }
}
