//! The one error type of this crate. Every message says what failed and,
//! where there is something to do about it, what the caller can do.

use std::io;
use std::path::PathBuf;

use pgfollow_postgres::PgError;

/// What can go wrong while running or steering a PgBouncer endpoint.
#[derive(Debug, thiserror::Error)]
pub enum BouncerError {
    #[error(
        "pgbouncer not found (looked at: {looked}): run `scripts/install-deps` from the pgfollow \
         repository (it installs PgBouncer 1.21 or newer, building it into /opt/pgfollow/pgbouncer \
         when the distribution's is older), or pass the path of a pgbouncer program"
    )]
    NotFound { looked: String },

    #[error("could not read the version of `{}` (got {output:?}): it does not look like PgBouncer; run `scripts/install-deps` from the pgfollow repository to install PgBouncer 1.21 or newer", program.display())]
    Version { program: PathBuf, output: String },

    #[error(
        "PgBouncer {version} at `{}` is too old: pgfollow needs 1.21 or newer (prepared \
         statements in transaction pooling); run `scripts/install-deps` from the pgfollow \
         repository, which builds it into {}",
        program.display(),
        crate::binary::PGFOLLOW_PREFIX_BINARY
    )]
    TooOld { program: PathBuf, version: String },

    #[error("invalid endpoint spec: {0}")]
    InvalidSpec(String),

    #[error("{what} `{}` failed: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },

    /// A file or directory operation shared with the postgres crate.
    #[error(transparent)]
    Files(#[from] PgError),

    #[error(
        "OS user `{user}` cannot reach `{}` (a parent directory does not let it through): \
         put the endpoint directory somewhere `{user}` can traverse, or `chmod o+x` the parents",
        dir.display()
    )]
    Unreachable { user: String, dir: PathBuf },

    #[error(
        "Unix socket path `{path}` is {len} bytes, at most {max} are allowed: \
         use a shorter endpoint root directory"
    )]
    SocketPathTooLong {
        path: String,
        len: usize,
        max: usize,
    },

    #[error("endpoint at `{}` has no pgbouncer.ini: write its configuration first", root.display())]
    NotConfigured { root: PathBuf },

    #[error("endpoint at `{}` is not running: start it first", root.display())]
    NotRunning { root: PathBuf },

    #[error("could not run `{}`: {source}", program.display())]
    Spawn { program: PathBuf, source: io::Error },

    #[error("port {port} is already in use: pick another port for this endpoint")]
    PortInUse { port: u16 },

    #[error("pgbouncer did not start: {detail}")]
    StartFailed { detail: String },

    #[error(
        "pgbouncer (pid {pid}) did not exit within {secs} s of its shutdown signal and SIGKILL: \
         look at the process (`ps -p {pid}`) and the endpoint's log"
    )]
    StopTimeout { pid: u32, secs: u64 },

    #[error("could not signal pgbouncer (pid {pid}): {source}")]
    Signal { pid: u32, source: nix::Error },

    #[error(
        "could not log in to the admin console over `{}`: {detail}; \
         is the endpoint running (start it), and was its configuration written by this agent?",
        socket_dir.display()
    )]
    AdminConnect { socket_dir: PathBuf, detail: String },

    #[error("admin command `{command}` failed: {detail}")]
    Admin { command: String, detail: String },

    #[error("admin command `{command}` did not finish within {secs} s")]
    AdminTimeout { command: String, secs: u64 },

    #[error("pgbouncer has no database {dbname:?}: give the endpoint a target for it and reload")]
    NoSuchDatabase { dbname: String },

    #[error(
        "PAUSE of {dbname:?} did not finish within {secs} s because a client keeps a transaction \
         open; the database was resumed: retry later, or end the long transaction (pg:ps, pg:kill)"
    )]
    PauseTimeout { dbname: String, secs: u64 },

    #[error("pgbouncer did not take the new configuration after RELOAD: {detail}; see the endpoint's log")]
    NotApplied { detail: String },
}

impl BouncerError {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        BouncerError::Io {
            what,
            path: path.into(),
            source,
        }
    }
}

/// The server's own message for a database error (tokio-postgres only says
/// "db error"), else the error and its sources.
pub fn pg_detail(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{}: {}", db.severity(), db.message());
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
