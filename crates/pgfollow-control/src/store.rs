//! The catalog as the control plane uses it: read a snapshot, or change the
//! state with a closure that is retried on a compare-and-swap conflict.

use std::sync::Arc;

use pgfollow_catalog::{Catalog, CatalogError, State};

use crate::error::ApiErr;

/// How often a change is retried when another writer got there first.
const MAX_CONFLICT_RETRIES: usize = 20;

#[derive(Clone)]
pub struct Store {
    catalog: Arc<dyn Catalog>,
}

impl Store {
    pub fn new(catalog: Arc<dyn Catalog>) -> Self {
        Self { catalog }
    }

    pub fn catalog(&self) -> &Arc<dyn Catalog> {
        &self.catalog
    }

    /// A consistent snapshot.
    pub fn read(&self) -> Result<State, ApiErr> {
        Ok(self.catalog.load()?.0)
    }

    /// Applies `change` to the current state and writes it back with
    /// compare-and-swap, re-reading and re-applying on a conflict. The
    /// closure may run more than once and must only touch the state it is
    /// given. Nothing is written when it returns an error.
    pub fn update<T>(
        &self,
        mut change: impl FnMut(&mut State) -> Result<T, ApiErr>,
    ) -> Result<T, ApiErr> {
        for _ in 0..MAX_CONFLICT_RETRIES {
            let (mut state, rev) = self.catalog.load()?;
            let out = change(&mut state)?;
            match self.catalog.store(&state, rev) {
                Ok(_) => return Ok(out),
                Err(CatalogError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ApiErr::internal(
            "the catalog is too busy to take this change; try again",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgfollow_catalog::MemoryCatalog;

    #[test]
    fn concurrent_updates_are_all_kept() {
        let store = Store::new(Arc::new(MemoryCatalog::new()));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let s = store.clone();
                std::thread::spawn(move || {
                    for _ in 0..25 {
                        s.update(|st| {
                            st.next_serial += 1;
                            Ok(())
                        })
                        .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(store.read().unwrap().next_serial, 100);
    }

    #[test]
    fn a_failed_change_writes_nothing() {
        let store = Store::new(Arc::new(MemoryCatalog::new()));
        let r: Result<(), _> = store.update(|st| {
            st.next_serial = 5;
            Err(ApiErr::bad_request("no"))
        });
        assert!(r.is_err());
        assert_eq!(store.read().unwrap().next_serial, 0);
    }
}
