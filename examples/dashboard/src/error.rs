//! API errors and how they are answered: JSON `{"error": "..."}` with the right status.

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::json;

/// Everything a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A missing or unknown API key (or admin token).
    #[error("missing or unknown API key")]
    Unauthorized,
    /// An admin route, with no admin token configured.
    #[error("admin routes are off: no admin token is set")]
    AdminOff,
    /// The thing named does not exist (or is not the caller's).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// Not enough credits for a message.
    #[error("not enough credits")]
    PaymentRequired,
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) | ApiError::AdminOff => StatusCode::NOT_FOUND,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::PaymentRequired => StatusCode::PAYMENT_REQUIRED,
            ApiError::Database(e) => {
                tracing::error!(error = %e, "database error");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        let message = match &self {
            // Do not leak SQL or connection details to clients.
            ApiError::Database(_) => "internal error".to_owned(),
            other => other.to_string(),
        };
        let mut response = (status, Json(json!({ "error": message }))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
