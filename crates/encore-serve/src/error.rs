//! The service's errors: [`ServeError`] when it cannot start (a run that does not load, two
//! runs under one name, an address it cannot bind), and [`ApiError`], the JSON answer to a
//! request it cannot serve.

use std::path::PathBuf;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("--run {dir}: {source}")]
    Run {
        dir: PathBuf,
        source: encore_core::ModelError,
    },
    #[error("--run: two runs are named `{name}`; name them apart with --run NAME=DIR")]
    DuplicateName { name: String },
    #[error("--run: expected at least one run directory")]
    NoRuns,
    #[error("--addr {addr}: cannot listen there: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("{field}: {message}")]
    Option {
        field: &'static str,
        message: String,
    },
    #[error("the service stopped: {0}")]
    Io(#[from] std::io::Error),
}

/// An answer to a request the service cannot serve: a status, the request field at fault
/// (`k`, `history[3]`, `user_id`, `body`, ...) and a message saying what was expected. Sent as
/// `{"error": {"status": 400, "field": "k", "message": "..."}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub field: Option<String>,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, field: Option<&str>, message: impl Into<String>) -> Self {
        ApiError {
            status,
            field: field.map(str::to_string),
            message: message.into(),
        }
    }

    /// 400: a malformed request, naming the field.
    pub fn bad_request(field: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, Some(field), message)
    }

    /// 404: an unknown model, user, item or route.
    pub fn not_found(field: Option<&str>, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, field, message)
    }

    /// 422: a well-formed request that cannot be answered (no known item in a history).
    pub fn unprocessable(field: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, Some(field), message)
    }

    /// 500: a failure of the service itself (logged); never the answer to bad input.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, None, message)
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "status": self.status.as_u16(),
                "field": self.field,
                "message": self.message,
            }
        })
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{} {field}: {}", self.status.as_u16(), self.message),
            None => write!(f, "{} {}", self.status.as_u16(), self.message),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = json_response(self.status, &self.body());
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

/// A JSON response with `status`.
pub fn json_response(status: StatusCode, value: &serde_json::Value) -> Response {
    let body = serde_json::to_vec(value).expect("a JSON value serialises");
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        axum::body::Body::from(body),
    )
        .into_response()
}
