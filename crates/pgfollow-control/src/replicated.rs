//! `pgfollow serve --etcd`: one replica of a control plane whose catalog is
//! in etcd. It runs no embedded agent (every host is a `pgfollow agent`
//! that registers over HTTP, which any replica can reach); it shares one API
//! token with the other replicas (kept in etcd), records its URL there,
//! follows the agents' heartbeats, serves the API, and runs the executor,
//! the HA monitor, the read endpoint's loop and the backups loop only while
//! it leads (`replica.rs`).

use std::sync::Arc;

use anyhow::Context;
use pgfollow_catalog::EtcdCatalog;
use pgfollow_client::ApiFile;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::api::{router, Ctx};
use crate::config::ServeConfig;
use crate::endpoints::Endpoints;
use crate::executor::Executor;
use crate::hosts::Hosts;
use crate::provision::secret;
use crate::replica::{self, LeaderTasks, Replica, LEADER_LEASE};
use crate::server::{load_plans, lock_data_dir, metrics_token, prepare_data_dir};
use crate::store::Store;

/// The replica's name when none is given: `<hostname>:<API port>`.
pub fn default_name(port: u16) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("{host}:{port}")
}

/// Runs one replica until `shutdown` is cancelled.
pub async fn serve_replicated(
    config: ServeConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let data_dir = &config.data_dir;
    prepare_data_dir(data_dir)?;
    let _lock = lock_data_dir(data_dir)?;
    let plans = load_plans(config.plans_file.as_deref())?;
    let metrics_token = metrics_token(data_dir)?;

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot listen on {}: {e}; pass --listen with a free address (e.g. 127.0.0.1:0)",
                config.listen
            )
        })?;
    let addr = listener.local_addr()?;
    let url = format!("http://{addr}");
    let name = config
        .name
        .clone()
        .unwrap_or_else(|| default_name(addr.port()));

    let (endpoints, prefix) = (config.etcd.clone(), config.etcd_prefix.clone());
    let catalog = tokio::task::spawn_blocking(move || {
        EtcdCatalog::connect(&endpoints, &prefix).map(|c| c.guard_writes_with(LEADER_LEASE))
    })
    .await?
    .map_err(|e| match e {
        pgfollow_catalog::CatalogError::Storage(m) => anyhow::anyhow!("{m}"),
        other => anyhow::anyhow!("cannot use etcd at {}: {other}", config.etcd.join(",")),
    })?;
    let catalog = Arc::new(catalog);
    // Every replica takes the token the first one made.
    let token = catalog
        .get_or_create("token", (secret() + &secret()).into_bytes())
        .await
        .context("cannot read the API token from etcd")?;
    let token = String::from_utf8_lossy(&token).to_string();

    let store = Store::new(catalog.clone());
    let hosts = Hosts::new(None, token.clone());
    let wake = Arc::new(Notify::new());
    let replica = Arc::new(Replica::new(
        name.clone(),
        url.clone(),
        token.clone(),
        catalog.clone(),
        config.leader_ttl,
    ));
    let watch = replica::watch_heartbeats(&catalog, hosts.clone(), wake.clone());
    let advertise = tokio::spawn(replica::advertise(replica.clone(), shutdown.clone()));

    let endpoints = Arc::new(Endpoints::new(store.clone(), hosts.clone()));
    let backups = Arc::new(crate::backups::Backups::new(
        store.clone(),
        hosts.clone(),
        data_dir,
    ));
    // Every replica keeps its own hour of lag samples (reads only): the
    // dashboard works on whichever replica it is opened on.
    let lag_samples = Arc::new(crate::history::LagSamples::default());
    let history = tokio::spawn(lag_samples.clone().run(
        store.clone(),
        hosts.clone(),
        shutdown.clone(),
    ));
    let ctx = Arc::new(Ctx {
        store: store.clone(),
        hosts: hosts.clone(),
        plans,
        token: token.clone(),
        metrics_token,
        wake: wake.clone(),
        endpoints: endpoints.clone(),
        ha_max_lag_bytes: config.ha_max_lag_mb * 1024 * 1024,
        backups: backups.clone(),
        replica: Some(replica.clone()),
        lag_samples,
        dashboard_sessions: Default::default(),
    });

    // Each term of leadership gets a fresh executor (its memory of steps
    // and verdicts belongs to the term).
    let max_lag = config.ha_max_lag_mb * 1024 * 1024;
    let start = {
        let (store, hosts, endpoints, wake, backups) = (
            store.clone(),
            hosts.clone(),
            endpoints.clone(),
            wake.clone(),
            backups.clone(),
        );
        let me = replica.clone();
        move || {
            let executor = Arc::new(
                Executor::new(
                    store.clone(),
                    hosts.clone(),
                    endpoints.clone(),
                    wake.clone(),
                )
                .with_ha_max_lag(max_lag)
                .with_leadership({
                    let me = me.clone();
                    Arc::new(move || me.leads_now())
                }),
            );
            // The read endpoint's loop too: its memory of what each slot
            // was written with belongs to the term.
            let reads = Arc::new(crate::read_endpoint::ReadEndpoints::new(
                store.clone(),
                hosts.clone(),
            ));
            let cancel = CancellationToken::new();
            LeaderTasks {
                cancel: cancel.clone(),
                tasks: vec![
                    tokio::spawn(executor.run(cancel.clone())),
                    tokio::spawn(reads.run(cancel.clone())),
                    tokio::spawn(backups.clone().run(cancel)),
                ],
            }
        }
    };
    let leading = tokio::spawn(replica::lead(replica.clone(), start, shutdown.clone()));

    ApiFile {
        url: replica.urls().await.join(","),
        token,
    }
    .store(data_dir)?;
    println!(
        "pgfollow serve: API listening on {url} (replica {name}, catalog in etcd at {} under {}, data dir {})",
        config.etcd.join(","),
        config.etcd_prefix,
        data_dir.display(),
    );
    tracing::info!("replica {name} listening on {url}");

    let served = axum::serve(listener, router(ctx))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .await;
    shutdown.cancel();
    let _ = history.await;
    if let Err(e) = leading.await {
        tracing::warn!("the leadership loop ended badly: {e}");
    }
    let _ = advertise.await;
    watch.abort();
    tracing::info!("stopped");
    served.context("the API server failed")
}
