//! What a request can fail with, and the HTTP status each failure answers with.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::mailbox::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No such message, folder, attachment or endpoint in the signed-in user's mailbox.
    #[error("{0}")]
    NotFound(&'static str),
    #[error("{0}")]
    BadRequest(String),
    /// A state-changing request without the session's CSRF token.
    #[error("the request's CSRF token is missing or wrong")]
    Csrf,
    #[error("{0}")]
    Conflict(String),
    /// The user's store (or the member index) cannot be reached or is busy: try again later.
    #[error("your mailbox is temporarily unavailable ({0})")]
    Unavailable(String),
    /// The outbound relay refused or could not be reached.
    #[error("{0}")]
    Send(String),
    #[error("the mailbox is over its quota")]
    Quota,
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub fn status(&self) -> StatusCode {
        match self {
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::Csrf => StatusCode::FORBIDDEN,
            Error::Conflict(_) => StatusCode::CONFLICT,
            Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Send(_) => StatusCode::BAD_GATEWAY,
            Error::Quota => StatusCode::INSUFFICIENT_STORAGE,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The JSON answer: `{"error": "..."}` with the status.
    pub fn api(&self) -> Response {
        let body = serde_json::json!({ "error": self.to_string() });
        (self.status(), Json(body)).into_response()
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Error {
        match e {
            StoreError::NoSuchMessage => Error::NotFound("no such message"),
            StoreError::NoSuchFolder => Error::NotFound("no such folder"),
            StoreError::Exists(what) => Error::Conflict(format!("{what} already exists")),
            StoreError::BadRequest(why) => Error::BadRequest(why),
            StoreError::Quota => Error::Quota,
            StoreError::NoSuchUser => Error::NotFound("no such mailbox"),
            StoreError::Unavailable(why) | StoreError::Corrupt(why) => Error::Unavailable(why),
        }
    }
}

/// An error answered as JSON.
pub struct ApiError(pub Error);

impl<E: Into<Error>> From<E> for ApiError {
    fn from(e: E) -> ApiError {
        ApiError(e.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.0.api()
    }
}
