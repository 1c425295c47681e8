//! What the agent asks a running cluster over its Unix socket: roles and
//! the app's database (bootstrap), passwords, statistics for `pg:info`, and
//! the backends of `pg:ps` / `pg:kill`.
//!
//! Passwords never reach the server in clear text: the SCRAM-SHA-256
//! verifier is computed here and sent as an escaped literal. Statements that
//! carry one are never logged, here or (with `log_min_error_statement =
//! panic`) by the server.

use std::time::Duration;

use pgfollow_types::agent::{ClusterSpec, ClusterStats, RoleSecret};
use pgfollow_types::api::Backend;
use postgres_protocol::escape::{escape_identifier, escape_literal};
use postgres_protocol::password::scram_sha_256;
use tokio_postgres::{Client, NoTls};

use crate::cluster::Cluster;
use crate::error::PgError;

/// How long connecting over the Unix socket may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// `application_name` of the agent's own connections.
pub const APPLICATION_NAME: &str = "pgfollow-agent";

/// The superuser the agent connects as (created by `initdb -U postgres`).
pub const SUPERUSER: &str = "postgres";

/// A superuser connection to `dbname` over the Unix socket in `socket_dir`
/// on `port`; its connection task is spawned on the current runtime.
pub(crate) async fn connect_socket(
    socket_dir: &std::path::Path,
    port: u16,
    dbname: &str,
) -> Result<Client, PgError> {
    let socket_dir = socket_dir.to_path_buf();
    let mut config = tokio_postgres::Config::new();
    config
        .host_path(&socket_dir)
        .port(port)
        .user(SUPERUSER)
        .dbname(dbname)
        .application_name(APPLICATION_NAME)
        .connect_timeout(CONNECT_TIMEOUT);
    let (client, connection) = tokio::time::timeout(CONNECT_TIMEOUT, config.connect(NoTls))
        .await
        .map_err(|_| PgError::ConnectTimeout {
            socket_dir: socket_dir.clone(),
            secs: CONNECT_TIMEOUT.as_secs(),
        })?
        .map_err(|source| PgError::Connect { socket_dir, source })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("postgres connection ended: {e}");
        }
    });
    Ok(client)
}

/// Client backends of one database, other than the asking connection.
const CLIENT_BACKENDS: &str =
    "datname = $1 AND backend_type = 'client backend' AND pid <> pg_backend_pid()";

impl Cluster {
    /// A superuser connection over the cluster's Unix socket. The
    /// connection task is spawned on the current runtime.
    pub async fn connect(&self, dbname: &str) -> Result<Client, PgError> {
        let pm = self.postmaster().ok_or_else(|| PgError::NotRunning {
            root: self.root().to_path_buf(),
        })?;
        let port = match pm.port {
            Some(p) => p,
            None => self.port()?,
        };
        connect_socket(&self.socket_dir(), port, dbname).await
    }

    /// Idempotent: the owner role (LOGIN), the app's database owned by it,
    /// the replication role (LOGIN REPLICATION), CONNECT/TEMPORARY on the
    /// database taken from PUBLIC, and `pg_walinspect` in `postgres`.
    ///
    /// Only on a leader: a follower gets all of this from its leader's base
    /// backup and cannot write; on a standby this is [`PgError::InRecovery`].
    pub async fn bootstrap(&self, spec: &ClusterSpec) -> Result<(), PgError> {
        crate::conf::validate(spec)?;
        let client = self.connect("postgres").await?;
        if in_recovery(&client).await? {
            return Err(PgError::InRecovery {
                what: "bootstrapping roles and the database",
            });
        }
        upsert_role(
            &client,
            &spec.owner,
            "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION",
        )
        .await?;
        upsert_role(
            &client,
            &spec.replication,
            "LOGIN REPLICATION NOSUPERUSER NOCREATEDB NOCREATEROLE",
        )
        .await?;

        let db = escape_identifier(&spec.database);
        let owner = escape_identifier(&spec.owner.name);
        let exists = client
            .query_opt(
                "SELECT 1 FROM pg_database WHERE datname = $1",
                &[&spec.database],
            )
            .await
            .map_err(PgError::sql("looking up the database"))?
            .is_some();
        if exists {
            exec(
                &client,
                &format!("ALTER DATABASE {db} OWNER TO {owner}"),
                "setting the database owner",
            )
            .await?;
        } else {
            // CREATE DATABASE cannot run inside a transaction; simple_query does not open one.
            exec(
                &client,
                &format!("CREATE DATABASE {db} OWNER {owner} ENCODING 'UTF8' TEMPLATE template0"),
                "creating the database",
            )
            .await?;
        }
        exec(
            &client,
            &format!("REVOKE CONNECT, TEMPORARY ON DATABASE {db} FROM PUBLIC; GRANT CONNECT, TEMPORARY ON DATABASE {db} TO {owner}"),
            "restricting access to the database",
        )
        .await?;
        exec(
            &client,
            "CREATE EXTENSION IF NOT EXISTS pg_walinspect",
            "creating extension pg_walinspect",
        )
        .await?;
        // pg_rewind, run by a failed-over primary against this cluster,
        // reads files through these functions as the replication role.
        let repl = escape_identifier(&spec.replication.name);
        for function in crate::rewind::REWIND_GRANTS {
            exec(
                &client,
                &format!("GRANT EXECUTE ON FUNCTION {function} TO {repl}"),
                "granting pg_rewind's functions to the replication role",
            )
            .await?;
        }

        let app = self.connect(&spec.database).await?;
        // PostgreSQL 15 already keeps CREATE on `public` from PUBLIC; older
        // data directories (or a restored dump) may not.
        exec(
            &app,
            "REVOKE CREATE ON SCHEMA public FROM PUBLIC",
            "restricting schema public",
        )
        .await?;
        crate::extras::create_statements_extension(&app).await?;
        Ok(())
    }

    /// Sets `role`'s password; new logins with the old one fail from then on
    /// (sessions already open stay open).
    pub async fn set_password(&self, role: &RoleSecret) -> Result<(), PgError> {
        let client = self.connect("postgres").await?;
        let exists = client
            .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&role.name])
            .await
            .map_err(PgError::sql("looking up the role"))?
            .is_some();
        if !exists {
            return Err(PgError::NoSuchRole(role.name.clone()));
        }
        let stmt = format!(
            "ALTER ROLE {} PASSWORD {}",
            escape_identifier(&role.name),
            password_literal(&role.password)
        );
        exec(&client, &stmt, "changing the password").await
    }

    /// What `pg:info` shows about `database`.
    pub async fn stats(&self, database: &str) -> Result<ClusterStats, PgError> {
        let client = self.connect("postgres").await?;
        let row = client
            .query_one(
                &format!(
                    "SELECT current_setting('server_version'), \
                     (SELECT count(*) FROM pg_stat_activity WHERE {CLIENT_BACKENDS}), \
                     pg_database_size($1::text), pg_is_in_recovery()"
                ),
                &[&database],
            )
            .await
            .map_err(PgError::sql("reading cluster statistics"))?;
        let version: String = row
            .try_get(0)
            .map_err(PgError::sql("reading server_version"))?;
        let connections: i64 = row
            .try_get(1)
            .map_err(PgError::sql("counting connections"))?;
        let size: i64 = row
            .try_get(2)
            .map_err(PgError::sql("reading the database size"))?;
        let in_recovery: bool = row
            .try_get(3)
            .map_err(PgError::sql("reading pg_is_in_recovery"))?;

        let app = self.connect(database).await?;
        let tables: i64 = app
            .query_one(
                "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
                 AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'",
                &[],
            )
            .await
            .and_then(|r| r.try_get(0))
            .map_err(PgError::sql("counting tables"))?;
        Ok(ClusterStats {
            server_version: short_version(&version),
            connections_used: u32::try_from(connections).unwrap_or(u32::MAX),
            data_size_bytes: u64::try_from(size).unwrap_or(0),
            tables: u64::try_from(tables).unwrap_or(0),
            in_recovery,
        })
    }

    /// `pg:ps`: client backends of `database` that are not idle, newest query first.
    pub async fn backends(&self, database: &str) -> Result<Vec<Backend>, PgError> {
        let client = self.connect("postgres").await?;
        let rows = client
            .query(
                &format!(
                    "SELECT pid, coalesce(usename::text, ''), coalesce(application_name, ''), \
                     host(client_addr), coalesce(state, ''), wait_event IS NOT NULL, \
                     coalesce(extract(epoch FROM now() - coalesce(xact_start, query_start))::float8, 0), \
                     coalesce(query, '') \
                     FROM pg_stat_activity WHERE {CLIENT_BACKENDS} AND state IS DISTINCT FROM 'idle' \
                     ORDER BY query_start DESC NULLS LAST"
                ),
                &[&database],
            )
            .await
            .map_err(PgError::sql("listing backends"))?;
        rows.iter()
            .map(|r| {
                Ok(Backend {
                    pid: r.try_get(0)?,
                    user: r.try_get(1)?,
                    application_name: r.try_get(2)?,
                    client_addr: r.try_get(3)?,
                    state: r.try_get(4)?,
                    waiting: r.try_get(5)?,
                    running_for_secs: r.try_get(6)?,
                    query: r.try_get(7)?,
                })
            })
            .collect::<Result<_, tokio_postgres::Error>>()
            .map_err(PgError::sql("reading backends"))
    }

    /// Cancels the query of (`force`: terminates) backend `pid` of
    /// `database`; returns what PostgreSQL answered (true: signal sent).
    pub async fn kill(&self, database: &str, pid: i32, force: bool) -> Result<bool, PgError> {
        let client = self.connect("postgres").await?;
        let row = client
            .query_opt(
                &format!(
                    "SELECT CASE WHEN $3 THEN pg_terminate_backend(pid) ELSE pg_cancel_backend(pid) END \
                     FROM pg_stat_activity WHERE {CLIENT_BACKENDS} AND pid = $2"
                ),
                &[&database, &pid, &force],
            )
            .await
            .map_err(PgError::sql("signalling the backend"))?
            .ok_or(PgError::NoSuchBackend(pid))?;
        row.try_get(0)
            .map_err(PgError::sql("signalling the backend"))
    }

    /// Terminates every client backend of `database` except the agent's own
    /// connection; returns the pids that were signalled.
    pub async fn kill_all(&self, database: &str) -> Result<Vec<i32>, PgError> {
        let client = self.connect("postgres").await?;
        let rows = client
            .query(
                &format!(
                    "SELECT pid FROM (SELECT pid, pg_terminate_backend(pid) AS done \
                     FROM pg_stat_activity WHERE {CLIENT_BACKENDS}) t WHERE done ORDER BY pid"
                ),
                &[&database],
            )
            .await
            .map_err(PgError::sql("terminating backends"))?;
        rows.iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()
            .map_err(PgError::sql("terminating backends"))
    }
}

/// `pg_is_in_recovery()`: whether the server is a standby.
pub(crate) async fn in_recovery(client: &Client) -> Result<bool, PgError> {
    client
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .and_then(|r| r.try_get(0))
        .map_err(PgError::sql("asking pg_is_in_recovery()"))
}

/// Creates `role` with `attributes` and its password, or updates both.
async fn upsert_role(client: &Client, role: &RoleSecret, attributes: &str) -> Result<(), PgError> {
    let exists = client
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&role.name])
        .await
        .map_err(PgError::sql("looking up the role"))?
        .is_some();
    let verb = if exists { "ALTER" } else { "CREATE" };
    let stmt = format!(
        "{verb} ROLE {} WITH {attributes} PASSWORD {}",
        escape_identifier(&role.name),
        password_literal(&role.password)
    );
    exec(
        client,
        &stmt,
        if exists {
            "updating a role"
        } else {
            "creating a role"
        },
    )
    .await
}

/// The SCRAM-SHA-256 verifier of `password` as an SQL literal.
fn password_literal(password: &str) -> String {
    escape_literal(&scram_sha_256(password.as_bytes()))
}

/// Runs statements without parameters (DDL). Errors name `what` only, never
/// the statement, which may carry a password verifier.
async fn exec(client: &Client, statements: &str, what: &'static str) -> Result<(), PgError> {
    client
        .batch_execute(statements)
        .await
        .map_err(PgError::sql(what))
}

/// `15.18 (Debian 15.18-0+deb12u1)` → `15.18`.
pub fn short_version(server_version: &str) -> String {
    server_version
        .split_whitespace()
        .next()
        .unwrap_or(server_version)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_is_shortened() {
        assert_eq!(short_version("15.18 (Debian 15.18-0+deb12u1)"), "15.18");
        assert_eq!(short_version("16.4"), "16.4");
    }

    #[test]
    fn password_is_sent_as_a_verifier_never_in_clear() {
        let lit = password_literal("it's a secret");
        assert!(lit.contains("SCRAM-SHA-256$4096:"), "{lit}");
        assert!(!lit.contains("secret"), "{lit}");
        assert!(lit.starts_with('\'') || lit.starts_with(" E'"), "{lit}");
    }
}
