//! Scenarios against real `pgfollow serve` processes and real PostgreSQL,
//! named after what a user sees. Each test starts its own server (testkit)
//! in a temporary directory; every wait is bounded.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

mod apps_and_config;
mod backups;
mod bad_input;
mod changeover;
mod control_plane;
mod dashboard;
mod databases;
mod diagnose;
mod drivers;
mod durability;
mod followers;
mod ha;
mod ha_hosts;
mod ha_partitions;
mod ha_safety;
mod hosts;
mod lag;
mod logical;
mod metrics;
mod openapi;
mod pool_modes;
mod progress;
mod promotion;
mod read_endpoint;
mod rollback;
mod security;
mod spellings;
mod upgrade;
mod versions;
