//! How a client reaches the pgfollow control plane: where `serve` records its
//! address and token (`discovery`, `endpoint`), and a typed HTTP client of its
//! API (`client`) with one method per route, whose errors (`error`) carry the
//! server's own one-line messages.

pub mod agent;
pub mod client;
pub mod discovery;
pub mod endpoint;
pub mod error;

pub use client::Client;
pub use discovery::{default_data_dir, ApiFile};
pub use endpoint::resolve_endpoint;
pub use error::ClientError;
