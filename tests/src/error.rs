//! HTTP errors in the server's shape (PROTOCOL.md §0.3 rule 6):
//! `{statusCode, path, timestamp, message, error, errors?}`.

use axum::http::StatusCode;

/// An error response of the fake API. The route path is filled in by the
/// response middleware.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// Individual validation messages (400 only).
    pub errors: Option<Vec<String>>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            errors: None,
        }
    }

    pub fn validation(errors: Vec<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: errors.join("; "),
            errors: Some(errors),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }
    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(StatusCode::GONE, message)
    }

    /// The JSON body for `path`.
    pub fn body(&self, path: &str) -> serde_json::Value {
        let mut body = serde_json::json!({
            "statusCode": self.status.as_u16(),
            "path": path,
            "timestamp": shared::timestamp::Timestamp::now().to_string(),
            "message": self.message,
            "error": self.status.canonical_reason().unwrap_or("Error"),
        });
        if let Some(errors) = &self.errors {
            body["errors"] = serde_json::json!(errors);
        }
        body
    }
}

impl axum::response::IntoResponse for ApiError {
    fn into_response(self) -> axum::response::Response {
        let status = self.status;
        // The path is not known here; the recording middleware rewrites it.
        let mut resp = (status, axum::Json(self.body(""))).into_response();
        resp.extensions_mut().insert(self);
        resp
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
