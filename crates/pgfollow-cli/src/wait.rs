//! `pg:wait [DB]`: polls `/info` until every database of the app (or only
//! DB) is available.
//!
//! Output, for each database that was not yet available at the first poll
//! (nothing at all when every one already was):
//!
//! - not on a terminal, one line each time its status changes, the last one
//!   when it becomes available:
//!   ```text
//!   Waiting for database PGFOLLOW_POSTGRESQL_AMBER_URL... preparing
//!   Waiting for database PGFOLLOW_POSTGRESQL_AMBER_URL... preparing (43%)
//!   Waiting for database PGFOLLOW_POSTGRESQL_AMBER_URL... available
//!   ```
//! - on a terminal, one line redrawn in place
//!   (`Waiting for database X... preparing [########------------]  42% (copying 12 MB of 28 MB, 12s)`,
//!   the bytes while a follower's copy runs) that ends as
//!   `Waiting for database X... available`.
//!
//! Databases are shown one after the other, in the server's order. Errors
//! (exit 1): `database X failed: <detail>` as soon as any of them fails, and
//! `timed out after 30s: database X is still preparing (43%)` with
//! `--timeout`. A control plane that stops answering for a while (a
//! restart) is waited for, up to 30 s.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;
use pgfollow_client::{Client, ClientError};
use pgfollow_types::api::{CopyProgress, DatabaseInfo, DatabaseState};

use crate::args::AppArg;
use crate::output::{human_bytes, human_secs, status_label};

/// How long polling goes on while the API does not answer.
const UNREACHABLE_GRACE: Duration = Duration::from_secs(30);
/// Width of the live progress bar, in cells.
const BAR_WIDTH: usize = 20;

#[derive(Debug, Args)]
pub struct WaitArgs {
    /// Only this database (a colour, config var, OTHERAPP::VAR or add-on name)
    pub db: Option<String>,
    #[command(flatten)]
    pub app: AppArg,
    #[command(flatten)]
    pub opts: WaitOpts,
}

/// How long and how often to poll.
#[derive(Debug, Clone, Copy, Args)]
pub struct WaitOpts {
    /// Give up after this many seconds (default: wait as long as it takes)
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
    /// Time between two polls, in milliseconds
    #[arg(long = "interval-ms", value_name = "MS", default_value_t = 500)]
    pub interval_ms: u64,
}

pub async fn wait_command(client: &Client, args: WaitArgs) -> anyhow::Result<()> {
    let out = std::io::stdout();
    let live = std::io::IsTerminal::is_terminal(&out);
    let mut progress = Progress::new(out, live);
    wait(
        client,
        &args.app.app,
        args.db.as_deref(),
        args.opts,
        &mut progress,
    )
    .await
}

/// Waits as `pg:wait` does, drawing on `progress`.
pub async fn wait<W: Write>(
    client: &Client,
    app: &str,
    db: Option<&str>,
    opts: WaitOpts,
    progress: &mut Progress<W>,
) -> anyhow::Result<()> {
    let result = wait_inner(client, app, db, opts, progress).await;
    if result.is_err() {
        progress.abandon();
    }
    result
}

async fn wait_inner<W: Write>(
    client: &Client,
    app: &str,
    db: Option<&str>,
    opts: WaitOpts,
    progress: &mut Progress<W>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let timeout = opts.timeout.map(Duration::from_secs);
    let interval = Duration::from_millis(opts.interval_ms.max(10));
    let mut latest = poll(client, app, db).await?;
    if db.is_some() {
        if let Some(d) = latest
            .iter()
            .find(|d| d.state == DatabaseState::Deprovisioning)
        {
            bail!(
                "database {} is being removed: there is nothing to wait for",
                label(d)
            );
        }
    }
    let queue: Vec<(String, String)> = latest
        .iter()
        .filter(|d| needs_waiting(d))
        .map(|d| (d.name.clone(), label(d)))
        .collect();
    let mut next = 0;
    let mut unreachable_since: Option<Instant> = None;
    loop {
        for (name, _) in &queue[next..] {
            if let Some(d) = find(&latest, name) {
                if d.state == DatabaseState::Failed {
                    bail!("{}", failure(d));
                }
            }
        }
        while let Some((name, label)) = queue.get(next) {
            match find(&latest, name) {
                None => bail!("database {label} was removed while waiting for it"),
                Some(d) if d.state == DatabaseState::Available => {
                    progress.done(label)?;
                    next += 1;
                }
                Some(d) => {
                    progress.show(label, d)?;
                    break;
                }
            }
        }
        let Some((name, label)) = queue.get(next) else {
            return Ok(());
        };
        let mut pause = interval;
        if let Some(limit) = timeout {
            let waited = started.elapsed();
            if waited >= limit {
                let status = find(&latest, name).map(info_status).unwrap_or_default();
                bail!(
                    "timed out after {}: database {label} is still {status}",
                    human_secs(waited.as_secs_f64().round() as u64)
                );
            }
            pause = pause.min(limit - waited);
        }
        tokio::time::sleep(pause).await;
        match poll(client, app, db).await {
            Ok(dbs) => {
                latest = dbs;
                unreachable_since = None;
            }
            Err(e @ ClientError::Unreachable { .. }) => {
                let since = *unreachable_since.get_or_insert_with(Instant::now);
                if since.elapsed() > UNREACHABLE_GRACE {
                    return Err(e.into());
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

async fn poll(
    client: &Client,
    app: &str,
    db: Option<&str>,
) -> Result<Vec<DatabaseInfo>, ClientError> {
    match db {
        Some(db) => Ok(vec![client.database(app, db).await?]),
        None => client.info(app).await,
    }
}

/// Databases worth waiting for: not available yet, and not going away.
pub fn needs_waiting(d: &DatabaseInfo) -> bool {
    !matches!(
        d.state,
        DatabaseState::Available | DatabaseState::Deprovisioning
    )
}

fn find<'a>(dbs: &'a [DatabaseInfo], name: &str) -> Option<&'a DatabaseInfo> {
    dbs.iter().find(|d| d.name == name)
}

/// How `pg:wait` names a database: `PGFOLLOW_POSTGRESQL_WHITE_URL`.
pub fn label(d: &DatabaseInfo) -> String {
    d.color.config_var()
}

fn info_status(d: &DatabaseInfo) -> String {
    status_label(d.state, d.progress_percent, d.status_detail.as_deref())
}

/// `database X failed: <detail>`.
pub fn failure(d: &DatabaseInfo) -> String {
    match &d.status_detail {
        Some(detail) => format!("database {} failed: {detail}", label(d)),
        None => format!("database {} failed", label(d)),
    }
}

/// The line shown on a terminal while waiting: a bar when there is a
/// percentage, the bytes copied when a copy runs, and how long this
/// database has been waited on.
pub fn live_line(
    label: &str,
    state: DatabaseState,
    percent: Option<u8>,
    copy: Option<CopyProgress>,
    waited: Duration,
) -> String {
    let waited = human_secs(waited.as_secs());
    let copied = match copy {
        Some(c) => format!(
            "copying {} of {}, ",
            human_bytes(c.done_bytes),
            human_bytes(c.total_bytes)
        ),
        None => String::new(),
    };
    // A copy's bytes are fresher than the recorded percentage.
    let percent = copy
        .and_then(|c| (c.done_bytes.min(c.total_bytes) * 100).checked_div(c.total_bytes))
        .map(|p| p as u8)
        .or(percent);
    match percent {
        Some(p) => {
            let p = p.min(100);
            let filled = usize::from(p) * BAR_WIDTH / 100;
            format!(
                "Waiting for database {label}... {state} [{}{}] {p:>3}% ({copied}{waited})",
                "#".repeat(filled),
                "-".repeat(BAR_WIDTH - filled)
            )
        }
        None => format!("Waiting for database {label}... {state} ({copied}{waited})"),
    }
}

/// Draws the wait: a live line on a terminal, else a line per change.
pub struct Progress<W: Write> {
    out: W,
    live: bool,
    /// What was last shown, to print lines only on change.
    last: Option<String>,
    /// The database being shown, and since when.
    current: Option<(String, Instant)>,
    /// A live line is on screen and not yet ended with a newline.
    drawn: bool,
}

impl<W: Write> Progress<W> {
    pub fn new(out: W, live: bool) -> Self {
        Self {
            out,
            live,
            last: None,
            current: None,
            drawn: false,
        }
    }

    fn show(&mut self, label: &str, d: &DatabaseInfo) -> std::io::Result<()> {
        if self.current.as_ref().map(|c| c.0.as_str()) != Some(label) {
            self.current = Some((label.to_string(), Instant::now()));
        }
        let line = if self.live {
            let since = self
                .current
                .as_ref()
                .map(|c| c.1.elapsed())
                .unwrap_or_default();
            live_line(label, d.state, d.progress_percent, d.copy, since)
        } else {
            format!("Waiting for database {label}... {}", info_status(d))
        };
        if self.last.as_deref() == Some(line.as_str()) {
            return Ok(());
        }
        if self.live {
            write!(self.out, "\r\x1b[2K{line}")?;
            self.drawn = true;
        } else {
            writeln!(self.out, "{line}")?;
        }
        self.last = Some(line);
        self.out.flush()
    }

    fn done(&mut self, label: &str) -> std::io::Result<()> {
        if self.live {
            write!(self.out, "\r\x1b[2K")?;
            self.drawn = false;
        }
        writeln!(self.out, "Waiting for database {label}... available")?;
        self.last = None;
        self.out.flush()
    }

    /// Ends a live line so an error message starts on a line of its own.
    fn abandon(&mut self) {
        if self.drawn {
            let _ = writeln!(self.out);
            let _ = self.out.flush();
            self.drawn = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::tests::white;

    #[test]
    fn plain_lines_only_on_change() {
        let mut p = Progress::new(Vec::new(), false);
        let mut d = white();
        d.state = DatabaseState::Preparing;
        let l = label(&d);
        p.show(&l, &d).unwrap();
        p.show(&l, &d).unwrap();
        d.progress_percent = Some(43);
        p.show(&l, &d).unwrap();
        p.done(&l).unwrap();
        assert_eq!(
            String::from_utf8(p.out).unwrap(),
            "Waiting for database PGFOLLOW_POSTGRESQL_WHITE_URL... preparing\n\
             Waiting for database PGFOLLOW_POSTGRESQL_WHITE_URL... preparing (43%)\n\
             Waiting for database PGFOLLOW_POSTGRESQL_WHITE_URL... available\n"
        );
    }

    #[test]
    fn a_live_line_is_redrawn_and_ended() {
        let mut p = Progress::new(Vec::new(), true);
        let mut d = white();
        d.state = DatabaseState::Preparing;
        d.progress_percent = Some(50);
        p.show("X", &d).unwrap();
        p.done("X").unwrap();
        assert_eq!(
            String::from_utf8(p.out).unwrap(),
            "\r\x1b[2KWaiting for database X... preparing [##########----------]  50% (0s)\
             \r\x1b[2KWaiting for database X... available\n"
        );
    }

    #[test]
    fn failures_and_what_is_waited_for() {
        let mut d = white();
        assert!(!needs_waiting(&d));
        d.state = DatabaseState::Deprovisioning;
        assert!(!needs_waiting(&d));
        d.state = DatabaseState::Failed;
        assert!(needs_waiting(&d));
        assert_eq!(failure(&d), "database PGFOLLOW_POSTGRESQL_WHITE_URL failed");
        d.status_detail = Some("out of disk".into());
        assert_eq!(
            failure(&d),
            "database PGFOLLOW_POSTGRESQL_WHITE_URL failed: out of disk"
        );
        assert_eq!(
            live_line(
                "X",
                DatabaseState::Preparing,
                None,
                None,
                Duration::from_secs(75)
            ),
            "Waiting for database X... preparing (1m 15s)"
        );
    }

    #[test]
    fn a_copy_shows_its_bytes_and_percent() {
        const MB: u64 = 1024 * 1024;
        let copy = |done, total| {
            Some(CopyProgress {
                done_bytes: done,
                total_bytes: total,
            })
        };
        assert_eq!(
            live_line(
                "X",
                DatabaseState::Preparing,
                Some(43),
                copy(12 * MB, 28 * MB),
                Duration::from_secs(9)
            ),
            "Waiting for database X... preparing [########------------]  42% (copying 12 MB of 28 MB, 9s)"
        );
        // No percentage recorded yet: the bytes give it.
        assert_eq!(
            live_line("X", DatabaseState::Preparing, None, copy(7 * MB, 28 * MB), Duration::ZERO),
            "Waiting for database X... preparing [#####---------------]  25% (copying 7 MB of 28 MB, 0s)"
        );
        assert_eq!(
            live_line(
                "X",
                DatabaseState::Preparing,
                None,
                copy(0, 0),
                Duration::ZERO
            ),
            "Waiting for database X... preparing (copying 0 bytes of 0 bytes, 0s)"
        );
    }
}
