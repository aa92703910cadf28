//! Who pays for a request, read from its headers: a session's bearer
//! macaroon (verified by the service), or an L402 token.

use axum::http::{HeaderMap, header};
pub use sluice_service::auth::{Payer, SessionAuth, require_unrestricted};

use sluice_service::Sluice;

use crate::error::ApiError;

/// Whether an `Authorization` value uses the `Nostr` scheme (NIP-98).
pub fn is_nostr_auth(value: &str) -> bool {
    value
        .split_once(' ')
        .is_some_and(|(scheme, _)| scheme.eq_ignore_ascii_case("nostr"))
}

/// The `Authorization` header, if any.
pub fn authorization(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    headers
        .get(header::AUTHORIZATION)
        .map(|h| {
            h.to_str().map_err(|_| {
                ApiError::unauthorized("invalid_credential", "malformed Authorization header")
            })
        })
        .transpose()
}

/// The bearer token from `Authorization`.
fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let s = authorization(headers)?.ok_or_else(|| {
        ApiError::unauthorized(
            "missing_credential",
            "missing Authorization: Bearer <macaroon>; create a session with POST /v1/sessions",
        )
    })?;
    let (scheme, token) = s.split_once(' ').unwrap_or((s, ""));
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(ApiError::unauthorized(
            "invalid_credential",
            "expected Authorization: Bearer <macaroon>",
        ));
    }
    Ok(token.trim())
}

/// Verify the request's session macaroon at `now_unix`.
pub fn authenticate(
    state: &Sluice,
    headers: &HeaderMap,
    now_unix: u64,
) -> Result<SessionAuth, ApiError> {
    Ok(state.verify_session(bearer(headers)?, now_unix)?)
}

/// Authenticate and require the credential to be for `session_id`.
pub fn authenticate_for(
    state: &Sluice,
    headers: &HeaderMap,
    session_id: &str,
    now_unix: u64,
) -> Result<SessionAuth, ApiError> {
    Ok(state.verify_session_for(bearer(headers)?, session_id, now_unix)?)
}

/// Authenticate for `session_id` with the whole authority over its balance
/// (to close it or claim its refund).
pub fn authenticate_owner(
    state: &Sluice,
    headers: &HeaderMap,
    session_id: &str,
    now_unix: u64,
) -> Result<SessionAuth, ApiError> {
    let auth = authenticate_for(state, headers, session_id, now_unix)?;
    require_unrestricted(&auth.clone().into())?;
    Ok(auth)
}

/// The payer of a paid request: `None` when no credential was sent.
pub async fn payer(
    state: &Sluice,
    headers: &HeaderMap,
    now_unix: u64,
) -> Result<Option<Payer>, ApiError> {
    match authorization(headers)? {
        None => Ok(None),
        // NIP-98 identifies; it does not pay.
        Some(h) if is_nostr_auth(h) => Ok(None),
        Some(h) if sluice_proto::l402::is_l402(h) => Ok(Some(state.l402_authenticate(h).await?)),
        Some(_) => Ok(Some(authenticate(state, headers, now_unix)?.into())),
    }
}
