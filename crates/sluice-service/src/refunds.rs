//! Paying refunds: a payer claims what they are owed with an invoice of
//! their own for exactly its amount, and it is paid once.
//!
//! The claim moves the refund to `paying` (in the store, under the core's
//! state machine) before any payment is sent, so a second claim is refused
//! with the first invoice's payment hash. The payment and the record of its
//! outcome run in a tracked task, so a caller that goes away cannot leave the
//! outcome unrecorded: success → `claimed`; a definite failure → claimable
//! again; an unknown outcome stays `paying` until a look-up settles it.
//!
//! Jobs, closed sessions and L402 tokens all claim here.

use sluice_core::{Msat, RefundError, RefundEvent};
use sluice_lightning::{LightningError, PaymentStatus, bolt11};
use sluice_store::{RefundEventError, RefundRow, StoreError};

use crate::{ErrorKind, ServiceError, Sluice, log_ref};

/// What a claim came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// Paid: the preimage proves it.
    Paid {
        /// The claim invoice's payment hash.
        payment_hash: String,
        /// The payment's preimage.
        preimage: String,
        /// The invoice's amount.
        amount: Msat,
        /// The routing fee spent.
        fee: Msat,
    },
    /// The backend refused the payout before sending anything: claim again
    /// with a new invoice.
    Refused {
        /// Why, as the backend said.
        reason: String,
    },
    /// The outcome is not known yet (it will not be paid twice).
    Unknown {
        /// The claim invoice's payment hash.
        payment_hash: String,
        /// Why it is not known.
        reason: String,
    },
    /// Already claimed (or paid after all) by the invoice of `payment_hash`.
    AlreadyClaimed {
        /// The invoice that claimed it.
        payment_hash: String,
        /// Said to the caller.
        message: String,
    },
}

/// The state machine's refusal as a service error.
pub fn refund_error(e: RefundError) -> ServiceError {
    match e {
        RefundError::WrongAmount { .. } => ServiceError::bad_request("wrong_amount", e.to_string()),
        RefundError::AlreadyClaimed { .. } | RefundError::PayoutInFlight { .. } => {
            ServiceError::conflict("refund_already_claimed", e.to_string())
        }
        RefundError::Expired { .. } => {
            ServiceError::new(ErrorKind::Gone, "refund_expired", e.to_string())
        }
        RefundError::RetrySameInvoice { .. } => {
            ServiceError::conflict("retry_same_invoice", e.to_string())
        }
        other => ServiceError::bad_request("nothing_to_refund", other.to_string()),
    }
}

/// The smallest refund paid out over Lightning: `jobs.dust_msat`, or more
/// when the backend reserves a routing fee on every payment (LNbits): a
/// payout must leave an invoice of at least a sat after the reserve, or no
/// claim could ever fit it. Smaller refunds go to the pool.
pub fn dust_threshold(state: &Sluice) -> Msat {
    let one_sat = Msat::from_msat(1_000);
    let reserve = state.lightning.fee_reserve(one_sat).unwrap_or(Msat::ZERO);
    Msat::from_msat(state.jobs.dust_msat).max(Msat::from_msat(reserve.msat().saturating_add(1_000)))
}

/// The routing-fee budget a claim of a `payout` refund may leave, (least,
/// most): the most is configured (`[refunds]`), the least is what the
/// backend may spend whatever limit it is given (LNbits' reserve; zero for
/// backends that honour the limit).
pub fn fee_budget(state: &Sluice, payout: Msat) -> (Msat, Msat) {
    sluice_core::fee_budget_bounds(
        payout,
        state.lightning.fee_reserve(payout).unwrap_or(Msat::ZERO),
        state.refunds.max_fee_budget(payout),
    )
}

/// How far past `refunds.max_invoice_expiry_secs` a claim invoice may expire
/// (a wallet whose clock runs ahead).
const EXPIRY_SLACK_SECS: u64 = 600;

/// A claim invoice decoded and checked before anything changes: it states
/// its amount, expires soon enough, and was not issued by this gateway.
async fn usable_invoice(
    state: &Sluice,
    invoice: &str,
) -> Result<(bolt11::DecodedInvoice, Msat), ServiceError> {
    let inv = bolt11::decode(invoice)
        .map_err(|e| ServiceError::bad_request("invalid_invoice", e.to_string()))?;
    let amount = inv.amount.ok_or_else(|| {
        ServiceError::bad_request("invalid_invoice", "the invoice must state its amount")
    })?;
    let hash = inv.payment_hash.to_hex();
    // A few minutes' slack for the wallet's clock.
    let latest = state
        .clock
        .now_secs()
        .saturating_add(state.refunds.max_invoice_expiry_secs)
        .saturating_add(EXPIRY_SLACK_SECS);
    if inv.expires_at > latest {
        return Err(ServiceError::bad_request(
            "invoice_expiry_too_long",
            format!(
                "the invoice must expire within {} s (a failed payout may be retried only with the same invoice until it expires)",
                state.refunds.max_invoice_expiry_secs
            ),
        ));
    }
    if state.store.issued_invoice(&hash).await? {
        return Err(ServiceError::bad_request(
            "invoice_is_ours",
            "this invoice was issued by this gateway; claim with an invoice from your own wallet",
        ));
    }
    Ok((inv, amount))
}

impl Sluice {
    /// Claim refund `refund_id` with `invoice` and pay it, once.
    ///
    /// - An invoice this gateway issued (a session's or a job's) is refused: a
    ///   refund is paid to the payer's own wallet, never back into this one.
    /// - The invoice may be for less than the refund, by at most the configured
    ///   fee budget: what it leaves is the most the payout spends on routing (the
    ///   claimant bears routing fees; what the fee does not use goes to the pool).
    /// - After a payout the backend reported failed, only that same invoice is
    ///   retried until it expires; a new one is accepted after that, once a last
    ///   look-up of the old payment has found it not paid.
    pub async fn claim_refund(
        &self,
        refund_id: &str,
        invoice: &str,
    ) -> Result<ClaimOutcome, ServiceError> {
        let state = self;
        let invoice = invoice.trim();
        let (inv, amount) = usable_invoice(state, invoice).await?;
        let hash = inv.payment_hash.to_hex();
        let current = state
            .store
            .refund(refund_id)
            .await?
            .ok_or_else(|| ServiceError::not_found("refund_not_found", "no such refund"))?;
        if let Some(answer) = settle_failed_before_new_invoice(state, &current, &hash).await? {
            return Ok(answer);
        }
        let (least, most) = fee_budget(state, current.refund.payout);
        let claim = RefundEvent::Claim {
            invoice_amount: amount,
            invoice_hash: hash.clone(),
            invoice_expires_at_ms: i64::try_from(inv.expires_at.saturating_mul(1000))
                .unwrap_or(i64::MAX),
            max_fee_budget: most,
            min_fee_budget: least,
            now_ms: state.now_ms(),
        };
        let claimed = match state
            .store
            .refund_event(refund_id, claim, state.now_ms())
            .await
        {
            Ok(r) => r,
            Err(RefundEventError::Refused(RefundError::AlreadyClaimed { payment_hash })) => {
                return Ok(ClaimOutcome::AlreadyClaimed {
                    message: format!("this refund was already claimed by invoice {payment_hash}"),
                    payment_hash,
                });
            }
            Err(RefundEventError::Refused(RefundError::Expired { expires_at_ms })) => {
                // Late: the payout goes to the pool now, in its own step.
                let _ = state
                    .store
                    .refund_event(
                        refund_id,
                        RefundEvent::Expire {
                            now_ms: state.now_ms(),
                        },
                        state.now_ms(),
                    )
                    .await;
                return Err(refund_error(RefundError::Expired { expires_at_ms }));
            }
            Err(RefundEventError::Refused(e)) => return Err(refund_error(e)),
            Err(RefundEventError::Store(StoreError::NotFound)) => {
                return Err(ServiceError::not_found(
                    "refund_not_found",
                    "no such refund",
                ));
            }
            Err(RefundEventError::Store(StoreError::Conflict(m))) => {
                return Err(ServiceError::conflict("invoice_already_used", m));
            }
            Err(RefundEventError::Store(e)) => return Err(e.into()),
        };
        // Now `paying` this invoice: no other claim can start a payout.
        let max_fee = claimed.refund.payout.saturating_sub(amount);
        let inv_hash = inv.payment_hash;
        let (lightning, store, clock) = (
            state.lightning.clone(),
            state.store.clone(),
            state.clock.clone(),
        );
        let (rid, bolt11) = (refund_id.to_owned(), invoice.to_owned());
        let handle = state.tasks.spawn(async move {
            let paid = lightning.pay_invoice(&bolt11, max_fee).await;
            // A refusal is believed only when the backend also has no record of
            // an outgoing payment (its error text is not proof: LNbits' is matched
            // by words).
            let refused = match &paid {
                Err(LightningError::InvalidInvoice(_) | LightningError::Expired | LightningError::InsufficientBalance | LightningError::NotFound) => {
                    matches!(
                        lightning.lookup_payment(&inv_hash).await,
                        Ok(PaymentStatus::NotFound)
                    )
                }
                _ => false,
            };
            let (event, outcome) = match paid {
                Ok(p) => (
                    RefundEvent::PayoutSucceeded { payment_hash: hash.clone(), preimage: p.preimage.to_hex(), fee: p.fee },
                    ClaimOutcome::Paid { payment_hash: hash, preimage: p.preimage.to_hex(), amount, fee: p.fee },
                ),
                // Refused before anything was sent: any invoice may be tried next.
                Err(e) if refused => (
                    RefundEvent::PayoutRefused { payment_hash: hash.clone() },
                    ClaimOutcome::Refused { reason: e.to_string() },
                ),
                // Already paid (by this gateway, or by someone else), a backend
                // error, a timeout: only a look-up can tell what happened.
                Err(e) => (
                    RefundEvent::PayoutUnknown { payment_hash: hash.clone() },
                    ClaimOutcome::Unknown { payment_hash: hash, reason: e.to_string() },
                ),
            };
            if let Err(e) = store.refund_event(&rid, event, clock.now_ms()).await {
                tracing::error!(refund = %log_ref(&rid), error = %e, "could not record a payout outcome");
            }
            outcome
        });
        handle.await.map_err(|e| ServiceError::internal(&e))
    }

    /// Close an L402 token's balance (`session_id`, authorised by its
    /// unrestricted credential) and claim its refund with `invoice`: a claim
    /// that cannot succeed is refused before the token is closed for it.
    pub async fn claim_l402_refund(
        &self,
        session_id: &str,
        invoice: &str,
        refund_id: Option<&str>,
    ) -> Result<ClaimOutcome, ServiceError> {
        let state = self;
        let (_, amount) = usable_invoice(state, invoice.trim()).await?;
        if refund_id.is_none()
            && let Some(session) = state.store.session(session_id).await?
            && session.held == Msat::ZERO
        {
            let split = sluice_core::split_refund(session.balance, dust_threshold(state));
            if !split.is_dust() {
                let (least, most) = fee_budget(state, split.payout);
                sluice_core::check_claim_amount(split.payout, amount, least, most)
                    .map_err(refund_error)?;
            }
        }
        let refund = match close(state, session_id).await? {
            Some(r) if refund_id.is_none_or(|w| w == r.id) => r,
            _ => refund_to_claim(state, session_id, refund_id).await?,
        };
        state.claim_refund(&refund.id, invoice).await
    }
}

/// Before a claim with a new invoice after a payout the backend reported
/// failed (and whose invoice has expired), look the old payment up once
/// more: a payment reported failed that in fact arrived is recorded as the
/// refund's payout, and one still in flight blocks the new claim.
async fn settle_failed_before_new_invoice(
    state: &Sluice,
    r: &RefundRow,
    new_hash: &str,
) -> Result<Option<ClaimOutcome>, ServiceError> {
    let Some(failed) = r.refund.failed_hash.clone() else {
        return Ok(None);
    };
    if failed == new_hash
        || r.refund.state != sluice_core::RefundState::Pending
        || state.now_ms() < r.refund.invoice_expires_at_ms
    {
        // Same invoice, or not yet expired: the state machine decides.
        return Ok(None);
    }
    let h =
        sluice_lightning::PaymentHash::from_hex(&failed).map_err(|e| ServiceError::internal(&e))?;
    match state.lightning.lookup_payment(&h).await {
        Ok(PaymentStatus::Succeeded { preimage, fee }) => {
            let event = RefundEvent::PayoutSucceeded {
                payment_hash: failed.clone(),
                preimage: preimage.to_hex(),
                fee,
            };
            if let Err(e) = state.store.refund_event(&r.id, event, state.now_ms()).await {
                tracing::error!(refund = %log_ref(&r.id), error = %e, "could not record a late payout");
            }
            Ok(Some(ClaimOutcome::AlreadyClaimed {
                message: format!("this refund was paid after all, by invoice {failed}"),
                payment_hash: failed,
            }))
        }
        Ok(PaymentStatus::Pending) => Err(ServiceError::conflict(
            "payout_in_flight",
            format!("the payout to invoice {failed} may still arrive; try again later"),
        )),
        Ok(PaymentStatus::Failed | PaymentStatus::NotFound) => Ok(None),
        Err(e) => {
            tracing::warn!(refund = %log_ref(&r.id), error = %e, "could not look a failed payout up");
            Err(ServiceError::unavailable(
                "lightning_unavailable",
                "the Lightning backend could not be asked about the earlier payout; try again shortly",
            ))
        }
    }
}

/// Settle payouts whose outcome was never recorded (unknown, or the gateway
/// stopped mid-payout) by looking the payment up: paid → `claimed`; failed or
/// never attempted → claimable again (the same invoice until it expires);
/// still in flight → look again later. Only payouts quiet for the staleness
/// window are looked at, so a payment still being sent is not mistaken for
/// one that was never made. A look-up counts only a payment this backend
/// made: an invoice of the same hash that was paid to it is not one.
pub async fn reconcile(state: &Sluice) {
    let Ok(paying) = state
        .store
        .paying_refunds(state.stale_before(state.now_ms()))
        .await
    else {
        return;
    };
    for r in paying {
        let Some(hash) = r.refund.payment_hash.clone() else {
            continue;
        };
        let Ok(h) = sluice_lightning::PaymentHash::from_hex(&hash) else {
            continue;
        };
        let event = match state.lightning.lookup_payment(&h).await {
            Ok(PaymentStatus::Succeeded { preimage, fee }) => RefundEvent::PayoutSucceeded {
                payment_hash: hash,
                preimage: preimage.to_hex(),
                fee,
            },
            Ok(PaymentStatus::Failed | PaymentStatus::NotFound) => {
                RefundEvent::PayoutFailed { payment_hash: hash }
            }
            Ok(PaymentStatus::Pending) => continue,
            Err(e) => {
                tracing::warn!(refund = %log_ref(&r.id), error = %e, "could not look a payout up");
                continue;
            }
        };
        match state.store.refund_event(&r.id, event, state.now_ms()).await {
            Ok(row) => {
                tracing::info!(refund = %log_ref(&r.id), state = row.refund.state.as_str(), "payout reconciled")
            }
            Err(e) => {
                tracing::warn!(refund = %log_ref(&r.id), error = %e, "could not record a reconciled payout")
            }
        }
    }
}

fn refund_expiry(state: &Sluice) -> i64 {
    state.now_ms().saturating_add(
        i64::try_from(state.jobs.refund_expiry_secs.saturating_mul(1000)).unwrap_or(i64::MAX),
    )
}

/// Close a balance (session or L402 token) and return its refund, if any.
pub async fn close(state: &Sluice, session_id: &str) -> Result<Option<RefundRow>, ServiceError> {
    match state
        .store
        .close_session(
            session_id,
            state.now_ms(),
            refund_expiry(state),
            dust_threshold(state),
        )
        .await
    {
        Ok(r) => Ok(r),
        Err(StoreError::Conflict(m)) => Err(ServiceError::conflict("cannot_close", m)),
        Err(StoreError::NotFound) => Err(ServiceError::not_found(
            "session_not_found",
            "no such session",
        )),
        Err(e) => Err(e.into()),
    }
}

/// The refund of a closed balance to claim: the one named, else the only one
/// that can still be claimed (or is being paid), else the newest (whose state
/// says why it cannot be claimed). A balance closed, revived by a late
/// payment and closed again owes several; each is claimed by its id.
pub async fn refund_to_claim(
    state: &Sluice,
    owner: &str,
    wanted: Option<&str>,
) -> Result<RefundRow, ServiceError> {
    let all = state.store.refunds_for(owner).await?;
    if let Some(id) = wanted {
        return all.into_iter().find(|r| r.id == id).ok_or_else(|| {
            ServiceError::not_found(
                "refund_not_found",
                "this balance owes no refund with that id",
            )
        });
    }
    let open: Vec<&RefundRow> = all
        .iter()
        .filter(|r| {
            matches!(
                r.refund.state,
                sluice_core::RefundState::Pending | sluice_core::RefundState::Paying
            )
        })
        .collect();
    match open.as_slice() {
        [one] => return Ok((*one).clone()),
        [] => {}
        several => {
            let ids: Vec<&str> = several.iter().map(|r| r.id.as_str()).collect();
            return Err(ServiceError::bad_request(
                "refund_id_required",
                format!(
                    "this balance owes {} refunds; name the one to claim with refund_id: {}",
                    ids.len(),
                    ids.join(", ")
                ),
            ));
        }
    }
    all.into_iter().next().ok_or_else(|| {
        ServiceError::bad_request(
            "nothing_to_refund",
            "nothing is owed; close the balance first (POST …/close)",
        )
    })
}
