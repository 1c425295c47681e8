//! One local PostgreSQL cluster, managed for the pgfollow agent: finding the
//! PostgreSQL binaries, running them as an unprivileged OS user, `initdb`,
//! rendering `postgresql.conf`/`pg_hba.conf` from a [`ClusterSpec`], start,
//! stop and re-attaching to a cluster an earlier agent process started, and
//! the SQL the agent needs (roles, passwords, statistics, `pg:ps`/`pg:kill`),
//! and both ends of physical streaming replication (slots, `pg_basebackup`,
//! replay status, exact commits behind, promotion).
//! Only this crate ever runs `postgres` or its tools.
//!
//! [`ClusterSpec`]: pgfollow_types::agent::ClusterSpec
//!
//! Modules:
//! - [`binaries`]: where PostgreSQL is installed and which version it is.
//! - [`user`]: the OS user PostgreSQL runs as.
//! - [`process`]: running PostgreSQL's programs as that user.
//! - [`conf`]: pure rendering of `pgfollow.conf` and `pg_hba.conf`.
//! - [`files`]: directories and files owned by the OS user, atomic rewrites, log tails.
//! - [`pidfile`]: reading `postmaster.pid`.
//! - [`cluster`]: a cluster's files and lifecycle (initialize, start, stop, destroy).
//! - [`sql`]: what the agent asks a running cluster (bootstrap, passwords, stats, backends).
//! - [`replication`]: slots, replay status, repointing, promotion.
//! - [`logical`]: logical replication (publication, subscription, the checks before a changeover, sequences).
//! - [`walcount`]: exact commits behind at any distance, with a per-segment cache, and the age of the oldest.
//! - [`basebackup`]: a follower's data directory from `pg_basebackup`.
//! - [`archive`]: continuous protection with pgBackRest (configuration, base backups, point-in-time restore).
//! - [`dump`]: logical backups, `pg_dump -Fc` into a file and `pg_restore` from one.
//! - [`extras`]: read-only reports (locks, blocking, outliers, bloat, ...) for `pg:diagnose` and the pg-extras commands.
//! - [`upgrade`]: major-version upgrades with `pg_upgrade`, in place or as a dry run on a copy.
//! - [`error`]: [`PgError`], the one error type.

pub mod archive;
pub mod basebackup;
pub mod binaries;
pub mod cluster;
pub mod conf;
pub mod dump;
pub mod error;
pub mod extras;
pub mod fence;
pub mod files;
pub mod logical;
pub mod pidfile;
pub mod process;
pub mod replication;
pub mod rewind;
pub mod sql;
pub mod upgrade;
pub mod user;
pub mod walcount;

pub use binaries::PgBinaries;
pub use cluster::{Cluster, StopMode};
pub use error::PgError;
pub use user::OsUser;
pub use walcount::CommitCache;
