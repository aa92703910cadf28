//! The service's one error type: what went wrong, in domain terms, with a
//! stable machine-readable code and a message safe to show a client. The
//! HTTP gateway maps each [`ErrorKind`] to a status code; nothing here knows
//! about HTTP.

/// What kind of failure, as a caller acts on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is malformed or asks for something not allowed.
    Invalid,
    /// The request conflicts with what is already recorded.
    Conflict,
    /// No usable credential.
    Unauthenticated,
    /// A valid credential that does not allow this.
    Forbidden,
    /// Pay first.
    PaymentRequired,
    /// No such thing.
    NotFound,
    /// It was there and is no more (an offer that lapsed).
    Gone,
    /// The request is larger than allowed.
    TooLarge,
    /// Too many requests from this caller.
    RateLimited,
    /// The upstream failed.
    Upstream,
    /// The upstream did not answer in time.
    UpstreamTimeout,
    /// A dependency (the database, the Lightning backend) is unavailable.
    Unavailable,
    /// A bug or an unexpected failure (logged with its cause).
    Internal,
}

/// A failure of a service call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ServiceError {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// Human-readable message (safe to show).
    pub message: String,
}

impl ServiceError {
    /// A failure of `kind`.
    pub fn new(kind: ErrorKind, code: &'static str, message: impl Into<String>) -> Self {
        ServiceError {
            kind,
            code,
            message: message.into(),
        }
    }

    /// The request conflicts with what is already recorded.
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, code, message)
    }

    /// The request is malformed or not allowed.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, code, message)
    }

    /// No usable credential.
    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unauthenticated, code, message)
    }

    /// A valid credential that does not allow this.
    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Forbidden, code, message)
    }

    /// Pay first.
    pub fn payment_required(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::PaymentRequired, code, message)
    }

    /// No such thing.
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, code, message)
    }

    /// Larger than allowed.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::TooLarge, "body_too_large", message)
    }

    /// Too many requests.
    pub fn rate_limited(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::RateLimited, "rate_limited", message)
    }

    /// The upstream failed.
    pub fn upstream(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Upstream, code, message)
    }

    /// The upstream timed out.
    pub fn upstream_timeout(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::UpstreamTimeout, "upstream_timeout", message)
    }

    /// A dependency is unavailable.
    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, code, message)
    }

    /// Logged with its cause, shown generically.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            ErrorKind::Internal,
            "internal_error",
            "internal error; see the gateway's logs",
        )
    }
}

impl From<sluice_store::StoreError> for ServiceError {
    /// A database that refuses work is unavailable, and the caller may retry
    /// (nothing was charged that could not be recorded); anything else is internal.
    fn from(e: sluice_store::StoreError) -> Self {
        match e {
            sluice_store::StoreError::Database(_) | sluice_store::StoreError::Released { .. } => {
                tracing::error!(error = %e, "the database failed");
                ServiceError::unavailable(
                    "store_unavailable",
                    "the gateway cannot record this right now; nothing was charged; try again shortly",
                )
            }
            other => ServiceError::internal(&other),
        }
    }
}
