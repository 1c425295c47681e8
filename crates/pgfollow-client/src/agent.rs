//! The client of an agent's API (`POST /agent/v1/call`), which the control
//! plane uses to reach agents on other hosts.

use std::time::Duration;

use std::future::Future;
use std::pin::Pin;

use pgfollow_types::agent::{AgentCall, AgentFailure, CODE_NO_SUCH_BACKEND, CODE_PORT_IN_USE};
use pgfollow_types::model::HostRecord;
use serde::de::DeserializeOwned;

use crate::error::root_cause;

/// What went wrong with a call.
#[derive(Debug, thiserror::Error)]
pub enum AgentCallError {
    /// The agent answered with an error.
    #[error("{}", .0.error)]
    Failed(AgentFailure),
    /// Nothing answered in time.
    #[error("agent at {url} does not answer: {cause}")]
    Unreachable { url: String, cause: String },
}

impl AgentCallError {
    /// A port conflict, which the control plane answers by moving the database.
    pub fn port_in_use(&self) -> Option<u16> {
        match self {
            AgentCallError::Failed(f) if f.code.as_deref() == Some(CODE_PORT_IN_USE) => f.port,
            _ => None,
        }
    }

    /// No such backend, for `pg:kill`.
    pub fn is_no_such_backend(&self) -> bool {
        matches!(self, AgentCallError::Failed(f) if f.code.as_deref() == Some(CODE_NO_SUCH_BACKEND))
    }

    /// Whether the agent could not be reached at all.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, AgentCallError::Unreachable { .. })
    }
}

/// The future an [`EmbeddedAgent`] call answers with.
pub type AgentFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The agent that runs inside `pgfollow serve` on the control plane's own
/// host. The control plane reaches it through the very calls a remote
/// agent's HTTP API takes ([`AgentCall`]), so it never links the agent's
/// code; `pgfollow serve` hands it in.
pub trait EmbeddedAgent: Send + Sync {
    /// Its host's name.
    fn name(&self) -> &str;
    /// Its host, as the catalog keeps it.
    fn host_record(&self) -> HostRecord;
    /// Answers `call` as the agent API would (its JSON answer, or failure).
    fn call(&self, call: AgentCall) -> AgentFuture<'_, Result<serde_json::Value, AgentFailure>>;
    /// Stops every database and endpoint of the host, in order.
    fn stop_all(&self) -> AgentFuture<'_, ()>;
}

/// A client of one agent.
#[derive(Clone)]
pub struct AgentClient {
    http: reqwest::Client,
    url: String,
    token: String,
}

impl std::fmt::Debug for AgentClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentClient")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl AgentClient {
    pub fn new(url: impl Into<String>, token: impl Into<String>) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .build()
            .unwrap_or_default();
        Self {
            http,
            url: url.into().trim_end_matches('/').to_string(),
            token: token.into(),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Makes `call`, waiting at most `timeout` for the answer.
    pub async fn call<T: DeserializeOwned>(
        &self,
        call: &AgentCall,
        timeout: Duration,
    ) -> Result<T, AgentCallError> {
        let unreachable = |cause: String| AgentCallError::Unreachable {
            url: self.url.clone(),
            cause,
        };
        let resp = self
            .http
            .post(format!("{}/agent/v1/call", self.url))
            .bearer_auth(&self.token)
            .timeout(timeout)
            .json(call)
            .send()
            .await
            .map_err(|e| unreachable(root_cause(&e)))?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| unreachable(root_cause(&e)))?;
        if !status.is_success() {
            let failure =
                serde_json::from_slice::<AgentFailure>(&body).unwrap_or_else(|_| AgentFailure {
                    error: format!(
                        "agent answered {status}: {}",
                        String::from_utf8_lossy(&body)
                            .chars()
                            .take(200)
                            .collect::<String>()
                    ),
                    code: None,
                    port: None,
                });
            return Err(AgentCallError::Failed(failure));
        }
        serde_json::from_slice(&body)
            .map_err(|e| unreachable(format!("unexpected answer to {}: {e}", call.name())))
    }
}
