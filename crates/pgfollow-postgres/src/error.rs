//! The one error type of this crate. Every message says what failed and,
//! where there is something to do about it, what the user can do.

use std::io;
use std::path::PathBuf;

use pgfollow_types::Lsn;

/// What can go wrong while managing a local PostgreSQL cluster.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error(
        "PostgreSQL binaries not found (looked in: {looked}): install PostgreSQL \
         (e.g. `apt-get install postgresql`) or pass --pg-bin <dir with initdb, pg_ctl, postgres, pg_basebackup>"
    )]
    BinariesNotFound { looked: String },

    #[error("--pg-bin names two installations of PostgreSQL {major} ({} and {}): give one --pg-bin per major version", first.display(), second.display())]
    DuplicateMajor {
        major: u32,
        first: PathBuf,
        second: PathBuf,
    },

    #[error("could not read the PostgreSQL version from `{program}` (got {output:?}): pass --pg-bin with a working installation")]
    Version { program: PathBuf, output: String },

    #[error(
        "OS user `{name}` does not exist: create it with `useradd --system {name}` or pass --os-user <existing user>; \
         PostgreSQL refuses to run as root"
    )]
    NoSuchOsUser { name: String },

    #[error("could not look up OS user `{name}`: {source}")]
    UserLookup { name: String, source: nix::Error },

    #[error("{what} `{}` failed: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },

    #[error(
        "OS user `{user}` cannot reach `{}` (a parent directory does not let it through): \
         put the data directory somewhere `{user}` can traverse (not under /root or a 0700 temp dir), \
         or `chmod o+x` the parents",
        dir.display()
    )]
    Unreachable { user: String, dir: PathBuf },

    #[error("could not run `{}`: {source}", program.display())]
    Spawn { program: PathBuf, source: io::Error },

    #[error("`{}` timed out after {secs} s", program.display())]
    Timeout { program: PathBuf, secs: u64 },

    #[error("{what} failed ({status}): {stderr}")]
    Tool {
        what: String,
        status: String,
        stderr: String,
    },

    #[error("cluster at `{}` is not initialized: initialize it first", root.display())]
    NotInitialized { root: PathBuf },

    #[error(
        "`{}` exists but is not a complete PostgreSQL data directory: move it away, or destroy the cluster and create it again",
        path.display()
    )]
    IncompleteDataDir { path: PathBuf },

    #[error("cluster at `{}` is not running: start it first", root.display())]
    NotRunning { root: PathBuf },

    #[error("port {port} is already in use: pick another port for this cluster")]
    PortInUse { port: u16 },

    #[error("PostgreSQL did not start; last lines of its log:\n{log_tail}")]
    StartFailed { log_tail: String },

    #[error(
        "Unix socket path `{path}` is {len} bytes, PostgreSQL allows at most {max}: \
         use a shorter cluster root directory"
    )]
    SocketPathTooLong {
        path: String,
        len: usize,
        max: usize,
    },

    #[error("invalid cluster spec: {0}")]
    InvalidSpec(String),

    /// Continuous protection cannot work, saying why and what to do.
    #[error("{0}")]
    Protection(String),

    #[error("could not connect to PostgreSQL over `{}`: {source}", socket_dir.display())]
    Connect {
        socket_dir: PathBuf,
        source: tokio_postgres::Error,
    },

    #[error("connecting to PostgreSQL over `{}` timed out after {secs} s: is the server overloaded or stuck starting?", socket_dir.display())]
    ConnectTimeout { socket_dir: PathBuf, secs: u64 },

    #[error("{what} failed: {}", describe_sql_error(source))]
    Sql {
        what: &'static str,
        source: tokio_postgres::Error,
    },

    #[error("role {0:?} does not exist in this cluster: bootstrap the cluster first")]
    NoSuchRole(String),

    #[error("no client backend with pid {0} on this database: check `pg:ps` for current pids")]
    NoSuchBackend(i32),

    #[error(
        "{what} needs a writable leader, but this cluster is a standby (in recovery): \
         run it on the leader, or promote this follower first"
    )]
    InRecovery { what: &'static str },

    #[error(
        "pg_basebackup from {host}:{port} failed ({status}); its last lines:\n{stderr}\n\
         check that the leader is running and reachable, and that its replication role, \
         password and slot match the follower's upstream"
    )]
    BaseBackup {
        host: String,
        port: u16,
        status: String,
        stderr: String,
    },

    #[error(
        "the leader no longer has the WAL from {from} ({detail}): \
         the follower cannot catch up from there; rebuild it with a fresh base backup"
    )]
    WalGone { from: Lsn, detail: String },

    #[error(
        "replication slot {slot:?} is still in use after {secs} s of terminating its walsender: \
         stop the follower that streams through it and try again"
    )]
    SlotBusy { slot: String, secs: u64 },

    #[error("unexpected answer from PostgreSQL: {0}")]
    Unexpected(String),

    #[error(
        "promotion did not finish within {secs} s (still in recovery): \
         look at the follower's log; promoting again is safe"
    )]
    PromoteTimeout { secs: u64 },
}

/// tokio-postgres shows a server error as just "db error": say what the
/// server said.
pub(crate) fn describe_sql_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(detail) => format!("{} ({detail})", db.message()),
            None => db.message().to_string(),
        },
        None => e.to_string(),
    }
}

impl PgError {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        PgError::Io {
            what,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn sql(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Self {
        move |source| PgError::Sql { what, source }
    }
}
