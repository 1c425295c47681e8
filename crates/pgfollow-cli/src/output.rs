//! Formatting helpers shared by the commands: tables, aligned `Label: value`
//! lines, sizes, durations, money and times. Pure functions; the commands
//! print what they return.

use chrono::{DateTime, Utc};
use pgfollow_types::api::DatabaseState;
use serde::Serialize;

/// Prints `value` as pretty JSON on stdout.
pub fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// A table: a header row, then one row per item; columns are separated by
/// two spaces and padded to the widest cell, the last one is not padded.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            if i + 1 < row.len() {
                line.push_str(&" ".repeat(w - cell.chars().count()));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `Label:` padded to `width` columns, then the value; one line each.
pub fn aligned(rows: &[(&str, String)], width: usize) -> String {
    rows.iter()
        .map(|(label, value)| format!("{:<width$}{value}\n", format!("{label}:")))
        .collect()
}

/// The column width that fits every label with its colon and a space.
pub fn label_width<'a>(labels: impl IntoIterator<Item = &'a str>) -> usize {
    labels.into_iter().map(|l| l.len()).max().unwrap_or(0) + 2
}

/// Bytes for people, 1024-based with PostgreSQL's unit names: `512 bytes`,
/// `7.6 MB`, `130 MB`, `64 GB`. One decimal below 100, none from 100 on.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["kB", "MB", "GB", "TB", "PB"];
    if n < 1024 {
        return format!("{n} bytes");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    let number = if v < 100.0 {
        let s = format!("{v:.1}");
        s.strip_suffix(".0").map(str::to_string).unwrap_or(s)
    } else {
        format!("{v:.0}")
    };
    format!("{number} {}", UNITS[unit])
}

/// `128 MB` for a size given in MiB.
pub fn human_mb(mb: u32) -> String {
    human_bytes(u64::from(mb) * 1024 * 1024)
}

/// `64 GB` for a size given in GiB.
pub fn human_gb(gb: u32) -> String {
    human_bytes(u64::from(gb) * 1024 * 1024 * 1024)
}

/// A duration for people: `3.2s`, `42s`, `4m 05s`, `2h 03m`, `3d 04h`.
pub fn human_duration(secs: f64) -> String {
    let secs = if secs.is_finite() { secs.max(0.0) } else { 0.0 };
    if secs < 10.0 {
        return format!("{secs:.1}s");
    }
    human_secs(secs.round() as u64)
}

/// Whole seconds for people: `7s`, `42s`, `4m 05s`, `2h 03m`, `3d 04h`.
pub fn human_secs(whole: u64) -> String {
    match whole {
        0..=59 => format!("{whole}s"),
        60..=3599 => format!("{}m {:02}s", whole / 60, whole % 60),
        3600..=86399 => format!("{}h {:02}m", whole / 3600, whole % 3600 / 60),
        _ => format!("{}d {:02}h", whole / 86400, whole % 86400 / 3600),
    }
}

/// US dollars with cents: `$1.23`.
pub fn money(usd: f64) -> String {
    format!("${usd:.2}")
}

/// A time to the minute, in UTC: `2026-11-25 08:40 UTC`.
pub fn utc_minute(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M UTC").to_string()
}

/// A database's status in one phrase: `available`, `preparing (43%)`,
/// `failed: <detail>`.
pub fn status_label(state: DatabaseState, percent: Option<u8>, detail: Option<&str>) -> String {
    match (state, percent, detail) {
        (DatabaseState::Failed, _, Some(d)) => format!("failed: {d}"),
        (DatabaseState::Available, _, _) | (_, None, _) => state.to_string(),
        (_, Some(p), _) => format!("{state} ({p}%)"),
    }
}

/// `-` for an empty list, else the items joined with `, `.
pub fn list_or_dash(items: &[String]) -> String {
    if items.is_empty() {
        "-".to_string()
    } else {
        items.join(", ")
    }
}

/// Text on one line: runs of whitespace (newlines included) become a space.
pub fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_pad_all_but_the_last_column() {
        let t = table(
            &["NAME", "PLAN", "NOTE"],
            &[
                vec!["a".into(), "standard-0".into(), "x".into()],
                vec!["longer-name".into(), "p".into(), String::new()],
            ],
        );
        assert_eq!(
            t,
            "NAME         PLAN        NOTE\n\
             a            standard-0  x\n\
             longer-name  p\n"
        );
    }

    #[test]
    fn aligned_labels() {
        let rows = [
            ("Plan", "standard-0".to_string()),
            ("PG Version", "15.4".into()),
        ];
        let w = label_width(rows.iter().map(|r| r.0));
        assert_eq!(
            aligned(&rows, w),
            "Plan:       standard-0\nPG Version: 15.4\n"
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(human_bytes(0), "0 bytes");
        assert_eq!(human_bytes(1023), "1023 bytes");
        assert_eq!(human_bytes(1024), "1 kB");
        assert_eq!(human_bytes(7_969_177), "7.6 MB");
        assert_eq!(human_bytes(136_734_720), "130 MB");
        assert_eq!(human_gb(64), "64 GB");
        assert_eq!(human_mb(128), "128 MB");
        assert_eq!(human_mb(1536), "1.5 GB");
    }

    #[test]
    fn durations() {
        assert_eq!(human_duration(-1.0), "0.0s");
        assert_eq!(human_duration(3.24), "3.2s");
        assert_eq!(human_duration(42.4), "42s");
        assert_eq!(human_duration(245.0), "4m 05s");
        assert_eq!(human_duration(7380.0), "2h 03m");
        assert_eq!(human_duration(273_600.0), "3d 04h");
        assert_eq!(human_duration(f64::NAN), "0.0s");
        assert_eq!(human_secs(7), "7s");
        assert_eq!(human_secs(75), "1m 15s");
    }

    #[test]
    fn money_and_time() {
        assert_eq!(money(1.234), "$1.23");
        assert_eq!(money(0.0), "$0.00");
        let t = "2026-11-25T08:40:59Z".parse().unwrap();
        assert_eq!(utc_minute(t), "2026-11-25 08:40 UTC");
    }

    #[test]
    fn statuses() {
        use DatabaseState::*;
        assert_eq!(status_label(Available, Some(100), None), "available");
        assert_eq!(status_label(Preparing, Some(43), None), "preparing (43%)");
        assert_eq!(status_label(Preparing, None, Some("waiting")), "preparing");
        assert_eq!(
            status_label(Failed, None, Some("disk full")),
            "failed: disk full"
        );
        assert_eq!(status_label(Failed, None, None), "failed");
    }
}
