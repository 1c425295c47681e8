//! The one mapping from errors to HTTP answers: a status and one line that
//! says what is wrong and what to do.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use pgfollow_types::api::ApiError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiErr {
    pub status: StatusCode,
    pub message: String,
}

impl ApiErr {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(m: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, m)
    }

    pub fn not_found(m: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, m)
    }

    pub fn conflict(m: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, m)
    }

    pub fn unauthorized(m: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, m)
    }

    pub fn unavailable(m: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, m)
    }

    pub fn internal(m: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, m)
    }
}

impl std::fmt::Display for ApiErr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiErr {}

impl From<pgfollow_catalog::CatalogError> for ApiErr {
    fn from(e: pgfollow_catalog::CatalogError) -> Self {
        match e {
            // A deposed leader: the client tries again, on another replica.
            pgfollow_catalog::CatalogError::NotHolder(_) => {
                return ApiErr::unavailable(format!("{e}; try again"))
            }
            pgfollow_catalog::CatalogError::Unreachable(_) => {
                tracing::error!("catalog: {e}");
                return ApiErr::unavailable(e.to_string());
            }
            _ => {}
        }
        tracing::error!("catalog: {e}");
        ApiErr::internal(format!("{e}"))
    }
}

impl From<pgfollow_client::agent::AgentCallError> for ApiErr {
    fn from(e: pgfollow_client::agent::AgentCallError) -> Self {
        ApiErr::unavailable(e.to_string())
    }
}

impl IntoResponse for ApiErr {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!("answering {}: {}", self.status.as_u16(), self.message);
        }
        (
            self.status,
            Json(ApiError {
                error: self.message,
            }),
        )
            .into_response()
    }
}
