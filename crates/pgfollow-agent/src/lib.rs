//! The agent of one host. It owns the PostgreSQL clusters under its
//! directory and carries out, one idempotent step at a time, what the control
//! plane asks: initialize, start, bootstrap, report, stop, destroy. It keeps
//! no state of its own beyond the clusters' files, so after its own restart it
//! finds its running clusters again through their `postmaster.pid`.

mod agent;
mod archive;
mod backups;
mod endpoints;
pub mod http;
mod logical;
mod ports;
mod run;

pub use agent::{Agent, AgentConfig, AgentError};
pub use pgfollow_pgbouncer::{EndpointSpec, EndpointStatus, Target as EndpointTarget};
pub use ports::DEFAULT_PORTS;
pub use run::{run, versions_line, RunConfig, FENCE_AFTER, HEARTBEAT};
