//! Test harness: starts `pgfollow serve` as a real process on loopback with
//! its own temporary data directory and its own range of database ports, runs
//! the `pgfollow` CLI against it, and on drop stops the server and every
//! PostgreSQL it started and removes the directory, also when a test fails.
//! [`drivers`] runs real client drivers (tokio-postgres, psycopg 3, pgbench)
//! against a database or an endpoint.

mod agent;
pub mod drivers;
mod netns;
mod ports;
mod server;

pub use agent::AgentProcess;
pub use netns::{NetHost, Network};
pub use ports::PortSlot;
pub use server::{run_bounded, CliOutput, Server};
