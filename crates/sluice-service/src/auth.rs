//! Who pays for a request: a session's bearer macaroon verified, and what a
//! credential allows.

use sluice_proto::macaroon::{self, Macaroon, MacaroonError, SessionClaims, SpendCap};

use crate::{ServiceError, Sluice};

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

fn map_err(e: MacaroonError) -> ServiceError {
    match e {
        MacaroonError::Expired { .. } => {
            ServiceError::unauthorized("credential_expired", "this credential has expired")
        }
        other => {
            ServiceError::unauthorized("invalid_credential", format!("invalid credential: {other}"))
        }
    }
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
pub fn require_unrestricted(payer: &Payer) -> Result<(), ServiceError> {
    if payer.is_unrestricted() {
        return Ok(());
    }
    let what = match (payer.spend_caps.is_empty(), payer.models.is_none()) {
        (false, true) => "a spend cap",
        (true, false) => "a model list",
        _ => "a spend cap and a model list",
    };
    Err(ServiceError::forbidden(
        "credential_restricted",
        format!(
            "this credential carries {what}: it may spend within them but not close the balance or claim its refund; use the unrestricted credential"
        ),
    ))
}

impl Sluice {
    /// Verify a session macaroon (base64) at `now_unix`.
    pub fn verify_session(&self, token: &str, now_unix: u64) -> Result<SessionAuth, ServiceError> {
        let m = Macaroon::from_base64(token).map_err(map_err)?;
        let session_id = macaroon::session_id_of(&m).map_err(map_err)?;
        let root = macaroon::session_root_key(&self.root_secret, &session_id);
        let claims = macaroon::verify_session_macaroon(&m, &root, now_unix).map_err(map_err)?;
        Ok(SessionAuth { session_id, claims })
    }

    /// [`Sluice::verify_session`], requiring the credential to be for `session_id`.
    pub fn verify_session_for(
        &self,
        token: &str,
        session_id: &str,
        now_unix: u64,
    ) -> Result<SessionAuth, ServiceError> {
        let auth = self.verify_session(token, now_unix)?;
        if auth.session_id != session_id {
            return Err(ServiceError::forbidden(
                "session_mismatch",
                "this credential belongs to another session",
            ));
        }
        Ok(auth)
    }
}
