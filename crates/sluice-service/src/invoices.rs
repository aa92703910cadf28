//! How long an invoice is looked after.

/// How long after its expiry an invoice is still looked up: a node may settle
/// an HTLC that arrived just before the expiry a little after it, and some
/// adapters read "expired" from the invoice's expiry by this host's clock.
pub const EXPIRY_GRACE_MS: i64 = 10 * 60 * 1000;

/// Whether an invoice the backend calls expired is past its grace (see
/// [`EXPIRY_GRACE_MS`]), so it may be recorded as unpaid.
pub fn past_expiry_grace(now_ms: i64, expires_at_ms: i64) -> bool {
    now_ms >= expires_at_ms.saturating_add(EXPIRY_GRACE_MS)
}
