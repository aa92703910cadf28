//! The one API error type: maps every failure to a status code and the
//! OpenAI error shape `{"error": {"message", "type", "code"}}`, and never
//! shows database or upstream internals to clients.

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::json;

/// An error answered to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// OpenAI error `type`.
    pub kind: &'static str,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// Human-readable message (safe to show).
    pub message: String,
}

impl ApiError {
    fn new(
        status: StatusCode,
        kind: &'static str,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        ApiError {
            status,
            kind,
            code,
            message: message.into(),
        }
    }

    /// 409: the request conflicts with what is already recorded.
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "invalid_request_error", code, message)
    }

    /// 400 with a code.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            code,
            message,
        )
    }

    /// 401: no usable credential.
    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            code,
            message,
        )
    }

    /// 403: a valid credential that does not allow this.
    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "permission_error", code, message)
    }

    /// 402: pay first.
    pub fn payment_required(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::PAYMENT_REQUIRED,
            "insufficient_quota",
            code,
            message,
        )
    }

    /// 404.
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found_error", code, message)
    }

    /// 413.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "body_too_large",
            message,
        )
    }

    /// 429.
    pub fn rate_limited(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "rate_limited",
            message,
        )
    }

    /// 502: the upstream failed.
    pub fn upstream(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_GATEWAY, "upstream_error", code, message)
    }

    /// 504: the upstream timed out.
    pub fn upstream_timeout(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_error",
            "upstream_timeout",
            message,
        )
    }

    /// 503: a dependency (Lightning backend) is unavailable.
    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            code,
            message,
        )
    }

    /// 500: logged with its cause, shown generically.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "internal_error",
            "internal error; see the gateway's logs",
        )
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        json!({"error": {"message": self.message, "type": self.kind, "code": self.code}})
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, Json(self.body())).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"sluice\""),
            );
        }
        resp
    }
}

impl From<sluice_store::StoreError> for ApiError {
    /// A database that refuses work is a 503 the client may retry (nothing
    /// was charged that could not be recorded); anything else is internal.
    fn from(e: sluice_store::StoreError) -> Self {
        match e {
            sluice_store::StoreError::Database(_) | sluice_store::StoreError::Released { .. } => {
                tracing::error!(error = %e, "the database failed");
                let mut err = ApiError::unavailable(
                    "store_unavailable",
                    "the gateway cannot record this right now; nothing was charged; try again shortly",
                );
                err.kind = "server_error";
                err
            }
            other => ApiError::internal(&other),
        }
    }
}

impl From<sluice_service::ServiceError> for ApiError {
    /// Each kind of service failure has one status and one OpenAI error `type`.
    fn from(e: sluice_service::ServiceError) -> Self {
        use sluice_service::ErrorKind as K;
        let (status, kind) = match e.kind {
            K::Invalid => (StatusCode::BAD_REQUEST, "invalid_request_error"),
            K::Conflict => (StatusCode::CONFLICT, "invalid_request_error"),
            K::Unauthenticated => (StatusCode::UNAUTHORIZED, "authentication_error"),
            K::Forbidden => (StatusCode::FORBIDDEN, "permission_error"),
            K::PaymentRequired => (StatusCode::PAYMENT_REQUIRED, "insufficient_quota"),
            K::NotFound => (StatusCode::NOT_FOUND, "not_found_error"),
            K::Gone => (StatusCode::GONE, "invalid_request_error"),
            K::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "invalid_request_error"),
            K::RateLimited => (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error"),
            K::Upstream => (StatusCode::BAD_GATEWAY, "upstream_error"),
            K::UpstreamTimeout => (StatusCode::GATEWAY_TIMEOUT, "upstream_error"),
            K::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "server_error"),
            K::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "server_error"),
        };
        ApiError::new(status, kind, e.code, e.message)
    }
}

/// A path segment that could not be read (e.g. `%ff`, not UTF-8), in the API's error shape.
pub fn path_error(r: axum::extract::rejection::PathRejection) -> ApiError {
    ApiError::bad_request("invalid_path", format!("invalid path: {}", r.body_text()))
}

/// Whether a body could not be read because it stalled past the body timeout.
fn body_timed_out(e: &axum::extract::rejection::BytesRejection) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        source = err.source();
    }
    false
}

impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(r: axum::extract::rejection::JsonRejection) -> Self {
        use axum::extract::rejection::JsonRejection as J;
        match r {
            J::JsonSyntaxError(e) => {
                ApiError::bad_request("invalid_json", format!("malformed JSON: {}", e.body_text()))
            }
            J::JsonDataError(e) => ApiError::bad_request("invalid_request", e.body_text()),
            J::MissingJsonContentType(_) => ApiError::bad_request(
                "invalid_content_type",
                "expected Content-Type: application/json",
            ),
            J::BytesRejection(e) if body_timed_out(&e) => ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "invalid_request_error",
                "body_timeout",
                "the request body did not arrive in time",
            ),
            J::BytesRejection(_) => ApiError::too_large("request body too large or unreadable"),
            other => ApiError::bad_request("invalid_request", other.body_text()),
        }
    }
}
