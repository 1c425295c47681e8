//! `pgfollow serve`: lock the data directory, open the catalog, start the
//! embedded agent, the executor and the HTTP API; on shutdown stop them in
//! order and stop the databases. With `--etcd` it is one replica of a
//! control plane on etcd instead (`replicated.rs`).

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use nix::fcntl::{Flock, FlockArg};
use pgfollow_catalog::SqliteCatalog;
use pgfollow_client::agent::EmbeddedAgent;
use pgfollow_client::ApiFile;
use pgfollow_types::plan::PlanFile;
use pgfollow_types::PlanCatalog;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::api::{router, Ctx};
use crate::config::ServeConfig;
use crate::endpoints::Endpoints;
use crate::executor::Executor;
use crate::hosts::Hosts;
use crate::provision::secret;
use crate::store::Store;

/// Name of the embedded agent's host.
pub const LOCAL_HOST: &str = "local";

/// Makes the embedded agent, given the directory its clusters live in:
/// `pgfollow serve` passes one that builds `pgfollow-agent`'s agent (the
/// control plane itself only speaks to it through [`EmbeddedAgent`]).
pub type MakeAgent = Box<dyn FnOnce(&Path) -> anyhow::Result<Arc<dyn EmbeddedAgent>> + Send>;

/// Runs the control plane until `shutdown` is cancelled.
pub async fn serve(
    config: ServeConfig,
    make_agent: MakeAgent,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    if !config.etcd.is_empty() {
        return crate::replicated::serve_replicated(config, shutdown).await;
    }
    let data_dir = &config.data_dir;
    prepare_data_dir(data_dir)?;
    let _lock = lock_data_dir(data_dir)?;
    let plans = load_plans(config.plans_file.as_deref())?;
    if config.pg_ports.0 > config.pg_ports.1 {
        bail!(
            "--pg-ports {}-{} is empty; give the lower port first",
            config.pg_ports.0,
            config.pg_ports.1
        );
    }
    let token = match ApiFile::load(data_dir) {
        Ok(f) if !f.token.is_empty() => f.token,
        _ => secret() + &secret(),
    };

    let metrics_token = metrics_token(data_dir)?;

    let catalog = SqliteCatalog::open(&data_dir.join("catalog.sqlite"))
        .with_context(|| format!("cannot open the catalog in {}", data_dir.display()))?;
    let store = Store::new(Arc::new(catalog));

    // The API's address first: a taken port is bad input, refused before
    // anything starts.
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot listen on {}: {e}; pass --listen with a free address (e.g. 127.0.0.1:0)",
                config.listen
            )
        })?;
    let agent = make_agent(&data_dir.join("clusters"))?;
    let host = agent.host_record();
    store.update(|state| {
        state.hosts.insert(host.name.clone(), host.clone());
        Ok(())
    })?;
    let hosts = Hosts::new(Some(agent.clone()), token.clone());

    let addr = listener.local_addr()?;
    let url = format!("http://{addr}");
    ApiFile {
        url: url.clone(),
        token: token.clone(),
    }
    .store(data_dir)?;

    let wake = Arc::new(Notify::new());
    let endpoints = Arc::new(Endpoints::new(store.clone(), hosts.clone()));
    let backups = Arc::new(crate::backups::Backups::new(
        store.clone(),
        hosts.clone(),
        data_dir,
    ));
    let backups_cancel = shutdown.child_token();
    let backups_task = tokio::spawn(backups.clone().run(backups_cancel.clone()));
    let lag_samples = Arc::new(crate::history::LagSamples::default());
    let history_task = tokio::spawn(lag_samples.clone().run(
        store.clone(),
        hosts.clone(),
        backups_cancel.clone(),
    ));
    let reads = Arc::new(crate::read_endpoint::ReadEndpoints::new(
        store.clone(),
        hosts.clone(),
    ));
    let reads_task = tokio::spawn(reads.run(backups_cancel.clone()));
    let ctx = Arc::new(Ctx {
        store: store.clone(),
        hosts: hosts.clone(),
        plans,
        token,
        metrics_token,
        wake: wake.clone(),
        endpoints: endpoints.clone(),
        ha_max_lag_bytes: config.ha_max_lag_mb * 1024 * 1024,
        backups,
        replica: None,
        lag_samples,
        dashboard_sessions: Default::default(),
    });
    let executor = Arc::new(
        Executor::new(store, hosts, endpoints, wake)
            .with_ha_max_lag(config.ha_max_lag_mb * 1024 * 1024),
    );
    let exec_cancel = shutdown.child_token();
    let exec_task = tokio::spawn(executor.run(exec_cancel.clone()));

    println!(
        "pgfollow serve: API listening on {url} (data dir {}, PostgreSQL {})",
        data_dir.display(),
        host.installs()
            .iter()
            .map(|i| format!("{} in {}", i.version, i.bin))
            .collect::<Vec<_>>()
            .join(", ")
    );
    tracing::info!("listening on {url}");

    let app = router(ctx);
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .await;

    tracing::info!("shutting down: stopping the executor");
    exec_cancel.cancel();
    backups_cancel.cancel();
    let _ = history_task.await;
    let _ = reads_task.await;
    if let Err(e) = backups_task.await {
        tracing::warn!("backups loop ended badly: {e}");
    }
    if let Err(e) = exec_task.await {
        tracing::warn!("executor ended badly: {e}");
    }
    tracing::info!("stopping databases");
    agent.stop_all().await;
    tracing::info!("stopped");
    served.context("the API server failed")
}

/// The file holding the read-only token of `GET /metrics`.
pub const METRICS_TOKEN_FILE: &str = "metrics.token";

/// The metrics token from `metrics.token` (mode 0600), made at first start.
pub(crate) fn metrics_token(dir: &Path) -> anyhow::Result<String> {
    let path = dir.join(METRICS_TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => bail!(
            "cannot read {}: {e}; fix its permissions or remove it for a new metrics token",
            path.display()
        ),
    }
    let token = secret() + &secret();
    let tmp = dir.join(format!("{METRICS_TOKEN_FILE}.tmp"));
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        writeln!(f, "{token}").with_context(|| format!("cannot write {}", tmp.display()))?;
    }
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(token)
}

/// Creates the data directory: mode 0711, so the OS user postgres runs as
/// can reach its clusters but not list or read anything else.
pub(crate) fn prepare_data_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
    if !dir.is_dir() {
        bail!(
            "{} is not a directory; choose another --data-dir",
            dir.display()
        );
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
        .with_context(|| format!("cannot set the mode of {}", dir.display()))?;
    Ok(())
}

/// One `serve` per data directory: an exclusive lock held while it runs.
pub(crate) fn lock_data_dir(dir: &Path) -> anyhow::Result<Flock<File>> {
    let path = dir.join("serve.lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|_| {
        anyhow::anyhow!(
            "the data directory {} is in use by another `pgfollow serve`; stop that one or choose another --data-dir",
            dir.display()
        )
    })
}

/// The built-in plans, changed by the operator's file when there is one.
pub fn load_plans(file: Option<&Path>) -> anyhow::Result<PlanCatalog> {
    let Some(path) = file else {
        return Ok(PlanCatalog::default());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the plan file {}", path.display()))?;
    let parsed: PlanFile = toml::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "the plan file {} is not valid: {}",
            path.display(),
            e.message()
        )
    })?;
    PlanCatalog::with_file(parsed)
        .map_err(|e| anyhow::anyhow!("the plan file {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_files_extend_the_builtins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plans.toml");
        std::fs::write(
            &path,
            r#"
[[plan]]
name = "standard-4"
tier = "standard"
connection_limit = 500
shared_buffers_mb = 1024
work_mem_mb = 16
storage_limit_gb = 750
price_per_month = 750
"#,
        )
        .unwrap();
        let plans = load_plans(Some(&path)).unwrap();
        assert_eq!(plans.get("standard-4").unwrap().price_per_month, 750);
        assert!(plans.get("hobby-dev").is_some());

        std::fs::write(&path, "[[plan]]\nname = 3\n").unwrap();
        let e = load_plans(Some(&path)).unwrap_err().to_string();
        assert!(e.contains("is not valid"), "{e}");
    }

    #[test]
    fn a_second_serve_on_one_data_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _held = lock_data_dir(dir.path()).unwrap();
        let e = lock_data_dir(dir.path()).unwrap_err().to_string();
        assert!(e.contains("in use by another"), "{e}");
    }
}
