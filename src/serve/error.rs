//! HTTP errors: what a failed request gets back (`{"error": "...", "status": N}`), and the one
//! place that decides which status a library error becomes ([`status_for`]).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Where in a request a library error happened: the same error kind can be the client's
/// fault in one place (an image it sent does not decode) and the server's in another (a
/// stored class file does not decode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Decoding the images of the request.
    Decode,
    /// Scoring decoded images against a class that exists.
    Score,
    /// Registering a class from the request's images.
    Register,
}

/// The HTTP status of a library error at `stage`. The only mapping from [`crate::Error`] to
/// HTTP in the server.
///
/// The routes also answer 404 for an unknown class before anything is queued (from the
/// model's class list); [`crate::Error::ClassNotRegistered`] maps to 404 too, for a class
/// that disappears in between. A non-finite value is always 500 (a broken model or input the
/// server cannot tell apart), never a verdict.
pub fn status_for(stage: Stage, err: &crate::Error) -> StatusCode {
    use crate::Error as E;
    match (stage, err) {
        (_, E::NonFinite { .. }) => StatusCode::INTERNAL_SERVER_ERROR,
        (_, E::ClassNotRegistered { .. }) => StatusCode::NOT_FOUND,
        // An image the request sent that cannot be used (does not decode, bad buffer).
        (_, E::BadImage { .. }) => StatusCode::BAD_REQUEST,
        // Everything that goes wrong decoding the request's own bytes is the request's fault.
        (Stage::Decode, _) => StatusCode::BAD_REQUEST,
        // A bad argument of a registration (class name, too few images, mask ratio).
        (Stage::Register, E::Invalid(_)) => StatusCode::BAD_REQUEST,
        // The model directory, the weights or the device failed: the server's side.
        (Stage::Score | Stage::Register, _) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A failed request: status, a one-line reason and, for 503, when to retry.
#[derive(Clone, Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// Seconds for the `Retry-After` header.
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    /// A library error at `stage`, with the status [`status_for`] gives it.
    pub fn from_pmad(stage: Stage, err: &crate::Error) -> ApiError {
        ApiError::new(status_for(stage, err), err.to_string())
    }

    /// 503 with `Retry-After` (queue full, a registration running, shutting down).
    pub fn unavailable(message: impl Into<String>, retry_after: u32) -> ApiError {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: message.into(),
            retry_after: Some(retry_after),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": self.message, "status": self.status.as_u16()});
        let mut r = (self.status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;

    #[test]
    fn statuses_by_stage_and_kind() {
        let nan = Error::NonFinite {
            class: "c".into(),
            image: 0,
            stage: "map",
            value: f32::NAN,
        };
        for s in [Stage::Decode, Stage::Score, Stage::Register] {
            assert_eq!(status_for(s, &nan), StatusCode::INTERNAL_SERVER_ERROR);
        }
        let bad = Error::format("image 0 of the request", "cannot decode image");
        assert_eq!(status_for(Stage::Decode, &bad), StatusCode::BAD_REQUEST);
        assert_eq!(
            status_for(Stage::Score, &bad),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        // The typed errors map the same at every stage.
        let unknown = Error::ClassNotRegistered {
            class: "c".into(),
            model_dir: "model".into(),
            registered: vec![],
        };
        let image = Error::BadImage {
            origin: crate::error::ImageOrigin::Batch(1),
            reason: "a buffer shorter than its size".into(),
        };
        for s in [Stage::Decode, Stage::Score, Stage::Register] {
            assert_eq!(status_for(s, &unknown), StatusCode::NOT_FOUND);
            assert_eq!(status_for(s, &image), StatusCode::BAD_REQUEST);
        }
        let arg = Error::invalid("registration needs at least 2 normal images");
        assert_eq!(status_for(Stage::Register, &arg), StatusCode::BAD_REQUEST);
        assert_eq!(
            status_for(Stage::Score, &arg),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
