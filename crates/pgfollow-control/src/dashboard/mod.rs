//! The web dashboard at `/dashboard`: one page, a hand-written script and a
//! style sheet, built into the binary (`include_str!`, no CDN, no npm). It
//! is read-only: it shows apps, databases with every `pg:info` field,
//! hosts, operations in progress and a chart per follower of Behind By over
//! the last hour (from [`crate::history`]), refreshed every 2 s.
//!
//! Login: the page's form POSTs a token (the admin token, or the read-only
//! metrics token: the dashboard shows nothing secret, no password or URL)
//! to `/dashboard/login`, which answers with a session cookie
//! (`HttpOnly; SameSite=Strict; Path=/dashboard`) holding a random session
//! id, never the token. So the token is in no URL, no log and no script's
//! reach, and the session opens only `/dashboard/data`, the page's one
//! read-only JSON document; it never opens `/v1` (which keeps needing the
//! admin token in an `Authorization` header). Sessions live in memory for
//! [`SESSION_TTL`], at most [`MAX_SESSIONS`] of them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use chrono::{DateTime, Utc};
use pgfollow_types::api::{DatabaseInfo, HostSummary, LagHistory, Operation};
use serde::{Deserialize, Serialize};

use crate::api::{constant_time_eq, Ctx};

const PAGE: &str = include_str!("index.html");
const SCRIPT: &str = include_str!("dashboard.js");
const STYLE: &str = include_str!("dashboard.css");

/// The session cookie's name.
pub const COOKIE: &str = "pgfollow_session";

/// How long a login lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// Sessions kept at most; the oldest goes first.
pub const MAX_SESSIONS: usize = 64;

/// Dashboard sessions: random id → when it was opened.
#[derive(Debug, Default)]
pub struct Sessions {
    open: Mutex<HashMap<String, Instant>>,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens a session and returns its id.
    fn open(&self, now: Instant) -> String {
        let id = crate::provision::secret() + &crate::provision::secret();
        let mut open = self.lock();
        open.retain(|_, since| now.duration_since(*since) < SESSION_TTL);
        while open.len() >= MAX_SESSIONS {
            let Some(oldest) = open.iter().min_by_key(|(_, t)| **t).map(|(k, _)| k.clone()) else {
                break;
            };
            open.remove(&oldest);
        }
        open.insert(id.clone(), now);
        id
    }

    fn is_open(&self, id: &str, now: Instant) -> bool {
        self.lock()
            .get(id)
            .is_some_and(|since| now.duration_since(*since) < SESSION_TTL)
    }

    fn close(&self, id: &str) {
        self.lock().remove(id);
    }
}

/// The session id in a `Cookie` header, if any.
pub fn session_id(cookie_header: &str) -> Option<&str> {
    cookie_header
        .split(';')
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
}

/// Whether `given` opens the dashboard: the admin or the metrics token.
pub fn token_opens(given: &str, admin: &str, metrics: &str) -> bool {
    let given = given.trim();
    !given.is_empty()
        && (constant_time_eq(given.as_bytes(), admin.as_bytes())
            || constant_time_eq(given.as_bytes(), metrics.as_bytes()))
}

fn session_of(ctx: &Ctx, headers: &HeaderMap) -> Option<String> {
    let cookies = headers.get(header::COOKIE)?.to_str().ok()?;
    let id = session_id(cookies)?;
    ctx.dashboard_sessions
        .is_open(id, Instant::now())
        .then(|| id.to_string())
}

/// The dashboard's routes, outside the admin token's check.
pub fn routes() -> Router<Arc<Ctx>> {
    Router::new()
        .route("/dashboard", get(page))
        .route("/dashboard/", get(page))
        .route("/dashboard/dashboard.js", get(script))
        .route("/dashboard/dashboard.css", get(style))
        .route("/dashboard/login", post(login))
        .route("/dashboard/logout", post(logout))
        .route("/dashboard/data", get(data))
}

/// Headers of every dashboard answer: nothing from elsewhere runs, the page
/// is not framed, nothing is cached.
fn guarded(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; frame-ancestors 'none'; form-action 'self'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

async fn page() -> Response {
    guarded("text/html; charset=utf-8", PAGE)
}

async fn script() -> Response {
    guarded("text/javascript; charset=utf-8", SCRIPT)
}

async fn style() -> Response {
    guarded("text/css; charset=utf-8", STYLE)
}

#[derive(Deserialize)]
struct LoginForm {
    /// Missing or empty: refused like a wrong one.
    #[serde(default)]
    token: String,
}

fn redirect(to: &'static str, cookie: Option<String>) -> Response {
    let mut r = (StatusCode::SEE_OTHER, [(header::LOCATION, to)]).into_response();
    if let Some(c) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        r.headers_mut().insert(header::SET_COOKIE, c);
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

async fn login(State(ctx): State<Arc<Ctx>>, Form(form): Form<LoginForm>) -> Response {
    if !token_opens(&form.token, &ctx.token, &ctx.metrics_token) {
        tracing::info!("dashboard: a login with a wrong token was refused");
        return redirect("/dashboard?login=refused", None);
    }
    let id = ctx.dashboard_sessions.open(Instant::now());
    let cookie = format!(
        "{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/dashboard; Max-Age={}",
        SESSION_TTL.as_secs()
    );
    redirect("/dashboard", Some(cookie))
}

async fn logout(State(ctx): State<Arc<Ctx>>, headers: HeaderMap) -> Response {
    if let Some(id) = session_of(&ctx, &headers) {
        ctx.dashboard_sessions.close(&id);
    }
    let gone = format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/dashboard; Max-Age=0");
    redirect("/dashboard", Some(gone))
}

/// One app and its databases, as `pg:info` shows them.
#[derive(Debug, Serialize)]
pub struct AppView {
    pub name: String,
    pub maintenance: bool,
    pub databases: Vec<DatabaseInfo>,
}

/// Everything the page shows, in one document.
#[derive(Debug, Serialize)]
pub struct DashboardData {
    pub generated_at: DateTime<Utc>,
    pub apps: Vec<AppView>,
    pub hosts: Vec<HostSummary>,
    /// Operations under way.
    pub operations: Vec<Operation>,
    pub lag: LagHistory,
}

async fn data(State(ctx): State<Arc<Ctx>>, headers: HeaderMap) -> Response {
    if session_of(&ctx, &headers).is_none() {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::CACHE_CONTROL, "no-store")],
            Json(pgfollow_types::api::ApiError {
                error: "log in to the dashboard with the admin or the metrics token".into(),
            }),
        )
            .into_response();
    }
    match collect(&ctx).await {
        Ok(d) => ([(header::CACHE_CONTROL, "no-store")], Json(d)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn collect(ctx: &Ctx) -> Result<DashboardData, crate::error::ApiErr> {
    let state = ctx.store.read()?;
    let now = Utc::now();
    let mut apps = Vec::new();
    for a in state.apps.values() {
        let mut databases = Vec::new();
        for d in crate::api::databases::app_databases(&state, a) {
            databases.push(crate::api::databases::info_of(ctx, &state, d).await);
        }
        apps.push(AppView {
            name: a.name.to_string(),
            maintenance: a.maintenance,
            databases,
        });
    }
    let mut operations = Vec::new();
    for op in state.operations.values().filter(|o| o.state.is_active()) {
        operations.push(crate::api::misc::operation_view(ctx, &state, op).await);
    }
    operations.sort_by_key(|o| o.created_at);
    Ok(DashboardData {
        generated_at: now,
        apps,
        hosts: crate::api::misc::host_summaries(ctx, &state),
        operations,
        lag: ctx.lag_samples.history(&state, None, now),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_is_found_among_others() {
        assert_eq!(session_id("a=1; pgfollow_session=abc; b=2"), Some("abc"));
        assert_eq!(session_id("pgfollow_session=abc"), Some("abc"));
        assert_eq!(session_id("pgfollow_session="), None);
        assert_eq!(session_id("xpgfollow_session=abc"), None);
        assert_eq!(session_id(""), None);
    }

    #[test]
    fn the_admin_and_the_metrics_token_open_it() {
        assert!(token_opens("admin", "admin", "metrics"));
        assert!(token_opens(" metrics\n", "admin", "metrics"));
        assert!(!token_opens("", "admin", "metrics"));
        assert!(!token_opens("admi", "admin", "metrics"));
        assert!(!token_opens("", "", ""));
    }

    #[test]
    fn sessions_expire_and_are_bounded() {
        let s = Sessions::default();
        let t0 = Instant::now();
        let first = s.open(t0);
        assert!(s.is_open(&first, t0));
        assert!(!s.is_open(&first, t0 + SESSION_TTL));
        assert!(!s.is_open("nope", t0));
        for i in 0..MAX_SESSIONS {
            s.open(t0 + Duration::from_secs(i as u64 + 1));
        }
        assert!(
            !s.is_open(&first, t0 + Duration::from_secs(1)),
            "the oldest went first"
        );
        assert_eq!(s.lock().len(), MAX_SESSIONS);
        let last = s.open(t0 + Duration::from_secs(1000));
        s.close(&last);
        assert!(!s.is_open(&last, t0 + Duration::from_secs(1000)));
    }
}
