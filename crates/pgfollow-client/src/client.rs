//! The typed client: one method per route of the control plane's `/v1` API.
//! Every request carries `Authorization: Bearer <token>`; path segments (app
//! names, database references such as `other::DATABASE_URL`) are
//! percent-encoded, and the server resolves database references itself.
//! A client may be given several control plane replicas (`http://a,http://b`):
//! it tries them in order, remembers the one that answered, and moves on to
//! the next only when a request could not have reached the server (no
//! connection; for reads also a timeout), so a write is never sent twice.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use pgfollow_types::api::{
    AddonSummary, ApiError, App, Backend, Billing, ConfigChange, ConfigVars, Confirm, CreateAddon,
    CreateAddonResponse, CreateApp, Credentials, DatabaseInfo, DestroyAddonResponse,
    KillAllResponse, KillRequest, KillResponse, Operation, ServerStatus,
};
use pgfollow_types::backup::{
    BackupInfo, BackupStarted, CaptureBackup, RestoreBackup, ScheduleBackups, ScheduleInfo,
};
use pgfollow_types::Plan;
use reqwest::{Method, RequestBuilder};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::endpoint::{self, non_empty_env, resolve_endpoint, ENV_API, ENV_TOKEN};
use crate::error::{root_cause, ClientError};

/// Everything but the unreserved characters of RFC 3986 is encoded.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// How long to wait for a TCP connection before calling the API unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The same, per replica, when there are several to try.
const CONNECT_TIMEOUT_EACH: Duration = Duration::from_secs(2);
/// Upper bound of one request, answer included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// A client of one control plane (one or several replicas of it).
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    /// Every replica's base URL, in the order given.
    bases: Arc<Vec<String>>,
    /// The replica that answered last.
    current: Arc<AtomicUsize>,
    token: String,
    /// How long a replica may take to answer a request that can safely be
    /// sent again (a heartbeat) before the next one is asked, when there
    /// are several: a replica cut off answers nothing, not even a reset.
    attempt_timeout: Option<Duration>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base_url", &self.base_url())
            .finish_non_exhaustive()
    }
}

/// The base URLs in `list` (`http://a:1,b:2`): trimmed, without a trailing
/// `/`, a bare `host:port` with `http://`, empty entries skipped.
pub fn parse_urls(list: &str) -> Vec<String> {
    list.split(',')
        .map(|u| u.trim().trim_end_matches('/'))
        .filter(|u| !u.is_empty())
        .map(|u| {
            if u.contains("://") {
                u.to_string()
            } else {
                format!("http://{u}")
            }
        })
        .collect()
}

fn http_client(connect: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(connect)
        .timeout(REQUEST_TIMEOUT)
        .user_agent(concat!("pgfollow/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_default()
}

impl Client {
    /// A client of the API at `base_url` (`http://127.0.0.1:7480`; a bare
    /// `host:port` gets `http://`), or of several replicas of it, given
    /// comma-separated.
    pub fn new(base_url: impl Into<String>, token: impl Into<String>) -> Self {
        let mut bases = parse_urls(&base_url.into());
        if bases.is_empty() {
            bases.push(String::new());
        }
        let connect = if bases.len() > 1 {
            CONNECT_TIMEOUT_EACH
        } else {
            CONNECT_TIMEOUT
        };
        Self {
            http: http_client(connect),
            bases: Arc::new(bases),
            current: Arc::default(),
            token: token.into(),
            attempt_timeout: None,
        }
    }

    /// The same client with a bound on each replica's answer to a request
    /// that may be sent twice (heartbeats), so that one cut off is passed
    /// over rather than waited for.
    pub fn with_attempt_timeout(mut self, each: Duration) -> Self {
        self.attempt_timeout = Some(each);
        self
    }

    /// The same client with another bound on each TCP connection (an
    /// agent's heartbeat must move on to the next replica quickly).
    pub fn with_connect_timeout(mut self, connect: Duration) -> Self {
        self.http = http_client(connect);
        self
    }

    /// Every replica's base URL, in the order given.
    pub fn base_urls(&self) -> &[String] {
        &self.bases
    }

    /// Finds the API the way every CLI command does: PGFOLLOW_API and
    /// PGFOLLOW_TOKEN override; otherwise the API file in `data_dir` (or
    /// PGFOLLOW_DATA_DIR, or the default data directory).
    pub fn discover(data_dir: Option<PathBuf>) -> Result<Self, ClientError> {
        let dir = endpoint::data_dir(data_dir);
        let found = resolve_endpoint(non_empty_env(ENV_API), non_empty_env(ENV_TOKEN), &dir)?;
        Ok(Self::new(found.url, found.token))
    }

    /// The base URL requests go to: the replica that answered last.
    pub fn base_url(&self) -> &str {
        let i = self.current.load(Ordering::Relaxed);
        self.bases.get(i).unwrap_or(&self.bases[0])
    }

    /// `GET /v1/status`.
    pub async fn status(&self) -> Result<ServerStatus, ClientError> {
        self.get(&["v1", "status"]).await
    }

    /// `GET /v1/plans`.
    pub async fn plans(&self) -> Result<Vec<Plan>, ClientError> {
        self.get(&["v1", "plans"]).await
    }

    /// `GET /v1/apps`.
    pub async fn apps(&self) -> Result<Vec<App>, ClientError> {
        self.get(&["v1", "apps"]).await
    }

    /// `POST /v1/apps`.
    pub async fn create_app(&self, name: &str) -> Result<App, ClientError> {
        let body = CreateApp {
            name: name.to_string(),
        };
        self.send(self.request(Method::POST, &["v1", "apps"]).json(&body))
            .await
    }

    /// `DELETE /v1/apps/{app}?confirm=NAME`.
    pub async fn destroy_app(&self, app: &str, confirm: &str) -> Result<App, ClientError> {
        let req = self
            .request(Method::DELETE, &["v1", "apps", app])
            .query(&[("confirm", confirm)]);
        self.send(req).await
    }

    /// `GET /v1/apps/{app}/config`.
    pub async fn config(&self, app: &str) -> Result<ConfigVars, ClientError> {
        self.get(&["v1", "apps", app, "config"]).await
    }

    /// `PATCH /v1/apps/{app}/config`.
    pub async fn change_config(
        &self,
        app: &str,
        change: &ConfigChange,
    ) -> Result<ConfigVars, ClientError> {
        self.send_json(Method::PATCH, &["v1", "apps", app, "config"], change)
            .await
    }

    /// `GET /v1/apps/{app}/addons`.
    pub async fn addons(&self, app: &str) -> Result<Vec<AddonSummary>, ClientError> {
        self.get(&["v1", "apps", app, "addons"]).await
    }

    /// `POST /v1/apps/{app}/addons`.
    pub async fn create_addon(
        &self,
        app: &str,
        req: &CreateAddon,
    ) -> Result<CreateAddonResponse, ClientError> {
        self.send_json(Method::POST, &["v1", "apps", app, "addons"], req)
            .await
    }

    /// `DELETE /v1/apps/{app}/addons/{db}?confirm=APP`.
    pub async fn destroy_addon(
        &self,
        app: &str,
        db: &str,
        confirm: &str,
    ) -> Result<DestroyAddonResponse, ClientError> {
        let req = self
            .request(Method::DELETE, &["v1", "apps", app, "addons", db])
            .query(&[("confirm", confirm)]);
        self.send(req).await
    }

    /// `GET /v1/apps/{app}/info`: every database of the app.
    pub async fn info(&self, app: &str) -> Result<Vec<DatabaseInfo>, ClientError> {
        self.get(&["v1", "apps", app, "info"]).await
    }

    /// `GET /v1/apps/{app}/databases/{db}`.
    pub async fn database(&self, app: &str, db: &str) -> Result<DatabaseInfo, ClientError> {
        self.get(&["v1", "apps", app, "databases", db]).await
    }

    /// `GET /v1/apps/{app}/databases/{db}/diagnose`.
    pub async fn diagnose(
        &self,
        app: &str,
        db: &str,
    ) -> Result<pgfollow_types::api::Diagnosis, ClientError> {
        self.get(&["v1", "apps", app, "databases", db, "diagnose"])
            .await
    }

    /// `GET /v1/apps/{app}/databases/{db}/extras/{report}`.
    pub async fn extras(
        &self,
        app: &str,
        db: &str,
        report: pgfollow_types::api::ExtrasReport,
    ) -> Result<pgfollow_types::api::ExtrasTable, ClientError> {
        self.get(&[
            "v1",
            "apps",
            app,
            "databases",
            db,
            "extras",
            report.as_str(),
        ])
        .await
    }

    /// `GET /v1/apps/{app}/lag-history`.
    pub async fn lag_history(
        &self,
        app: &str,
    ) -> Result<pgfollow_types::api::LagHistory, ClientError> {
        self.get(&["v1", "apps", app, "lag-history"]).await
    }

    /// `GET /v1/apps/{app}/databases/{db}/ps`.
    pub async fn ps(&self, app: &str, db: &str) -> Result<Vec<Backend>, ClientError> {
        self.get(&["v1", "apps", app, "databases", db, "ps"]).await
    }

    /// `POST /v1/apps/{app}/databases/{db}/kill`.
    pub async fn kill(
        &self,
        app: &str,
        db: &str,
        req: &KillRequest,
    ) -> Result<KillResponse, ClientError> {
        self.send_json(
            Method::POST,
            &["v1", "apps", app, "databases", db, "kill"],
            req,
        )
        .await
    }

    /// `POST /v1/apps/{app}/databases/{db}/killall` (no body).
    pub async fn killall(&self, app: &str, db: &str) -> Result<KillAllResponse, ClientError> {
        let path = ["v1", "apps", app, "databases", db, "killall"];
        self.send(self.request(Method::POST, &path)).await
    }

    /// `GET /v1/apps/{app}/databases/{db}/credentials`.
    pub async fn credentials(&self, app: &str, db: &str) -> Result<Credentials, ClientError> {
        self.get(&["v1", "apps", app, "databases", db, "credentials"])
            .await
    }

    /// `POST /v1/apps/{app}/databases/{db}/credentials/rotate`.
    pub async fn rotate_credentials(
        &self,
        app: &str,
        db: &str,
        confirm: &str,
    ) -> Result<Credentials, ClientError> {
        let body = Confirm {
            confirm: confirm.to_string(),
        };
        let path = ["v1", "apps", app, "databases", db, "credentials", "rotate"];
        self.send_json(Method::POST, &path, &body).await
    }

    /// `POST /v1/apps/{app}/databases/{db}/unfollow`.
    pub async fn unfollow(
        &self,
        app: &str,
        db: &str,
        confirm: &str,
    ) -> Result<pgfollow_types::api::UnfollowResponse, ClientError> {
        let body = Confirm {
            confirm: confirm.to_string(),
        };
        let path = ["v1", "apps", app, "databases", db, "unfollow"];
        self.send_json(Method::POST, &path, &body).await
    }

    /// `POST /v1/apps/{app}/databases/{db}/promote`.
    pub async fn promote(
        &self,
        app: &str,
        db: &str,
        request: &pgfollow_types::api::PromoteRequest,
    ) -> Result<pgfollow_types::api::PromoteResponse, ClientError> {
        let path = ["v1", "apps", app, "databases", db, "promote"];
        self.send_json(Method::POST, &path, request).await
    }

    /// `GET /v1/apps/{app}/maintenance`.
    pub async fn maintenance(
        &self,
        app: &str,
    ) -> Result<pgfollow_types::api::Maintenance, ClientError> {
        self.get(&["v1", "apps", app, "maintenance"]).await
    }

    /// `PUT /v1/apps/{app}/maintenance`.
    pub async fn set_maintenance(
        &self,
        app: &str,
        on: bool,
    ) -> Result<pgfollow_types::api::Maintenance, ClientError> {
        let body = pgfollow_types::api::Maintenance {
            app: app.to_string(),
            on,
        };
        self.send_json(Method::PUT, &["v1", "apps", app, "maintenance"], &body)
            .await
    }

    /// `GET /v1/apps/{app}/endpoint/mode`.
    pub async fn endpoint_mode(
        &self,
        app: &str,
    ) -> Result<pgfollow_types::api::EndpointMode, ClientError> {
        self.get(&["v1", "apps", app, "endpoint", "mode"]).await
    }

    /// `PUT /v1/apps/{app}/endpoint/mode`.
    pub async fn set_endpoint_mode(
        &self,
        app: &str,
        pool_mode: pgfollow_types::api::PoolMode,
    ) -> Result<pgfollow_types::api::EndpointMode, ClientError> {
        let body = pgfollow_types::api::EndpointMode {
            app: app.to_string(),
            pool_mode,
        };
        self.send_json(Method::PUT, &["v1", "apps", app, "endpoint", "mode"], &body)
            .await
    }

    /// `GET /v1/apps/{app}/endpoint/read`.
    pub async fn read_endpoint(
        &self,
        app: &str,
    ) -> Result<pgfollow_types::reads::ReadEndpoint, ClientError> {
        self.get(&["v1", "apps", app, "endpoint", "read"]).await
    }

    /// `PUT /v1/apps/{app}/endpoint/read`.
    pub async fn set_read_endpoint(
        &self,
        app: &str,
        change: &pgfollow_types::reads::ReadEndpointChange,
    ) -> Result<pgfollow_types::reads::ReadEndpoint, ClientError> {
        self.send_json(
            Method::PUT,
            &["v1", "apps", app, "endpoint", "read"],
            change,
        )
        .await
    }

    /// `POST /v1/apps/{app}/databases/{db}/changeover`.
    pub async fn changeover(
        &self,
        app: &str,
        db: &str,
        request: &pgfollow_types::api::ChangeoverRequest,
    ) -> Result<pgfollow_types::api::ChangeoverReport, ClientError> {
        let body = request;
        let path = ["v1", "apps", app, "databases", db, "changeover"];
        self.send_json(Method::POST, &path, &body).await
    }

    /// `POST /v1/apps/{app}/databases/{db}/upgrade`.
    pub async fn upgrade(
        &self,
        app: &str,
        db: &str,
        request: &pgfollow_types::api::UpgradeRequest,
    ) -> Result<pgfollow_types::api::UpgradeResponse, ClientError> {
        let path = ["v1", "apps", app, "databases", db, "upgrade"];
        self.send_json(Method::POST, &path, request).await
    }

    /// `GET /v1/apps/{app}/billing`.
    pub async fn billing(&self, app: &str) -> Result<Billing, ClientError> {
        self.get(&["v1", "apps", app, "billing"]).await
    }

    /// `GET /v1/operations/{id}`.
    pub async fn operation(&self, id: &str) -> Result<Operation, ClientError> {
        self.get(&["v1", "operations", id]).await
    }

    /// `POST /v1/hosts`: an agent registers (and, repeated, heartbeats).
    pub async fn register_host(
        &self,
        registration: &pgfollow_types::agent::AgentRegistration,
    ) -> Result<pgfollow_types::api::HostSummary, ClientError> {
        // A heartbeat is the same whoever takes it, and twice is harmless.
        let req = self
            .request(Method::POST, &["v1", "hosts"])
            .json(registration);
        let resp = self.execute_as(req, true).await?;
        self.read(resp).await
    }

    /// `GET /openapi.json`.
    /// `GET /v1/apps/{app}/backups`.
    pub async fn backups(&self, app: &str) -> Result<Vec<BackupInfo>, ClientError> {
        self.get(&["v1", "apps", app, "backups"]).await
    }

    /// `POST /v1/apps/{app}/backups`.
    pub async fn capture_backup(
        &self,
        app: &str,
        database: Option<&str>,
    ) -> Result<BackupStarted, ClientError> {
        let body = CaptureBackup {
            database: database.map(str::to_string),
        };
        self.send_json(Method::POST, &["v1", "apps", app, "backups"], &body)
            .await
    }

    /// `GET /v1/apps/{app}/backups/{name}` (`latest` for the newest).
    pub async fn backup(&self, app: &str, name: &str) -> Result<BackupInfo, ClientError> {
        self.get(&["v1", "apps", app, "backups", name]).await
    }

    /// `DELETE /v1/apps/{app}/backups/{name}?confirm=APP`.
    pub async fn delete_backup(
        &self,
        app: &str,
        name: &str,
        confirm: &str,
    ) -> Result<BackupInfo, ClientError> {
        let req = self
            .request(Method::DELETE, &["v1", "apps", app, "backups", name])
            .query(&[("confirm", confirm)]);
        self.send(req).await
    }

    /// `POST /v1/apps/{app}/backups/cancel`.
    pub async fn cancel_backups(&self, app: &str) -> Result<Vec<String>, ClientError> {
        self.send(self.request(Method::POST, &["v1", "apps", app, "backups", "cancel"]))
            .await
    }

    /// `POST /v1/apps/{app}/restores?confirm=APP`.
    pub async fn restore_backup(
        &self,
        app: &str,
        req: &RestoreBackup,
        confirm: &str,
    ) -> Result<BackupStarted, ClientError> {
        let r = self
            .request(Method::POST, &["v1", "apps", app, "restores"])
            .query(&[("confirm", confirm)])
            .json(req);
        self.send(r).await
    }

    /// `GET /v1/apps/{app}/backup-schedules`.
    pub async fn backup_schedules(&self, app: &str) -> Result<Vec<ScheduleInfo>, ClientError> {
        self.get(&["v1", "apps", app, "backup-schedules"]).await
    }

    /// `POST /v1/apps/{app}/backup-schedules`.
    pub async fn schedule_backups(
        &self,
        app: &str,
        req: &ScheduleBackups,
    ) -> Result<ScheduleInfo, ClientError> {
        self.send_json(Method::POST, &["v1", "apps", app, "backup-schedules"], req)
            .await
    }

    /// `DELETE /v1/apps/{app}/backup-schedules/{db}`.
    pub async fn unschedule_backups(
        &self,
        app: &str,
        db: &str,
    ) -> Result<ScheduleInfo, ClientError> {
        self.send(self.request(Method::DELETE, &["v1", "apps", app, "backup-schedules", db]))
            .await
    }

    /// `GET /v1/apps/{app}/backups/{name}/download` into `out` (written as
    /// `out.partial`, renamed when complete). Returns the bytes written.
    pub async fn download_backup(
        &self,
        app: &str,
        name: &str,
        out: &std::path::Path,
    ) -> Result<u64, ClientError> {
        use std::io::Write;
        let segments = ["v1", "apps", app, "backups", name, "download"];
        let mut resp = self
            .http
            .request(Method::GET, self.url(&segments))
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(6 * 3600))
            .send()
            .await
            .map_err(|e| self.transport_error(e))?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.bytes().await.map_err(|e| self.transport_error(e))?;
            return Err(api_error(status.as_u16(), &body));
        }
        let tmp = std::path::PathBuf::from(format!("{}.partial", out.display()));
        let local = |e: std::io::Error| ClientError::Http {
            url: out.display().to_string(),
            cause: e.to_string(),
        };
        let mut file = std::fs::File::create(&tmp).map_err(local)?;
        let mut total = 0u64;
        let copied: Result<(), ClientError> = async {
            while let Some(chunk) = resp.chunk().await.map_err(|e| self.transport_error(e))? {
                file.write_all(&chunk).map_err(local)?;
                total += chunk.len() as u64;
            }
            file.sync_all().map_err(local)?;
            std::fs::rename(&tmp, out).map_err(local)
        }
        .await;
        if copied.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        copied.map(|()| total)
    }

    pub async fn openapi(&self) -> Result<serde_json::Value, ClientError> {
        self.get(&["openapi.json"]).await
    }

    /// The URL of a path whose segments are percent-encoded one by one.
    pub fn url(&self, segments: &[&str]) -> String {
        let mut url = self.base_url().to_string();
        for s in segments {
            url.push('/');
            url.extend(utf8_percent_encode(s, SEGMENT));
        }
        url
    }

    fn request(&self, method: Method, segments: &[&str]) -> RequestBuilder {
        self.http
            .request(method, self.url(segments))
            .bearer_auth(&self.token)
    }

    async fn get<T: DeserializeOwned>(&self, segments: &[&str]) -> Result<T, ClientError> {
        self.send(self.request(Method::GET, segments)).await
    }

    async fn send_json<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        segments: &[&str],
        body: &B,
    ) -> Result<T, ClientError> {
        self.send(self.request(method, segments).json(body)).await
    }

    /// Sends `req` to the replica that answered last, and on to the next
    /// ones while it could not have reached one.
    async fn execute(&self, req: RequestBuilder) -> Result<reqwest::Response, ClientError> {
        self.execute_as(req, false).await
    }

    /// [`Client::execute`]; a request that may be sent again (`resend`) also
    /// moves on after a timeout, each replica but the last bounded by
    /// `attempt_timeout`.
    async fn execute_as(
        &self,
        req: RequestBuilder,
        resend: bool,
    ) -> Result<reqwest::Response, ClientError> {
        let (http, req) = req.build_split();
        let req = req.map_err(|e| self.transport_error(e))?;
        let first = self.current.load(Ordering::Relaxed);
        let from = self.base_url().to_string();
        let n = self.bases.len();
        let mut last = None;
        for k in 0..n {
            let i = (first + k) % n;
            let Some(mut attempt) = req.try_clone() else {
                return http.execute(req).await.map_err(|e| self.transport_error(e));
            };
            if let (true, Some(each), true) = (resend, self.attempt_timeout, k + 1 < n) {
                *attempt.timeout_mut() = Some(each);
            }
            if i != first {
                let moved = rebase(attempt.url().as_str(), &from, &self.bases[i]);
                match reqwest::Url::parse(&moved) {
                    Ok(u) => *attempt.url_mut() = u,
                    Err(_) => continue,
                }
            }
            match http.execute(attempt).await {
                Ok(resp) => {
                    self.current.store(i, Ordering::Relaxed);
                    return Ok(resp);
                }
                Err(e) => {
                    let unsent = e.is_connect()
                        || ((resend || req.method() == Method::GET)
                            && (e.is_timeout() || e.is_request()));
                    let err = self.transport_error_at(e, &self.bases[i]);
                    if !unsent || n == 1 {
                        return Err(err);
                    }
                    last = Some(err);
                }
            }
        }
        Err(match last {
            Some(ClientError::Unreachable { cause, .. }) => ClientError::Unreachable {
                url: self.bases.join(","),
                cause,
            },
            Some(other) => other,
            None => ClientError::Unreachable {
                url: self.bases.join(","),
                cause: "no usable URL".into(),
            },
        })
    }

    async fn send<T: DeserializeOwned>(&self, req: RequestBuilder) -> Result<T, ClientError> {
        let resp = self.execute(req).await?;
        self.read(resp).await
    }

    /// A response's body as `T`, or the error it answers.
    async fn read<T: DeserializeOwned>(&self, resp: reqwest::Response) -> Result<T, ClientError> {
        let status = resp.status();
        let url = resp.url().to_string();
        let body = resp.bytes().await.map_err(|e| self.transport_error(e))?;
        if !status.is_success() {
            return Err(api_error(status.as_u16(), &body));
        }
        serde_json::from_slice(&body).map_err(|e| ClientError::Decode {
            url,
            cause: e.to_string(),
        })
    }

    fn transport_error(&self, e: reqwest::Error) -> ClientError {
        let base = self.base_url().to_string();
        self.transport_error_at(e, &base)
    }

    fn transport_error_at(&self, e: reqwest::Error, base: &str) -> ClientError {
        let cause = root_cause(&e);
        if e.is_connect() || e.is_timeout() {
            let cause = if e.is_timeout() && !e.is_connect() {
                "timed out".to_string()
            } else {
                cause
            };
            ClientError::Unreachable {
                url: base.to_string(),
                cause,
            }
        } else {
            ClientError::Http {
                url: base.to_string(),
                cause,
            }
        }
    }
}

/// `url` (which starts with `from`) with `from` replaced by `to`.
fn rebase(url: &str, from: &str, to: &str) -> String {
    match url.strip_prefix(from) {
        Some(rest) => format!("{to}{rest}"),
        None => url.to_string(),
    }
}

/// The error of a non-2xx answer: the server's `ApiError` message, or a
/// description of a body that is not one.
fn api_error(status: u16, body: &[u8]) -> ClientError {
    let message = match serde_json::from_slice::<ApiError>(body) {
        Ok(e) => e.error,
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            if text.is_empty() {
                format!("the pgfollow API answered HTTP {status} without a message")
            } else {
                let short: String = text.chars().take(200).collect();
                format!("the pgfollow API answered HTTP {status}: {short}")
            }
        }
    };
    ClientError::Api { status, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    use axum::extract::Path;
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::get;
    use axum::{Json, Router};

    /// A throwaway server on a free loopback port; answers until dropped.
    async fn serve(router: Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn an_error_answer_becomes_its_message() {
        let router = Router::new().route(
            "/v1/apps",
            get(|| async {
                (
                    StatusCode::UNAUTHORIZED,
                    Json(ApiError {
                        error: "wrong token: use the one in api.json".into(),
                    }),
                )
            }),
        );
        let client = Client::new(serve(router).await, "nope");
        let e = client.apps().await.unwrap_err();
        assert!(
            matches!(&e, ClientError::Api { status: 401, message } if message == "wrong token: use the one in api.json"),
            "{e:?}"
        );
        assert_eq!(e.to_string(), "wrong token: use the one in api.json");
    }

    #[tokio::test]
    async fn token_and_encoded_segments_reach_the_server() {
        async fn echo(
            Path((app, db)): Path<(String, String)>,
            headers: HeaderMap,
        ) -> Json<Vec<Backend>> {
            let auth = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            Json(vec![Backend {
                pid: 1,
                user: app,
                application_name: db,
                client_addr: None,
                state: auth,
                waiting: false,
                running_for_secs: 0.0,
                query: String::new(),
            }])
        }
        let router = Router::new().route("/v1/apps/{app}/databases/{db}/ps", get(echo));
        let client = Client::new(serve(router).await, "s3cret");
        let seen = client.ps("sushi", "other::DATABASE_URL").await.unwrap();
        assert_eq!(seen[0].user, "sushi");
        assert_eq!(seen[0].application_name, "other::DATABASE_URL");
        assert_eq!(seen[0].state, "Bearer s3cret");
    }

    #[tokio::test]
    async fn a_closed_port_is_unreachable() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let client = Client::new(format!("http://{addr}"), "t");
        let e = client.status().await.unwrap_err();
        assert!(matches!(e, ClientError::Unreachable { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!(
                "cannot reach the pgfollow API at http://{addr}: is `pgfollow serve` running? ("
            )),
            "{msg}"
        );
    }

    #[test]
    fn url_lists_are_parsed() {
        assert_eq!(
            parse_urls(" http://a:1/, b:2 ,,https://c "),
            ["http://a:1", "http://b:2", "https://c"]
        );
        assert_eq!(parse_urls("127.0.0.1:7480"), ["http://127.0.0.1:7480"]);
        assert!(parse_urls(" , ").is_empty());
        assert_eq!(
            rebase("http://a:1/v1/apps?x=1", "http://a:1", "http://b:2"),
            "http://b:2/v1/apps?x=1"
        );
    }

    #[tokio::test]
    async fn a_dead_replica_is_passed_over_and_the_live_one_remembered() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead = listener.local_addr().unwrap();
        drop(listener);
        let router = Router::new().route("/v1/plans", get(|| async { Json(Vec::<Plan>::new()) }));
        let live = serve(router).await;
        let client = Client::new(format!("http://{dead},{live}"), "t");
        assert_eq!(client.base_url(), format!("http://{dead}"));
        assert!(client.plans().await.unwrap().is_empty());
        assert_eq!(client.base_url(), live);
        // A copy shares what was learnt.
        assert_eq!(client.clone().base_url(), live);
        assert!(client.plans().await.unwrap().is_empty());

        let all_dead = Client::new(format!("http://{dead},http://{dead}"), "t");
        let e = all_dead.plans().await.unwrap_err().to_string();
        assert!(e.contains(&format!("http://{dead},http://{dead}")), "{e}");
    }

    #[test]
    fn segments_are_percent_encoded() {
        let c = Client::new("127.0.0.1:7480/", "t");
        assert_eq!(
            c.url(&["v1", "apps", "sushi", "databases", "other::DATABASE_URL"]),
            "http://127.0.0.1:7480/v1/apps/sushi/databases/other%3A%3ADATABASE_URL"
        );
        assert_eq!(
            c.url(&["v1", "x", "a b/c"]),
            "http://127.0.0.1:7480/v1/x/a%20b%2Fc"
        );
    }

    #[test]
    fn a_non_json_error_body_is_described() {
        let e = api_error(502, b"Bad Gateway");
        assert_eq!(
            e.to_string(),
            "the pgfollow API answered HTTP 502: Bad Gateway"
        );
        let e = api_error(500, b"");
        assert_eq!(e.status(), Some(500));
    }
}
