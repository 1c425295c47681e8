//! The keys beside the state document, which the control plane's replicas
//! use (`pgfollow-control`'s `replica.rs`): the shared token, each
//! replica's URL under a lease of its own, agents' heartbeats and a watch
//! of them, and who holds a lease. All async, on the catalog's runtime.

use std::time::Duration;

use etcd_client::{
    Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};

use super::{etcd, etcd_again, ttl_secs, EtcdCatalog, REQUEST_TIMEOUT};
use crate::CatalogError;

impl EtcdCatalog {
    /// The value under `<prefix>/<rest>`, written as `value` first if there
    /// is none (one transaction: every replica gets the same).
    pub async fn get_or_create(&self, rest: &str, value: Vec<u8>) -> Result<Vec<u8>, CatalogError> {
        let key = self.key(rest);
        self.run_async(|mut c| {
            let (key, value) = (key.clone(), value.clone());
            async move {
                let txn = Txn::new()
                    .when(vec![Compare::create_revision(
                        key.clone(),
                        CompareOp::Equal,
                        0,
                    )])
                    .and_then(vec![TxnOp::put(key.clone(), value.clone(), None)])
                    .or_else(vec![TxnOp::get(key, None)]);
                let r = c.txn(txn).await.map_err(etcd_again)?;
                if r.succeeded() {
                    return Ok(value);
                }
                match r.op_responses().first() {
                    Some(TxnOpResponse::Get(g)) => Ok(g
                        .kvs()
                        .first()
                        .map(|kv| kv.value().to_vec())
                        .unwrap_or(value)),
                    _ => Ok(value),
                }
            }
        })
        .await
    }

    /// The value under `<prefix>/<rest>`, if any.
    pub async fn get(&self, rest: &str) -> Result<Option<Vec<u8>>, CatalogError> {
        let key = self.key(rest);
        self.run_async(|mut c| {
            let key = key.clone();
            async move {
                let r = c.get(key, None).await.map_err(etcd_again)?;
                Ok(r.kvs().first().map(|kv| kv.value().to_vec()))
            }
        })
        .await
    }

    /// Who holds lease `name` now, if anyone.
    pub fn lease_holder(&self, name: &str) -> Result<Option<String>, CatalogError> {
        let key = self.lease_key(name);
        self.run(|mut c| {
            let key = key.clone();
            async move {
                let r = c.get(key, None).await.map_err(etcd_again)?;
                Ok(r.kvs()
                    .first()
                    .map(|kv| String::from_utf8_lossy(kv.value()).to_string()))
            }
        })
    }

    /// Every key under `<prefix>/<dir>/` with its value (names without the
    /// directory).
    pub async fn list(&self, dir: &str) -> Result<Vec<(String, Vec<u8>)>, CatalogError> {
        let start = self.key(&format!("{dir}/"));
        self.run_async(|mut c| {
            let start = start.clone();
            async move {
                let r = c
                    .get(start.clone(), Some(GetOptions::new().with_prefix()))
                    .await
                    .map_err(etcd_again)?;
                Ok(r.kvs()
                    .iter()
                    .map(|kv| {
                        let key = String::from_utf8_lossy(kv.key()).to_string();
                        let name = key.strip_prefix(&start).unwrap_or(&key).to_string();
                        (name, kv.value().to_vec())
                    })
                    .collect())
            }
        })
        .await
    }

    /// Puts `value` under `<prefix>/<dir>/<name>`, attached to `lease`
    /// when given.
    pub async fn put(
        &self,
        dir: &str,
        name: &str,
        value: Vec<u8>,
        lease: Option<i64>,
    ) -> Result<(), CatalogError> {
        let key = self.key(&format!("{dir}/{name}"));
        self.run_async(|mut c| {
            let (key, value) = (key.clone(), value.clone());
            async move {
                let options = lease.map(|id| PutOptions::new().with_lease(id));
                c.put(key, value, options).await.map_err(etcd_again)?;
                Ok(())
            }
        })
        .await
    }

    /// Calls `on_put(name, value)` for every put under `<prefix>/<dir>/`
    /// from now on, until the returned task is aborted. A broken watch is
    /// made again (after `on_restart()`, since puts may have been missed),
    /// at most every 200 ms.
    pub fn watch(
        &self,
        dir: &str,
        on_put: impl Fn(&str, &[u8]) + Send + Sync + 'static,
        on_restart: impl Fn() + Send + Sync + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let start = self.key(&format!("{dir}/"));
        self.spawn(|client| async move {
            let mut first = true;
            loop {
                if !first {
                    on_restart();
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                first = false;
                let mut c = client.clone();
                let watched = c
                    .watch(start.clone(), Some(WatchOptions::new().with_prefix()))
                    .await;
                let Ok((_watcher, mut stream)) = watched else {
                    continue;
                };
                while let Ok(Some(resp)) = stream.message().await {
                    if resp.canceled() {
                        break;
                    }
                    for ev in resp.events() {
                        if ev.event_type() != etcd_client::EventType::Put {
                            continue;
                        }
                        if let Some(kv) = ev.kv() {
                            let key = String::from_utf8_lossy(kv.key());
                            let name = key.strip_prefix(&start).unwrap_or(&key);
                            on_put(name, kv.value());
                        }
                    }
                }
            }
        })
    }

    /// Grants a lease of `ttl` (whole seconds, at least 1) and keeps it
    /// alive every third of its TTL until the returned task is aborted (or
    /// etcd says it is gone). For a replica's own keys.
    pub async fn keep_lease(
        &self,
        ttl: Duration,
    ) -> Result<(i64, tokio::task::JoinHandle<()>), CatalogError> {
        let secs = ttl_secs(ttl);
        let id = self
            .run_async(move |mut c| async move {
                Ok(c.lease_grant(secs, None).await.map_err(etcd)?.id())
            })
            .await?;
        let every = Duration::from_millis((secs as u64 * 1000) / 3);
        let task = self.spawn(move |client| async move {
            loop {
                tokio::time::sleep(every).await;
                let mut c = client.clone();
                let renewed = tokio::time::timeout(REQUEST_TIMEOUT, c.lease_keep_alive(id)).await;
                if let Ok(Err(etcd_client::Error::LeaseKeepAliveError(_))) = renewed {
                    return;
                }
            }
        });
        Ok((id, task))
    }
}
