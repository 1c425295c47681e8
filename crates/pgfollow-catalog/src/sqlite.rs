//! The default catalog: one SQLite file (mode 0600, it holds database
//! passwords), written in transactions with full fsync.

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::{decode, encode, Catalog, CatalogError, Revision, State};

pub struct SqliteCatalog {
    conn: Mutex<Connection>,
}

fn storage(e: impl std::fmt::Display) -> CatalogError {
    CatalogError::Storage(e.to_string())
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    revision INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at_ms INTEGER NOT NULL
);
";

impl SqliteCatalog {
    /// Opens (or creates, mode 0600) the catalog file at `path`.
    pub fn open(path: &Path) -> Result<Self, CatalogError> {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| storage(format!("cannot open {}: {e}", path.display())))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(storage)?;
        let conn = Connection::open(path).map_err(storage)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(storage)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(storage)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(storage)?;
        conn.execute_batch(SCHEMA).map_err(storage)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Catalog for SqliteCatalog {
    fn load(&self) -> Result<(State, Revision), CatalogError> {
        let conn = self.lock();
        let row: Option<(i64, String)> = conn
            .query_row("SELECT revision, body FROM state WHERE id = 1", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()
            .map_err(storage)?;
        match row {
            Some((rev, body)) => Ok((decode(&body)?, rev as Revision)),
            None => Ok((State::default(), 0)),
        }
    }

    fn store(&self, state: &State, expected: Revision) -> Result<Revision, CatalogError> {
        let body = encode(state)?;
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(storage)?;
        let actual: Revision = tx
            .query_row("SELECT revision FROM state WHERE id = 1", [], |r| {
                r.get::<_, i64>(0)
            })
            .optional()
            .map_err(storage)?
            .unwrap_or(0) as Revision;
        if actual != expected {
            return Err(CatalogError::Conflict { expected, actual });
        }
        let next = expected + 1;
        tx.execute(
            "INSERT INTO state (id, revision, body) VALUES (1, ?1, ?2)
             ON CONFLICT (id) DO UPDATE SET revision = excluded.revision, body = excluded.body",
            params![next as i64, body],
        )
        .map_err(storage)?;
        tx.commit().map_err(storage)?;
        Ok(next)
    }

    fn acquire_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, CatalogError> {
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(storage)?;
        let now = now_ms();
        let current: Option<(String, i64)> = tx
            .query_row(
                "SELECT holder, expires_at_ms FROM leases WHERE name = ?1",
                params![name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(storage)?;
        if let Some((h, until)) = current {
            if h != holder && until > now {
                return Ok(false);
            }
        }
        let until = now + i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2);
        tx.execute(
            "INSERT INTO leases (name, holder, expires_at_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at_ms = excluded.expires_at_ms",
            params![name, holder, until],
        )
        .map_err(storage)?;
        tx.commit().map_err(storage)?;
        Ok(true)
    }

    fn release_lease(&self, name: &str, holder: &str) -> Result<(), CatalogError> {
        self.lock()
            .execute(
                "DELETE FROM leases WHERE name = ?1 AND holder = ?2",
                params![name, holder],
            )
            .map_err(storage)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_and_swap() {
        let dir = tempfile::tempdir().unwrap();
        crate::contract::compare_and_swap(&SqliteCatalog::open(&dir.path().join("c.db")).unwrap());
    }

    #[test]
    fn leases() {
        let dir = tempfile::tempdir().unwrap();
        crate::contract::leases(
            &SqliteCatalog::open(&dir.path().join("c.db")).unwrap(),
            Duration::from_millis(1),
        );
    }

    #[test]
    fn survives_reopening_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        {
            let c = SqliteCatalog::open(&path).unwrap();
            let s = State {
                next_serial: 42,
                ..Default::default()
            };
            c.store(&s, 0).unwrap();
        }
        let c = SqliteCatalog::open(&path).unwrap();
        let (s, rev) = c.load().unwrap();
        assert_eq!((s.next_serial, rev), (42, 1));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn two_handles_on_one_file_still_compare_and_swap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let a = SqliteCatalog::open(&path).unwrap();
        let b = SqliteCatalog::open(&path).unwrap();
        let (s, rev) = a.load().unwrap();
        b.store(&s, rev).unwrap();
        assert!(matches!(
            a.store(&s, rev),
            Err(CatalogError::Conflict { .. })
        ));
    }
}
