//! The pgfollow control plane: the public HTTP API, the catalog of apps,
//! databases and operations, and the loop that plans and executes each
//! operation through the agents. `serve` runs it all with an embedded agent.

pub mod config;

pub use config::ServeConfig;

use tokio_util::sync::CancellationToken;

/// Runs the control plane until `shutdown` is cancelled. Prints one line
/// saying where the API listens once it does.
pub async fn serve(config: ServeConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let _ = (config, shutdown);
    anyhow::bail!("not yet")
}
