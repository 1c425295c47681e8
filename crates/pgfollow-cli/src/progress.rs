//! Following an operation to its end on the terminal: `pg:unfollow --wait`
//! and `pg:changeover` show what is being done on one line redrawn in place
//! (`\r`) when stdout is a terminal, and plain lines, one per change,
//! otherwise. `--json` prints nothing of it.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::bail;
use pgfollow_client::Client;
use pgfollow_types::api::Operation;

use crate::output::{human_bytes, human_secs};

/// How often an operation is polled.
const POLL: Duration = Duration::from_millis(250);

/// What an operation is doing, in words: its last step done, a copy's
/// bytes and percent.
pub fn operation_doing(op: &Operation) -> String {
    let mut doing = match op.step.as_str() {
        "pending" => "starting".to_string(),
        step => format!("{step} done"),
    };
    if let Some(c) = op.copy {
        doing.push_str(&format!(
            ", copying {} of {}",
            human_bytes(c.done_bytes),
            human_bytes(c.total_bytes)
        ));
    }
    if let Some(p) = op.progress_percent {
        doing.push_str(&format!(", {p}%"));
    }
    doing
}

/// `Unfollowing CHARCOAL... promote done (3s)`; without the time when
/// `waited` is `None` (plain lines, which repeat only on change).
pub fn operation_line(what: &str, op: &Operation, waited: Option<Duration>) -> String {
    match waited {
        Some(w) => format!(
            "{what}... {} ({})",
            operation_doing(op),
            human_secs(w.as_secs())
        ),
        None => format!("{what}... {}", operation_doing(op)),
    }
}

/// One line redrawn in place on a terminal, or plain lines on change.
pub struct LiveLine<W: Write> {
    out: W,
    live: bool,
    last: Option<String>,
    drawn: bool,
}

impl<W: Write> LiveLine<W> {
    pub fn new(out: W, live: bool) -> Self {
        Self {
            out,
            live,
            last: None,
            drawn: false,
        }
    }

    pub fn is_live(&self) -> bool {
        self.live
    }

    /// Shows `line` unless it is what is already shown.
    pub fn show(&mut self, line: &str) -> std::io::Result<()> {
        if self.last.as_deref() == Some(line) {
            return Ok(());
        }
        if self.live {
            write!(self.out, "\r\x1b[2K{line}")?;
            self.drawn = true;
        } else {
            writeln!(self.out, "{line}")?;
        }
        self.last = Some(line.to_string());
        self.out.flush()
    }

    /// Replaces a live line with `line` and ends it.
    pub fn finish(&mut self, line: &str) -> std::io::Result<()> {
        if self.drawn {
            write!(self.out, "\r\x1b[2K")?;
            self.drawn = false;
        }
        writeln!(self.out, "{line}")?;
        self.last = None;
        self.out.flush()
    }

    /// Wipes a live line (before other output).
    pub fn clear(&mut self) -> std::io::Result<()> {
        if self.drawn {
            write!(self.out, "\r\x1b[2K")?;
            self.drawn = false;
            self.out.flush()?;
        }
        self.last = None;
        Ok(())
    }

    #[cfg(test)]
    pub fn into_inner(self) -> W {
        self.out
    }
}

/// Polls operation `id` until it is done (`Ok`) or failed (an error with
/// its reason), drawing `what...` on `line`; gives up after `limit`.
pub async fn follow<W: Write>(
    client: &Client,
    id: &str,
    what: &str,
    limit: Duration,
    line: &mut LiveLine<W>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let op = client.operation(id).await?;
        match op.state.as_str() {
            "done" => {
                line.finish(&format!("{what}... done"))?;
                return Ok(());
            }
            "failed" => {
                line.clear()?;
                bail!(
                    "{what} failed: {}",
                    op.error.as_deref().unwrap_or("no reason was recorded")
                );
            }
            _ => {}
        }
        let waited = line.is_live().then(|| started.elapsed());
        line.show(&operation_line(what, &op, waited))?;
        if started.elapsed() >= limit {
            line.clear()?;
            bail!(
                "{what} is still under way after {} ({}); it goes on by itself: `pgfollow pg:info` shows it",
                human_secs(limit.as_secs()),
                operation_doing(&op)
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgfollow_types::api::CopyProgress;

    fn op(step: &str) -> Operation {
        serde_json::from_value(serde_json::json!({
            "id": "op-7", "kind": "unfollow", "database": "postgresql-calm-1",
            "state": "running", "step": step, "progress_percent": null, "error": null,
            "created_at": "2026-12-02T01:00:00Z", "updated_at": "2026-12-02T01:00:01Z",
        }))
        .unwrap()
    }

    #[test]
    fn what_an_operation_is_doing() {
        assert_eq!(
            operation_line("Unfollowing CHARCOAL", &op("pending"), None),
            "Unfollowing CHARCOAL... starting"
        );
        assert_eq!(
            operation_line(
                "Unfollowing CHARCOAL",
                &op("promote"),
                Some(Duration::from_secs(3))
            ),
            "Unfollowing CHARCOAL... promote done (3s)"
        );
        let mut copying = op("create-slot");
        copying.progress_percent = Some(50);
        copying.copy = Some(CopyProgress {
            done_bytes: 5 << 20,
            total_bytes: 10 << 20,
        });
        assert_eq!(
            operation_doing(&copying),
            "create-slot done, copying 5 MB of 10 MB, 50%"
        );
    }

    #[test]
    fn plain_lines_on_change_and_a_live_line_redrawn() {
        let mut plain = LiveLine::new(Vec::new(), false);
        plain.show("a... starting").unwrap();
        plain.show("a... starting").unwrap();
        plain.show("a... promote done").unwrap();
        plain.finish("a... done").unwrap();
        assert_eq!(
            String::from_utf8(plain.into_inner()).unwrap(),
            "a... starting\na... promote done\na... done\n"
        );
        let mut live = LiveLine::new(Vec::new(), true);
        live.show("a... starting (0s)").unwrap();
        live.show("a... starting (1s)").unwrap();
        live.finish("a... done").unwrap();
        assert_eq!(
            String::from_utf8(live.into_inner()).unwrap(),
            "\r\x1b[2Ka... starting (0s)\r\x1b[2Ka... starting (1s)\r\x1b[2Ka... done\n"
        );
    }
}
