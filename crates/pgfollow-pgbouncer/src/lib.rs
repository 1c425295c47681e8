//! One local PgBouncer instance: an app's stable endpoint. The app's
//! `DATABASE_URL` points at a PgBouncer that the agent runs on loopback, as
//! the same unprivileged OS user as PostgreSQL, in its own directory with its
//! own configuration; the control plane moves it to a new primary with
//! PAUSE → rewrite the configuration → RELOAD → RESUME, so connected apps
//! only see one slow transaction. This crate renders `pgbouncer.ini` and
//! `userlist.txt` from an [`EndpointSpec`], starts PgBouncer so that it
//! outlives the agent, stops it, and speaks to its admin console (PAUSE,
//! RESUME, RELOAD, DISABLE, ENABLE, KILL, SHOW DATABASES).
//!
//! Pooling is in *transaction* mode by default, with `max_prepared_statements` on:
//! PgBouncer 1.21 and newer carry protocol-level named prepared statements
//! there (a client's statement is prepared again on whichever server
//! connection runs it, also on a new server after a retarget), so drivers
//! that prepare (psycopg, JDBC, asyncpg, pgx, tokio-postgres) work. Older
//! releases are refused by [`binary`] with what to install. In *session*
//! mode ([`PoolMode::Session`]) a client keeps its server connection, and
//! holding the endpoint ends the open sessions (KILL) instead of waiting
//! for clients to disconnect (see [`AdminSession::pause`]).
//!
//! Modules:
//! - [`binary`]: where `pgbouncer` is installed and which version it is.
//! - [`config`]: [`EndpointSpec`], its validation, and pure rendering of the files.
//! - [`endpoint`]: one endpoint's files and lifecycle (write, start, stop, retarget, destroy).
//! - [`admin`]: the admin console over the endpoint's Unix socket.
//! - [`process`]: running `pgbouncer` as the OS user; is a pid our pgbouncer.
//! - [`error`]: [`BouncerError`], the one error type.

pub mod admin;
pub mod binary;
pub mod config;
pub mod endpoint;
pub mod error;
pub mod process;

pub use admin::{AdminSession, DatabaseState};
pub use binary::BouncerBinary;
pub use config::{EndpointSpec, PoolMode, Target};
pub use endpoint::{Endpoint, EndpointStatus};
pub use error::BouncerError;
pub use pgfollow_postgres::OsUser;
