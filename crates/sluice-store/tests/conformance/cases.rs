//! The conformance cases: each takes a fresh [`TestDb`] and states one
//! behaviour every store must have.

use std::sync::Arc;

use sluice_core::{Msat, SessionState};
use sluice_store::{
    Credit, DevInvoiceRow, HoldOutcome, InvoicePurpose, InvoiceState, RequestStatus, Settled,
    Store, StoreError,
};

use super::harness::{
    NOW, TTL_MS, TestDb, cap, funded, hold, invoice, is_held, new_session, policy, settle,
};

fn msat(v: u64) -> Msat {
    Msat::from_msat(v)
}

/// Asserts that a refused hold changed nothing: same session row, no request
/// row, no new ledger transaction.
async fn assert_refused_changes_nothing(
    store: &dyn Store,
    session: &str,
    request: &str,
    before_tx: u64,
) {
    assert!(
        store.request(request).await.unwrap().is_none(),
        "a refused hold wrote a request row"
    );
    let report = store.check_ledger().await.unwrap();
    assert_eq!(
        report.transactions, before_tx,
        "a refused hold posted to the ledger"
    );
    assert!(report.is_consistent(), "{report:?}");
    let s = store.session(session).await.unwrap();
    if let Some(s) = s {
        assert_eq!(s.held, Msat::ZERO);
    }
}

pub async fn session_create_and_get(db: &TestDb) {
    let store = &*db.store;
    assert!(store.session("nope").await.unwrap().is_none());
    let (s, inv) = new_session("s1", 50_000);
    store.create_session(&s, &inv).await.unwrap();
    let row = store.session("s1").await.unwrap().unwrap();
    assert_eq!(row.state, SessionState::AwaitingPayment);
    assert_eq!(
        (row.balance, row.held, row.deposited, row.spent),
        (Msat::ZERO, Msat::ZERO, Msat::ZERO, Msat::ZERO)
    );
    assert_eq!((row.created_at_ms, row.expires_at_ms), (NOW, NOW + 600_000));
    let stored = store.invoice("dep-s1").await.unwrap().unwrap();
    assert_eq!(stored.state, InvoiceState::Pending);
    assert_eq!(stored.amount, msat(50_000));
    assert_eq!(stored.purpose, InvoicePurpose::Deposit);
    assert_eq!(stored.bolt11, "lnbcrtdep-s1");
    assert_eq!(stored.preimage, None);
    // Creating it again is a conflict and leaves the first intact.
    assert!(matches!(
        store.create_session(&s, &inv).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(store.session("s1").await.unwrap().unwrap(), row);
    assert_eq!(store.dialect(), db.dialect());
}

pub async fn credit_is_idempotent(db: &TestDb) {
    let store = &*db.store;
    let (s, inv) = new_session("s1", 50_000);
    store.create_session(&s, &inv).await.unwrap();
    let first = store
        .credit_invoice("dep-s1", "ab", NOW + 5, &policy())
        .await
        .unwrap();
    assert_eq!(
        first,
        Credit::Credited {
            session_id: "s1".into(),
            state: SessionState::Active,
            balance: msat(50_000)
        }
    );
    for _ in 0..3 {
        assert_eq!(
            store
                .credit_invoice("dep-s1", "ab", NOW + 9, &policy())
                .await
                .unwrap(),
            Credit::AlreadyCredited
        );
    }
    let row = store.session("s1").await.unwrap().unwrap();
    assert_eq!(
        (row.balance, row.deposited, row.state),
        (msat(50_000), msat(50_000), SessionState::Active)
    );
    assert_eq!(row.expires_at_ms, NOW + 5 + TTL_MS);
    let inv = store.invoice("dep-s1").await.unwrap().unwrap();
    assert_eq!(
        (inv.state, inv.preimage.as_deref(), inv.settled_at_ms),
        (InvoiceState::Settled, Some("ab"), Some(NOW + 5))
    );
    let report = store.check_ledger().await.unwrap();
    assert_eq!((report.transactions, report.received), (1, msat(50_000)));
    assert!(report.is_consistent(), "{report:?}");
}

pub async fn concurrent_credits_credit_once(db: &TestDb) {
    let (s, inv) = new_session("s1", 70_000);
    db.store.create_session(&s, &inv).await.unwrap();
    // Half the credits come through a second store on the same database, as from another gateway process.
    let other = db.reopen().await.unwrap();
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let store = if i % 2 == 0 {
                Arc::clone(&db.store)
            } else {
                Arc::clone(&other)
            };
            tokio::spawn(async move { store.credit_invoice("dep-s1", "ab", NOW, &policy()).await })
        })
        .collect();
    let mut credited = 0;
    for t in tasks {
        match t.await.unwrap().unwrap() {
            Credit::Credited { balance, .. } => {
                credited += 1;
                assert_eq!(balance, msat(70_000));
            }
            Credit::AlreadyCredited => {}
        }
    }
    assert_eq!(credited, 1);
    let row = db.store.session("s1").await.unwrap().unwrap();
    assert_eq!((row.balance, row.deposited), (msat(70_000), msat(70_000)));
    let report = db.store.check_ledger().await.unwrap();
    assert_eq!((report.transactions, report.received), (1, msat(70_000)));
    assert!(report.is_consistent(), "{report:?}");
}

pub async fn credit_of_unknown_invoice_is_not_found(db: &TestDb) {
    let r = db
        .store
        .credit_invoice("no-such-hash", "ab", NOW, &policy())
        .await;
    assert!(matches!(r, Err(StoreError::NotFound)), "{r:?}");
    assert_eq!(db.store.check_ledger().await.unwrap().transactions, 0);
}

pub async fn topup_resumes_a_paused_session(db: &TestDb) {
    let store = &*db.store;
    // A deposit below the minimum balance funds the session but leaves it paused.
    let (s, inv) = new_session("s1", 4_000);
    store.create_session(&s, &inv).await.unwrap();
    let c = store
        .credit_invoice("dep-s1", "ab", NOW, &policy())
        .await
        .unwrap();
    assert_eq!(
        c,
        Credit::Credited {
            session_id: "s1".into(),
            state: SessionState::Paused,
            balance: msat(4_000)
        }
    );
    assert_eq!(
        store.hold(&hold("s1", "r1", 1_000)).await.unwrap(),
        HoldOutcome::NotActive(SessionState::Paused)
    );
    store
        .add_invoice(&invoice("top-1", "s1", 20_000, InvoicePurpose::Topup))
        .await
        .unwrap();
    let c = store
        .credit_invoice("top-1", "cd", NOW + 10, &policy())
        .await
        .unwrap();
    assert_eq!(
        c,
        Credit::Credited {
            session_id: "s1".into(),
            state: SessionState::Active,
            balance: msat(24_000)
        }
    );
    let row = store.session("s1").await.unwrap().unwrap();
    assert_eq!(
        (row.state, row.balance, row.deposited),
        (SessionState::Active, msat(24_000), msat(24_000))
    );
    assert!(is_held(
        &store.hold(&hold("s1", "r1", 1_000)).await.unwrap()
    ));
    // A top-up for a session that does not exist is refused.
    let r = store
        .add_invoice(&invoice("top-x", "ghost", 1_000, InvoicePurpose::Topup))
        .await;
    assert!(matches!(r, Err(StoreError::NotFound)), "{r:?}");
    assert!(store.check_ledger().await.unwrap().is_consistent());
}

pub async fn an_expired_session_revives_when_money_arrives(db: &TestDb) {
    let store = &*db.store;
    funded(store, "s1", 50_000).await;
    let later = NOW + TTL_MS + 1;
    let mut h = hold("s1", "r1", 1_000);
    h.now_ms = later;
    assert_eq!(
        store.hold(&h).await.unwrap(),
        HoldOutcome::NotActive(SessionState::Expired)
    );
    store
        .add_invoice(&invoice("top-1", "s1", 20_000, InvoicePurpose::Topup))
        .await
        .unwrap();
    let c = store
        .credit_invoice("top-1", "cd", later, &policy())
        .await
        .unwrap();
    assert_eq!(
        c,
        Credit::Credited {
            session_id: "s1".into(),
            state: SessionState::Active,
            balance: msat(70_000)
        }
    );
    assert_eq!(
        store.session("s1").await.unwrap().unwrap().expires_at_ms,
        later + TTL_MS
    );
    assert!(is_held(&store.hold(&h).await.unwrap()));
}

pub async fn hold_refused_while_awaiting_payment(db: &TestDb) {
    let store = &*db.store;
    let (s, inv) = new_session("s1", 50_000);
    store.create_session(&s, &inv).await.unwrap();
    let before = store.session("s1").await.unwrap().unwrap();
    assert_eq!(
        store.hold(&hold("s1", "r1", 1_000)).await.unwrap(),
        HoldOutcome::NotActive(SessionState::AwaitingPayment)
    );
    assert_eq!(store.session("s1").await.unwrap().unwrap(), before);
    assert_refused_changes_nothing(store, "s1", "r1", 0).await;
    assert_eq!(
        store.hold(&hold("ghost", "r2", 1_000)).await.unwrap(),
        HoldOutcome::NoSession
    );
    assert_refused_changes_nothing(store, "ghost", "r2", 0).await;
}

pub async fn hold_refused_when_insufficient(db: &TestDb) {
    let store = &*db.store;
    funded(store, "s1", 50_000).await;
    let before = store.session("s1").await.unwrap().unwrap();
    assert_eq!(
        store.hold(&hold("s1", "r1", 50_001)).await.unwrap(),
        HoldOutcome::Insufficient {
            balance: msat(50_000)
        }
    );
    assert_eq!(store.session("s1").await.unwrap().unwrap(), before);
    assert_refused_changes_nothing(store, "s1", "r1", 1).await;
    // Exactly the balance is fine and leaves nothing.
    assert_eq!(
        store.hold(&hold("s1", "r1", 50_000)).await.unwrap(),
        HoldOutcome::Held {
            balance: Msat::ZERO
        }
    );
}

pub async fn hold_refused_when_expired(db: &TestDb) {
    let store = &*db.store;
    funded(store, "s1", 50_000).await;
    let before = store.session("s1").await.unwrap().unwrap();
    let mut h = hold("s1", "r1", 1_000);
    h.now_ms = before.expires_at_ms; // expiry is exclusive
    assert_eq!(
        store.hold(&h).await.unwrap(),
        HoldOutcome::NotActive(SessionState::Expired)
    );
    assert_eq!(store.session("s1").await.unwrap().unwrap(), before);
    assert_refused_changes_nothing(store, "s1", "r1", 1).await;
    h.now_ms = before.expires_at_ms - 1;
    assert_eq!(
        store.hold(&h).await.unwrap(),
        HoldOutcome::Held {
            balance: msat(49_000)
        }
    );
    // The hold refreshed the expiry.
    assert_eq!(
        store.session("s1").await.unwrap().unwrap().expires_at_ms,
        h.now_ms + TTL_MS
    );
}

pub async fn hold_refused_when_paused(db: &TestDb) {
    let store = &*db.store;
    funded(store, "s1", 30_000).await;
    // Spend down below the minimum balance: settling pauses the session.
    assert!(is_held(
        &store.hold(&hold("s1", "r1", 25_000)).await.unwrap()
    ));
    let s = store.settle(&settle("r1", 25_000)).await.unwrap();
    assert_eq!(
        s,
        Settled {
            charged: msat(25_000),
            released: Msat::ZERO,
            balance: msat(5_000),
            state: SessionState::Paused
        }
    );
    let before = store.session("s1").await.unwrap().unwrap();
    assert_eq!(before.state, SessionState::Paused);
    assert_eq!(
        store.hold(&hold("s1", "r2", 1_000)).await.unwrap(),
        HoldOutcome::NotActive(SessionState::Paused)
    );
    assert_eq!(store.session("s1").await.unwrap().unwrap(), before);
    assert_refused_changes_nothing(store, "s1", "r2", 3).await;
}

pub async fn spend_caps_limit_holds(db: &TestDb) {
    let store = &*db.store;
    funded(store, "s1", 100_000).await;
    let with_caps = |req: &str, amount: u64| {
        let mut h = hold("s1", req, amount);
        h.caps = vec![cap("outer", 50_000), cap("inner", 30_000)];
        h
    };
    assert!(is_held(
        &store.hold(&with_caps("r1", 20_000)).await.unwrap()
    ));
    let before = store.session("s1").await.unwrap().unwrap();
    // 20k committed under "inner" (cap 30k): another 20k would exceed it.
    let refused = store.hold(&with_caps("r2", 20_000)).await.unwrap();
    assert_eq!(
        refused,
        HoldOutcome::CapExceeded {
            cap: msat(30_000),
            committed: msat(20_000)
        }
    );
    assert_eq!(store.session("s1").await.unwrap().unwrap(), before);
    assert_refused_changes_nothing_but_hold(store, "r2", 2).await;
    // The refused hold did not commit anything under "outer" either: 10k more fits both.
    assert!(is_held(
        &store.hold(&with_caps("r3", 10_000)).await.unwrap()
    ));
    // Settling r1 at 5k releases 15k of the cap; the charge stays committed.
    store.settle(&settle("r1", 5_000)).await.unwrap();
    assert!(is_held(
        &store.hold(&with_caps("r4", 15_000)).await.unwrap()
    ));
    let refused = store.hold(&with_caps("r5", 1)).await.unwrap();
    assert_eq!(
        refused,
        HoldOutcome::CapExceeded {
            cap: msat(30_000),
            committed: msat(30_000)
        }
    );
    // A hold without caps is not limited by them.
    assert!(is_held(
        &store.hold(&hold("s1", "r6", 40_000)).await.unwrap()
    ));
    assert!(store.check_ledger().await.unwrap().is_consistent());
}

async fn assert_refused_changes_nothing_but_hold(store: &dyn Store, request: &str, tx: u64) {
    assert!(store.request(request).await.unwrap().is_none());
    let report = store.check_ledger().await.unwrap();
    assert_eq!(report.transactions, tx);
    assert!(report.is_consistent(), "{report:?}");
}

pub async fn settle_charges_at_most_the_hold(db: &TestDb) {
    let store = &*db.store;
    funded(store, "s1", 100_000).await;
    assert_eq!(
        store.hold(&hold("s1", "r1", 30_000)).await.unwrap(),
        HoldOutcome::Held {
            balance: msat(70_000)
        }
    );
    let held = store.request("r1").await.unwrap().unwrap();
    assert_eq!(
        (held.status, held.hold, held.charged, held.finished_at_ms),
        (RequestStatus::Held, msat(30_000), None, None)
    );
    assert_eq!(
        (
            held.est_input_tokens,
            held.max_output_tokens,
            held.btc_usd_micros
        ),
        (12, 64, 100_000_000_000)
    );
    let row = store.session("s1").await.unwrap().unwrap();
    assert_eq!((row.balance, row.held), (msat(70_000), msat(30_000)));

    // Under the hold: charge actual, release the rest.
    let s = store.settle(&settle("r1", 12_345)).await.unwrap();
    assert_eq!(
        s,
        Settled {
            charged: msat(12_345),
            released: msat(17_655),
            balance: msat(87_655),
            state: SessionState::Active
        }
    );
    let r = store.request("r1").await.unwrap().unwrap();
    assert_eq!(r.status, RequestStatus::Settled);
    assert_eq!(
        (r.input_tokens, r.output_tokens, r.latency_ms),
        (Some(12), Some(40), Some(250))
    );
    assert_eq!(
        (r.charged, r.uncharged, r.finished_at_ms),
        (Some(msat(12_345)), Some(Msat::ZERO), Some(NOW + 1_000))
    );
    let row = store.session("s1").await.unwrap().unwrap();
    assert_eq!(
        (row.balance, row.held, row.spent),
        (msat(87_655), Msat::ZERO, msat(12_345))
    );
    assert_eq!(row.expires_at_ms, NOW + 1_000 + TTL_MS);

    // Over the hold: charge the hold, record the overrun as uncharged.
    assert!(is_held(
        &store.hold(&hold("s1", "r2", 10_000)).await.unwrap()
    ));
    let mut over = settle("r2", 15_000);
    over.status = RequestStatus::ClientGone;
    let s = store.settle(&over).await.unwrap();
    assert_eq!(
        (s.charged, s.released, s.balance),
        (msat(10_000), Msat::ZERO, msat(77_655))
    );
    let r = store.request("r2").await.unwrap().unwrap();
    assert_eq!(
        (r.status, r.charged, r.uncharged),
        (
            RequestStatus::ClientGone,
            Some(msat(10_000)),
            Some(msat(5_000))
        )
    );

    let report = store.check_ledger().await.unwrap();
    assert!(report.is_consistent(), "{report:?}");
    assert_eq!(
        (report.revenue, report.balances, report.held),
        (msat(22_345), msat(77_655), Msat::ZERO)
    );
}

pub async fn settling_twice_is_a_conflict(db: &TestDb) {
    let store = &*db.store;
    funded(store, "s1", 100_000).await;
    assert!(is_held(
        &store.hold(&hold("s1", "r1", 30_000)).await.unwrap()
    ));
    store.settle(&settle("r1", 10_000)).await.unwrap();
    let after = store.session("s1").await.unwrap().unwrap();
    let r = store.settle(&settle("r1", 10_000)).await;
    assert!(matches!(r, Err(StoreError::Conflict(_))), "{r:?}");
    let r = store
        .release("r1", RequestStatus::Failed, NOW, &policy())
        .await;
    assert!(matches!(r, Err(StoreError::Conflict(_))), "{r:?}");
    assert_eq!(store.session("s1").await.unwrap().unwrap(), after);
    assert_eq!(
        store.request("r1").await.unwrap().unwrap().status,
        RequestStatus::Settled
    );
    let r = store.settle(&settle("ghost", 1)).await;
    assert!(matches!(r, Err(StoreError::NotFound)), "{r:?}");
    // Reusing a request id for a new hold is a conflict too.
    let r = store.hold(&hold("s1", "r1", 1_000)).await;
    assert!(matches!(r, Err(StoreError::Conflict(_))), "{r:?}");
    assert_eq!(store.session("s1").await.unwrap().unwrap(), after);
    let report = store.check_ledger().await.unwrap();
    assert_eq!(report.transactions, 3);
    assert!(report.is_consistent(), "{report:?}");
}

pub async fn concurrent_settles_settle_once(db: &TestDb) {
    funded(&*db.store, "s1", 100_000).await;
    assert!(is_held(
        &db.store.hold(&hold("s1", "r1", 30_000)).await.unwrap()
    ));
    let other = db.reopen().await.unwrap();
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let store = if i % 2 == 0 {
                Arc::clone(&db.store)
            } else {
                Arc::clone(&other)
            };
            tokio::spawn(async move {
                if i % 3 == 0 {
                    store
                        .release("r1", RequestStatus::Failed, NOW, &policy())
                        .await
                } else {
                    store.settle(&settle("r1", 10_000)).await
                }
            })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(StoreError::Conflict(_)) => {}
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(ok, 1);
    let row = db.store.session("s1").await.unwrap().unwrap();
    assert_eq!(row.held, Msat::ZERO);
    let report = db.store.check_ledger().await.unwrap();
    assert_eq!(report.transactions, 3);
    assert!(report.is_consistent(), "{report:?}");
}

pub async fn release_returns_the_whole_hold(db: &TestDb) {
    let store = &*db.store;
    funded(store, "s1", 100_000).await;
    let mut h = hold("s1", "r1", 30_000);
    h.caps = vec![cap("k", 30_000)];
    assert!(is_held(&store.hold(&h).await.unwrap()));
    let s = store
        .release("r1", RequestStatus::Failed, NOW + 7, &policy())
        .await
        .unwrap();
    assert_eq!(
        s,
        Settled {
            charged: Msat::ZERO,
            released: msat(30_000),
            balance: msat(100_000),
            state: SessionState::Active
        }
    );
    let r = store.request("r1").await.unwrap().unwrap();
    assert_eq!(
        (r.status, r.charged, r.finished_at_ms),
        (RequestStatus::Failed, Some(Msat::ZERO), Some(NOW + 7))
    );
    let row = store.session("s1").await.unwrap().unwrap();
    assert_eq!(
        (row.balance, row.held, row.spent),
        (msat(100_000), Msat::ZERO, Msat::ZERO)
    );
    // The released hold no longer counts against the cap.
    h.request_id = "r2".into();
    assert!(is_held(&store.hold(&h).await.unwrap()));
    // Release only takes failure statuses.
    let r = store
        .release("r2", RequestStatus::Settled, NOW, &policy())
        .await;
    assert!(matches!(r, Err(StoreError::Conflict(_))), "{r:?}");
    assert_eq!(
        store.request("r2").await.unwrap().unwrap().status,
        RequestStatus::Held
    );
    let report = store.check_ledger().await.unwrap();
    assert!(report.is_consistent(), "{report:?}");
    assert_eq!(report.revenue, Msat::ZERO);
}

pub async fn settling_an_expired_session_keeps_it_expired(db: &TestDb) {
    let store = &*db.store;
    funded(store, "s1", 100_000).await;
    assert!(is_held(
        &store.hold(&hold("s1", "r1", 30_000)).await.unwrap()
    ));
    let mut late = settle("r1", 10_000);
    late.now_ms = NOW + TTL_MS + 5;
    let s = store.settle(&late).await.unwrap();
    assert_eq!((s.state, s.balance), (SessionState::Expired, msat(90_000)));
    let row = store.session("s1").await.unwrap().unwrap();
    assert_eq!(
        row.expires_at_ms,
        NOW + TTL_MS,
        "settling must not extend an expired session"
    );
}

pub async fn abandoned_holds_follow_heartbeats(db: &TestDb) {
    let store = &*db.store;
    funded(store, "s1", 100_000).await;
    for (req, instance) in [
        ("r1", "gw-a"),
        ("r2", "gw-b"),
        ("r3", "gw-c"),
        ("r4", "gw-a"),
    ] {
        let mut h = hold("s1", req, 1_000);
        h.instance_id = instance.into();
        assert!(is_held(&store.hold(&h).await.unwrap()));
    }
    store.settle(&settle("r4", 1_000)).await.unwrap(); // finished requests are never abandoned
    store.heartbeat("gw-a", NOW + 100).await.unwrap();
    store.heartbeat("gw-b", NOW - 100).await.unwrap();
    store.heartbeat("gw-b", NOW + 50).await.unwrap(); // later beat replaces the earlier
    // gw-c never beat.
    let ids =
        |rows: Vec<sluice_store::RequestRow>| rows.into_iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(ids(store.abandoned_holds(NOW).await.unwrap()), vec!["r3"]);
    assert_eq!(
        ids(store.abandoned_holds(NOW + 60).await.unwrap()),
        vec!["r2", "r3"]
    );
    store.retire_instance("gw-a").await.unwrap();
    assert_eq!(
        ids(store.abandoned_holds(NOW).await.unwrap()),
        vec!["r1", "r3"]
    );
    for r in store.abandoned_holds(NOW).await.unwrap() {
        store
            .release(&r.id, RequestStatus::Abandoned, NOW + 200, &policy())
            .await
            .unwrap();
    }
    assert!(store.abandoned_holds(NOW).await.unwrap().is_empty());
    assert_eq!(
        store.request("r1").await.unwrap().unwrap().status,
        RequestStatus::Abandoned
    );
    let row = store.session("s1").await.unwrap().unwrap();
    assert_eq!((row.held, row.balance), (msat(1_000), msat(98_000)));
    assert!(store.check_ledger().await.unwrap().is_consistent());
}

pub async fn pending_invoices_and_expiry(db: &TestDb) {
    let store = &*db.store;
    for (i, id) in ["s1", "s2", "s3"].iter().enumerate() {
        let (mut s, mut inv) = new_session(id, 10_000);
        inv.created_at_ms = NOW + i as i64;
        s.created_at_ms = NOW + i as i64;
        store.create_session(&s, &inv).await.unwrap();
    }
    let hashes = |rows: Vec<sluice_store::InvoiceRow>| {
        rows.into_iter().map(|r| r.payment_hash).collect::<Vec<_>>()
    };
    assert_eq!(
        hashes(store.pending_invoices(10).await.unwrap()),
        vec!["dep-s1", "dep-s2", "dep-s3"]
    );
    assert_eq!(
        hashes(store.pending_invoices(2).await.unwrap()),
        vec!["dep-s1", "dep-s2"]
    );
    store
        .credit_invoice("dep-s1", "ab", NOW, &policy())
        .await
        .unwrap();
    store.expire_invoice("dep-s2").await.unwrap();
    assert_eq!(
        store.invoice("dep-s2").await.unwrap().unwrap().state,
        InvoiceState::Expired
    );
    assert_eq!(
        hashes(store.pending_invoices(10).await.unwrap()),
        vec!["dep-s3"]
    );
    // Expiring a settled invoice changes nothing; an unknown one is not found.
    store.expire_invoice("dep-s1").await.unwrap();
    assert_eq!(
        store.invoice("dep-s1").await.unwrap().unwrap().state,
        InvoiceState::Settled
    );
    assert!(matches!(
        store.expire_invoice("nope").await,
        Err(StoreError::NotFound)
    ));
    // Money arriving for an expired invoice is still credited.
    let c = store
        .credit_invoice("dep-s2", "cd", NOW, &policy())
        .await
        .unwrap();
    assert!(matches!(c, Credit::Credited { .. }), "{c:?}");
    // A duplicate payment hash is a conflict.
    let r = store
        .add_invoice(&invoice("dep-s3", "s1", 1, InvoicePurpose::Topup))
        .await;
    assert!(matches!(r, Err(StoreError::Conflict(_))), "{r:?}");
}

/// A tiny deterministic generator: the workload is "random-ish" but reproducible.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

pub async fn ledger_is_consistent_after_a_workload_and_notices_tampering(db: &TestDb) {
    let store = &*db.store;
    let mut rng = Lcg(7);
    let mut received = 0u64;
    let mut charged = 0u64;
    let mut open: Vec<String> = Vec::new();
    for s in 0..4 {
        let amount = 50_000 + rng.next(100_000);
        funded(store, &format!("s{s}"), amount).await;
        received += amount;
    }
    for step in 0..120 {
        match rng.next(10) {
            0 => {
                let s = format!("s{}", rng.next(4));
                let hash = format!("top-{step}");
                let amount = 1_000 + rng.next(20_000);
                store
                    .add_invoice(&invoice(&hash, &s, amount, InvoicePurpose::Topup))
                    .await
                    .unwrap();
                store
                    .credit_invoice(&hash, "ef", NOW, &policy())
                    .await
                    .unwrap();
                store
                    .credit_invoice(&hash, "ef", NOW, &policy())
                    .await
                    .unwrap();
                received += amount;
            }
            1..=5 => {
                let req = format!("r{step}");
                let o = store
                    .hold(&hold(
                        &format!("s{}", rng.next(4)),
                        &req,
                        1 + rng.next(30_000),
                    ))
                    .await
                    .unwrap();
                if is_held(&o) {
                    open.push(req);
                }
            }
            6..=8 if !open.is_empty() => {
                let req = open.swap_remove(rng.next(open.len() as u64) as usize);
                let s = store.settle(&settle(&req, rng.next(40_000))).await.unwrap();
                charged += s.charged.msat();
            }
            _ if !open.is_empty() => {
                let req = open.swap_remove(rng.next(open.len() as u64) as usize);
                store
                    .release(&req, RequestStatus::Failed, NOW, &policy())
                    .await
                    .unwrap();
            }
            _ => {}
        }
    }
    let report = store.check_ledger().await.unwrap();
    assert!(report.is_consistent(), "{report:?}");
    assert_eq!(
        (report.received, report.revenue),
        (msat(received), msat(charged))
    );
    assert!(report.unbalanced.is_empty() && report.mismatched_sessions.is_empty());

    // Tamper with a balance behind the store's back: the check must notice.
    assert_eq!(
        db.raw("UPDATE sessions SET balance_msat = balance_msat + 1 WHERE id = 's2'")
            .await,
        1
    );
    let report = store.check_ledger().await.unwrap();
    assert!(!report.is_consistent());
    assert_eq!(report.mismatched_sessions, vec!["s2".to_owned()]);
    assert!(report.unbalanced.is_empty());
    db.raw("UPDATE sessions SET balance_msat = balance_msat - 1 WHERE id = 's2'")
        .await;
    assert!(store.check_ledger().await.unwrap().is_consistent());

    // And a ledger leg: that transaction no longer sums to zero.
    assert_eq!(db.raw("UPDATE ledger_entry SET amount_msat = amount_msat - 1 WHERE account = 'lightning:in' AND tx_id = (SELECT id FROM ledger_tx WHERE idempotency_key = 'deposit:dep-s0')").await, 1);
    let report = store.check_ledger().await.unwrap();
    assert_eq!(report.unbalanced.len(), 1);
    assert!(!report.is_consistent());
}

pub async fn concurrent_holds_never_overdraw(db: &TestDb) {
    const X: u64 = 10_000;
    const N: usize = 37;
    const TRIES: usize = 200;
    // Covers exactly N holds of X, with a remainder smaller than X.
    funded(&*db.store, "s1", X * N as u64 + X / 2).await;
    let other = db.reopen().await.unwrap();
    let tasks: Vec<_> = (0..TRIES)
        .map(|i| {
            let store = if i % 2 == 0 {
                Arc::clone(&db.store)
            } else {
                Arc::clone(&other)
            };
            tokio::spawn(async move {
                let mut h = hold("s1", &format!("r{i}"), X);
                // Every hold also counts against one shared cap that allows more than the balance.
                h.caps = vec![cap("shared", X * 1_000)];
                store.hold(&h).await
            })
        })
        .collect();
    let mut held = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        match t.await.unwrap().unwrap() {
            HoldOutcome::Held { .. } => held.push(format!("r{i}")),
            HoldOutcome::Insufficient { balance } => {
                assert!(balance < msat(X), "refused with {balance}")
            }
            o => panic!("unexpected {o:?}"),
        }
    }
    assert_eq!(held.len(), N);
    let row = db.store.session("s1").await.unwrap().unwrap();
    assert_eq!((row.balance, row.held), (msat(X / 2), msat(X * N as u64)));
    let report = db.store.check_ledger().await.unwrap();
    assert!(report.is_consistent(), "{report:?}");
    assert_eq!(report.transactions, 1 + N as u64);

    // Settle them all concurrently, alternating charge and release.
    let tasks: Vec<_> = held
        .into_iter()
        .enumerate()
        .map(|(i, req)| {
            let store = if i % 2 == 0 {
                Arc::clone(&db.store)
            } else {
                Arc::clone(&other)
            };
            tokio::spawn(async move {
                if i % 3 == 0 {
                    store
                        .release(&req, RequestStatus::Failed, NOW, &policy())
                        .await
                } else {
                    store.settle(&settle(&req, 1_000 * i as u64)).await
                }
            })
        })
        .collect();
    let mut charged = 0;
    for t in tasks {
        charged += t.await.unwrap().unwrap().charged.msat();
    }
    let row = db.store.session("s1").await.unwrap().unwrap();
    assert_eq!(row.held, Msat::ZERO);
    assert_eq!(row.spent, msat(charged));
    assert_eq!(row.balance, msat(X * N as u64 + X / 2 - charged));
    let report = db.store.check_ledger().await.unwrap();
    assert!(report.is_consistent(), "{report:?}");
    assert_eq!(report.revenue, msat(charged));
}

pub async fn secret_is_stable(db: &TestDb) {
    let first = db.store.secret("macaroon-root", [7; 32]).await.unwrap();
    assert_eq!(first, [7; 32]);
    assert_eq!(
        db.store.secret("macaroon-root", [9; 32]).await.unwrap(),
        [7; 32]
    );
    assert_eq!(db.store.secret("other", [9; 32]).await.unwrap(), [9; 32]);
    // Racing processes all end up with one value.
    let other = db.reopen().await.unwrap();
    let tasks: Vec<_> = (0..10u8)
        .map(|i| {
            let store = if i % 2 == 0 {
                Arc::clone(&db.store)
            } else {
                Arc::clone(&other)
            };
            tokio::spawn(async move { store.secret("raced", [i; 32]).await })
        })
        .collect();
    let mut values = Vec::new();
    for t in tasks {
        values.push(t.await.unwrap().unwrap());
    }
    values.dedup();
    assert_eq!(values.len(), 1, "{values:?}");
    assert_eq!(
        other.secret("macaroon-root", [1; 32]).await.unwrap(),
        [7; 32]
    );
}

pub async fn secrets_can_be_read_without_creating_and_deleted(db: &TestDb) {
    let store = &*db.store;
    assert_eq!(store.secret_get("l402:abc").await.unwrap(), None);
    assert_eq!(store.secret("l402:abc", [3; 32]).await.unwrap(), [3; 32]);
    assert_eq!(store.secret_get("l402:abc").await.unwrap(), Some([3; 32]));
    assert!(store.secret_delete("l402:abc").await.unwrap());
    assert!(!store.secret_delete("l402:abc").await.unwrap());
    assert_eq!(store.secret_get("l402:abc").await.unwrap(), None);
}

pub async fn session_invoices_lists_every_invoice_of_one_session(db: &TestDb) {
    let store = &*db.store;
    let (s, deposit) = new_session("s-inv", 1_000);
    store.create_session(&s, &deposit).await.unwrap();
    let (other, other_deposit) = new_session("s-other", 1_000);
    store.create_session(&other, &other_deposit).await.unwrap();
    let mut topup = invoice("h-topup", "s-inv", 500, InvoicePurpose::Topup);
    topup.created_at_ms = deposit.created_at_ms + 1;
    store.add_invoice(&topup).await.unwrap();
    let list = store.session_invoices("s-inv").await.unwrap();
    let hashes: Vec<&str> = list.iter().map(|i| i.payment_hash.as_str()).collect();
    assert_eq!(
        hashes,
        vec!["h-topup", deposit.payment_hash.as_str()],
        "newest first"
    );
    assert!(store.session_invoices("nope").await.unwrap().is_empty());
}

pub async fn estimator_states_are_saved_per_model_and_class(db: &TestDb) {
    let store = &*db.store;
    assert_eq!(store.estimator_state("m", "short").await.unwrap(), None);
    store
        .save_estimator_state("m", "short", "q1;a", 1)
        .await
        .unwrap();
    store
        .save_estimator_state("m", "long", "q1;b", 1)
        .await
        .unwrap();
    store
        .save_estimator_state("m", "short", "q1;c", 2)
        .await
        .unwrap();
    assert_eq!(
        store
            .estimator_state("m", "short")
            .await
            .unwrap()
            .as_deref(),
        Some("q1;c")
    );
    assert_eq!(
        store.estimator_state("m", "long").await.unwrap().as_deref(),
        Some("q1;b")
    );
    assert_eq!(store.estimator_state("other", "short").await.unwrap(), None);
}

pub async fn dev_invoices(db: &TestDb) {
    let store = &*db.store;
    assert!(store.dev_invoice("h1").await.unwrap().is_none());
    let inv = DevInvoiceRow {
        payment_hash: "h1".into(),
        preimage: "p1".into(),
        bolt11: "lnbcrt1".into(),
        amount: msat(21_000),
        expires_at_ms: NOW + 10,
        paid_at_ms: None,
    };
    store.dev_invoice_insert(&inv).await.unwrap();
    assert_eq!(store.dev_invoice("h1").await.unwrap(), Some(inv.clone()));
    assert!(matches!(
        store.dev_invoice_insert(&inv).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(store.dev_invoice_mark_paid("h1", NOW + 1).await.unwrap());
    assert!(!store.dev_invoice_mark_paid("h1", NOW + 2).await.unwrap());
    assert!(!store.dev_invoice_mark_paid("unknown", NOW).await.unwrap());
    assert_eq!(
        store.dev_invoice("h1").await.unwrap().unwrap().paid_at_ms,
        Some(NOW + 1)
    );
}

pub async fn concurrent_opens_migrate_once(db: &TestDb) {
    // Several gateway processes starting at once on a new database: each open
    // succeeds and the schema exists once.
    let store = db.open_fresh_concurrently(4).await;
    funded(&*store, "s1", 20_000).await;
    assert!(is_held(
        &store.hold(&hold("s1", "r1", 1_000)).await.unwrap()
    ));
    assert!(store.check_ledger().await.unwrap().is_consistent());
    // Reopening an up-to-date database is a no-op too.
    let again = db.reopen().await.unwrap();
    assert!(
        again.session("s1").await.unwrap().is_none(),
        "the fresh database is separate from the test's"
    );
}
