//! The agents the control plane can reach, by host name.

use std::collections::BTreeMap;
use std::sync::Arc;

use pgfollow_agent::Agent;

use crate::error::ApiErr;

#[derive(Clone, Default)]
pub struct Hosts {
    agents: BTreeMap<String, Arc<Agent>>,
}

impl Hosts {
    pub fn new(agents: impl IntoIterator<Item = Arc<Agent>>) -> Self {
        Self {
            agents: agents
                .into_iter()
                .map(|a| (a.name().to_string(), a))
                .collect(),
        }
    }

    pub fn get(&self, host: &str) -> Option<&Arc<Agent>> {
        self.agents.get(host)
    }

    /// The agent of `host`, or an error that says it does not answer.
    pub fn agent(&self, host: &str) -> Result<&Arc<Agent>, ApiErr> {
        self.get(host).ok_or_else(|| {
            ApiErr::unavailable(format!(
                "host {host} has no agent connected; start `pgfollow agent` there"
            ))
        })
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<Agent>> {
        self.agents.values()
    }
}
