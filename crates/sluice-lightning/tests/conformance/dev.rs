//! The dev wallet under the conformance suite, plus what only it promises:
//! each of its two sides pays nothing but the other side's invoices, it
//! survives a reopen over the same store, and it says it is not real money.

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bitcoin::hashes::{Hash as _, sha256};
use bitcoin::secp256k1::{Secp256k1, SecretKey};
use lightning_invoice::{Bolt11Invoice, Currency, InvoiceBuilder, PaymentSecret};
use sluice_core::Msat;
use sluice_lightning::dev::{DevWallet, MemoryDevWalletStore};
use sluice_lightning::{InvoiceStatus, Lightning, LightningError, Payment, PaymentStatus};
use tokio::sync::broadcast::error::TryRecvError;

use crate::suite::{AMOUNT, Fixture};

pub struct DevFixture {
    /// The gateway's side (the backend under test).
    wallet: DevWallet,
    /// The customer's side of the same dev network: it pays `wallet`'s invoices.
    customer: DevWallet,
    /// Another dev wallet: it cannot pay `wallet`'s invoices.
    stranger: DevWallet,
}

impl Fixture for DevFixture {
    fn backend(&self) -> &dyn Lightning {
        &self.wallet
    }

    async fn pay(&self, bolt11: &str) -> Result<Payment, LightningError> {
        self.customer.pay_invoice(bolt11, Msat::ZERO).await
    }

    async fn pay_from_another_client(&self, bolt11: &str) -> Result<Payment, LightningError> {
        // Another handle on the same customer wallet and store.
        self.wallet
            .counterparty()
            .pay_invoice(bolt11, Msat::ZERO)
            .await
    }

    fn payer(&self) -> &dyn Lightning {
        &self.customer
    }

    /// Another dev wallet refuses the invoice before paying anything, and
    /// has no record of it: `NotFound`.
    fn failing_payer(&self) -> (&dyn Lightning, Msat, PaymentStatus) {
        (&self.stranger, Msat::ZERO, PaymentStatus::NotFound)
    }

    fn short_expiry(&self) -> Duration {
        Duration::from_secs(1)
    }
}

async fn open_wallet() -> DevWallet {
    DevWallet::open(Arc::new(MemoryDevWalletStore::new()))
        .await
        .unwrap()
}

pub async fn dev_fixture() -> DevFixture {
    let wallet = open_wallet().await;
    DevFixture {
        customer: wallet.counterparty(),
        wallet,
        stranger: open_wallet().await,
    }
}

lightning_conformance!(dev_fixture);

const FOREIGN: &str = "the dev wallet can only pay invoices of its own dev network";

#[tokio::test]
async fn refuses_an_invoice_issued_by_another_dev_wallet() {
    let ours = dev_fixture().await.wallet;
    let theirs = dev_fixture().await.wallet;
    assert_ne!(ours.node_pubkey(), theirs.node_pubkey());
    let inv = theirs
        .create_invoice(AMOUNT, "not yours", Duration::from_secs(600))
        .await
        .unwrap();
    match ours.pay_invoice(&inv.bolt11, Msat::ZERO).await {
        Err(LightningError::InvalidInvoice(msg)) => assert_eq!(msg, FOREIGN),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(
        theirs.lookup_invoice(&inv.payment_hash).await.unwrap(),
        InvoiceStatus::Pending
    );
}

#[tokio::test]
async fn refuses_a_forged_invoice_for_one_of_its_own_hashes() {
    let wallet = dev_fixture().await.wallet;
    let real = wallet
        .create_invoice(AMOUNT, "real", Duration::from_secs(600))
        .await
        .unwrap();
    // Someone else signs an invoice with our payment hash: paying it would
    // release our preimage to them.
    let secp = Secp256k1::new();
    let key = SecretKey::new(&mut rand::thread_rng());
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let forged = InvoiceBuilder::new(Currency::Regtest)
        .description("forged".into())
        .amount_milli_satoshis(AMOUNT.msat())
        .payment_hash(sha256::Hash::from_byte_array(real.payment_hash.0))
        .payment_secret(PaymentSecret(rand::random()))
        .duration_since_epoch(now)
        .min_final_cltv_expiry_delta(144)
        .build_signed(|m| secp.sign_ecdsa_recoverable(m, &key))
        .unwrap()
        .to_string();
    match wallet.counterparty().pay_invoice(&forged, Msat::ZERO).await {
        Err(LightningError::InvalidInvoice(msg)) => assert_eq!(msg, FOREIGN),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(
        wallet.lookup_invoice(&real.payment_hash).await.unwrap(),
        InvoiceStatus::Pending
    );
}

#[tokio::test]
async fn refuses_garbage() {
    let wallet = dev_fixture().await.wallet;
    let got = wallet.pay_invoice("lnbcrt1notaninvoice", Msat::ZERO).await;
    assert!(
        matches!(got, Err(LightningError::InvalidInvoice(_))),
        "{got:?}"
    );
}

#[tokio::test]
async fn state_survives_reopening_over_the_same_store() {
    let store = MemoryDevWalletStore::new();
    let first = DevWallet::open(Arc::new(store.clone())).await.unwrap();
    let pubkey = first.node_pubkey();
    let inv = first
        .create_invoice(AMOUNT, "before restart", Duration::from_secs(600))
        .await
        .unwrap();
    drop(first);

    let reopened = DevWallet::open(Arc::new(store)).await.unwrap();
    assert_eq!(reopened.node_pubkey(), pubkey, "the node key must persist");
    assert_eq!(
        reopened.lookup_invoice(&inv.payment_hash).await.unwrap(),
        InvoiceStatus::Pending
    );
    let payment = reopened
        .counterparty()
        .pay_invoice(&inv.bolt11, Msat::ZERO)
        .await
        .unwrap();
    assert_eq!(
        reopened.lookup_invoice(&inv.payment_hash).await.unwrap(),
        InvoiceStatus::Settled {
            preimage: payment.preimage,
            amount: AMOUNT
        }
    );
}

#[tokio::test]
async fn its_payments_are_found_after_a_reopen_and_unpaid_invoices_are_not_payments() {
    let store = MemoryDevWalletStore::new();
    let first = DevWallet::open(Arc::new(store.clone())).await.unwrap();
    // The customer issues invoices; the gateway pays one of them (a refund).
    let customer = first.counterparty();
    let paid = customer
        .create_invoice(AMOUNT, "paid before restart", Duration::from_secs(600))
        .await
        .unwrap();
    let unpaid = customer
        .create_invoice(AMOUNT, "never paid", Duration::from_secs(600))
        .await
        .unwrap();
    let payment = first.pay_invoice(&paid.bolt11, Msat::ZERO).await.unwrap();
    drop((first, customer));

    let reopened = DevWallet::open(Arc::new(store)).await.unwrap();
    assert_eq!(
        reopened.lookup_payment(&paid.payment_hash).await.unwrap(),
        PaymentStatus::Succeeded {
            preimage: payment.preimage,
            fee: Msat::ZERO
        }
    );
    // Issued but unpaid: the wallet made no payment to it.
    assert_eq!(
        reopened.lookup_payment(&unpaid.payment_hash).await.unwrap(),
        PaymentStatus::NotFound
    );
}

/// A payout "paid" to the gateway's own deposit invoice, already settled by
/// the customer, was recorded as a payment the gateway made: the dev wallet
/// could not tell an invoice it was paid from a payment it made.
#[tokio::test]
async fn an_invoice_the_gateway_was_paid_is_not_a_payment_it_made() {
    let gateway = open_wallet().await;
    let customer = gateway.counterparty();
    let deposit = gateway
        .create_invoice(AMOUNT, "deposit", Duration::from_secs(600))
        .await
        .unwrap();
    customer
        .pay_invoice(&deposit.bolt11, Msat::ZERO)
        .await
        .unwrap();
    assert!(matches!(
        gateway.lookup_invoice(&deposit.payment_hash).await.unwrap(),
        InvoiceStatus::Settled { .. }
    ));
    assert_eq!(
        gateway.lookup_payment(&deposit.payment_hash).await.unwrap(),
        PaymentStatus::NotFound,
        "the gateway received this payment; it did not make it"
    );
    // Nor can the gateway pay its own invoice, settled or not.
    let fresh = gateway
        .create_invoice(AMOUNT, "another deposit", Duration::from_secs(600))
        .await
        .unwrap();
    for bolt11 in [&deposit.bolt11, &fresh.bolt11] {
        let got = gateway.pay_invoice(bolt11, Msat::ZERO).await;
        assert!(
            matches!(got, Err(LightningError::InvalidInvoice(_))),
            "{got:?}"
        );
    }
    assert_eq!(
        gateway.lookup_payment(&fresh.payment_hash).await.unwrap(),
        PaymentStatus::NotFound
    );
    // Each side looks up only the invoices it issued.
    let refund = customer
        .create_invoice(AMOUNT, "refund", Duration::from_secs(600))
        .await
        .unwrap();
    assert!(matches!(
        gateway.lookup_invoice(&refund.payment_hash).await,
        Err(LightningError::NotFound)
    ));
    assert_eq!(
        customer.lookup_invoice(&refund.payment_hash).await.unwrap(),
        InvoiceStatus::Pending
    );
}

#[tokio::test]
async fn says_it_is_not_real_money() {
    let wallet = dev_fixture().await.wallet;
    assert!(!wallet.is_real_money());
    assert_eq!(wallet.name(), "dev");
    let inv = wallet
        .create_invoice(AMOUNT, "regtest", Duration::from_secs(600))
        .await
        .unwrap();
    assert!(
        inv.bolt11.starts_with("lnbcrt"),
        "dev invoices must be regtest: {}",
        inv.bolt11
    );
    let decoded = Bolt11Invoice::from_str(&inv.bolt11).unwrap();
    assert_eq!(
        decoded.get_payee_pub_key().to_string(),
        wallet.node_pubkey()
    );
    assert_eq!(decoded.min_final_cltv_expiry_delta(), 144);
}

#[tokio::test]
async fn sub_sat_amounts_are_exact() {
    let wallet = dev_fixture().await.wallet;
    let amount = Msat::from_msat(1_234);
    let inv = wallet
        .create_invoice(amount, "msat", Duration::from_secs(600))
        .await
        .unwrap();
    assert_eq!(
        Bolt11Invoice::from_str(&inv.bolt11)
            .unwrap()
            .amount_milli_satoshis(),
        Some(1_234)
    );
    let zero = wallet
        .create_invoice(Msat::ZERO, "zero", Duration::from_secs(600))
        .await;
    assert!(
        matches!(zero, Err(LightningError::InvalidInvoice(_))),
        "{zero:?}"
    );
}

#[tokio::test]
async fn a_lagging_subscriber_misses_events_but_lookups_stay_true() {
    let wallet = dev_fixture().await.wallet;
    let mut lagging = wallet.subscribe();
    // More settlements than the event buffer holds, none read meanwhile.
    let mut hashes = Vec::new();
    for i in 0..1100 {
        let inv = wallet
            .create_invoice(
                Msat::from_msat(1_000 + i),
                "flood",
                Duration::from_secs(600),
            )
            .await
            .unwrap();
        wallet
            .counterparty()
            .pay_invoice(&inv.bolt11, Msat::ZERO)
            .await
            .unwrap();
        hashes.push((inv.payment_hash, inv.amount));
    }
    assert!(
        matches!(lagging.try_recv(), Err(TryRecvError::Lagged(_))),
        "the subscriber should have lagged"
    );
    for (hash, amount) in hashes {
        match wallet.lookup_invoice(&hash).await.unwrap() {
            InvoiceStatus::Settled { amount: got, .. } => assert_eq!(got, amount),
            other => panic!("lookup lost a settlement: {other:?}"),
        }
    }
}
