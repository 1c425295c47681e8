//! The control plane's catalog: one [`State`] document under a revision.
//! Readers get the state with the revision they read; a writer hands that
//! revision back and the write succeeds only if nobody wrote in between
//! (compare-and-swap). Leases with a time to live decide who leads. SQLite is
//! the default store (one machine); etcd holds it for several control plane
//! replicas; the in-memory one serves tests.

mod etcd;
mod memory;
mod prune;
mod sqlite;

use std::time::Duration;

pub use etcd::{EtcdCatalog, KEEP_FINISHED};
pub use memory::MemoryCatalog;
pub use pgfollow_types::model::State;
pub use prune::prune_finished_operations;
pub use sqlite::SqliteCatalog;

/// Grows with every write; 0 is the empty catalog. (SQLite and memory
/// count writes; etcd uses its own revision of the state key.)
pub type Revision = u64;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// Someone else wrote since `expected` was read: read again and retry.
    #[error("the catalog changed since revision {expected} (now {actual}); read it again")]
    Conflict {
        expected: Revision,
        actual: Revision,
    },
    /// Writes are guarded by lease `0` and this catalog no longer holds
    /// it: another control plane replica leads now.
    #[error("this control plane replica no longer holds the {0} lease; another one leads now")]
    NotHolder(String),
    /// The store could not be reached at all: nothing was sent.
    #[error("cannot reach the catalog's store ({0}); check that a majority of etcd's members run")]
    Unreachable(String),
    #[error("catalog storage failed: {0}")]
    Storage(String),
    #[error("the catalog holds a state this version cannot read: {0}")]
    Corrupt(String),
}

/// A store for the control plane's state.
pub trait Catalog: Send + Sync {
    /// The whole state and the revision it was read at. Atomic: never a mix
    /// of two writes.
    fn load(&self) -> Result<(State, Revision), CatalogError>;

    /// Replaces the whole state if the catalog is still at `expected`, and
    /// returns the new revision; [`CatalogError::Conflict`] otherwise, with
    /// nothing written. Durable when it returns.
    fn store(&self, state: &State, expected: Revision) -> Result<Revision, CatalogError>;

    /// Takes or renews lease `name` for `holder` until `ttl` from now. False
    /// when another holder's lease has not yet expired. Atomic.
    fn acquire_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, CatalogError>;

    /// Gives lease `name` up if `holder` has it.
    fn release_lease(&self, name: &str, holder: &str) -> Result<(), CatalogError>;
}

fn encode(state: &State) -> Result<String, CatalogError> {
    serde_json::to_string(state).map_err(|e| CatalogError::Storage(e.to_string()))
}

fn decode(text: &str) -> Result<State, CatalogError> {
    serde_json::from_str(text).map_err(|e| CatalogError::Corrupt(e.to_string()))
}

#[cfg(test)]
mod contract {
    //! The behaviour every catalog must have, run against each store.
    use super::*;

    pub fn compare_and_swap(c: &dyn Catalog) {
        let (mut s, rev) = c.load().unwrap();
        assert_eq!(rev, 0);
        assert_eq!(s, State::default());
        s.next_serial = 7;
        let rev1 = c.store(&s, rev).unwrap();
        assert!(rev1 > 0);
        let (read, rev) = c.load().unwrap();
        assert_eq!((read.next_serial, rev), (7, rev1));

        // A writer that read revision 0 loses, and writes nothing.
        let stale = State {
            next_serial: 99,
            ..Default::default()
        };
        match c.store(&stale, 0) {
            Err(CatalogError::Conflict {
                expected: 0,
                actual,
            }) if actual == rev1 => {}
            other => panic!("expected a conflict, got {other:?}"),
        }
        assert_eq!(c.load().unwrap().0.next_serial, 7);
    }

    /// `short`: the shortest TTL the store keeps to (etcd's are whole
    /// seconds).
    pub fn leases(c: &dyn Catalog, short: Duration) {
        let long = Duration::from_secs(60);
        assert!(c.acquire_lease("leader", "a", long).unwrap());
        assert!(c.acquire_lease("leader", "a", long).unwrap(), "renewal");
        assert!(!c.acquire_lease("leader", "b", long).unwrap());
        assert!(c.acquire_lease("other", "b", long).unwrap());
        c.release_lease("leader", "b").unwrap();
        assert!(
            !c.acquire_lease("leader", "b", long).unwrap(),
            "b never had it"
        );
        c.release_lease("leader", "a").unwrap();
        assert!(c.acquire_lease("leader", "b", long).unwrap());
        // An expired lease goes to whoever asks.
        assert!(c.acquire_lease("short", "a", short).unwrap());
        // etcd looks for expired leases every 500 ms.
        let deadline = std::time::Instant::now() + short * 3 + Duration::from_secs(2);
        std::thread::sleep(short + Duration::from_millis(20));
        while !c.acquire_lease("short", "b", long).unwrap() {
            assert!(
                std::time::Instant::now() < deadline,
                "the short lease never ran out"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
