//! `GET /metrics`: the control plane's view in the Prometheus text format
//! (0.0.4), for a scraper holding the read-only metrics token
//! (`metrics.token` in the data directory), never the admin token.
//!
//! Names follow postgres_exporter where it has one (`pg_up`,
//! `pg_database_size_bytes`, `pg_stat_activity_count`,
//! `pg_settings_max_connections`, `pg_replication_lag_seconds`,
//! `pg_replication_is_replica`); the rest are `pgfollow_`. Every database
//! series has the labels `app`, `database` (colour), `addon`, `host` and
//! `role` (`primary`, `follower`, `ha_standby`). Lag comes from
//! [`crate::lag::measure`], the numbers `pg:info` shows.
//!
//! Events that happen inside long work (write pauses of changeovers and
//! failovers, failover outcomes) are recorded as they happen with
//! [`record_write_pause`] and [`record_failover`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use pgfollow_types::model::{DatabaseRecord, OperationState, State as Catalog};

use crate::api::Ctx;
use crate::error::ApiErr;

/// How long one database's numbers may take before they are left out.
const PER_DATABASE: Duration = Duration::from_secs(3);

/// Write pauses, seconds: a changeover is tens of milliseconds, a
/// failover seconds.
const PAUSE_BUCKETS: [f64; 11] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Operation durations, seconds.
const OPERATION_BUCKETS: [f64; 9] = [1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0];

/// Failover outcomes always shown, so a query finds a 0 before the first.
pub const FAILOVER_OUTCOMES: [&str; 3] = ["promoted", "refused", "failed"];

// ---------------------------------------------------------------- events

#[derive(Debug, Default)]
struct Events {
    /// kind (`changeover`, `failover`) → histogram of write pauses.
    pauses: BTreeMap<String, Histogram>,
    /// outcome → count.
    failovers: BTreeMap<String, u64>,
}

static EVENTS: LazyLock<Mutex<Events>> = LazyLock::new(Default::default);

fn events() -> std::sync::MutexGuard<'static, Events> {
    EVENTS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Records how long writes were held by a `kind` (`changeover`, `failover`).
pub fn record_write_pause(kind: &str, pause: Duration) {
    events()
        .pauses
        .entry(kind.to_string())
        .or_insert_with(|| Histogram::new(&PAUSE_BUCKETS))
        .observe(pause.as_secs_f64());
}

/// Records a failover's outcome (`promoted`, `refused`, `failed`).
pub fn record_failover(outcome: &str) {
    *events().failovers.entry(outcome.to_string()).or_default() += 1;
}

// ---------------------------------------------------------- exposition

/// A cumulative histogram.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    bounds: Vec<f64>,
    /// Observations at or below each bound (not cumulative yet).
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn new(bounds: &[f64]) -> Self {
        Self {
            bounds: bounds.to_vec(),
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    pub fn observe(&mut self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            self.counts[i] += 1;
        }
        self.sum += v;
        self.count += 1;
    }
}

/// The text of one scrape, family by family.
#[derive(Debug, Default)]
pub struct Exposition {
    text: String,
}

type Labels<'a> = &'a [(&'a str, &'a str)];

impl Exposition {
    /// `# HELP` and `# TYPE` of a family; its samples follow.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {}", help.replace('\n', " "));
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    pub fn sample(&mut self, name: &str, labels: Labels, value: f64) {
        self.text.push_str(name);
        write_labels(&mut self.text, labels, None);
        let _ = writeln!(self.text, " {}", number(value));
    }

    pub fn histogram(&mut self, name: &str, labels: Labels, h: &Histogram) {
        let mut cumulative = 0;
        for (bound, n) in h.bounds.iter().zip(&h.counts) {
            cumulative += n;
            let le = number(*bound);
            let _ = write!(self.text, "{name}_bucket");
            write_labels(&mut self.text, labels, Some(&le));
            let _ = writeln!(self.text, " {cumulative}");
        }
        let _ = write!(self.text, "{name}_bucket");
        write_labels(&mut self.text, labels, Some("+Inf"));
        let _ = writeln!(self.text, " {}", h.count);
        for (suffix, v) in [("sum", h.sum), ("count", h.count as f64)] {
            let _ = write!(self.text, "{name}_{suffix}");
            write_labels(&mut self.text, labels, None);
            let _ = writeln!(self.text, " {}", number(v));
        }
    }

    pub fn finish(self) -> String {
        self.text
    }
}

fn write_labels(out: &mut String, labels: Labels, le: Option<&str>) {
    if labels.is_empty() && le.is_none() {
        return;
    }
    out.push('{');
    let mut first = true;
    for (k, v) in labels.iter().copied().chain(le.map(|le| ("le", le))) {
        if !first {
            out.push(',');
        }
        first = false;
        let _ = write!(out, "{k}=\"{}\"", escape(v));
    }
    out.push('}');
}

/// A label value as the text format wants it.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

// ---------------------------------------------------------- collection

/// What a database is to its app.
pub fn role(db: &DatabaseRecord) -> &'static str {
    match (db.hidden, db.is_follower()) {
        (true, _) => "ha_standby",
        (false, true) => "follower",
        (false, false) => "primary",
    }
}

/// One database's live numbers.
#[derive(Debug, Default)]
struct Live {
    up: bool,
    stats: Option<pgfollow_types::agent::ClusterStats>,
    lag: Option<pgfollow_types::api::Lag>,
}

async fn live(ctx: &Ctx, state: &Catalog, db: &DatabaseRecord) -> Live {
    let Some(agent) = ctx.hosts.get(&db.host) else {
        return Live::default();
    };
    let up = agent.status(&db.id).await.is_ok_and(|s| s.running);
    if !up {
        return Live::default();
    }
    let stats = tokio::time::timeout(PER_DATABASE, agent.stats(&db.id, &db.database));
    let lag = async {
        if db.is_follower() {
            tokio::time::timeout(PER_DATABASE, crate::lag::measure(&ctx.hosts, state, db))
                .await
                .ok()
                .and_then(Result::ok)
        } else {
            None
        }
    };
    let (stats, lag) = tokio::join!(stats, lag);
    Live {
        up,
        stats: stats.ok().and_then(Result::ok),
        lag,
    }
}

/// Whether one of the app's endpoints holds new transactions right now.
async fn endpoint_paused(ctx: &Ctx, state: &Catalog, app: &str) -> Option<bool> {
    let rec = state.apps.get(app)?;
    let main = crate::endpoints::main_database(state, rec)?;
    let mut seen = None;
    for ep in &rec.endpoints {
        let Ok(agent) = ctx.endpoints.agent_of(ep) else {
            continue;
        };
        if let Ok(Some(paused)) = agent.endpoint_paused(&ep.id, &main.database).await {
            seen = Some(seen.unwrap_or(false) || paused);
        }
    }
    seen
}

/// Every series of one scrape.
pub async fn render(ctx: Arc<Ctx>) -> Result<String, ApiErr> {
    let started = Instant::now();
    let state = Arc::new(ctx.store.read()?);
    let dbs: Vec<DatabaseRecord> = state
        .databases
        .values()
        .filter(|d| d.is_live())
        .cloned()
        .collect();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, db) in dbs.iter().cloned().enumerate() {
        let (ctx, state) = (ctx.clone(), state.clone());
        tasks.spawn(async move { (i, live(&ctx, &state, &db).await) });
    }
    let mut lives: Vec<Live> = dbs.iter().map(|_| Live::default()).collect();
    while let Some(done) = tasks.join_next().await {
        if let Ok((i, l)) = done {
            lives[i] = l;
        }
    }
    let mut paused = BTreeMap::new();
    for app in state.apps.keys() {
        if let Some(p) = endpoint_paused(&ctx, &state, app).await {
            paused.insert(app.clone(), p);
        }
    }

    let mut out = Exposition::default();
    databases(&mut out, &dbs, &lives, ctx.ha_max_lag_bytes);
    hosts(&mut out, &ctx, &state);
    apps(&mut out, &state, &paused);
    operations(&mut out, &state);
    recorded(&mut out);
    out.family(
        "pgfollow_scrape_duration_seconds",
        "gauge",
        "How long collecting this scrape took.",
    );
    out.sample(
        "pgfollow_scrape_duration_seconds",
        &[],
        started.elapsed().as_secs_f64(),
    );
    Ok(out.finish())
}

fn databases(out: &mut Exposition, dbs: &[DatabaseRecord], lives: &[Live], ha_max_lag_bytes: u64) {
    let labels_of = |db: &DatabaseRecord| {
        [
            ("app", db.app.to_string()),
            ("database", db.color.to_string()),
            ("addon", db.name.clone()),
            ("host", db.host.clone()),
            ("role", role(db).to_string()),
        ]
    };
    type Pick = fn(&DatabaseRecord, &Live) -> Option<f64>;
    let families: [(&str, &str, Pick); 9] = [
        (
            "pg_up",
            "Whether the database's postgres runs (1) or not (0).",
            |_, l| Some(if l.up { 1.0 } else { 0.0 }),
        ),
        (
            "pg_replication_is_replica",
            "Whether the database is a follower or HA standby.",
            |d, _| Some(if d.is_follower() { 1.0 } else { 0.0 }),
        ),
        (
            "pg_stat_activity_count",
            "Client connections to the app's database.",
            |_, l| l.stats.as_ref().map(|s| f64::from(s.connections_used)),
        ),
        (
            "pg_settings_max_connections",
            "The plan's connection limit.",
            |d, _| Some(f64::from(d.plan.connection_limit)),
        ),
        (
            "pg_database_size_bytes",
            "Size of the app's database.",
            |_, l| l.stats.as_ref().map(|s| s.data_size_bytes as f64),
        ),
        (
            "pgfollow_storage_limit_bytes",
            "The plan's storage.",
            |d, _| Some(d.plan.storage_limit_gb as f64 * 1024.0 * 1024.0 * 1024.0),
        ),
        (
            "pgfollow_replication_lag_commits",
            "Commits the follower has not replayed (Behind By).",
            |_, l| l.lag.as_ref().map(|g| g.commits as f64),
        ),
        (
            "pgfollow_replication_lag_bytes",
            "Bytes of WAL the follower has not replayed.",
            |_, l| l.lag.as_ref().map(|g| g.bytes as f64),
        ),
        (
            "pg_replication_lag_seconds",
            "Age of the oldest commit the follower has not replayed.",
            |_, l| l.lag.as_ref().map(|g| g.seconds),
        ),
    ];
    for (name, help, pick) in families {
        out.family(name, "gauge", help);
        for (db, l) in dbs.iter().zip(lives) {
            if let Some(v) = pick(db, l) {
                let owned = labels_of(db);
                let labels: Vec<(&str, &str)> =
                    owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
                out.sample(name, &labels, v);
            }
        }
    }
    out.family(
        "pgfollow_replication_streaming",
        "gauge",
        "Whether the follower streams from its leader right now.",
    );
    for (db, l) in dbs.iter().zip(lives) {
        if let Some(g) = &l.lag {
            let owned = labels_of(db);
            let labels: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
            out.sample(
                "pgfollow_replication_streaming",
                &labels,
                if g.streaming { 1.0 } else { 0.0 },
            );
        }
    }
    out.family(
        "pgfollow_ha_available",
        "gauge",
        "On an HA primary: its standby is available and within the failover lag limit.",
    );
    for db in dbs
        .iter()
        .filter(|d| d.plan.tier.has_ha() && !d.hidden && !d.is_follower())
    {
        let ready = db
            .ha_standby
            .as_ref()
            .and_then(|id| dbs.iter().position(|d| &d.id == id))
            .and_then(|i| lives[i].lag.as_ref().map(|g| (&dbs[i], g)))
            .is_some_and(|(s, g)| {
                s.state == pgfollow_types::api::DatabaseState::Available
                    && g.bytes <= ha_max_lag_bytes
            });
        let owned = labels_of(db);
        let labels: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
        out.sample(
            "pgfollow_ha_available",
            &labels,
            if ready { 1.0 } else { 0.0 },
        );
    }
}

fn hosts(out: &mut Exposition, ctx: &Ctx, state: &Catalog) {
    out.family(
        "pgfollow_host_up",
        "gauge",
        "Whether the host's agent answers.",
    );
    for h in state.hosts.values() {
        let zone = h.zone.clone().unwrap_or_default();
        let up = ctx.hosts.is_up(&h.name);
        out.sample(
            "pgfollow_host_up",
            &[("host", &h.name), ("zone", &zone)],
            if up { 1.0 } else { 0.0 },
        );
    }
}

fn apps(out: &mut Exposition, state: &Catalog, paused: &BTreeMap<String, bool>) {
    out.family(
        "pgfollow_endpoint_paused",
        "gauge",
        "Whether the app's endpoint holds new transactions (PgBouncer PAUSE).",
    );
    for (app, p) in paused {
        out.sample(
            "pgfollow_endpoint_paused",
            &[("app", app)],
            if *p { 1.0 } else { 0.0 },
        );
    }
    out.family(
        "pgfollow_maintenance",
        "gauge",
        "Whether the app is in maintenance mode.",
    );
    for (name, a) in &state.apps {
        out.sample(
            "pgfollow_maintenance",
            &[("app", name)],
            if a.maintenance { 1.0 } else { 0.0 },
        );
    }
}

/// Operations by kind, from the catalog's records.
fn operations(out: &mut Exposition, state: &Catalog) {
    #[derive(Default)]
    struct ByKind {
        started: u64,
        finished: u64,
        failed: u64,
        running: u64,
        durations: Option<Histogram>,
    }
    let mut kinds: BTreeMap<&str, ByKind> = BTreeMap::new();
    for op in state.operations.values() {
        let k = kinds.entry(op.kind.as_str()).or_default();
        k.started += 1;
        match op.state {
            OperationState::Done => k.finished += 1,
            OperationState::Failed => k.failed += 1,
            OperationState::Pending | OperationState::Running => k.running += 1,
        }
        if !op.state.is_active() {
            let took = (op.updated_at - op.created_at).num_milliseconds().max(0) as f64 / 1000.0;
            k.durations
                .get_or_insert_with(|| Histogram::new(&OPERATION_BUCKETS))
                .observe(took);
        }
    }
    for (name, help, pick) in [
        (
            "pgfollow_operations_started_total",
            "Operations started, by kind.",
            0,
        ),
        (
            "pgfollow_operations_finished_total",
            "Operations finished, by kind.",
            1,
        ),
        (
            "pgfollow_operations_failed_total",
            "Operations that gave up, by kind.",
            2,
        ),
        (
            "pgfollow_operations_running",
            "Operations under way, by kind.",
            3,
        ),
    ] {
        out.family(name, if pick == 3 { "gauge" } else { "counter" }, help);
        for (kind, k) in &kinds {
            let v = [k.started, k.finished, k.failed, k.running][pick];
            out.sample(name, &[("kind", kind)], v as f64);
        }
    }
    out.family(
        "pgfollow_operation_duration_seconds",
        "histogram",
        "How long finished operations took, by kind.",
    );
    for (kind, k) in &kinds {
        if let Some(h) = &k.durations {
            out.histogram("pgfollow_operation_duration_seconds", &[("kind", kind)], h);
        }
    }
}

/// What was recorded as it happened.
fn recorded(out: &mut Exposition) {
    let ev = events();
    out.family(
        "pgfollow_failovers_total",
        "counter",
        "HA failovers, by outcome.",
    );
    let mut outcomes: BTreeMap<&str, u64> = FAILOVER_OUTCOMES.iter().map(|o| (*o, 0)).collect();
    for (o, n) in &ev.failovers {
        outcomes.insert(o, *n);
    }
    for (o, n) in outcomes {
        out.sample("pgfollow_failovers_total", &[("outcome", o)], n as f64);
    }
    out.family(
        "pgfollow_write_pause_seconds",
        "histogram",
        "How long writes were held at the endpoint, by changeover or failover.",
    );
    for kind in ["changeover", "failover"] {
        let empty = Histogram::new(&PAUSE_BUCKETS);
        let h = ev.pauses.get(kind).unwrap_or(&empty);
        out.histogram("pgfollow_write_pause_seconds", &[("kind", kind)], h);
    }
}

// ---------------------------------------------------------------- route

/// `GET /metrics`, for the metrics token only.
pub async fn serve(State(ctx): State<Arc<Ctx>>, req: Request) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(t) if crate::api::constant_time_eq(t.as_bytes(), ctx.metrics_token.as_bytes()) => {}
        Some(_) => {
            return ApiErr::unauthorized(
                "this is not the metrics token; scrape with the one in the data directory's metrics.token",
            )
            .into_response()
        }
        None => {
            return ApiErr::unauthorized(
                "/metrics needs the metrics token: send `Authorization: Bearer <token>` with the one in the data directory's metrics.token",
            )
            .into_response()
        }
    }
    match render(ctx).await {
        Ok(text) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_and_labels_are_written_as_the_text_format_says() {
        let mut out = Exposition::default();
        out.family("pg_up", "gauge", "Up.");
        out.sample("pg_up", &[("app", "sushi"), ("addon", "a\"b\\c\nd")], 1.0);
        out.sample("pgfollow_scrape_duration_seconds", &[], 0.25);
        let text = out.finish();
        assert_eq!(
            text,
            "# HELP pg_up Up.\n# TYPE pg_up gauge\n\
             pg_up{app=\"sushi\",addon=\"a\\\"b\\\\c\\nd\"} 1\n\
             pgfollow_scrape_duration_seconds 0.25\n"
        );
    }

    #[test]
    fn histograms_are_cumulative() {
        let mut h = Histogram::new(&[0.1, 1.0]);
        for v in [0.05, 0.5, 0.7, 3.0] {
            h.observe(v);
        }
        let mut out = Exposition::default();
        out.histogram("p", &[("kind", "changeover")], &h);
        let text = out.finish();
        assert!(
            text.contains("p_bucket{kind=\"changeover\",le=\"0.1\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("p_bucket{kind=\"changeover\",le=\"1\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("p_bucket{kind=\"changeover\",le=\"+Inf\"} 4\n"),
            "{text}"
        );
        assert!(text.contains("p_sum{kind=\"changeover\"} 4.25\n"), "{text}");
        assert!(text.contains("p_count{kind=\"changeover\"} 4\n"), "{text}");
    }

    #[test]
    fn recorded_events_show_up_with_zeros_before_the_first() {
        record_write_pause("changeover", Duration::from_millis(40));
        record_failover("promoted");
        let mut out = Exposition::default();
        recorded(&mut out);
        let text = out.finish();
        assert!(
            text.contains("pgfollow_failovers_total{outcome=\"refused\"} "),
            "{text}"
        );
        assert!(
            !text.contains("pgfollow_failovers_total{outcome=\"promoted\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("pgfollow_write_pause_seconds_bucket{kind=\"changeover\",le=\"0.05\"} "),
            "{text}"
        );
        assert!(
            text.contains("pgfollow_write_pause_seconds_count{kind=\"failover\"} "),
            "{text}"
        );
    }
}
