//! The client of an agent's API (`POST /agent/v1/call`), which the control
//! plane uses to reach agents on other hosts.

use std::time::Duration;

use pgfollow_types::agent::{AgentCall, AgentFailure};
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
