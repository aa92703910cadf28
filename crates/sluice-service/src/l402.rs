//! L402 pay-per-request: a challenge's invoice and token, and a paid token
//! verified.
//!
//! A token is a prepaid balance: it is stored as a session (`l402_<token id>`)
//! so holds, settlement and the ledger are exactly those of sessions. What a
//! request does not use stays on the token for the next one. A token whose
//! balance is too low gets a fresh challenge whose invoice tops up the same
//! token, with a new macaroon for the new payment hash (so clients that
//! retry with the new invoice's preimage, as deployed clients do, work
//! unchanged). Root keys are random per macaroon and stored under
//! `sha256(identifier)`; deleting one revokes that macaroon.

use sluice_core::Msat;
use sluice_lightning::Invoice;
use sluice_proto::{
    l402::{self, Identifier, L402Error},
    macaroon::MacaroonError,
};
use sluice_store::{InvoicePurpose, InvoiceState, NewSession, StoreError};

use crate::{
    ServiceError, Sluice, TOKEN_SESSION_PREFIX,
    auth::Payer,
    sessions::{invoice_row, lightning_error, ms},
};

/// The service name in `services=` and the prefix of `_capabilities`/`_valid_until`.
pub const SERVICE: &str = "sluice";
/// The capability chat completions need.
pub const CAPABILITY_CHAT: &str = "chat";

/// The balance (session) id of a token.
pub fn token_session(token_id: &[u8; 32]) -> String {
    format!("{TOKEN_SESSION_PREFIX}{}", hex::encode(token_id))
}

/// The store name of a macaroon's root key.
pub fn root_key_name(id: &Identifier) -> String {
    format!("l402:{}", hex::encode(id.key_id()))
}

fn unix(now_ms: i64) -> u64 {
    u64::try_from(now_ms / 1000).unwrap_or(0)
}

/// A challenge issued: pay `invoice`, then retry with `macaroon` and the preimage.
#[derive(Debug, Clone)]
pub struct Challenge {
    /// The token's balance (session) id.
    pub session_id: String,
    /// The invoice (a new token's deposit, or a top-up of the token).
    pub invoice: Invoice,
    /// The whole sats asked for.
    pub sats: u64,
    /// The macaroon and when it stops being valid (unix seconds); `None`
    /// for a top-up asked for through a restricted credential.
    pub macaroon: Option<(String, u64)>,
}

fn l402_error(e: L402Error) -> ServiceError {
    match e {
        L402Error::Expired { .. } => {
            ServiceError::unauthorized("credential_expired", "this L402 token has expired")
        }
        L402Error::Caveat(m) => ServiceError::forbidden("caveat_not_satisfied", m),
        L402Error::Macaroon(MacaroonError::BadSignature) => {
            ServiceError::unauthorized("invalid_credential", "invalid L402 token: bad signature")
        }
        other => {
            ServiceError::unauthorized("invalid_credential", format!("invalid L402 token: {other}"))
        }
    }
}

impl Sluice {
    /// Issue a challenge for `amount`: a new token (bound to `pubkey`, the
    /// identity presented, if any), or a top-up of `token`.
    ///
    /// A top-up asked for through a **restricted** credential (a spend cap
    /// or a model list: a delegate's) mints no new macaroon: a fresh one
    /// would carry none of the delegate's caveats and so hand it the whole
    /// balance. Its invoice still tops up the token, and the delegate
    /// retries with the credential it has. A top-up macaroon never outlives
    /// the credential that asked for it (an expiry caveat narrows it too).
    pub async fn l402_challenge(
        &self,
        amount: Msat,
        token: Option<[u8; 32]>,
        pubkey: Option<String>,
        presented: Option<&Payer>,
    ) -> Result<Challenge, ServiceError> {
        let restricted = presented.is_some_and(|p| !p.is_unrestricted());
        let sats = amount.to_sats_ceil().max(1);
        let amount = Msat::from_sats(sats).map_err(|e| ServiceError::internal(&e))?;
        let invoice = self
            .lightning
            .create_invoice(amount, "sluice L402 token", self.invoice_expiry)
            .await
            .map_err(lightning_error)?;
        let now = self.now_ms();
        let token_id = token.unwrap_or_else(|| {
            let mut id = [0u8; 32];
            self.ids.fill(&mut id);
            id
        });
        let session_id = token_session(&token_id);
        match token {
            None => {
                let row = invoice_row(&invoice, InvoicePurpose::Deposit, &session_id, now);
                self.store
                    .create_session(
                        &NewSession {
                            id: session_id.clone(),
                            created_at_ms: now,
                            expires_at_ms: ms(invoice.expires_at),
                            pubkey,
                        },
                        &row,
                    )
                    .await?;
            }
            Some(_) => {
                self.store
                    .add_invoice(&invoice_row(
                        &invoice,
                        InvoicePurpose::Topup,
                        &session_id,
                        now,
                    ))
                    .await?
            }
        }
        if restricted {
            tracing::info!(token = %session_id, amount_sats = sats, "L402 top-up invoice issued to a restricted credential");
            return Ok(Challenge {
                session_id,
                invoice,
                sats,
                macaroon: None,
            });
        }
        let id = Identifier {
            payment_hash: invoice.payment_hash.0,
            token_id,
        };
        let root = self
            .store
            .secret(&root_key_name(&id), sluice_env::secret())
            .await?;
        let valid_until = unix(now)
            .saturating_add(self.l402.valid_secs)
            .min(presented.and_then(|p| p.valid_until).unwrap_or(u64::MAX));
        let mac = l402::mint(&root, &id, SERVICE, &[CAPABILITY_CHAT], valid_until).to_base64();
        tracing::info!(token = %session_id, amount_sats = sats, topup = token.is_some(), "L402 challenge issued");
        Ok(Challenge {
            session_id,
            invoice,
            sats,
            macaroon: Some((mac, valid_until)),
        })
    }

    /// Verify `Authorization: L402|LSAT <macaroon>:<preimage>` in Aperture's
    /// order, and credit the invoice the preimage proves paid (idempotent).
    pub async fn l402_authenticate(&self, header: &str) -> Result<Payer, ServiceError> {
        let (m, preimage) = l402::parse_authorization(header).map_err(l402_error)?;
        let id = l402::check_preimage(&m, &preimage).map_err(l402_error)?;
        let root = self
            .store
            .secret_get(&root_key_name(&id))
            .await?
            .ok_or_else(|| l402_error(L402Error::UnknownToken))?;
        let now = self.now_ms();
        let claims =
            l402::verify(&m, id, &root, SERVICE, CAPABILITY_CHAT, unix(now)).map_err(l402_error)?;
        let session_id = token_session(&id.token_id);
        // Only the payer (and we) can know the preimage once the invoice is paid:
        // it proves payment, so the token is usable even before the backend's
        // settlement event arrives.
        let hash = hex::encode(id.payment_hash);
        match self.store.invoice(&hash).await? {
            None => return Err(l402_error(L402Error::UnknownToken)),
            Some(inv) if inv.state == InvoiceState::Settled => {}
            // A read first: only the first use of each payment needs a write.
            Some(_) => {
                match self
                    .store
                    .credit_invoice(
                        &hash,
                        &hex::encode(preimage),
                        now,
                        &self.policy_for(&session_id),
                    )
                    .await
                {
                    Ok(_) => {}
                    Err(StoreError::NotFound) => return Err(l402_error(L402Error::UnknownToken)),
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(Payer {
            session_id,
            models: claims.models,
            spend_caps: claims.spend_caps,
            l402_token: Some(id.token_id),
            valid_until: claims.valid_until,
        })
    }
}
