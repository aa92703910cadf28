//! Pre-funded sessions: opened with a deposit invoice and a bearer macaroon,
//! looked up, topped up. A session becomes usable when its deposit settles
//! (the invoice is credited exactly once, by whoever sees it settled first).

use sluice_core::{SessionPolicyError, SessionState, effective_state};
use sluice_lightning::{Invoice, LightningError};
use sluice_store::{InvoicePurpose, NewInvoice, NewSession, SessionRow};

use crate::{ServiceError, Sluice};

/// A session just opened: pay `invoice`, then spend with `macaroon`.
#[derive(Debug, Clone)]
pub struct OpenedSession {
    /// The session's id.
    pub id: String,
    /// The bearer credential (base64 macaroon).
    pub macaroon: String,
    /// When the credential expires, unix seconds.
    pub credential_expires_at: u64,
    /// The deposit invoice.
    pub invoice: Invoice,
    /// The identity the session is bound to, if one was presented.
    pub pubkey: Option<String>,
}

fn policy_error(e: SessionPolicyError) -> ServiceError {
    match e {
        SessionPolicyError::DepositOutOfRange { .. } => {
            ServiceError::bad_request("amount_out_of_range", e.to_string())
        }
        SessionPolicyError::Amount(a) => {
            ServiceError::bad_request("amount_out_of_range", a.to_string())
        }
    }
}

/// The Lightning backend could not create an invoice (logged; shown generically).
pub fn lightning_error(e: LightningError) -> ServiceError {
    tracing::error!(error = %e, "lightning backend failed");
    ServiceError::unavailable(
        "lightning_unavailable",
        "the Lightning backend could not create an invoice; try again shortly",
    )
}

/// Seconds as milliseconds, saturating.
pub fn ms(secs: u64) -> i64 {
    i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX)
}

/// The store's record of an invoice the backend created for session `id`.
pub fn invoice_row(inv: &Invoice, purpose: InvoicePurpose, id: &str, now: i64) -> NewInvoice {
    NewInvoice {
        payment_hash: inv.payment_hash.to_hex(),
        bolt11: inv.bolt11.clone(),
        amount: inv.amount,
        purpose,
        session_id: id.to_owned(),
        created_at_ms: now,
        expires_at_ms: ms(inv.expires_at),
    }
}

impl Sluice {
    async fn deposit_invoice(&self, sats: u64, memo: &str) -> Result<Invoice, ServiceError> {
        let amount = self.policy.deposit(sats).map_err(policy_error)?;
        self.lightning
            .create_invoice(amount, memo, self.invoice_expiry)
            .await
            .map_err(lightning_error)
    }

    /// Open a session for a deposit of `sats`, bound to `pubkey` if given:
    /// its deposit invoice and its credential.
    pub async fn open_session(
        &self,
        sats: u64,
        pubkey: Option<String>,
    ) -> Result<OpenedSession, ServiceError> {
        let id = self.new_id("ses");
        let invoice = self
            .deposit_invoice(sats, &format!("sluice session {id} deposit"))
            .await?;
        let now = self.now_ms();
        self.store
            .create_session(
                &NewSession {
                    id: id.clone(),
                    created_at_ms: now,
                    expires_at_ms: ms(invoice.expires_at),
                    pubkey: pubkey.clone(),
                },
                &invoice_row(&invoice, InvoicePurpose::Deposit, &id, now),
            )
            .await?;
        let credential_expires_at = u64::try_from(now / 1000)
            .unwrap_or(0)
            .saturating_add(self.credential_ttl.as_secs());
        let root = sluice_proto::macaroon::session_root_key(&self.root_secret, &id);
        let macaroon =
            sluice_proto::macaroon::mint_session_macaroon(&root, &id, credential_expires_at)
                .map_err(|e| ServiceError::internal(&e))?
                .to_base64();
        tracing::info!(session_id = %id, amount_sats = sats, "session created");
        Ok(OpenedSession {
            id,
            macaroon,
            credential_expires_at,
            invoice,
            pubkey,
        })
    }

    /// A session and its state now.
    pub async fn session(&self, id: &str) -> Result<(SessionRow, SessionState), ServiceError> {
        let s = self
            .store
            .session(id)
            .await?
            .ok_or_else(|| ServiceError::not_found("session_not_found", "no such session"))?;
        let state = effective_state(s.state, s.expires_at_ms, self.now_ms());
        Ok((s, state))
    }

    /// Whether session `id` may be topped up (it exists and is not closed).
    pub async fn may_top_up(&self, id: &str) -> Result<(), ServiceError> {
        let Some(session) = self.store.session(id).await? else {
            return Err(ServiceError::not_found(
                "session_not_found",
                "no such session",
            ));
        };
        if session.state == SessionState::Closed {
            return Err(ServiceError::conflict(
                "session_closed",
                "this session was closed and its balance refunded; open a new session",
            ));
        }
        Ok(())
    }

    /// A top-up invoice of `sats` for session `id` (see [`Sluice::may_top_up`]).
    pub async fn top_up(&self, id: &str, sats: u64) -> Result<Invoice, ServiceError> {
        let invoice = self
            .deposit_invoice(sats, &format!("sluice session {id} top-up"))
            .await?;
        self.store
            .add_invoice(&invoice_row(
                &invoice,
                InvoicePurpose::Topup,
                id,
                self.now_ms(),
            ))
            .await?;
        tracing::info!(session_id = %id, amount_sats = sats, "top-up invoice created");
        Ok(invoice)
    }
}
