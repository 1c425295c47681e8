//! A catalog in memory, for tests.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::{decode, encode, Catalog, CatalogError, Revision, State};

/// Keeps the state as encoded text, so it behaves like a real store (a
/// reader never shares memory with a writer).
#[derive(Default)]
pub struct MemoryCatalog {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    text: Option<String>,
    revision: Revision,
    leases: HashMap<String, (String, Instant)>,
}

impl MemoryCatalog {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Catalog for MemoryCatalog {
    fn load(&self) -> Result<(State, Revision), CatalogError> {
        let inner = self.lock();
        let state = match &inner.text {
            Some(t) => decode(t)?,
            None => State::default(),
        };
        Ok((state, inner.revision))
    }

    fn store(&self, state: &State, expected: Revision) -> Result<Revision, CatalogError> {
        let mut inner = self.lock();
        if inner.revision != expected {
            return Err(CatalogError::Conflict {
                expected,
                actual: inner.revision,
            });
        }
        inner.text = Some(encode(state)?);
        inner.revision += 1;
        Ok(inner.revision)
    }

    fn acquire_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, CatalogError> {
        let mut inner = self.lock();
        let now = Instant::now();
        if let Some((h, until)) = inner.leases.get(name) {
            if h != holder && *until > now {
                return Ok(false);
            }
        }
        inner
            .leases
            .insert(name.to_string(), (holder.to_string(), now + ttl));
        Ok(true)
    }

    fn release_lease(&self, name: &str, holder: &str) -> Result<(), CatalogError> {
        let mut inner = self.lock();
        if inner.leases.get(name).is_some_and(|(h, _)| h == holder) {
            inner.leases.remove(name);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_and_swap() {
        crate::contract::compare_and_swap(&MemoryCatalog::new());
    }

    #[test]
    fn leases() {
        crate::contract::leases(&MemoryCatalog::new(), Duration::from_millis(1));
    }
}
