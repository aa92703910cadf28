//! Who pays for a request: a session's bearer macaroon, or an L402 token.

use axum::http::{HeaderMap, header};
use sluice_proto::macaroon::{self, Macaroon, MacaroonError, SessionClaims, SpendCap};

use crate::{error::ApiError, state::AppState};

/// An authenticated session credential.
#[derive(Debug, Clone)]
pub struct SessionAuth {
    /// The session it opens.
    pub session_id: String,
    /// Its verified caveats.
    pub claims: SessionClaims,
}

/// The balance a request is paid from, and what the credential allows.
#[derive(Debug, Clone)]
pub struct Payer {
    /// The session (or L402 token balance) that pays.
    pub session_id: String,
    /// Models allowed; `None` = all.
    pub models: Option<Vec<String>>,
    /// Spend caps to respect.
    pub spend_caps: Vec<SpendCap>,
    /// The L402 token id, when paid by L402.
    pub l402_token: Option<[u8; 32]>,
    /// When the presented L402 credential stops being valid (its earliest
    /// expiry caveat), if it carries one.
    pub valid_until: Option<u64>,
}

impl From<SessionAuth> for Payer {
    fn from(a: SessionAuth) -> Payer {
        Payer {
            session_id: a.session_id,
            models: a.claims.models,
            spend_caps: a.claims.spend_caps,
            l402_token: None,
            valid_until: None,
        }
    }
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

fn map_err(e: MacaroonError) -> ApiError {
    match e {
        MacaroonError::Expired { .. } => {
            ApiError::unauthorized("credential_expired", "this credential has expired")
        }
        other => {
            ApiError::unauthorized("invalid_credential", format!("invalid credential: {other}"))
        }
    }
}

/// Verify the request's session macaroon at `now_unix`.
pub fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    now_unix: u64,
) -> Result<SessionAuth, ApiError> {
    let token = bearer(headers)?;
    let m = Macaroon::from_base64(token).map_err(map_err)?;
    let session_id = macaroon::session_id_of(&m).map_err(map_err)?;
    let root = macaroon::session_root_key(&state.root_secret, &session_id);
    let claims = macaroon::verify_session_macaroon(&m, &root, now_unix).map_err(map_err)?;
    Ok(SessionAuth { session_id, claims })
}

/// Authenticate and require the credential to be for `session_id`.
pub fn authenticate_for(
    state: &AppState,
    headers: &HeaderMap,
    session_id: &str,
    now_unix: u64,
) -> Result<SessionAuth, ApiError> {
    let auth = authenticate(state, headers, now_unix)?;
    if auth.session_id != session_id {
        return Err(ApiError::forbidden(
            "session_mismatch",
            "this credential belongs to another session",
        ));
    }
    Ok(auth)
}

impl Payer {
    /// Whether the credential carries the balance's whole authority: no spend
    /// cap and no model list. Closing and refunding need it (see [`require_unrestricted`]).
    pub fn is_unrestricted(&self) -> bool {
        self.spend_caps.is_empty() && self.models.is_none()
    }
}

/// Closing a balance and claiming its refund move all of it, so only a
/// credential with no spend cap and no model list may do them: a delegate
/// given a capped credential may spend up to its cap and nothing else. A
/// credential narrowed only in expiry keeps the whole authority until it expires.
pub fn require_unrestricted(payer: &Payer) -> Result<(), ApiError> {
    if payer.is_unrestricted() {
        return Ok(());
    }
    let what = match (payer.spend_caps.is_empty(), payer.models.is_none()) {
        (false, true) => "a spend cap",
        (true, false) => "a model list",
        _ => "a spend cap and a model list",
    };
    Err(ApiError::forbidden(
        "credential_restricted",
        format!(
            "this credential carries {what}: it may spend within them but not close the balance or claim its refund; use the unrestricted credential"
        ),
    ))
}

/// Authenticate for `session_id` with the whole authority over its balance
/// (to close it or claim its refund).
pub fn authenticate_owner(
    state: &AppState,
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
    state: &AppState,
    headers: &HeaderMap,
    now_unix: u64,
) -> Result<Option<Payer>, ApiError> {
    match authorization(headers)? {
        None => Ok(None),
        // NIP-98 identifies; it does not pay.
        Some(h) if crate::identity::is_nostr_auth(h) => Ok(None),
        Some(h) if sluice_proto::l402::is_l402(h) => {
            Ok(Some(crate::l402::authenticate(state, h).await?))
        }
        Some(_) => Ok(Some(authenticate(state, headers, now_unix)?.into())),
    }
}
