//! How a client reaches the pgfollow control plane: where `serve` records its
//! address and token (`discovery`), and a typed HTTP client of its API.

pub mod discovery;

pub use discovery::{default_data_dir, ApiFile};
