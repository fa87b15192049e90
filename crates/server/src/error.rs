//! How the native API renders errors: an HTTP status that fits the failure and a JSON body
//! `{"error": {"code": "...", "message": "..."}}`.

use axum::Json;
use axum::extract::multipart::MultipartRejection;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use cella_engine::Error;
use serde::Serialize;

use crate::common::transfer::{BodyFault, UploadError};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable kind: `invalid_argument`, `not_found`, `conflict`, ...
    pub code: String,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_argument", message)
    }

    /// The answer to a request body that broke one of the server's limits: larger than
    /// `limits.max_body_bytes`, or paused longer than `limits.body_read_timeout_secs`. `None`
    /// when reading it failed for another reason.
    pub fn body_limit_exceeded(e: &(dyn std::error::Error + 'static)) -> Option<ApiError> {
        ApiError::of_body(BodyFault::of(e))
    }

    fn of_body(fault: BodyFault) -> Option<ApiError> {
        let code = match fault {
            BodyFault::TooLarge => "too_large",
            BodyFault::Stalled => "body_timeout",
            BodyFault::Broken(_) => return None,
        };
        Some(ApiError::new(fault.status(), code, fault.message()))
    }
}

impl From<UploadError> for ApiError {
    fn from(e: UploadError) -> ApiError {
        match e {
            UploadError::Sandbox(e) => e.into(),
            UploadError::Body(fault) => {
                let message = fault.message();
                ApiError::of_body(fault).unwrap_or_else(|| ApiError::bad_request(message))
            }
        }
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> ApiError {
        let code = match &e {
            Error::InvalidArgument(_) => "invalid_argument",
            Error::MissingProgram(_) => "missing_program",
            Error::NotFound { .. } => "not_found",
            Error::Conflict(_) => "conflict",
            Error::TooLarge(_) => "too_large",
            Error::Exhausted(_) => "exhausted",
            Error::Unavailable(_) => "unavailable",
            Error::Busy(_) => "busy",
            Error::Internal(_) => "internal",
        };
        log_if_fault(&e);
        ApiError::new(status_of(&e), code, e.to_string())
    }
}

/// The HTTP status that fits an engine error, on every face (each has its own body).
pub fn status_of(e: &Error) -> StatusCode {
    match e {
        Error::InvalidArgument(_) | Error::MissingProgram(_) => StatusCode::BAD_REQUEST,
        Error::NotFound { .. } => StatusCode::NOT_FOUND,
        Error::Conflict(_) => StatusCode::CONFLICT,
        Error::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        Error::Exhausted(_) => StatusCode::INSUFFICIENT_STORAGE,
        Error::Busy(_) | Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Logs an error that is the server's own fault. Busy and unavailable are the server saying
/// no under load, and the rest are the request's: each face answers those without a word.
pub fn log_if_fault(e: &Error) {
    if let Error::Internal(_) = e {
        tracing::warn!(error = %e, "request failed");
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> ApiError {
        if let Some(exceeded) = ApiError::body_limit_exceeded(&r) {
            return exceeded;
        }
        let code = match r.status() {
            StatusCode::PAYLOAD_TOO_LARGE => "too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            _ => "invalid_json",
        };
        ApiError::new(r.status(), code, r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> ApiError {
        ApiError::bad_request(r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> ApiError {
        ApiError::bad_request(r.body_text())
    }
}

impl From<MultipartRejection> for ApiError {
    fn from(r: MultipartRejection) -> ApiError {
        ApiError::bad_request(r.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
