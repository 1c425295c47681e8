//! The vocabulary of pgfollow: names and ids (apps, databases, colours),
//! plans and tiers, PostgreSQL LSNs, the ways a user may name a database, and
//! every request and response that crosses the control plane's or an agent's
//! HTTP API. Plain data with serde; no I/O. With the `openapi` feature the
//! API types also describe themselves for the generated OpenAPI document.

pub mod agent;
pub mod api;
pub mod archive;
pub mod backup;
pub mod dbref;
pub mod lsn;
pub mod model;
pub mod names;
pub mod plan;
pub mod reads;
pub mod timing;

pub use dbref::DatabaseRef;
pub use lsn::Lsn;
pub use names::{AppName, Color, NameError};
pub use plan::{Plan, PlanCatalog, Tier};
