//! The generic checks every Lightning backend must pass, and the macro that
//! expands them into named tests for one backend.

use std::str::FromStr;
use std::time::Duration;

use bitcoin::hashes::Hash as _;
use lightning_invoice::SignedRawBolt11Invoice;
use sluice_core::Msat;
use sluice_lightning::{
    Invoice, InvoiceStatus, Lightning, LightningError, Payment, PaymentHash, PaymentStatus, Settled,
};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

/// How long any check waits for something that should happen promptly.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// A backend under test plus a way to pay its invoices.
pub trait Fixture: Send + Sync {
    /// The backend under test (the receiving side).
    fn backend(&self) -> &dyn Lightning;
    /// Pay `bolt11` from the fixture's payer (the dev wallet's customer side;
    /// another wallet for real backends).
    fn pay(&self, bolt11: &str) -> impl Future<Output = Result<Payment, LightningError>> + Send;
    /// Pay `bolt11` from the same payer through a second client (another
    /// process): its payments are not serialised by the first client's locks,
    /// so two of them race at the node.
    fn pay_from_another_client(
        &self,
        bolt11: &str,
    ) -> impl Future<Output = Result<Payment, LightningError>> + Send;
    /// The backend [`Fixture::pay`] pays with (whose payments
    /// `lookup_payment` must find).
    fn payer(&self) -> &dyn Lightning;
    /// A backend whose payment of one of [`Fixture::backend`]'s invoices
    /// fails, the fee cap that makes it fail, and what its `lookup_payment`
    /// then says: `Failed`, or `NotFound` where the backend refuses the
    /// payment before starting it and keeps no record (documented per
    /// backend). Either way nothing is paid.
    fn failing_payer(&self) -> (&dyn Lightning, Msat, PaymentStatus);
    /// The shortest expiry the backend handles reliably.
    fn short_expiry(&self) -> Duration;
    /// Whether the node answers a second payment of a hash already paid (or in
    /// flight) with the first payment's success rather than a refusal — Core
    /// Lightning's `pay` does. The money still moves once; a caller relying on
    /// a refusal from a second process would be wrong, so sluice never pays
    /// one invoice from two places (a refund's claim, and an invoice proving
    /// one refund, are decided in the store first).
    fn pay_is_idempotent(&self) -> bool {
        false
    }
}

/// The amount the checks use: whole sats, as every backend must accept.
pub const AMOUNT: Msat = Msat::from_msat(21_000);

/// Wait for the settlement of `hash` on `rx`, skipping other events and lag.
pub async fn wait_settled(rx: &mut broadcast::Receiver<Settled>, hash: PaymentHash) -> Settled {
    let wait = async {
        loop {
            match rx.recv().await {
                Ok(s) if s.payment_hash == hash => return s,
                Ok(_) | Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => panic!("settlement channel closed"),
            }
        }
    };
    tokio::time::timeout(PATIENCE, wait)
        .await
        .expect("no settlement event within the patience window")
}

/// Look `hash` up until `done` accepts the status, or panic after [`PATIENCE`].
pub async fn lookup_until(
    backend: &dyn Lightning,
    hash: &PaymentHash,
    what: &str,
    done: impl Fn(&InvoiceStatus) -> bool,
) -> InvoiceStatus {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let status = backend.lookup_invoice(hash).await.unwrap();
        if done(&status) {
            return status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "invoice never became {what}; last status {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn invoice<F: Fixture>(f: &F, memo: &str) -> Invoice {
    f.backend()
        .create_invoice(AMOUNT, memo, Duration::from_secs(600))
        .await
        .unwrap()
}

pub async fn created_invoice_is_pending_and_decodes<F: Fixture>(f: F) {
    let inv = f
        .backend()
        .create_invoice(AMOUNT, "conformance: decode", Duration::from_secs(600))
        .await
        .unwrap();
    assert_eq!(
        f.backend().lookup_invoice(&inv.payment_hash).await.unwrap(),
        InvoiceStatus::Pending
    );
    assert_eq!(inv.amount, AMOUNT);

    // Decoded with lightning-invoice's raw parser: LNbits' FakeWallet omits
    // the feature bits the strict parser insists on.
    let signed = SignedRawBolt11Invoice::from_str(&inv.bolt11).expect("the bolt11 must decode");
    assert!(signed.check_signature(), "the bolt11 signature must verify");
    let raw = signed.raw_invoice();
    assert_eq!(raw.amount_pico_btc(), Some(AMOUNT.msat() * 10));
    assert_eq!(
        raw.payment_hash().unwrap().0.to_byte_array(),
        inv.payment_hash.0
    );
    assert_eq!(raw.expiry_time().unwrap().as_seconds(), 600);
    assert_eq!(inv.expires_at, raw.data.timestamp.as_unix_timestamp() + 600);
    assert_eq!(
        raw.description().unwrap().to_string(),
        "conformance: decode"
    );
}

pub async fn paying_settles_with_the_preimage<F: Fixture>(f: F) {
    let inv = invoice(&f, "conformance: pay").await;
    let payment = f.pay(&inv.bolt11).await.unwrap();
    assert_eq!(payment.payment_hash, inv.payment_hash);
    assert_eq!(
        payment.preimage.payment_hash(),
        inv.payment_hash,
        "sha256(preimage) must be the payment hash"
    );
    match f.backend().lookup_invoice(&inv.payment_hash).await.unwrap() {
        InvoiceStatus::Settled { preimage, amount } => {
            assert_eq!(preimage, payment.preimage);
            assert_eq!(amount, AMOUNT);
        }
        other => panic!("expected settled, got {other:?}"),
    }
}

pub async fn settlement_is_announced_to_subscribers<F: Fixture>(f: F) {
    let mut rx = f.backend().subscribe();
    let inv = invoice(&f, "conformance: subscribe").await;
    let payment = f.pay(&inv.bolt11).await.unwrap();
    let settled = wait_settled(&mut rx, inv.payment_hash).await;
    assert_eq!(settled.preimage, payment.preimage);
    assert_eq!(settled.amount, AMOUNT);
}

pub async fn paying_twice_fails<F: Fixture>(f: F) {
    let inv = invoice(&f, "conformance: twice").await;
    f.pay(&inv.bolt11).await.unwrap();
    let again = f.pay(&inv.bolt11).await;
    assert!(
        matches!(again, Err(LightningError::AlreadyPaid)),
        "second payment: {again:?}"
    );
}

pub async fn concurrent_payments_settle_once<F: Fixture>(f: F) {
    let inv = invoice(&f, "conformance: race").await;
    // Two clients, so the race is at the node, not in one client's lock.
    let (a, b) = tokio::join!(f.pay(&inv.bolt11), f.pay_from_another_client(&inv.bolt11));
    if f.pay_is_idempotent()
        && let (Ok(x), Ok(y)) = (&a, &b)
    {
        // One payment, reported to both: the same proof.
        assert_eq!((x.preimage, x.payment_hash), (y.preimage, y.payment_hash));
        assert!(matches!(
            f.payer().lookup_payment(&inv.payment_hash).await.unwrap(),
            PaymentStatus::Succeeded { .. }
        ));
        return;
    }
    let loser = match (&a, &b) {
        (Ok(_), Err(e)) | (Err(e), Ok(_)) => e,
        _ => panic!("exactly one of two racing payments must succeed: {a:?} / {b:?}"),
    };
    assert!(
        matches!(loser, LightningError::AlreadyPaid),
        "the losing payment: {loser:?}"
    );
    assert!(matches!(
        f.backend().lookup_invoice(&inv.payment_hash).await.unwrap(),
        InvoiceStatus::Settled { .. }
    ));
}

pub async fn unknown_hash_is_not_found<F: Fixture>(f: F) {
    let hash = PaymentHash(rand::random());
    let got = f.backend().lookup_invoice(&hash).await;
    assert!(
        matches!(got, Err(LightningError::NotFound)),
        "unknown hash: {got:?}"
    );
}

pub async fn short_expiry_becomes_expired_and_unpayable<F: Fixture>(f: F) {
    let inv = f
        .backend()
        .create_invoice(AMOUNT, "conformance: expiry", f.short_expiry())
        .await
        .unwrap();
    lookup_until(f.backend(), &inv.payment_hash, "expired", |s| {
        *s == InvoiceStatus::Expired
    })
    .await;
    let paid = f.pay(&inv.bolt11).await;
    assert!(
        matches!(paid, Err(LightningError::Expired)),
        "paying an expired invoice: {paid:?}"
    );
    assert_eq!(
        f.backend().lookup_invoice(&inv.payment_hash).await.unwrap(),
        InvoiceStatus::Expired
    );
}

pub async fn absent_subscriber_does_not_lose_the_lookup_truth<F: Fixture>(f: F) {
    // Nobody listens while the invoice is paid (an event may be dropped)...
    let inv = invoice(&f, "conformance: nobody listening").await;
    let payment = f.pay(&inv.bolt11).await.unwrap();
    // ...but a lookup still tells the truth...
    let status = lookup_until(f.backend(), &inv.payment_hash, "settled", |s| {
        matches!(s, InvoiceStatus::Settled { .. })
    })
    .await;
    assert_eq!(
        status,
        InvoiceStatus::Settled {
            preimage: payment.preimage,
            amount: AMOUNT
        }
    );
    // ...and a subscriber arriving afterwards still hears later settlements.
    let mut rx = f.backend().subscribe();
    let next = invoice(&f, "conformance: listening again").await;
    f.pay(&next.bolt11).await.unwrap();
    assert_eq!(
        wait_settled(&mut rx, next.payment_hash).await.amount,
        AMOUNT
    );
}

pub async fn payment_lookup_is_not_found_before_and_proves_the_payment_after<F: Fixture>(f: F) {
    let inv = invoice(&f, "conformance: payment lookup").await;
    assert_eq!(
        f.payer().lookup_payment(&inv.payment_hash).await.unwrap(),
        PaymentStatus::NotFound,
        "nothing was paid yet"
    );
    let payment = f.pay(&inv.bolt11).await.unwrap();
    match f.payer().lookup_payment(&inv.payment_hash).await.unwrap() {
        PaymentStatus::Succeeded { preimage, fee } => {
            assert_eq!(
                preimage.payment_hash(),
                inv.payment_hash,
                "sha256(preimage) must be the payment hash"
            );
            assert_eq!(preimage, payment.preimage);
            assert_eq!(fee, payment.fee);
        }
        other => panic!("expected succeeded, got {other:?}"),
    }
    // The receiving side issued the invoice; it did not pay it. (The dev
    // wallet is both sides: it pays its own invoices.)
    if !std::ptr::addr_eq(f.backend(), f.payer()) {
        assert_eq!(
            f.backend().lookup_payment(&inv.payment_hash).await.unwrap(),
            PaymentStatus::NotFound,
            "an invoice received is not a payment made"
        );
    }
}

pub async fn unknown_payment_hash_is_not_found<F: Fixture>(f: F) {
    let hash = PaymentHash(rand::random());
    assert_eq!(
        f.payer().lookup_payment(&hash).await.unwrap(),
        PaymentStatus::NotFound
    );
    assert_eq!(
        f.backend().lookup_payment(&hash).await.unwrap(),
        PaymentStatus::NotFound
    );
}

pub async fn a_failed_payment_is_failed_or_not_found_and_moves_no_money<F: Fixture>(f: F) {
    let inv = invoice(&f, "conformance: failed payment").await;
    let (payer, max_fee, expected) = f.failing_payer();
    assert!(
        matches!(expected, PaymentStatus::Failed | PaymentStatus::NotFound),
        "a failed payment reads as failed or not found, got {expected:?}"
    );
    assert_eq!(
        payer.lookup_payment(&inv.payment_hash).await.unwrap(),
        PaymentStatus::NotFound
    );
    let paid = payer.pay_invoice(&inv.bolt11, max_fee).await;
    assert!(paid.is_err(), "this payment must fail: {paid:?}");
    assert_eq!(
        payer.lookup_payment(&inv.payment_hash).await.unwrap(),
        expected
    );
    // Nothing moved: the invoice is still open and can be paid once.
    assert_eq!(
        f.backend().lookup_invoice(&inv.payment_hash).await.unwrap(),
        InvoiceStatus::Pending
    );
    let payment = f.pay(&inv.bolt11).await.unwrap();
    assert!(matches!(
        f.payer().lookup_payment(&inv.payment_hash).await.unwrap(),
        PaymentStatus::Succeeded { preimage, .. } if preimage == payment.preimage
    ));
}

/// Expand every generic check into a `#[tokio::test]` for the backend that
/// `$setup().await` builds (an `impl Fixture`).
macro_rules! lightning_conformance {
    ($setup:path) => {
        lightning_conformance!(@checks $setup;
            created_invoice_is_pending_and_decodes,
            paying_settles_with_the_preimage,
            settlement_is_announced_to_subscribers,
            paying_twice_fails,
            concurrent_payments_settle_once,
            unknown_hash_is_not_found,
            short_expiry_becomes_expired_and_unpayable,
            absent_subscriber_does_not_lose_the_lookup_truth,
            payment_lookup_is_not_found_before_and_proves_the_payment_after,
            unknown_payment_hash_is_not_found,
            a_failed_payment_is_failed_or_not_found_and_moves_no_money,
        );
    };
    (@checks $setup:path; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $check() {
                $crate::suite::$check($setup().await).await;
            }
        )*
    };
}
