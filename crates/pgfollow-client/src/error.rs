//! What can go wrong talking to the control plane.

use std::path::PathBuf;

use crate::discovery::DiscoveryError;

/// An error from [`crate::Client`]. Every message is one line that says what
/// failed and what the user can do.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with a non-2xx status; `message` is its
    /// `ApiError.error`, shown as it is.
    #[error("{message}")]
    Api { status: u16, message: String },
    /// Nothing answered at `url` (refused, timed out, no route).
    #[error("cannot reach the pgfollow API at {url}: is `pgfollow serve` running? ({cause})")]
    Unreachable { url: String, cause: String },
    /// The request failed in another way while being sent or read.
    #[error("request to the pgfollow API at {url} failed: {cause}")]
    Http { url: String, cause: String },
    /// A 2xx answer whose body is not what this client expects.
    #[error("unexpected answer from the pgfollow API at {url} ({cause}); are the CLI and `pgfollow serve` the same version?")]
    Decode { url: String, cause: String },
    /// The API file could not be read.
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
    /// The API file exists but `serve` has not recorded its address yet.
    #[error("{path} has no API address yet: start `pgfollow serve`, or set PGFOLLOW_API")]
    NotStarted { path: PathBuf },
}

impl ClientError {
    /// The HTTP status of an [`ClientError::Api`] answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// The innermost cause of an error, which is where reqwest and hyper put the
/// useful words ("Connection refused (os error 111)").
pub(crate) fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}
