//! The pgfollow control plane: the public HTTP API, the catalog of apps,
//! databases and operations, and the loop that plans and executes each
//! operation through the agents. `serve` runs it all with an embedded agent,
//! or, with its catalog in etcd, as one of several replicas of which one leads.

pub mod api;
mod backups;
mod changeover;
pub mod config;
mod dashboard;
mod diagnose;
mod endpoints;
mod error;
mod executor;
mod failover;
mod ha;
mod history;
mod hosts;
mod lag;
mod logical;
pub mod metrics;
mod monitor;
mod protection;
mod provision;
mod read_endpoint;
mod reads;
mod replica;
mod replicated;
mod resolve;
mod server;
mod store;
mod views;

pub use api::openapi_json;
pub use config::ServeConfig;
pub use server::{load_plans, serve, MakeAgent, LOCAL_HOST};
