//! Logical backups (`pg:backups`): what the catalog records of each backup
//! and each daily schedule, and Heroku's backup names (`b001`, `a001`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::names::{AppName, Color};

/// One backup: a `pg_dump` custom-format archive on the control plane's host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupRecord {
    /// `b001` (captured by hand) or `a001` (by a schedule).
    pub name: String,
    pub app: AppName,
    /// The database it was taken of (id), which may since be gone.
    pub database: String,
    /// That database's colour and add-on name when it was taken.
    pub color: Color,
    pub database_name: String,
    pub pg_major: u32,
    /// The operation that captures it.
    pub operation: String,
    pub created_at: DateTime<Utc>,
    #[serde(default)]
    pub finished_at: Option<DateTime<Utc>>,
    /// Bytes of the archive, once complete.
    #[serde(default)]
    pub size_bytes: Option<u64>,
    /// Its file, relative to the backups directory.
    pub file: String,
}

impl BackupRecord {
    pub fn key(&self) -> String {
        backup_key(self.app.as_str(), &self.name)
    }

    pub fn is_scheduled(&self) -> bool {
        self.name.starts_with('a')
    }
}

/// The catalog key of backup `name` of `app`.
pub fn backup_key(app: &str, name: &str) -> String {
    format!("{app}/{name}")
}

/// `b001` for the 1st manual backup, `a012` for the 12th scheduled one.
pub fn backup_name(scheduled: bool, number: u32) -> String {
    format!("{}{number:03}", if scheduled { 'a' } else { 'b' })
}

/// Whether `s` looks like a backup name (`b001`, `a1234`), not a database.
pub fn is_backup_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some('a' | 'b')) && s.len() >= 4 && chars.all(|c| c.is_ascii_digit())
}

/// A daily backup of one database at a UTC time of day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupSchedule {
    pub database: String,
    pub app: AppName,
    pub hour: u8,
    pub minute: u8,
    /// When it last started a backup.
    #[serde(default)]
    pub last_run: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// `02:00 UTC`, `2:00`, `02:30 UTC` → (hour, minute). Heroku also takes a
/// time zone name; only UTC is understood here.
pub fn parse_schedule_time(s: &str) -> Result<(u8, u8), String> {
    let t = s.trim();
    let t = t
        .strip_suffix("UTC")
        .or_else(|| t.strip_suffix("utc"))
        .unwrap_or(t)
        .trim();
    let bad = || format!("cannot read the time {s:?}: give it as HH:MM UTC, e.g. --at '02:00 UTC'");
    let (h, m) = t.split_once(':').ok_or_else(bad)?;
    let hour: u8 = h.parse().map_err(|_| bad())?;
    let minute: u8 = m.parse().map_err(|_| bad())?;
    if hour > 23 || minute > 59 || m.len() != 2 {
        return Err(bad());
    }
    Ok((hour, minute))
}

/// Where `pg_dump`/`pg_restore` connect and as whom. `Debug` leaves the
/// password out.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DumpTarget {
    pub host: String,
    pub port: u16,
    pub database: String,
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for DumpTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DumpTarget")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("database", &self.database)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// Whether `file` is a plain relative path under a backups directory
/// (`sushi/b001.dump`): no `..`, not absolute, plain characters.
pub fn is_backup_file(file: &str) -> bool {
    !file.is_empty()
        && !file.starts_with('/')
        && file
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
        && file
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

/// One backup as `pg:backups` and `pg:backups:info` show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BackupInfo {
    pub name: String,
    pub app: String,
    /// The database's colour and add-on name when it was taken.
    pub database: String,
    pub database_name: String,
    /// `pending`, `running`, `completed`, `failed`, `cancelled`.
    pub status: String,
    pub scheduled: bool,
    pub pg_major: u32,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub size_bytes: Option<u64>,
    /// Why it failed.
    pub error: Option<String>,
    /// The operation that captures it.
    pub operation: String,
}

/// `POST /v1/apps/{app}/backups`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CaptureBackup {
    /// The database, in any form a database can be named; default `DATABASE_URL`.
    #[serde(default)]
    pub database: Option<String>,
}

/// `POST /v1/apps/{app}/restores`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RestoreBackup {
    /// `b001`, `OTHERAPP::b001`, or a database (its latest backup).
    pub backup: String,
    /// The database to restore into; default `DATABASE_URL`.
    #[serde(default)]
    pub target: Option<String>,
}

/// A capture or a restore that was started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BackupStarted {
    pub backup: BackupInfo,
    pub operation: String,
    pub message: String,
}

/// `POST /v1/apps/{app}/backup-schedules`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ScheduleBackups {
    #[serde(default)]
    pub database: Option<String>,
    /// `02:00 UTC`.
    pub at: String,
}

/// One schedule as `pg:backups:schedules` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ScheduleInfo {
    /// The database's colour var, `PGFOLLOW_POSTGRESQL_WHITE_URL`.
    pub database: String,
    /// `02:00 UTC`.
    pub at: String,
    pub last_run: Option<DateTime<Utc>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_files_stay_under_the_backups_directory() {
        assert!(is_backup_file("sushi/b001.dump"));
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "sushi/../../x",
            "a//b",
            "a b",
            "./x",
        ] {
            assert!(!is_backup_file(bad), "{bad}");
        }
    }

    #[test]
    fn the_password_is_not_in_debug_output() {
        let t = DumpTarget {
            host: "h".into(),
            port: 1,
            database: "d".into(),
            user: "u".into(),
            password: "sekrit".into(),
        };
        assert!(!format!("{t:?}").contains("sekrit"));
    }

    #[test]
    fn heroku_backup_names() {
        assert_eq!(backup_name(false, 1), "b001");
        assert_eq!(backup_name(true, 12), "a012");
        assert_eq!(backup_name(false, 1234), "b1234");
        for ok in ["b001", "a012", "b1234"] {
            assert!(is_backup_name(ok), "{ok}");
        }
        for not in ["WHITE", "b01", "c001", "b00x", "DATABASE_URL", ""] {
            assert!(!is_backup_name(not), "{not}");
        }
    }

    #[test]
    fn schedule_times() {
        assert_eq!(parse_schedule_time("02:00 UTC"), Ok((2, 0)));
        assert_eq!(parse_schedule_time("23:59"), Ok((23, 59)));
        assert_eq!(parse_schedule_time(" 7:05 utc "), Ok((7, 5)));
        for bad in [
            "24:00 UTC",
            "02:60",
            "2",
            "02:0",
            "noon",
            "02:00 America/New_York",
        ] {
            let e = parse_schedule_time(bad).unwrap_err();
            assert!(e.contains("HH:MM UTC"), "{bad}: {e}");
        }
    }
}
