//! The catalog in etcd (v3 API), for several `serve` replicas on one etcd
//! cluster. The state document is one key, `<prefix>/state`; its revision is
//! etcd's `mod_revision` of that key (0 while it does not exist), so
//! revisions grow but not by one, and every write is a transaction that
//! compares it with the one read. Leases are etcd leases: `<prefix>/leases/
//! <name>` holds the holder's name, attached to a lease of the TTL asked
//! for (whole seconds, at least etcd's minimum); taking one again renews it
//! with a keep-alive. When writes are guarded by a lease
//! ([`EtcdCatalog::guard_writes_with`]), a write also compares that the
//! lease key is still attached to this catalog's lease, so a deposed
//! leader's write fails instead of landing. Never etcd's lock API.
//!
//! The [`Catalog`] trait is synchronous and called from async code: the
//! catalog owns a runtime of its own (one thread) where every etcd request
//! runs, and a caller waits for the answer on a channel, bounded by
//! [`REQUEST_TIMEOUT`]. So no tokio worker of the caller ever drives etcd's
//! futures, and a current-thread caller cannot deadlock. The async extras
//! (heartbeats, replica URLs, watches: `keys.rs`) run on the same runtime.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, PutOptions, Txn, TxnOp, TxnOpResponse,
};

mod keys;

use crate::{decode, encode, prune_finished_operations, Catalog, CatalogError, Revision, State};

/// How long one etcd request may take before the caller gets an error.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long connecting to the cluster may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// HTTP/2 ping interval and answer deadline of each member's connection.
const KEEP_ALIVE: Duration = Duration::from_millis(250);
/// etcd refuses requests over 1.5 MiB by default; a state document this
/// big is refused here, with a message, before etcd would.
const MAX_DOCUMENT: usize = 1_400_000;
/// How long a request that found no connection waits before the next try.
const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// Finished operations kept in the document (older ones are dropped).
pub const KEEP_FINISHED: usize = 200;

/// A catalog in an etcd cluster.
pub struct EtcdCatalog {
    rt: Option<tokio::runtime::Runtime>,
    client: Client,
    prefix: String,
    /// The lease whose holding every write checks, when set.
    guard: Option<String>,
    /// The etcd lease this catalog holds for each lease name, and for whom.
    held: Mutex<HashMap<String, (String, i64)>>,
}

fn storage(e: impl std::fmt::Display) -> CatalogError {
    CatalogError::Storage(e.to_string())
}

/// An etcd error in words: a gRPC status as its code and message only;
/// no connection at all is [`CatalogError::Unreachable`] (nothing was sent).
fn etcd(e: etcd_client::Error) -> CatalogError {
    match e {
        etcd_client::Error::GRpcStatus(s)
            if s.code() == tonic::Code::Unavailable && s.message().contains("connect") =>
        {
            CatalogError::Unreachable(s.message().to_string())
        }
        etcd_client::Error::GRpcStatus(s) => {
            CatalogError::Storage(format!("etcd: {:?}: {}", s.code(), s.message()))
        }
        etcd_client::Error::TransportError(t) => CatalogError::Unreachable(t.to_string()),
        other => storage(other),
    }
}

/// [`etcd`] for a request that may be sent twice with the same effect (a
/// read, a put of a whole value, a create-if-absent): a connection that
/// broke under it (`Unavailable`, whatever the message: "http2 error" when
/// a cut-off member's connection fails its ping) counts as no connection,
/// so [`EtcdCatalog::run`] tries it again, on another member.
fn etcd_again(e: etcd_client::Error) -> CatalogError {
    match e {
        etcd_client::Error::GRpcStatus(s) if s.code() == tonic::Code::Unavailable => {
            CatalogError::Unreachable(s.message().to_string())
        }
        other => etcd(other),
    }
}

/// Renews lease `id` by one keep-alive: false when etcd no longer has it.
async fn renew(c: &mut Client, id: i64) -> Result<bool, CatalogError> {
    match c.lease_keep_alive(id).await {
        Ok(_) => Ok(true),
        Err(etcd_client::Error::LeaseKeepAliveError(_)) => Ok(false),
        Err(e) => Err(etcd(e)),
    }
}

impl EtcdCatalog {
    /// Connects to the cluster at `endpoints` (`http://127.0.0.1:2379`, ...);
    /// keys go under `prefix` (`/pgfollow`).
    pub fn connect(endpoints: &[String], prefix: &str) -> Result<Self, CatalogError> {
        if endpoints.is_empty() {
            return Err(CatalogError::Storage(
                "no etcd endpoint given; pass --etcd http://HOST:2379,...".into(),
            ));
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("pgfollow-etcd")
            .enable_all()
            .build()
            .map_err(storage)?;
        let eps = endpoints.to_vec();
        let options = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT)
            // A member cut off answers nothing (no reset): HTTP/2 pings
            // find its connection dead within half a second, well inside
            // the leader lease's renewal deadline, and requests go to the
            // others.
            .with_keep_alive(KEEP_ALIVE, KEEP_ALIVE)
            .with_keep_alive_while_idle(true);
        let connected = rt.block_on(async move {
            tokio::time::timeout(CONNECT_TIMEOUT, Client::connect(eps, Some(options))).await
        });
        let client = match connected {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                return Err(CatalogError::Storage(format!(
                    "cannot connect to etcd at {}: {e}; check that etcd runs there with a majority of its members",
                    endpoints.join(",")
                )))
            }
            Err(_) => return Err(CatalogError::Storage(format!(
                "etcd at {} did not answer within {CONNECT_TIMEOUT:?}; check that etcd runs there with a majority of its members",
                endpoints.join(",")
            ))),
        };
        let catalog = Self {
            rt: Some(rt),
            client,
            prefix: prefix.trim_end_matches('/').to_string(),
            guard: None,
            held: Mutex::default(),
        };
        // One read: connecting is lazy, and a cluster may accept
        // connections without a majority.
        if let Err(e) = catalog.load() {
            let e = match e {
                CatalogError::Storage(m) => m,
                other => other.to_string(),
            };
            return Err(CatalogError::Storage(format!(
                "etcd at {} does not answer ({e}); check that etcd runs there with a majority of its members",
                endpoints.join(",")
            )));
        }
        Ok(catalog)
    }

    /// Every write from now on also checks that this catalog holds lease
    /// `name` (taken with [`Catalog::acquire_lease`]); it fails with
    /// [`CatalogError::NotHolder`] otherwise.
    pub fn guard_writes_with(mut self, name: &str) -> Self {
        self.guard = Some(name.to_string());
        self
    }

    fn key(&self, rest: &str) -> String {
        format!("{}/{rest}", self.prefix)
    }

    fn lease_key(&self, name: &str) -> String {
        self.key(&format!("leases/{name}"))
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, i64)>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        // Some until drop.
        self.rt.as_ref().map(|r| r.handle()).expect("runtime")
    }

    /// Runs `f` with a client on the catalog's runtime and waits for it,
    /// at most [`REQUEST_TIMEOUT`].
    /// Runs `f` with a client on the catalog's runtime and waits for it,
    /// at most [`REQUEST_TIMEOUT`] in all. While `f` fails with
    /// [`CatalogError::Unreachable`] (no connection: nothing was sent), it
    /// is run again, every [`RETRY_PAUSE`]: etcd's client keeps picking a
    /// dead member now and then, and the next try goes to a live one.
    fn run<T, F, Fut>(&self, f: F) -> Result<T, CatalogError>
    where
        T: Send + 'static,
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, CatalogError>> + Send + 'static,
    {
        let deadline = std::time::Instant::now() + REQUEST_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            let fut = f(self.client.clone());
            self.handle().spawn(async move {
                let r = match tokio::time::timeout(left, fut).await {
                    Ok(r) => r,
                    Err(_) => Err(timed_out()),
                };
                let _ = tx.send(r);
            });
            let r = rx
                .recv_timeout(left + Duration::from_millis(500))
                .unwrap_or_else(|_| Err(timed_out()));
            match r {
                Err(CatalogError::Unreachable(_))
                    if std::time::Instant::now() + RETRY_PAUSE < deadline =>
                {
                    std::thread::sleep(RETRY_PAUSE);
                }
                other => return other,
            }
        }
    }

    /// As [`EtcdCatalog::run`], for async callers.
    pub async fn run_async<T, F, Fut>(&self, f: F) -> Result<T, CatalogError>
    where
        T: Send + 'static,
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, CatalogError>> + Send + 'static,
    {
        let deadline = std::time::Instant::now() + REQUEST_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let fut = f(self.client.clone());
            let task = self
                .handle()
                .spawn(async move { tokio::time::timeout(left, fut).await });
            let r = match task.await {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => Err(timed_out()),
                Err(e) => Err(storage(e)),
            };
            match r {
                Err(CatalogError::Unreachable(_))
                    if std::time::Instant::now() + RETRY_PAUSE < deadline =>
                {
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                other => return other,
            }
        }
    }

    /// Spawns a long-running task (a watch, a keep-alive loop) on the
    /// catalog's runtime.
    pub fn spawn<Fut>(&self, f: impl FnOnce(Client) -> Fut) -> tokio::task::JoinHandle<()>
    where
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.handle().spawn(f(self.client.clone()))
    }

    /// The full key of `rest` under this catalog's prefix.
    pub fn path(&self, rest: &str) -> String {
        self.key(rest)
    }
}

fn timed_out() -> CatalogError {
    CatalogError::Storage(format!(
        "etcd did not answer within {REQUEST_TIMEOUT:?}; check that a majority of its members run"
    ))
}

/// A TTL in etcd's whole seconds, rounded up, at least 1.
fn ttl_secs(ttl: Duration) -> i64 {
    let ms = ttl.as_millis().max(1);
    i64::try_from(ms.div_ceil(1000)).unwrap_or(i64::MAX)
}

impl Catalog for EtcdCatalog {
    fn load(&self) -> Result<(State, Revision), CatalogError> {
        let key = self.key("state");
        let got = self.run(|mut c| {
            let key = key.clone();
            async move {
                let r = c.get(key, None).await.map_err(etcd_again)?;
                Ok(r.kvs()
                    .first()
                    .map(|kv| (kv.value().to_vec(), kv.mod_revision())))
            }
        })?;
        match got {
            None => Ok((State::default(), 0)),
            Some((body, rev)) => {
                let text =
                    String::from_utf8(body).map_err(|e| CatalogError::Corrupt(e.to_string()))?;
                Ok((decode(&text)?, rev as Revision))
            }
        }
    }

    fn store(&self, state: &State, expected: Revision) -> Result<Revision, CatalogError> {
        let mut state = state.clone();
        prune_finished_operations(&mut state, KEEP_FINISHED);
        let body = encode(&state)?;
        if body.len() > MAX_DOCUMENT {
            return Err(CatalogError::Storage(format!(
                "the state document is {} bytes, more than etcd takes in one request ({MAX_DOCUMENT}); destroy unused apps and databases",
                body.len()
            )));
        }
        let key = self.key("state");
        let mut when = vec![Compare::mod_revision(
            key.clone(),
            CompareOp::Equal,
            expected as i64,
        )];
        let guard = match &self.guard {
            None => None,
            Some(name) => {
                let Some((_, id)) = self.held().get(name).cloned() else {
                    return Err(CatalogError::NotHolder(name.clone()));
                };
                let lease_key = self.lease_key(name);
                when.push(Compare::lease(lease_key.clone(), CompareOp::Equal, id));
                Some((name.clone(), lease_key))
            }
        };
        let mut otherwise = vec![TxnOp::get(key.clone(), None)];
        if let Some((_, lease_key)) = &guard {
            otherwise.push(TxnOp::get(lease_key.clone(), None));
        }
        let txn = Txn::new()
            .when(when)
            .and_then(vec![TxnOp::put(key, body, None)])
            .or_else(otherwise);
        // Only a transaction that was never sent is sent again (see
        // `run`): one that may have landed is never repeated here.
        let (ok, revision, actual) = self.run(|mut c| {
            let txn = txn.clone();
            async move {
                let r = c.txn(txn).await.map_err(etcd)?;
                let revision = r.header().map_or(0, |h| h.revision());
                let mut actual = 0;
                if !r.succeeded() {
                    if let Some(TxnOpResponse::Get(g)) = r.op_responses().first() {
                        actual = g.kvs().first().map_or(0, |kv| kv.mod_revision());
                    }
                }
                Ok((r.succeeded(), revision, actual))
            }
        })?;
        if ok {
            return Ok(revision as Revision);
        }
        if actual as Revision == expected {
            // The document did not change: the guard failed.
            let name = guard.map(|g| g.0).unwrap_or_default();
            self.held().remove(&name);
            return Err(CatalogError::NotHolder(name));
        }
        Err(CatalogError::Conflict {
            expected,
            actual: actual as Revision,
        })
    }

    fn acquire_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, CatalogError> {
        let key = self.lease_key(name);
        let secs = ttl_secs(ttl);
        let mine = self.held().get(name).cloned();
        let (holder_s, key_c) = (holder.to_string(), key.clone());
        // What the key says now, and whether a lease this catalog holds
        // for `holder` is still the one attached.
        let taken = self.run(|mut c| {
            let (mine, holder_s, key_c) = (mine.clone(), holder_s.clone(), key_c.clone());
            async move {
                if let Some((h, id)) = mine.filter(|(h, _)| *h == holder_s) {
                    if renew(&mut c, id).await? {
                        let r = c.get(key_c.clone(), None).await.map_err(etcd_again)?;
                        if r.kvs().first().is_some_and(|kv| kv.lease() == id) {
                            return Ok(Some((h, id)));
                        }
                    }
                }
                let r = c.get(key_c.clone(), None).await.map_err(etcd_again)?;
                if let Some(kv) = r.kvs().first() {
                    let h = String::from_utf8_lossy(kv.value()).to_string();
                    if h != holder_s {
                        return Ok(None);
                    }
                    // Ours by name (this holder, from an earlier handle or
                    // process): renew the lease that is attached.
                    let id = kv.lease();
                    return Ok(renew(&mut c, id).await?.then_some((h, id)));
                }
                let id = c.lease_grant(secs, None).await.map_err(etcd)?.id();
                let txn = Txn::new()
                    .when(vec![Compare::create_revision(
                        key_c.clone(),
                        CompareOp::Equal,
                        0,
                    )])
                    .and_then(vec![TxnOp::put(
                        key_c.clone(),
                        holder_s.clone(),
                        Some(PutOptions::new().with_lease(id)),
                    )]);
                let r = c.txn(txn).await.map_err(etcd)?;
                if r.succeeded() {
                    Ok(Some((holder_s, id)))
                } else {
                    let _ = c.lease_revoke(id).await;
                    Ok(None)
                }
            }
        })?;
        let mut held = self.held();
        match taken {
            Some(entry) => {
                held.insert(name.to_string(), entry);
                Ok(true)
            }
            None => {
                if held.get(name).is_some_and(|(h, _)| h == holder) {
                    held.remove(name);
                }
                Ok(false)
            }
        }
    }

    fn release_lease(&self, name: &str, holder: &str) -> Result<(), CatalogError> {
        let key = self.lease_key(name);
        let mine = {
            let mut held = self.held();
            match held.get(name) {
                Some((h, id)) if h == holder => {
                    let id = *id;
                    held.remove(name);
                    Some(id)
                }
                _ => None,
            }
        };
        let holder = holder.to_string();
        self.run(|mut c| {
            let (key, holder) = (key.clone(), holder.clone());
            async move {
                let txn = Txn::new()
                    .when(vec![Compare::value(key.clone(), CompareOp::Equal, holder)])
                    .and_then(vec![TxnOp::delete(key, None)]);
                c.txn(txn).await.map_err(etcd)?;
                if let Some(id) = mine {
                    let _ = c.lease_revoke(id).await;
                }
                Ok(())
            }
        })
    }
}

impl Drop for EtcdCatalog {
    fn drop(&mut self) {
        // Dropping a runtime inside another one's context panics; this
        // never blocks.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests;
