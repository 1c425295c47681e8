//! PgBouncer's admin console, reached over the endpoint's Unix socket as
//! [`ADMIN_USER`] with the endpoint's own random password. The console
//! speaks only the simple query protocol, so everything here goes through
//! tokio-postgres `simple_query`. A session's connection goes back to a
//! small pool when the session ends (each login costs a SCRAM exchange, a
//! few milliseconds, tens on a busy machine, and a changeover logs in
//! twice while writes are held); only connections, never state, are kept
//! between calls, so an agent restart loses nothing.
//!
//! PAUSE, DISABLE and KILL are state inside the running PgBouncer: a restart
//! of PgBouncer forgets them, and whoever wants them must apply them again.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use crate::config::{admin_ident, ADMIN_USER};
use crate::endpoint::Endpoint;
use crate::error::{pg_detail, BouncerError};

/// How long logging in to the admin console may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an admin command other than PAUSE may take.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// One line of `SHOW DATABASES`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseState {
    /// The name clients use.
    pub name: String,
    /// The target server (None for the admin console's own `pgbouncer`).
    pub host: Option<String>,
    pub port: Option<u16>,
    /// The database's name on the server.
    pub database: String,
    pub paused: bool,
    pub disabled: bool,
}

/// One admin console connection, for several commands in a row (a
/// retarget logs in once rather than once per command: each SCRAM login
/// costs a few milliseconds, much more in a debug build).
pub struct AdminSession<'a> {
    endpoint: &'a Endpoint,
    /// Taken back by the pool on drop, unless `spoiled`.
    client: Option<Client>,
    key: PoolKey,
    /// A command failed or timed out on it (a PAUSE may still be pending
    /// there): the connection is dropped, not pooled.
    spoiled: AtomicBool,
}

/// Which PgBouncer a pooled connection belongs to: its socket, port and
/// process (a restarted PgBouncer never gets an old connection).
type PoolKey = (PathBuf, u16, u32);

/// Idle admin connections kept per PgBouncer.
const POOLED_PER_ENDPOINT: usize = 4;

/// Idle admin console connections of this process, by PgBouncer.
fn pool() -> &'static Mutex<HashMap<PoolKey, Vec<Client>>> {
    static POOL: OnceLock<Mutex<HashMap<PoolKey, Vec<Client>>>> = OnceLock::new();
    POOL.get_or_init(Default::default)
}

impl Drop for AdminSession<'_> {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        if self.spoiled.load(Ordering::Relaxed) || client.is_closed() {
            return;
        }
        let mut pool = pool().lock().unwrap_or_else(|e| e.into_inner());
        // Connections of PgBouncers that are gone are dropped as they are found.
        pool.retain(|_, idle| {
            idle.retain(|c| !c.is_closed());
            !idle.is_empty()
        });
        let idle = pool.entry(self.key.clone()).or_default();
        if idle.len() < POOLED_PER_ENDPOINT {
            idle.push(client);
        }
    }
}

impl Endpoint {
    /// A fresh admin console connection; its connection task is spawned on
    /// the current runtime.
    pub async fn admin(&self) -> Result<AdminSession<'_>, BouncerError> {
        let Some(pid) = self.pid() else {
            return Err(BouncerError::NotRunning {
                root: self.root().to_path_buf(),
            });
        };
        let port = self.port()?;
        let socket_dir = self.layout().run_dir.clone();
        let key = (socket_dir.clone(), port, pid);
        let pooled = {
            let mut pool = pool().lock().unwrap_or_else(|e| e.into_inner());
            let idle = pool.entry(key.clone()).or_default();
            std::iter::from_fn(|| idle.pop()).find(|c| !c.is_closed())
        };
        if let Some(client) = pooled {
            return Ok(AdminSession {
                endpoint: self,
                client: Some(client),
                key,
                spoiled: AtomicBool::new(false),
            });
        }
        let password = self.admin_password()?;
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(&socket_dir)
            .port(port)
            .user(ADMIN_USER)
            .password(password)
            .dbname("pgbouncer")
            .connect_timeout(CONNECT_TIMEOUT);
        let connect_error = |detail: String| BouncerError::AdminConnect {
            socket_dir: socket_dir.clone(),
            detail,
        };
        let (client, connection) = tokio::time::timeout(CONNECT_TIMEOUT, config.connect(NoTls))
            .await
            .map_err(|_| connect_error(format!("timed out after {} s", CONNECT_TIMEOUT.as_secs())))?
            .map_err(|e| connect_error(pg_detail(&e)))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("pgbouncer admin connection ended: {e}");
            }
        });
        Ok(AdminSession {
            endpoint: self,
            client: Some(client),
            key,
            spoiled: AtomicBool::new(false),
        })
    }

    /// `PAUSE db`, see [`AdminSession::pause`].
    pub async fn pause(&self, dbname: &str) -> Result<(), BouncerError> {
        self.admin().await?.pause(dbname).await
    }

    /// `RESUME db`, see [`AdminSession::resume`].
    pub async fn resume(&self, dbname: &str) -> Result<(), BouncerError> {
        self.admin().await?.resume(dbname).await
    }

    /// `RELOAD`, see [`AdminSession::reload`].
    pub async fn reload(&self) -> Result<(), BouncerError> {
        self.admin().await?.reload().await
    }

    /// `DISABLE db`, see [`AdminSession::disable`].
    pub async fn disable(&self, dbname: &str) -> Result<(), BouncerError> {
        self.admin().await?.disable(dbname).await
    }

    /// `ENABLE db`, see [`AdminSession::enable`].
    pub async fn enable(&self, dbname: &str) -> Result<(), BouncerError> {
        self.admin().await?.enable(dbname).await
    }

    /// `KILL db`, see [`AdminSession::kill_clients`].
    pub async fn kill_clients(&self, dbname: &str) -> Result<(), BouncerError> {
        self.admin().await?.kill_clients(dbname).await
    }

    /// `SHOW DATABASES`, see [`AdminSession::databases`].
    pub async fn databases(&self) -> Result<Vec<DatabaseState>, BouncerError> {
        self.admin().await?.databases().await
    }

    /// The line of `SHOW DATABASES` for `dbname`, if PgBouncer has it.
    pub async fn database(&self, dbname: &str) -> Result<Option<DatabaseState>, BouncerError> {
        self.admin().await?.database(dbname).await
    }
}

impl AdminSession<'_> {
    /// Runs one admin command within `timeout`.
    pub async fn command(
        &self,
        command: &str,
        timeout: Duration,
    ) -> Result<Vec<SimpleQueryMessage>, BouncerError> {
        let client = self.client.as_ref().ok_or_else(|| BouncerError::Admin {
            command: command.to_string(),
            detail: "the admin session has ended".into(),
        })?;
        let result = run(client, command, timeout).await;
        if result.is_err() {
            self.spoiled.store(true, Ordering::Relaxed);
        }
        result
    }

    /// `PAUSE db`: waits until every server connection of `dbname` is
    /// released (in-flight transactions finish), then holds new queries
    /// until RESUME. Bounded by the endpoint's pause timeout; on timeout
    /// the database is resumed again (over a new connection: this one
    /// still waits for its PAUSE) and the error says so.
    ///
    /// In session pooling a server connection is released only when its
    /// client disconnects, so PAUSE would wait for every client to go
    /// away: there this ends the sessions instead (KILL: open
    /// transactions roll back, the clients get their connection closed,
    /// and their reconnects wait until RESUME like any new connection).
    pub async fn pause(&self, dbname: &str) -> Result<(), BouncerError> {
        if self.endpoint.pool_mode()? == crate::config::PoolMode::Session {
            return self.kill_clients(dbname).await;
        }
        let command = format!("PAUSE {}", admin_ident(dbname));
        let limit = self.endpoint.pause_timeout();
        match self.command(&command, limit).await {
            Ok(_) => Ok(()),
            Err(BouncerError::AdminTimeout { .. }) => {
                if let Err(e) = self.endpoint.resume(dbname).await {
                    tracing::warn!(dbname, "resuming after a PAUSE that timed out failed: {e}");
                }
                Err(BouncerError::PauseTimeout {
                    dbname: dbname.to_string(),
                    secs: limit.as_secs(),
                })
            }
            Err(e) => Err(no_such_database(e, dbname)),
        }
    }

    /// `RESUME db`; Ok if it was not paused.
    pub async fn resume(&self, dbname: &str) -> Result<(), BouncerError> {
        let command = format!("RESUME {}", admin_ident(dbname));
        match self.command(&command, COMMAND_TIMEOUT).await {
            Ok(_) => Ok(()),
            Err(BouncerError::Admin { detail, .. }) if detail.contains("is not paused") => Ok(()),
            Err(e) => Err(no_such_database(e, dbname)),
        }
    }

    /// `RELOAD`: re-reads `pgbouncer.ini` and `userlist.txt`. A changed
    /// target is used by every new server connection; old server
    /// connections close when next released. PAUSE/DISABLE states survive.
    pub async fn reload(&self) -> Result<(), BouncerError> {
        self.command("RELOAD", COMMAND_TIMEOUT).await.map(|_| ())
    }

    /// `DISABLE db`: new client connections to `dbname` are refused
    /// ("database is disabled"). Clients already connected keep working
    /// (see [`AdminSession::kill_clients`]).
    pub async fn disable(&self, dbname: &str) -> Result<(), BouncerError> {
        self.simple(&format!("DISABLE {}", admin_ident(dbname)), dbname)
            .await
    }

    /// `ENABLE db`: undoes DISABLE; Ok if not disabled.
    pub async fn enable(&self, dbname: &str) -> Result<(), BouncerError> {
        self.simple(&format!("ENABLE {}", admin_ident(dbname)), dbname)
            .await
    }

    /// `PAUSE db` within `limit`: whether it finished. When it did not, the
    /// database stays paused (new transactions wait) while the
    /// transactions that held it up go on; [`AdminSession::active_servers`]
    /// tells when they are gone.
    ///
    /// In session pooling PAUSE would wait for every client to disconnect:
    /// there the sessions are ended at once (KILL, see
    /// [`AdminSession::pause`]) and the pause is complete.
    pub async fn pause_within(&self, dbname: &str, limit: Duration) -> Result<bool, BouncerError> {
        if self.endpoint.pool_mode()? == crate::config::PoolMode::Session {
            self.kill_clients(dbname).await?;
            return Ok(true);
        }
        let command = format!("PAUSE {}", admin_ident(dbname));
        match self.command(&command, limit).await {
            Ok(_) => Ok(true),
            Err(BouncerError::Admin { detail, .. }) if detail.contains("already paused") => {
                Ok(self.endpoint.admin().await?.active_servers(dbname).await? == 0)
            }
            Err(BouncerError::AdminTimeout { .. }) => Ok(false),
            Err(e) => Err(no_such_database(e, dbname)),
        }
    }

    /// Server connections of `dbname` still in a transaction (`SHOW POOLS`
    /// `sv_active`): a pause is complete when there are none.
    pub async fn active_servers(&self, dbname: &str) -> Result<u32, BouncerError> {
        let messages = self.command("SHOW POOLS", COMMAND_TIMEOUT).await?;
        let mut active = 0;
        for m in messages {
            let SimpleQueryMessage::Row(row) = m else {
                continue;
            };
            if row.try_get("database").ok().flatten() == Some(dbname) {
                active += row
                    .try_get("sv_active")
                    .ok()
                    .flatten()
                    .and_then(|v: &str| v.parse::<u32>().ok())
                    .unwrap_or(0);
            }
        }
        Ok(active)
    }

    /// `PAUSE db` that never gives the database back: when the pause does
    /// not finish within `limit` (a client keeps a transaction open, or a
    /// server connection hangs on a host that no longer answers), the
    /// clients holding it up are ended with their server connections
    /// ([`AdminSession::end_transactions`]); the others (idle, or waiting
    /// for a server or to log in) stay and wait for RESUME, so a client
    /// that was connecting is not sent to the next host of its URL. Returns
    /// whether connections had to be ended.
    ///
    /// In session pooling holding the endpoint always ends its sessions
    /// (see [`AdminSession::pause`]); that is how it pauses there, so it
    /// answers `false`.
    pub async fn pause_or_kill(&self, dbname: &str, limit: Duration) -> Result<bool, BouncerError> {
        if self.endpoint.pool_mode()? == crate::config::PoolMode::Session {
            self.kill_clients(dbname).await?;
            return Ok(false);
        }
        let command = format!("PAUSE {}", admin_ident(dbname));
        match self.command(&command, limit).await {
            Ok(_) => Ok(false),
            Err(BouncerError::Admin { detail, .. }) if detail.contains("already paused") => {
                // Paused before (a suspicion): wait for what is still in
                // flight as long as a PAUSE would have, then end it.
                let started = std::time::Instant::now();
                let admin = self.endpoint.admin().await?;
                while admin.active_servers(dbname).await? > 0 {
                    if started.elapsed() >= limit {
                        admin.end_transactions(dbname).await?;
                        return Ok(true);
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Ok(false)
            }
            Err(BouncerError::AdminTimeout { .. }) => {
                // This connection still waits for its PAUSE: end what holds
                // it up over a new one.
                self.endpoint
                    .admin()
                    .await?
                    .end_transactions(dbname)
                    .await?;
                Ok(true)
            }
            Err(e) => Err(no_such_database(e, dbname)),
        }
    }

    /// Ends every client of `dbname` that holds a server connection (in
    /// transaction pooling: one in a transaction, or waiting on a server
    /// that hangs) with `KILL_CLIENT`, which closes its server connection
    /// too; clients without one are left alone. Answers how many were
    /// ended.
    pub async fn end_transactions(&self, dbname: &str) -> Result<usize, BouncerError> {
        let messages = self.command("SHOW CLIENTS", COMMAND_TIMEOUT).await?;
        let mut busy = Vec::new();
        for m in messages {
            let SimpleQueryMessage::Row(row) = m else {
                continue;
            };
            let linked = row
                .try_get("link")
                .ok()
                .flatten()
                .is_some_and(|l: &str| !l.is_empty());
            let id = row.try_get("id").ok().flatten().map(str::to_string);
            if linked && row.try_get("database").ok().flatten() == Some(dbname) {
                busy.extend(id);
            }
        }
        for id in &busy {
            match self
                .command(&format!("KILL_CLIENT {id}"), COMMAND_TIMEOUT)
                .await
            {
                Ok(_) => {}
                // Gone by itself meanwhile.
                Err(BouncerError::Admin { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(busy.len())
    }

    /// `KILL db`: drops every client and server connection of `dbname` at
    /// once (open transactions roll back). PgBouncer leaves the database
    /// paused afterwards: RESUME lets new work in again.
    pub async fn kill_clients(&self, dbname: &str) -> Result<(), BouncerError> {
        self.simple(&format!("KILL {}", admin_ident(dbname)), dbname)
            .await
    }

    async fn simple(&self, command: &str, dbname: &str) -> Result<(), BouncerError> {
        self.command(command, COMMAND_TIMEOUT)
            .await
            .map(|_| ())
            .map_err(|e| no_such_database(e, dbname))
    }

    /// `SHOW DATABASES`, without the admin console's own `pgbouncer`.
    pub async fn databases(&self) -> Result<Vec<DatabaseState>, BouncerError> {
        let messages = self.command("SHOW DATABASES", COMMAND_TIMEOUT).await?;
        let mut out = Vec::new();
        for m in messages {
            let SimpleQueryMessage::Row(row) = m else {
                continue;
            };
            let text = |col: &str| row.try_get(col).ok().flatten().map(str::to_string);
            let Some(name) = text("name") else {
                continue;
            };
            if name == "pgbouncer" {
                continue;
            }
            out.push(DatabaseState {
                host: text("host").filter(|h| !h.is_empty()),
                port: text("port").and_then(|p| p.parse().ok()),
                database: text("database").unwrap_or_default(),
                paused: text("paused").as_deref() == Some("1"),
                disabled: text("disabled").as_deref() == Some("1"),
                name,
            });
        }
        Ok(out)
    }

    /// The line of `SHOW DATABASES` for `dbname`, if PgBouncer has it.
    pub async fn database(&self, dbname: &str) -> Result<Option<DatabaseState>, BouncerError> {
        Ok(self
            .databases()
            .await?
            .into_iter()
            .find(|d| d.name == dbname))
    }
}

/// Runs one admin command on `client` within `timeout`.
async fn run(
    client: &Client,
    command: &str,
    timeout: Duration,
) -> Result<Vec<SimpleQueryMessage>, BouncerError> {
    match tokio::time::timeout(timeout, client.simple_query(command)).await {
        Ok(Ok(messages)) => Ok(messages),
        Ok(Err(e)) => Err(BouncerError::Admin {
            command: command.to_string(),
            detail: pg_detail(&e),
        }),
        Err(_) => Err(BouncerError::AdminTimeout {
            command: command.to_string(),
            secs: timeout.as_secs(),
        }),
    }
}

/// PgBouncer's "no such database: X" as its own error.
fn no_such_database(e: BouncerError, dbname: &str) -> BouncerError {
    match e {
        BouncerError::Admin { ref detail, .. } if detail.contains("no such database") => {
            BouncerError::NoSuchDatabase {
                dbname: dbname.to_string(),
            }
        }
        e => e,
    }
}
