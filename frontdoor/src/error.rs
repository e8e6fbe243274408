//! What a request can fail with, and the HTTP status each failure answers with.

use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::mailbox::StoreError;

/// What a busy store's answer tells the user.
pub const BUSY: &str = "Your mailbox is busy right now. Please try again in a few seconds.";
/// The `Retry-After` of a busy answer, in seconds.
pub const BUSY_RETRY_AFTER_SECS: u64 = 5;

/// `r` with `Retry-After: BUSY_RETRY_AFTER_SECS` (for busy and unavailable answers).
pub fn with_retry_after(mut r: Response) -> Response {
    r.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(BUSY_RETRY_AFTER_SECS));
    r
}

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
    /// The user's store (or the member index) cannot be reached, or the mailbox is moving: try
    /// again later.
    #[error("your mailbox is temporarily unavailable ({0})")]
    Unavailable(String),
    /// The user's store is shedding load: a short "try again in a few seconds", never a failure.
    #[error("{BUSY}")]
    Busy,
    /// The outbound relay refused or could not be reached.
    #[error("{0}")]
    Send(String),
    #[error("the mailbox is over its quota")]
    Quota,
    /// The store refused the session: sign in again.
    #[error("your session has ended; sign in again")]
    SessionEnded,
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
            Error::Unavailable(_) | Error::Busy => StatusCode::SERVICE_UNAVAILABLE,
            Error::Send(_) => StatusCode::BAD_GATEWAY,
            Error::Quota => StatusCode::INSUFFICIENT_STORAGE,
            Error::SessionEnded => StatusCode::UNAUTHORIZED,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The JSON answer: `{"error": "..."}` with the status. A busy store is
    /// `{"error": "busy", "message": "...", "retry_after_secs": N}` with `Retry-After`.
    pub fn api(&self) -> Response {
        if matches!(self, Error::Busy) {
            let body = serde_json::json!({
                "error": "busy",
                "message": BUSY,
                "retry_after_secs": BUSY_RETRY_AFTER_SECS,
            });
            return with_retry_after((self.status(), Json(body)).into_response());
        }
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
            StoreError::Busy => Error::Busy,
            StoreError::SessionEnded(_) => Error::SessionEnded,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_busy_store_is_a_503_with_retry_after() {
        let e = Error::from(StoreError::Busy);
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(e.to_string().contains("try again in a few seconds"), "{e}");
        let r = e.api();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[RETRY_AFTER], "5");
        let body = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"], "busy");
        assert_eq!(v["retry_after_secs"], BUSY_RETRY_AFTER_SECS);
        // Other failures keep their plain answer.
        let r = Error::Unavailable("store down".into()).api();
        assert!(r.headers().get(RETRY_AFTER).is_none());
    }
}
