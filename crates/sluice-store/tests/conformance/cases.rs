//! The conformance cases: each takes a fresh [`TestDb`] and states one
//! behaviour every store must have.

use std::sync::Arc;

use sluice_core::{
    DAY_MS, Interaction, JobPhase, JobState, Msat, RefundError, RefundEvent, RefundState,
    SessionState, Tier, TokenUsage, TrustRules,
};
use sluice_store::{
    Accounting, ChallengeUse, Credit, DevInvoiceRow, Evaluation, GrantAsk, GrantKind, GrantRow,
    HoldOutcome, InvoicePurpose, InvoiceState, JobInvoice, LedgerReport, NewJob, NewVouch,
    PendingJobInvoice, PoolStatus, RefundEventError, RequestStatus, Settled, Store, StoreError,
    VouchOutcome, WorkOutcome,
};

use super::harness::{
    NOW, TTL_MS, TestDb, cap, funded, hold, invoice, is_held, new_session, no_credit, policy,
    settle,
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
            absorbed: Msat::ZERO,
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
            absorbed: Msat::ZERO,
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
            absorbed: Msat::ZERO,
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
    assert_eq!(
        ids(store.abandoned_holds(NOW, NOW, "gw-self").await.unwrap()),
        vec!["r3"]
    );
    assert_eq!(
        ids(store
            .abandoned_holds(NOW + 60, NOW, "gw-self")
            .await
            .unwrap()),
        vec!["r2", "r3"]
    );
    // A process whose own heartbeat is stale (its database was down) does not
    // release its own live holds: only past their deadline.
    assert_eq!(
        ids(store.abandoned_holds(NOW + 60, NOW, "gw-b").await.unwrap()),
        vec!["r3"]
    );
    store.retire_instance("gw-a").await.unwrap();
    assert_eq!(
        ids(store.abandoned_holds(NOW, NOW, "gw-self").await.unwrap()),
        vec!["r1", "r3"]
    );
    for r in store.abandoned_holds(NOW, NOW, "gw-self").await.unwrap() {
        store
            .release(&r.id, RequestStatus::Abandoned, NOW + 200, &policy())
            .await
            .unwrap();
    }
    assert!(
        store
            .abandoned_holds(NOW, NOW, "gw-self")
            .await
            .unwrap()
            .is_empty()
    );
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

pub async fn closing_a_session_refunds_its_balance_once(db: &TestDb) {
    let store = &*db.store;
    // Never funded: nothing to close.
    let (s, dep) = new_session("s-unfunded", 10_000);
    store.create_session(&s, &dep).await.unwrap();
    assert!(matches!(
        store
            .close_session("s-unfunded", NOW, NOW + 1_000, Msat::from_msat(1_000))
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store
            .close_session("nope", NOW, NOW + 1_000, Msat::from_msat(1_000))
            .await,
        Err(StoreError::NotFound)
    ));
    // Funded with 12,500 msat; a request in flight blocks the close.
    funded(store, "s-close", 12_500).await;
    assert!(is_held(
        &store
            .hold(&hold("s-close", "r-close", 1_000))
            .await
            .unwrap()
    ));
    assert!(matches!(
        store
            .close_session("s-close", NOW, NOW + 1_000, Msat::from_msat(1_000))
            .await,
        Err(StoreError::Conflict(_))
    ));
    store
        .release("r-close", RequestStatus::Failed, NOW, &policy())
        .await
        .unwrap();
    let r = store
        .close_session("s-close", NOW, NOW + 1_000, Msat::from_msat(1_000))
        .await
        .unwrap()
        .expect("a refund");
    assert_eq!(r.owner_kind, "session");
    assert_eq!(r.owner_id, "s-close");
    assert_eq!(r.refund.state, sluice_core::RefundState::Pending);
    assert_eq!(r.refund.amount, Msat::from_msat(12_500));
    assert_eq!(
        r.refund.payout,
        Msat::from_msat(12_000),
        "whole sats; 500 msat to the pool"
    );
    let row = store.session("s-close").await.unwrap().unwrap();
    assert_eq!(row.balance, Msat::ZERO);
    assert_eq!(
        row.state,
        SessionState::Closed,
        "a closed session says so, not expired"
    );
    // A payout whose outcome is not recorded is found for reconciliation.
    assert!(store.paying_refunds(NOW + 10).await.unwrap().is_empty());
    store
        .refund_event(
            &r.id,
            sluice_core::RefundEvent::Claim {
                invoice_amount: Msat::from_msat(12_000),
                invoice_hash: "ab".repeat(32),
                invoice_expires_at_ms: i64::MAX,
                max_fee_budget: Msat::ZERO,
                min_fee_budget: Msat::ZERO,
                now_ms: NOW,
            },
            NOW,
        )
        .await
        .unwrap();
    let paying = store.paying_refunds(i64::MAX).await.unwrap();
    assert_eq!(paying.len(), 1);
    assert_eq!(
        paying[0].refund.payment_hash.as_deref(),
        Some("ab".repeat(32).as_str())
    );
    // Closing again refunds nothing more.
    assert_eq!(
        store
            .close_session("s-close", NOW + 1, NOW + 1_000, Msat::from_msat(1_000))
            .await
            .unwrap(),
        None
    );
    assert_eq!(store.refunds_for("s-close").await.unwrap().len(), 1);
    let report = store.check_ledger().await.unwrap();
    assert!(report.is_consistent(), "{report:?}");
}

/// Refund ids were `refund_<session>_<ms>`: a second close in the same
/// millisecond (a late top-up revived the session) collided with the first,
/// and the second balance was owed by no refund.
pub async fn a_session_closed_twice_in_one_millisecond_owes_two_refunds(db: &TestDb) {
    let store = &*db.store;
    funded(store, "s-twice", 12_000).await;
    store
        .add_invoice(&invoice("late-1", "s-twice", 5_000, InvoicePurpose::Topup))
        .await
        .unwrap();
    let dust = Msat::from_msat(1_000);
    let first = store
        .close_session("s-twice", NOW, NOW + 1_000, dust)
        .await
        .unwrap()
        .expect("a refund");
    store
        .credit_invoice("late-1", "cd", NOW, &policy())
        .await
        .unwrap();
    let second = store
        .close_session("s-twice", NOW, NOW + 1_000, dust)
        .await
        .unwrap()
        .expect("a second refund");
    assert_ne!(first.id, second.id);
    let owed: Vec<u64> = store
        .refunds_for("s-twice")
        .await
        .unwrap()
        .iter()
        .map(|r| r.refund.amount.msat())
        .collect();
    assert_eq!(owed.len(), 2, "{owed:?}");
    assert_eq!(owed.iter().sum::<u64>(), 17_000);
    let report = store.check_ledger().await.unwrap();
    assert!(report.is_consistent(), "{report:?}");
}

pub async fn dev_invoices(db: &TestDb) {
    let rows = db.store.clone().dev_wallet_rows();
    let store = &*rows;
    assert!(store.dev_invoice("h1").await.unwrap().is_none());
    let inv = DevInvoiceRow {
        issuer: "customer".into(),
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
    // Each migration was applied once, however many processes raced.
    let applied = db.fresh_migrations().await;
    let expected: Vec<i64> = (1..=applied.last().copied().unwrap_or(0)).collect();
    assert_eq!(
        applied, expected,
        "every migration exactly once, none missing"
    );
    assert!(applied.len() >= 5, "{applied:?}");
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

// ---- Two-phase jobs and refunds ----

/// The evaluation fee of the job fixtures.
const EVAL_FEE: u64 = 5_500;
/// The dust threshold the job cases offer refunds with.
const DUST: u64 = 1_000;
/// When the job cases' refund offers lapse.
const REFUND_EXPIRES: i64 = NOW + 86_400_000;

fn job_invoice(hash: &str, amount: u64) -> JobInvoice {
    JobInvoice {
        payment_hash: hash.to_owned(),
        bolt11: format!("lnbcrt{hash}"),
        amount: msat(amount),
        expires_at_ms: NOW + 600_000,
    }
}

fn new_job(id: &str, eval_fee: u64) -> NewJob {
    NewJob {
        id: id.to_owned(),
        request: "Summarise the attached notes in three bullet points.".to_owned(),
        eval_model: "judge".to_owned(),
        work_model: "worker".to_owned(),
        eval_invoice: job_invoice(&format!("eval-{id}"), eval_fee),
        created_at_ms: NOW,
        pubkey: None,
    }
}

fn accepted(id: &str, work: u64) -> Evaluation {
    Evaluation::Accepted {
        work_invoice: job_invoice(&format!("work-{id}"), work),
        grant: None,
        btc_usd_micros: 100_000_000_000,
        est_input_tokens: 40,
        est_output_tokens: 300,
    }
}

fn completed(actual: u64) -> WorkOutcome {
    WorkOutcome::Completed {
        result: "- one\n- two\n- three".to_owned(),
        usage: TokenUsage {
            input: 40,
            output: 120,
        },
        actual_charge: msat(actual),
    }
}

/// Create job `id` and pay its evaluation: it is `evaluating` after.
async fn job_evaluating(store: &dyn Store, id: &str, eval_fee: u64) {
    store.create_job(&new_job(id, eval_fee)).await.unwrap();
    let job = store
        .job_invoice_paid(&format!("eval-{id}"), "e0", "gw-test", NOW + 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job.state, JobState::Evaluating);
}

/// Create job `id`, pay its evaluation, accept it for `work` msat and pay
/// the work: it is `executing` after.
async fn job_executing(store: &dyn Store, id: &str, work: u64) {
    job_evaluating(store, id, EVAL_FEE).await;
    store
        .job_evaluated(
            id,
            &accepted(id, work),
            &no_credit(),
            NOW + 2,
            REFUND_EXPIRES,
            msat(DUST),
        )
        .await
        .unwrap();
    let job = store
        .job_invoice_paid(&format!("work-{id}"), "w0", "gw-test", NOW + 3)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job.state, JobState::Executing);
}

async fn consistent_ledger(store: &dyn Store) -> LedgerReport {
    let report = store.check_ledger().await.unwrap();
    assert!(report.is_consistent(), "{report:?}");
    report
}

pub async fn job_happy_path_refunds_the_unspent_work_payment(db: &TestDb) {
    let store = &*db.store;
    store.create_job(&new_job("j1", EVAL_FEE)).await.unwrap();
    let created = store.job("j1").await.unwrap().unwrap();
    assert_eq!(created.state, JobState::AwaitingEvalPayment);
    assert_eq!(created.eval_invoice, job_invoice("eval-j1", EVAL_FEE));
    assert_eq!(
        (
            created.work_invoice.clone(),
            created.refund_id.clone(),
            created.attempts
        ),
        (None, None, 0)
    );
    assert!(store.job("nope").await.unwrap().is_none());
    // The watcher sees the unpaid evaluation invoice, past its expiry too (a
    // payment made while the gateway was down is seen late), until the
    // backend says it is definitely unpaid.
    let pending = store.pending_job_invoices(10).await.unwrap();
    assert_eq!(
        pending,
        vec![PendingJobInvoice {
            job_id: "j1".into(),
            phase: JobPhase::Eval,
            payment_hash: "eval-j1".into(),
            expires_at_ms: NOW + 600_000,
        }]
    );

    let paid = store
        .job_invoice_paid("eval-j1", "e0", "gw-test", NOW + 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (paid.state, paid.updated_at_ms),
        (JobState::Evaluating, NOW + 1)
    );
    assert!(store.pending_job_invoices(10).await.unwrap().is_empty());
    assert_eq!(store.job_attempt("j1", "gw-a", NOW + 1).await.unwrap(), 1);
    assert_eq!(store.job_attempt("j1", "gw-a", NOW + 1).await.unwrap(), 2);
    assert!(matches!(
        store.job_attempt("nope", "gw-a", NOW).await,
        Err(StoreError::NotFound)
    ));
    let report = consistent_ledger(store).await;
    assert_eq!(
        (report.received, report.jobs_held),
        (msat(EVAL_FEE), msat(EVAL_FEE))
    );

    let job = store
        .job_evaluated(
            "j1",
            &accepted("j1", 100_000),
            &no_credit(),
            NOW + 2,
            REFUND_EXPIRES,
            msat(DUST),
        )
        .await
        .unwrap();
    assert_eq!(job.state, JobState::AwaitingWorkPayment);
    assert_eq!(job.work_invoice, Some(job_invoice("work-j1", 100_000)));
    assert_eq!(
        (
            job.work_btc_usd_micros,
            job.est_input_tokens,
            job.est_output_tokens
        ),
        (Some(100_000_000_000), Some(40), Some(300))
    );
    // The fee is earned, so nothing is owed back for the evaluation.
    assert_eq!(job.refund_id, None);
    assert!(store.refund("refund_j1").await.unwrap().is_none());
    let report = consistent_ledger(store).await;
    assert_eq!(
        (report.revenue, report.jobs_held),
        (msat(EVAL_FEE), Msat::ZERO)
    );
    let pending = store.pending_job_invoices(10).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(
        (pending[0].phase, pending[0].payment_hash.as_str()),
        (JobPhase::Work, "work-j1")
    );

    let job = store
        .job_invoice_paid("work-j1", "w0", "gw-test", NOW + 3)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job.state, JobState::Executing);
    assert_eq!(consistent_ledger(store).await.jobs_held, msat(100_000));

    // 37.5 sat of 100 sat used: 62 sat are claimable, the half sat goes to the pool.
    let job = store
        .job_finished(
            "j1",
            &completed(37_500),
            &no_credit(),
            NOW + 4,
            REFUND_EXPIRES,
            msat(DUST),
        )
        .await
        .unwrap();
    assert_eq!(job.state, JobState::Complete);
    assert_eq!(job.result.as_deref(), Some("- one\n- two\n- three"));
    assert_eq!((job.input_tokens, job.output_tokens), (Some(40), Some(120)));
    assert_eq!(job.work_charged, Some(msat(37_500)));
    assert_eq!(job.refund_id.as_deref(), Some("refund_j1"));
    assert_eq!(job.attempts, 2);
    assert_eq!(store.job("j1").await.unwrap().unwrap(), job);

    let refund = store.refund("refund_j1").await.unwrap().unwrap();
    assert_eq!(
        (refund.owner_kind.as_str(), refund.owner_id.as_str()),
        ("job", "j1")
    );
    assert_eq!(refund.refund.state, RefundState::Pending);
    assert_eq!(
        (refund.refund.amount, refund.refund.payout),
        (msat(62_500), msat(62_000))
    );
    assert_eq!(refund.refund.expires_at_ms, REFUND_EXPIRES);
    assert_eq!(
        (refund.created_at_ms, refund.updated_at_ms),
        (NOW + 4, NOW + 4)
    );

    let report = consistent_ledger(store).await;
    assert_eq!(report.received, msat(105_500));
    assert_eq!(report.revenue, msat(EVAL_FEE + 37_500));
    assert_eq!(report.jobs_held, Msat::ZERO);
    assert_eq!(report.refunds_owed, msat(62_000));
    assert_eq!(report.pool, msat(500));
    assert_eq!(report.paid_out, Msat::ZERO);
    assert!(store.pending_job_invoices(10).await.unwrap().is_empty());

    // Rows that drift from the ledger are noticed.
    db.raw("UPDATE refunds SET payout_msat = payout_msat + 1000 WHERE id = 'refund_j1'")
        .await;
    db.raw("UPDATE jobs SET state = 'executing' WHERE id = 'j1'")
        .await;
    let report = store.check_ledger().await.unwrap();
    assert_eq!(report.mismatched_refunds, vec!["refund_j1".to_owned()]);
    assert_eq!(report.mismatched_jobs, vec!["j1".to_owned()]);
    assert!(!report.is_consistent());
}

pub async fn a_rejected_job_earns_its_fee_and_owes_nothing(db: &TestDb) {
    let store = &*db.store;
    job_evaluating(store, "j1", EVAL_FEE).await;
    let job = store
        .job_evaluated(
            "j1",
            &Evaluation::Rejected {
                reason: "not a summarisation task".into(),
            },
            &no_credit(),
            NOW + 2,
            REFUND_EXPIRES,
            msat(DUST),
        )
        .await
        .unwrap();
    assert_eq!(job.state, JobState::Rejected);
    assert_eq!(job.reason.as_deref(), Some("not a summarisation task"));
    assert_eq!((job.work_invoice, job.refund_id), (None, None));
    assert!(store.refund("refund_j1").await.unwrap().is_none());
    let report = consistent_ledger(store).await;
    assert_eq!(
        (report.revenue, report.refunds_owed, report.pool),
        (msat(EVAL_FEE), Msat::ZERO, Msat::ZERO)
    );
    // A finished job cannot be evaluated or finished again.
    assert!(matches!(
        store
            .job_evaluated(
                "j1",
                &accepted("j1", 1_000),
                &no_credit(),
                NOW + 3,
                REFUND_EXPIRES,
                msat(DUST)
            )
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store
            .job_finished(
                "j1",
                &completed(1),
                &no_credit(),
                NOW + 3,
                REFUND_EXPIRES,
                msat(DUST)
            )
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        store.job("j1").await.unwrap().unwrap().state,
        JobState::Rejected
    );
}

pub async fn a_failed_evaluation_refunds_its_fee(db: &TestDb) {
    let store = &*db.store;
    job_evaluating(store, "j1", EVAL_FEE).await;
    let failed = Evaluation::Failed {
        reason: "the evaluator is unavailable".into(),
    };
    let job = store
        .job_evaluated(
            "j1",
            &failed,
            &no_credit(),
            NOW + 2,
            REFUND_EXPIRES,
            msat(DUST),
        )
        .await
        .unwrap();
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.reason.as_deref(), Some("the evaluator is unavailable"));
    assert_eq!(job.refund_id.as_deref(), Some("refund_j1"));
    let refund = store.refund("refund_j1").await.unwrap().unwrap().refund;
    assert_eq!(
        (refund.state, refund.amount, refund.payout),
        (RefundState::Pending, msat(EVAL_FEE), msat(5_000))
    );
    let report = consistent_ledger(store).await;
    assert_eq!(
        (report.revenue, report.refunds_owed, report.pool),
        (Msat::ZERO, msat(5_000), msat(500))
    );

    // A fee below the dust threshold goes to the pool whole: nothing to claim.
    job_evaluating(store, "j2", 800).await;
    let job = store
        .job_evaluated(
            "j2",
            &failed,
            &no_credit(),
            NOW + 2,
            REFUND_EXPIRES,
            msat(DUST),
        )
        .await
        .unwrap();
    assert_eq!(job.refund_id.as_deref(), Some("refund_j2"));
    let dust = store.refund("refund_j2").await.unwrap().unwrap();
    assert_eq!(
        (dust.refund.state, dust.refund.amount, dust.refund.payout),
        (RefundState::None, msat(800), Msat::ZERO)
    );
    assert!(dust.refund.is_final());
    let claim = RefundEvent::Claim {
        invoice_amount: Msat::ZERO,
        invoice_hash: "x".into(),
        invoice_expires_at_ms: i64::MAX,
        max_fee_budget: Msat::ZERO,
        min_fee_budget: Msat::ZERO,
        now_ms: NOW + 3,
    };
    assert!(matches!(
        store.refund_event("refund_j2", claim, NOW).await,
        Err(RefundEventError::Refused(RefundError::Dust { .. }))
    ));
    let report = consistent_ledger(store).await;
    assert_eq!(
        (report.refunds_owed, report.pool),
        (msat(5_000), msat(1_300))
    );
    assert!(
        store
            .expired_refunds(REFUND_EXPIRES + 1)
            .await
            .unwrap()
            .iter()
            .all(|r| r.id != "refund_j2")
    );
}

pub async fn failed_work_refunds_the_whole_work_payment(db: &TestDb) {
    let store = &*db.store;
    job_executing(store, "j1", 100_000).await;
    let job = store
        .job_finished(
            "j1",
            &WorkOutcome::Failed {
                reason: "the worker crashed".into(),
            },
            &no_credit(),
            NOW + 4,
            REFUND_EXPIRES,
            msat(DUST),
        )
        .await
        .unwrap();
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.reason.as_deref(), Some("the worker crashed"));
    assert_eq!(job.work_charged, Some(Msat::ZERO));
    assert_eq!(job.result, None);
    let refund = store
        .refund(job.refund_id.as_deref().unwrap())
        .await
        .unwrap()
        .unwrap()
        .refund;
    assert_eq!(
        (refund.state, refund.amount, refund.payout),
        (RefundState::Pending, msat(100_000), msat(100_000))
    );
    let report = consistent_ledger(store).await;
    assert_eq!(report.revenue, msat(EVAL_FEE));
    assert_eq!(
        (report.refunds_owed, report.pool, report.jobs_held),
        (msat(100_000), Msat::ZERO, Msat::ZERO)
    );
    // A charge above the work payment is capped at it: nothing is owed back.
    job_executing(store, "j2", 20_000).await;
    let job = store
        .job_finished(
            "j2",
            &completed(25_000),
            &no_credit(),
            NOW + 4,
            REFUND_EXPIRES,
            msat(DUST),
        )
        .await
        .unwrap();
    assert_eq!(
        (job.work_charged, job.refund_id),
        (Some(msat(20_000)), None)
    );
    consistent_ledger(store).await;
}

pub async fn job_payments_are_recorded_once(db: &TestDb) {
    let store = &*db.store;
    assert!(matches!(
        store.job_invoice_paid("nope", "00", "gw-test", NOW).await,
        Err(StoreError::NotFound)
    ));
    store.create_job(&new_job("j1", EVAL_FEE)).await.unwrap();
    // Two gateway processes on one database, ten settlement events each.
    let other = db.reopen().await.unwrap();
    let calls = (0..20).map(|i| {
        let store: Arc<dyn Store> = if i % 2 == 0 {
            Arc::clone(&db.store)
        } else {
            Arc::clone(&other)
        };
        tokio::spawn(async move {
            store
                .job_invoice_paid("eval-j1", "e0", "gw-test", NOW + 1)
                .await
        })
    });
    let outcomes: Vec<_> = futures::future::join_all(calls)
        .await
        .into_iter()
        .map(|r| r.unwrap().unwrap())
        .collect();
    assert_eq!(
        outcomes.iter().filter(|o| o.is_some()).count(),
        1,
        "{outcomes:?}"
    );
    assert_eq!(
        store.job("j1").await.unwrap().unwrap().state,
        JobState::Evaluating
    );
    // A late repeat is a no-op too.
    assert_eq!(
        store
            .job_invoice_paid("eval-j1", "e0", "gw-test", NOW + 9)
            .await
            .unwrap(),
        None
    );
    let report = consistent_ledger(store).await;
    assert_eq!(
        (report.received, report.jobs_held, report.transactions),
        (msat(EVAL_FEE), msat(EVAL_FEE), 1)
    );
    // The work payment, repeated, likewise.
    store
        .job_evaluated(
            "j1",
            &accepted("j1", 50_000),
            &no_credit(),
            NOW + 2,
            REFUND_EXPIRES,
            msat(DUST),
        )
        .await
        .unwrap();
    assert!(
        store
            .job_invoice_paid("work-j1", "w0", "gw-test", NOW + 3)
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(
        other
            .job_invoice_paid("work-j1", "w0", "gw-test", NOW + 3)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .job_invoice_paid("eval-j1", "e0", "gw-test", NOW + 3)
            .await
            .unwrap(),
        None
    );
    let report = consistent_ledger(store).await;
    assert_eq!(report.received, msat(EVAL_FEE + 50_000));
    // Job ids and invoice hashes are unique.
    assert!(matches!(
        store.create_job(&new_job("j1", 1)).await,
        Err(StoreError::Conflict(_))
    ));
}

pub async fn concurrent_job_outcomes_apply_once(db: &TestDb) {
    let store = &*db.store;
    store.create_job(&new_job("j1", EVAL_FEE)).await.unwrap();
    // Not paid yet: no evaluation can be recorded.
    assert!(matches!(
        store
            .job_evaluated(
                "j1",
                &accepted("j1", 1_000),
                &no_credit(),
                NOW,
                REFUND_EXPIRES,
                msat(DUST)
            )
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store
            .job_evaluated(
                "nope",
                &accepted("nope", 1_000),
                &no_credit(),
                NOW,
                REFUND_EXPIRES,
                msat(DUST)
            )
            .await,
        Err(StoreError::NotFound)
    ));
    store
        .job_invoice_paid("eval-j1", "e0", "gw-test", NOW + 1)
        .await
        .unwrap();
    let other = db.reopen().await.unwrap();
    let failed = Evaluation::Failed {
        reason: "timeout".into(),
    };
    let accept = accepted("j1", 40_000);
    let acct = no_credit();
    let (a, b) = tokio::join!(
        store.job_evaluated("j1", &accept, &acct, NOW + 2, REFUND_EXPIRES, msat(DUST)),
        other.job_evaluated("j1", &failed, &acct, NOW + 2, REFUND_EXPIRES, msat(DUST)),
    );
    let (won, lost) = match (a, b) {
        (Ok(w), Err(l)) | (Err(l), Ok(w)) => (w, l),
        other => panic!("expected exactly one winner: {other:?}"),
    };
    assert!(matches!(lost, StoreError::Conflict(_)), "{lost:?}");
    assert_eq!(store.job("j1").await.unwrap().unwrap(), won);
    consistent_ledger(store).await;

    job_executing(store, "j2", 40_000).await;
    let (done, broke) = (
        completed(10_000),
        WorkOutcome::Failed { reason: "x".into() },
    );
    let (a, b) = tokio::join!(
        store.job_finished("j2", &done, &acct, NOW + 4, REFUND_EXPIRES, msat(DUST)),
        other.job_finished("j2", &broke, &acct, NOW + 4, REFUND_EXPIRES, msat(DUST)),
    );
    let won = match (a, b) {
        (Ok(w), Err(StoreError::Conflict(_))) | (Err(StoreError::Conflict(_)), Ok(w)) => w,
        other => panic!("expected exactly one winner: {other:?}"),
    };
    assert_eq!(store.job("j2").await.unwrap().unwrap(), won);
    let refund = store.refund("refund_j2").await.unwrap().unwrap().refund;
    let expected = if won.state == JobState::Complete {
        30_000
    } else {
        40_000
    };
    assert_eq!(refund.amount, msat(expected));
    consistent_ledger(store).await;
}

pub async fn a_refund_is_claimed_and_paid_once(db: &TestDb) {
    let store = &*db.store;
    job_executing(store, "j1", 100_000).await;
    store
        .job_finished(
            "j1",
            &completed(37_500),
            &no_credit(),
            NOW + 4,
            REFUND_EXPIRES,
            msat(DUST),
        )
        .await
        .unwrap();
    let claim = |amount: u64, hash: &str| RefundEvent::Claim {
        invoice_amount: msat(amount),
        invoice_hash: hash.into(),
        invoice_expires_at_ms: i64::MAX,
        max_fee_budget: Msat::ZERO,
        min_fee_budget: Msat::ZERO,
        now_ms: NOW + 5,
    };
    assert!(matches!(
        store.refund_event("nope", claim(62_000, "h1"), NOW).await,
        Err(RefundEventError::Store(StoreError::NotFound))
    ));
    // The invoice must be for exactly the payable whole sats.
    assert!(matches!(
        store
            .refund_event("refund_j1", claim(62_500, "h1"), NOW)
            .await,
        Err(RefundEventError::Refused(RefundError::WrongAmount {
            expected_sats: 62,
            ..
        }))
    ));
    let before = store.refund("refund_j1").await.unwrap().unwrap();
    assert_eq!(before.refund.state, RefundState::Pending);
    let paying = store
        .refund_event("refund_j1", claim(62_000, "h1"), NOW)
        .await
        .unwrap();
    assert_eq!(paying.refund.state, RefundState::Paying);
    assert_eq!(paying.refund.payment_hash.as_deref(), Some("h1"));
    assert_eq!(paying.updated_at_ms, NOW + 5);
    assert_eq!(store.refund("refund_j1").await.unwrap().unwrap(), paying);
    // A second claim, with any invoice, is refused and changes nothing.
    match store
        .refund_event("refund_j1", claim(62_000, "h2"), NOW)
        .await
    {
        Err(RefundEventError::Refused(RefundError::AlreadyClaimed { payment_hash })) => {
            assert_eq!(payment_hash, "h1")
        }
        other => panic!("expected AlreadyClaimed: {other:?}"),
    }
    // Money may be on its way: it cannot expire into the pool.
    assert!(matches!(
        store
            .refund_event(
                "refund_j1",
                RefundEvent::Expire {
                    now_ms: REFUND_EXPIRES
                },
                NOW
            )
            .await,
        Err(RefundEventError::Refused(
            RefundError::PayoutInFlight { .. }
        ))
    ));
    let unknown = store
        .refund_event(
            "refund_j1",
            RefundEvent::PayoutUnknown {
                payment_hash: "h1".into(),
            },
            NOW,
        )
        .await
        .unwrap();
    assert!(unknown.refund.lookup_required);
    let claimed = store
        .refund_event(
            "refund_j1",
            RefundEvent::PayoutSucceeded {
                payment_hash: "h1".into(),
                fee: Msat::ZERO,
                preimage: "p1".into(),
            },
            NOW,
        )
        .await
        .unwrap();
    assert_eq!(claimed.refund.state, RefundState::Claimed);
    assert_eq!(claimed.refund.preimage.as_deref(), Some("p1"));
    assert!(!claimed.refund.lookup_required);
    assert_eq!(
        store.refund("refund_j1").await.unwrap().unwrap().refund,
        claimed.refund
    );
    let report = consistent_ledger(store).await;
    assert_eq!(
        (report.paid_out, report.refunds_owed, report.pool),
        (msat(62_000), Msat::ZERO, msat(500))
    );
    // Paid is final: no claim and no second success posts again.
    assert!(matches!(
        store
            .refund_event("refund_j1", claim(62_000, "h3"), NOW)
            .await,
        Err(RefundEventError::Refused(
            RefundError::AlreadyClaimed { .. }
        ))
    ));
    assert!(matches!(
        store
            .refund_event(
                "refund_j1",
                RefundEvent::PayoutSucceeded {
                    payment_hash: "h1".into(),
                    fee: Msat::ZERO,
                    preimage: "p1".into()
                },
                NOW
            )
            .await,
        Err(RefundEventError::Refused(_))
    ));
    assert_eq!(consistent_ledger(store).await.paid_out, msat(62_000));
}

pub async fn a_failed_payout_can_be_claimed_again(db: &TestDb) {
    let store = &*db.store;
    job_executing(store, "j1", 10_000).await;
    store
        .job_finished(
            "j1",
            &WorkOutcome::Failed { reason: "x".into() },
            &no_credit(),
            NOW + 4,
            REFUND_EXPIRES,
            msat(DUST),
        )
        .await
        .unwrap();
    let claim = |hash: &str| RefundEvent::Claim {
        invoice_amount: msat(10_000),
        invoice_hash: hash.into(),
        invoice_expires_at_ms: i64::MAX,
        max_fee_budget: Msat::ZERO,
        min_fee_budget: Msat::ZERO,
        now_ms: NOW + 5,
    };
    store
        .refund_event("refund_j1", claim("h1"), NOW)
        .await
        .unwrap();
    assert!(matches!(
        store
            .refund_event(
                "refund_j1",
                RefundEvent::PayoutFailed {
                    payment_hash: "other".into()
                },
                NOW
            )
            .await,
        Err(RefundEventError::Refused(RefundError::HashMismatch { .. }))
    ));
    let again = store
        .refund_event(
            "refund_j1",
            RefundEvent::PayoutFailed {
                payment_hash: "h1".into(),
            },
            NOW,
        )
        .await
        .unwrap();
    assert_eq!(
        (again.refund.state, again.refund.payment_hash.clone()),
        (RefundState::Pending, None)
    );
    // Claimable again: with the same invoice (a new one only once it expires;
    // see `a_failed_payout_binds_its_invoice_until_it_expires`).
    assert!(matches!(
        store.refund_event("refund_j1", claim("h2"), NOW).await,
        Err(RefundEventError::Refused(
            RefundError::RetrySameInvoice { .. }
        ))
    ));
    assert_eq!(
        store
            .refund_event("refund_j1", claim("h1"), NOW)
            .await
            .unwrap()
            .refund
            .state,
        RefundState::Paying
    );
    // A retry refused before anything was sent leaves the earlier failure's
    // binding: that first attempt may still settle until the invoice expires.
    store
        .refund_event(
            "refund_j1",
            RefundEvent::PayoutRefused {
                payment_hash: "h1".into(),
            },
            NOW,
        )
        .await
        .unwrap();
    assert!(matches!(
        store.refund_event("refund_j1", claim("h2"), NOW).await,
        Err(RefundEventError::Refused(
            RefundError::RetrySameInvoice { .. }
        ))
    ));
    assert_eq!(
        store
            .refund_event("refund_j1", claim("h1"), NOW)
            .await
            .unwrap()
            .refund
            .state,
        RefundState::Paying
    );
    let report = consistent_ledger(store).await;
    assert_eq!(
        (report.paid_out, report.refunds_owed),
        (Msat::ZERO, msat(10_000))
    );
}

pub async fn unclaimed_refunds_expire_into_the_pool(db: &TestDb) {
    let store = &*db.store;
    job_executing(store, "j1", 100_000).await;
    store
        .job_finished(
            "j1",
            &completed(37_500),
            &no_credit(),
            NOW + 4,
            NOW + 10_000,
            msat(DUST),
        )
        .await
        .unwrap();
    job_executing(store, "j2", 100_000).await;
    store
        .job_finished(
            "j2",
            &completed(37_500),
            &no_credit(),
            NOW + 4,
            NOW + 20_000,
            msat(DUST),
        )
        .await
        .unwrap();
    assert!(store.expired_refunds(NOW + 9_999).await.unwrap().is_empty());
    let due: Vec<String> = store
        .expired_refunds(NOW + 10_000)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(due, vec!["refund_j1".to_owned()]);
    // Too early: refused, nothing changes.
    assert!(matches!(
        store
            .refund_event(
                "refund_j1",
                RefundEvent::Expire {
                    now_ms: NOW + 9_999
                },
                NOW
            )
            .await,
        Err(RefundEventError::Refused(RefundError::NotExpired { .. }))
    ));
    // Claims after the expiry are refused.
    assert!(matches!(
        store
            .refund_event(
                "refund_j1",
                RefundEvent::Claim {
                    invoice_amount: msat(62_000),
                    invoice_hash: "h".into(),
                    invoice_expires_at_ms: i64::MAX,
                    max_fee_budget: Msat::ZERO,
                    min_fee_budget: Msat::ZERO,
                    now_ms: NOW + 10_000
                },
                NOW
            )
            .await,
        Err(RefundEventError::Refused(RefundError::Expired { .. }))
    ));
    let expired = store
        .refund_event(
            "refund_j1",
            RefundEvent::Expire {
                now_ms: NOW + 10_000,
            },
            NOW,
        )
        .await
        .unwrap();
    assert_eq!(expired.refund.state, RefundState::Expired);
    let report = consistent_ledger(store).await;
    assert_eq!(
        (report.refunds_owed, report.pool),
        (msat(62_000), msat(62_500 + 500))
    );
    assert!(
        store
            .expired_refunds(NOW + 10_000)
            .await
            .unwrap()
            .is_empty()
    );
    let due: Vec<String> = store
        .expired_refunds(NOW + 30_000)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(due, vec!["refund_j2".to_owned()]);
    assert!(matches!(
        store
            .refund_event(
                "refund_j1",
                RefundEvent::Expire {
                    now_ms: NOW + 30_000
                },
                NOW
            )
            .await,
        Err(RefundEventError::Refused(RefundError::Expired { .. }))
    ));
}

pub async fn jobs_are_listed_by_state(db: &TestDb) {
    let store = &*db.store;
    store.create_job(&new_job("j1", EVAL_FEE)).await.unwrap();
    job_evaluating(store, "j2", EVAL_FEE).await;
    job_executing(store, "j3", 10_000).await;
    let ids = |jobs: Vec<sluice_store::JobRow>| jobs.into_iter().map(|j| j.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store
            .jobs_in_states(&[JobState::Evaluating, JobState::Executing])
            .await
            .unwrap()),
        vec!["j2".to_owned(), "j3".to_owned()]
    );
    assert_eq!(
        ids(store
            .jobs_in_states(&[JobState::AwaitingEvalPayment])
            .await
            .unwrap()),
        vec!["j1".to_owned()]
    );
    assert!(
        store
            .jobs_in_states(&[JobState::Complete])
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.jobs_in_states(&[]).await.unwrap().is_empty());
}

pub async fn upgrading_the_ledger_keeps_its_rows(db: &TestDb) {
    // A ledger written before jobs existed: one deposit, one hold.
    let legacy = "INSERT INTO sessions (id, state, balance_msat, held_msat, deposited_msat, spent_msat, created_at, \
                  expires_at, updated_at) VALUES ('s1', 'active', 30000, 20000, 50000, 0, 1, 2, 1); \
                  INSERT INTO ledger_tx (id, kind, idempotency_key, created_at) VALUES \
                  ('t1', 'deposit', 'deposit:h1', 1), ('t2', 'hold', 'hold:r1', 2); \
                  INSERT INTO ledger_entry (tx_id, account, amount_msat) VALUES \
                  ('t1', 'lightning:in', -50000), ('t1', 'session:s1', 50000), \
                  ('t2', 'session:s1', -20000), ('t2', 'session:s1:held', 20000);";
    let store = db.upgraded_from(2, legacy).await;
    let report = consistent_ledger(&*store).await;
    assert_eq!(report.transactions, 2);
    assert_eq!(
        (report.received, report.balances, report.held),
        (msat(50_000), msat(30_000), msat(20_000))
    );
    // The new kinds are accepted, and the old rows still hold a repeat off.
    job_evaluating(&*store, "j1", EVAL_FEE).await;
    credit_once(&*store).await;
    let report = consistent_ledger(&*store).await;
    assert_eq!(
        (report.transactions, report.received),
        (4, msat(50_000 + EVAL_FEE + 10_000))
    );
    assert_eq!(report.balances, msat(30_000 + 10_000));
}

/// Credit a new session's deposit, then check that a repeat is refused by its
/// idempotency key (which the upgrade must keep unique).
async fn credit_once(store: &dyn Store) {
    let (s, inv) = new_session("s2", 10_000);
    store.create_session(&s, &inv).await.unwrap();
    store
        .credit_invoice("dep-s2", "00", NOW, &policy())
        .await
        .unwrap();
    assert_eq!(
        store
            .credit_invoice("dep-s2", "00", NOW, &policy())
            .await
            .unwrap(),
        Credit::AlreadyCredited
    );
}

// ---- identity, trust and the free tier ----

/// A test identity key (64 hex digits).
fn pk(i: u32) -> String {
    format!("{i:064x}")
}

/// Accounting crediting the pool `pct` percent of each charge.
fn credit(pct: u32) -> Accounting {
    Accounting {
        pool_credit_pct: pct,
        ..Default::default()
    }
}

/// A grant ask.
fn ask(kind: GrantKind, pubkey: Option<&str>, cap: u64, allowance: Option<u64>) -> GrantAsk {
    GrantAsk {
        kind,
        pubkey: pubkey.map(str::to_owned),
        tier: if pubkey.is_some() {
            Tier::Established
        } else {
            Tier::Anonymous
        },
        model: "free-model".to_owned(),
        cap: msat(cap),
        allowance: allowance.map(msat),
    }
}

/// A hold bound to identity `pubkey`.
fn hold_as(session: &str, request: &str, amount: u64, pubkey: &str) -> sluice_store::NewHold {
    sluice_store::NewHold {
        pubkey: Some(pubkey.to_owned()),
        deadline_ms: NOW + 600_000,
        ..hold(session, request, amount)
    }
}

/// The grant's posting count: how many `grant:<id>` transactions exist (0 or 1).
async fn ledger_tx_count(store: &dyn Store) -> u64 {
    store.check_ledger().await.unwrap().transactions
}

const TODAY: i64 = NOW / DAY_MS;

pub async fn the_pool_is_seeded_once(db: &TestDb) {
    let store = &*db.store;
    assert!(
        !store.seed_pool(Msat::ZERO, NOW).await.unwrap(),
        "a zero seed writes nothing"
    );
    assert_eq!(ledger_tx_count(store).await, 0);
    assert!(store.seed_pool(msat(100_000), NOW).await.unwrap());
    // A second gateway starting with another setting does not seed again.
    let other = db.reopen().await.unwrap();
    assert!(!other.seed_pool(msat(500_000), NOW + 1).await.unwrap());
    assert!(!store.seed_pool(msat(100_000), NOW + 2).await.unwrap());
    assert_eq!(store.pool_balance().await.unwrap(), msat(100_000));
    let status = store.pool_status(TODAY).await.unwrap();
    assert_eq!(
        status,
        PoolStatus {
            balance: msat(100_000),
            seeded: msat(100_000),
            ..Default::default()
        }
    );
    let report = consistent_ledger(store).await;
    assert_eq!(
        (report.seeded, report.pool, report.transactions),
        (msat(100_000), msat(100_000), 1)
    );
    // The pool row is checked against its account.
    db.raw("UPDATE pool SET balance_msat = balance_msat + 1")
        .await;
    let report = store.check_ledger().await.unwrap();
    assert!(
        report.pool_mismatch && !report.is_consistent(),
        "{report:?}"
    );
}

pub async fn a_paid_settle_credits_the_pool_and_the_identity(db: &TestDb) {
    let store = &*db.store;
    let alice = pk(1);
    funded(store, "s1", 500_000).await;
    assert!(is_held(
        &store
            .hold(&hold_as("s1", "r1", 400_000, &alice))
            .await
            .unwrap()
    ));
    let mut s = settle("r1", 300_000);
    s.accounting = credit(10);
    let settled = store.settle(&s).await.unwrap();
    assert_eq!(
        (settled.charged, settled.absorbed, settled.released),
        (msat(300_000), Msat::ZERO, msat(100_000))
    );
    let row = store.request("r1").await.unwrap().unwrap();
    assert_eq!(
        (row.pubkey.as_deref(), row.absorbed),
        (Some(alice.as_str()), None)
    );
    // 10 % of the charge feeds the pool; the operator keeps the rest.
    let report = consistent_ledger(store).await;
    assert_eq!((report.revenue, report.pool), (msat(270_000), msat(30_000)));
    let status = store.pool_status(TODAY).await.unwrap();
    assert_eq!(
        (status.balance, status.credited, status.seeded),
        (msat(30_000), msat(30_000), Msat::ZERO)
    );
    // Paying 300 sats earns 300 points.
    let id = store.identity(&alice).await.unwrap().unwrap();
    assert_eq!(
        (id.score, id.successes, id.failures, id.paid),
        (300, 1, 0, msat(300_000))
    );
    assert_eq!(id.last_seen_ms, NOW + 1_000);
    // A released request is neither a success nor a failure, and credits nothing.
    assert!(is_held(
        &store
            .hold(&hold_as("s1", "r2", 50_000, &alice))
            .await
            .unwrap()
    ));
    let r = store
        .release("r2", RequestStatus::Failed, NOW + 2_000, &policy())
        .await
        .unwrap();
    assert_eq!((r.charged, r.absorbed), (Msat::ZERO, Msat::ZERO));
    let id = store.identity(&alice).await.unwrap().unwrap();
    assert_eq!((id.score, id.successes, id.failures), (300, 1, 0));
    assert_eq!(consistent_ledger(store).await.pool, msat(30_000));
}

pub async fn a_partial_grant_settles_the_rest_on_the_payer(db: &TestDb) {
    let store = &*db.store;
    let alice = pk(1);
    store.seed_pool(msat(1_000_000), NOW).await.unwrap();
    funded(store, "s1", 100_000).await;
    // Estimate 10 000: the pool takes up to 4 000, the hold covers the payer's 6 000.
    assert!(is_held(
        &store
            .hold(&hold_as("s1", "r1", 6_000, &alice))
            .await
            .unwrap()
    ));
    let mut s = settle("r1", 12_000);
    s.grant = Some(ask(GrantKind::Chat, Some(&alice), 4_000, Some(50_000)));
    s.accounting = credit(10);
    let settled = store.settle(&s).await.unwrap();
    // The answer cost 12 000: the pool pays its 4 000, the payer the rest capped at the hold.
    assert_eq!(
        (settled.charged, settled.absorbed, settled.released),
        (msat(6_000), msat(4_000), Msat::ZERO)
    );
    let row = store.request("r1").await.unwrap().unwrap();
    assert_eq!(
        (row.absorbed, row.charged, row.uncharged),
        (Some(msat(4_000)), Some(msat(6_000)), Some(msat(2_000)))
    );
    let grant = store.grant("r1").await.unwrap().unwrap();
    assert_eq!(
        grant,
        GrantRow {
            id: "r1".to_owned(),
            kind: GrantKind::Chat,
            pubkey: Some(alice.clone()),
            tier: Tier::Established,
            model: "free-model".to_owned(),
            requested: msat(4_000),
            absorbed: msat(4_000),
            day: TODAY,
            created_at_ms: NOW + 1_000,
        }
    );
    let id = store.identity(&alice).await.unwrap().unwrap();
    assert_eq!(
        (id.absorbed_today, id.absorbed_day, id.absorbed, id.paid),
        (msat(4_000), TODAY, msat(4_000), msat(6_000))
    );
    // Cheaper than estimated: the pool still pays first, the payer gets the rest of the hold back.
    assert!(is_held(
        &store
            .hold(&hold_as("s1", "r2", 6_000, &alice))
            .await
            .unwrap()
    ));
    let mut s = settle("r2", 5_000);
    s.grant = Some(ask(GrantKind::Chat, Some(&alice), 4_000, Some(50_000)));
    s.accounting = credit(10);
    let settled = store.settle(&s).await.unwrap();
    assert_eq!(
        (settled.charged, settled.absorbed, settled.released),
        (msat(1_000), msat(4_000), msat(5_000))
    );
    let status = store.pool_status(TODAY).await.unwrap();
    assert_eq!(
        (
            status.balance,
            status.grants_today,
            status.absorbed_today,
            status.absorbed,
            status.credited
        ),
        (
            msat(1_000_000 - 8_000 + 600 + 100),
            2,
            msat(8_000),
            msat(8_000),
            msat(700)
        )
    );
    assert_eq!(
        store
            .grants_for(&alice)
            .await
            .unwrap()
            .iter()
            .map(|g| g.id.as_str())
            .collect::<Vec<_>>(),
        ["r2", "r1"]
    );
    let report = consistent_ledger(store).await;
    // The operator earns the whole cost of both answers, less the pool's credits.
    assert_eq!(report.revenue, msat(12_000 - 2_000 + 5_000 - 700));
    assert_eq!(report.seeded, msat(1_000_000));
}

pub async fn grants_are_capped_by_allowance_and_pool(db: &TestDb) {
    let store = &*db.store;
    let alice = pk(1);
    let acct = no_credit();
    store.seed_pool(msat(20_000), NOW).await.unwrap();
    let a = ask(GrantKind::Chat, Some(&alice), 5_000, Some(6_000));
    assert_eq!(
        store
            .record_grant("c1", &a, msat(5_000), &acct, NOW)
            .await
            .unwrap(),
        msat(5_000)
    );
    // Only 1 000 of the daily 6 000 is left.
    assert_eq!(
        store
            .record_grant("c2", &a, msat(5_000), &acct, NOW)
            .await
            .unwrap(),
        msat(1_000)
    );
    let before = ledger_tx_count(store).await;
    assert_eq!(
        store
            .record_grant("c3", &a, msat(5_000), &acct, NOW)
            .await
            .unwrap(),
        Msat::ZERO
    );
    assert_eq!(store.grant("c3").await.unwrap(), None);
    assert_eq!(ledger_tx_count(store).await, before, "a zero grant posted");
    let id = store.identity(&alice).await.unwrap().unwrap();
    assert_eq!((id.absorbed_today, id.successes), (msat(6_000), 2));
    // The demo has no allowance: the pool's 14 000 left is the limit.
    let demo = ask(GrantKind::Demo, None, 20_000, None);
    assert_eq!(
        store
            .record_grant("d1", &demo, msat(25_000), &acct, NOW)
            .await
            .unwrap(),
        msat(14_000)
    );
    let row = store.grant("d1").await.unwrap().unwrap();
    assert_eq!(
        (row.requested, row.absorbed, row.pubkey),
        (msat(20_000), msat(14_000), None)
    );
    // The pool is empty: nothing more is absorbed or written.
    assert_eq!(
        store
            .record_grant("d2", &demo, msat(1_000), &acct, NOW)
            .await
            .unwrap(),
        Msat::ZERO
    );
    assert_eq!(store.grant("d2").await.unwrap(), None);
    funded(store, "s1", 100_000).await;
    assert!(is_held(
        &store
            .hold(&hold_as("s1", "r1", 6_000, &pk(2)))
            .await
            .unwrap()
    ));
    let mut s = settle("r1", 8_000);
    s.grant = Some(ask(GrantKind::Chat, Some(&pk(2)), 4_000, Some(50_000)));
    let before = ledger_tx_count(store).await;
    let settled = store.settle(&s).await.unwrap();
    // The payer pays it all, capped at the hold.
    assert_eq!(
        (settled.charged, settled.absorbed),
        (msat(6_000), Msat::ZERO)
    );
    assert_eq!(
        store.request("r1").await.unwrap().unwrap().absorbed,
        Some(Msat::ZERO)
    );
    assert_eq!(store.grant("r1").await.unwrap(), None);
    assert_eq!(
        ledger_tx_count(store).await,
        before + 1,
        "only the settle was posted"
    );
    let status = store.pool_status(TODAY).await.unwrap();
    assert_eq!(
        (status.balance, status.absorbed, status.grants_today),
        (Msat::ZERO, msat(20_000), 3)
    );
    consistent_ledger(store).await;
}

pub async fn the_allowance_starts_again_each_day(db: &TestDb) {
    let store = &*db.store;
    let alice = pk(1);
    let acct = no_credit();
    store.seed_pool(msat(100_000), NOW).await.unwrap();
    let a = ask(GrantKind::Chat, Some(&alice), 5_000, Some(8_000));
    let tomorrow = (TODAY + 1) * DAY_MS;
    assert_eq!(
        store
            .record_grant("g1", &a, msat(5_000), &acct, tomorrow - 2)
            .await
            .unwrap(),
        msat(5_000)
    );
    assert_eq!(
        store
            .record_grant("g2", &a, msat(5_000), &acct, tomorrow - 1)
            .await
            .unwrap(),
        msat(3_000)
    );
    assert_eq!(
        store
            .record_grant("g3", &a, msat(5_000), &acct, tomorrow - 1)
            .await
            .unwrap(),
        Msat::ZERO
    );
    // One millisecond later it is a new UTC day.
    assert_eq!(
        store
            .record_grant("g4", &a, msat(5_000), &acct, tomorrow)
            .await
            .unwrap(),
        msat(5_000)
    );
    let id = store.identity(&alice).await.unwrap().unwrap();
    assert_eq!(
        (id.absorbed_today, id.absorbed_day, id.absorbed),
        (msat(5_000), TODAY + 1, msat(13_000))
    );
    let today = store.pool_status(TODAY).await.unwrap();
    let next = store.pool_status(TODAY + 1).await.unwrap();
    assert_eq!((today.grants_today, today.absorbed_today), (2, msat(8_000)));
    assert_eq!((next.grants_today, next.absorbed_today), (1, msat(5_000)));
    assert_eq!(next.balance, msat(100_000 - 13_000));
    consistent_ledger(store).await;
}

pub async fn recording_a_grant_twice_absorbs_once(db: &TestDb) {
    let store = &*db.store;
    let alice = pk(1);
    let acct = no_credit();
    store.seed_pool(msat(100_000), NOW).await.unwrap();
    let a = ask(GrantKind::Chat, Some(&alice), 4_000, Some(50_000));
    assert_eq!(
        store
            .record_grant("x", &a, msat(4_000), &acct, NOW)
            .await
            .unwrap(),
        msat(4_000)
    );
    let before = ledger_tx_count(store).await;
    // A repeat, even asking for more, returns the first amount and writes nothing.
    let more = ask(GrantKind::Chat, Some(&alice), 9_000, Some(50_000));
    assert_eq!(
        store
            .record_grant("x", &more, msat(9_000), &acct, NOW + 1)
            .await
            .unwrap(),
        msat(4_000)
    );
    assert_eq!(ledger_tx_count(store).await, before);
    // Concurrent repeats of a new id, from two processes: one grant.
    let other = db.reopen().await.unwrap();
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let s = if i % 2 == 0 {
                Arc::clone(&db.store)
            } else {
                Arc::clone(&other)
            };
            let a = a.clone();
            tokio::spawn(async move {
                s.record_grant("y", &a, msat(3_000), &no_credit(), NOW + 2)
                    .await
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), msat(3_000));
    }
    let id = store.identity(&alice).await.unwrap().unwrap();
    assert_eq!(
        (id.absorbed, id.successes, id.score),
        (msat(7_000), 2, 0),
        "free answers earn no points"
    );
    let status = store.pool_status(TODAY).await.unwrap();
    assert_eq!((status.balance, status.grants_today), (msat(93_000), 2));
    assert_eq!(ledger_tx_count(store).await, before + 1);
    consistent_ledger(store).await;
}

fn new_job_as(id: &str, pubkey: &str) -> NewJob {
    NewJob {
        pubkey: Some(pubkey.to_owned()),
        ..new_job(id, EVAL_FEE)
    }
}

async fn paid_eval(store: &dyn Store, id: &str, pubkey: &str) {
    store.create_job(&new_job_as(id, pubkey)).await.unwrap();
    let job = store
        .job_invoice_paid(&format!("eval-{id}"), "e0", "gw-test", NOW + 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (job.state, job.pubkey.as_deref()),
        (JobState::Evaluating, Some(pubkey))
    );
}

pub async fn free_and_partial_jobs_use_the_pool(db: &TestDb) {
    let store = &*db.store;
    let alice = pk(1);
    let acct = credit(10);
    store.seed_pool(msat(1_000_000), NOW).await.unwrap();

    // Free: no work invoice, straight to executing.
    paid_eval(store, "j1", &alice).await;
    let free = Evaluation::AcceptedFree {
        grant: ask(GrantKind::Job, Some(&alice), 30_000, Some(50_000)),
        btc_usd_micros: 100_000_000_000,
        est_input_tokens: 40,
        est_output_tokens: 300,
    };
    let job = store
        .job_evaluated("j1", &free, &acct, NOW + 2, REFUND_EXPIRES, msat(DUST))
        .await
        .unwrap();
    assert_eq!(
        (job.state, job.work_invoice.clone()),
        (JobState::Executing, None)
    );
    assert_eq!(
        (job.free_tier.as_deref(), job.absorb_cap, job.absorbed),
        (Some("free"), Some(msat(30_000)), None)
    );
    assert_eq!(
        (job.work_btc_usd_micros, job.est_output_tokens),
        (Some(100_000_000_000), Some(300))
    );
    assert!(store.pending_job_invoices(10).await.unwrap().is_empty());
    consistent_ledger(store).await;
    let job = store
        .job_finished(
            "j1",
            &completed(25_000),
            &acct,
            NOW + 3,
            REFUND_EXPIRES,
            msat(DUST),
        )
        .await
        .unwrap();
    assert_eq!(job.state, JobState::Complete);
    assert_eq!(
        (job.absorbed, job.work_charged, job.refund_id.clone()),
        (Some(msat(25_000)), Some(Msat::ZERO), None)
    );
    let grant = store.grant("j1").await.unwrap().unwrap();
    assert_eq!(
        (grant.kind, grant.absorbed, grant.model.as_str()),
        (GrantKind::Job, msat(25_000), "worker")
    );
    let id = store.identity(&alice).await.unwrap().unwrap();
    // It paid the evaluation fee (5.5 sats: five points), the pool the work.
    assert_eq!(
        (id.successes, id.paid, id.absorbed_today, id.score),
        (1, msat(EVAL_FEE), msat(25_000), 5)
    );

    // Partial: quoted 40 000, the pool takes up to 10 000, the invoice asks 30 000.
    paid_eval(store, "j2", &alice).await;
    let partial = Evaluation::Accepted {
        work_invoice: job_invoice("work-j2", 30_000),
        grant: Some(ask(GrantKind::Job, Some(&alice), 10_000, Some(50_000))),
        btc_usd_micros: 100_000_000_000,
        est_input_tokens: 40,
        est_output_tokens: 300,
    };
    let job = store
        .job_evaluated("j2", &partial, &acct, NOW + 2, REFUND_EXPIRES, msat(DUST))
        .await
        .unwrap();
    assert_eq!(
        (job.state, job.free_tier.as_deref()),
        (JobState::AwaitingWorkPayment, Some("partial"))
    );
    store
        .job_invoice_paid("work-j2", "w0", "gw-test", NOW + 3)
        .await
        .unwrap()
        .unwrap();
    // The work cost 32 000: the pool 10 000, the payer 22 000 of its 30 000, 8 000 refunded.
    let job = store
        .job_finished(
            "j2",
            &completed(32_000),
            &acct,
            NOW + 4,
            REFUND_EXPIRES,
            msat(DUST),
        )
        .await
        .unwrap();
    assert_eq!(
        (job.absorbed, job.work_charged),
        (Some(msat(10_000)), Some(msat(22_000)))
    );
    let refund = store.refund("refund_j2").await.unwrap().unwrap();
    assert_eq!(refund.refund.amount, msat(8_000));
    let id = store.identity(&alice).await.unwrap().unwrap();
    assert_eq!(
        (id.successes, id.paid, id.absorbed_today),
        (2, msat(2 * EVAL_FEE + 22_000), msat(35_000))
    );
    let status = store.pool_status(TODAY).await.unwrap();
    // Credits: 10 % of two evaluation fees and of the 22 000 work charge.
    assert_eq!(status.credited, msat(550 + 550 + 2_200));
    assert_eq!(status.balance, msat(1_000_000 - 35_000 + 3_300));
    let report = consistent_ledger(store).await;
    assert_eq!(report.revenue, msat(2 * EVAL_FEE + 25_000 + 32_000 - 3_300));
}

pub async fn a_rejected_job_costs_its_identity_and_vouchers(db: &TestDb) {
    let store = &*db.store;
    let (voucher, vouchee) = (pk(1), pk(2));
    let trust = TrustRules::default();
    let v = store
        .record_interaction(
            &voucher,
            Interaction::Paid {
                paid: msat(10_000_000),
            },
            &trust,
            NOW,
        )
        .await
        .unwrap();
    assert_eq!(v.score, 10_000, "one point per sat paid");
    let vouch = NewVouch {
        voucher: voucher.clone(),
        vouchee: vouchee.clone(),
        event_id: "ev1".to_owned(),
        now_ms: NOW,
    };
    assert_eq!(
        store.add_vouch(&vouch, 5).await.unwrap(),
        VouchOutcome::Added
    );
    store
        .record_interaction(
            &vouchee,
            Interaction::Paid {
                paid: msat(700_000),
            },
            &trust,
            NOW,
        )
        .await
        .unwrap();
    paid_eval(store, "j1", &vouchee).await;
    let rejected = Evaluation::Rejected {
        reason: "no".into(),
    };
    let job = store
        .job_evaluated(
            "j1",
            &rejected,
            &credit(10),
            NOW + 2,
            REFUND_EXPIRES,
            msat(DUST),
        )
        .await
        .unwrap();
    assert_eq!(job.state, JobState::Rejected);
    let failed = store.identity(&vouchee).await.unwrap().unwrap();
    // 700 points, less the failure penalty.
    assert_eq!(
        (failed.score, failed.successes, failed.failures),
        (700 - trust.failure_penalty, 1, 1)
    );
    let v = store.identity(&voucher).await.unwrap().unwrap();
    assert_eq!(v.score, 10_000 - trust.vouch_penalty);
    // The evaluation fee was still earned, and credits the pool.
    assert_eq!(store.pool_status(TODAY).await.unwrap().credited, msat(550));
    consistent_ledger(store).await;
}

pub async fn challenges_and_events_work_once(db: &TestDb) {
    let store = &*db.store;
    store.create_challenge("n1", NOW + 60_000).await.unwrap();
    store.create_challenge("n2", NOW + 60_000).await.unwrap();
    assert_eq!(
        store.consume_challenge("n1", NOW).await.unwrap(),
        ChallengeUse::Consumed
    );
    assert_eq!(
        store.consume_challenge("n1", NOW).await.unwrap(),
        ChallengeUse::Unknown
    );
    assert_eq!(
        store.consume_challenge("never", NOW).await.unwrap(),
        ChallengeUse::Unknown
    );
    assert_eq!(
        store.consume_challenge("n2", NOW + 60_000).await.unwrap(),
        ChallengeUse::Expired
    );
    assert_eq!(
        store.consume_challenge("n2", NOW).await.unwrap(),
        ChallengeUse::Unknown
    );
    assert!(store.remember_event("e1", NOW + 60_000, NOW).await.unwrap());
    assert!(
        !store
            .remember_event("e1", NOW + 60_000, NOW + 1)
            .await
            .unwrap(),
        "a replay"
    );
    // Once expired, an id is forgotten.
    assert!(
        store
            .remember_event("e1", NOW + 120_000, NOW + 60_000)
            .await
            .unwrap()
    );
}

pub async fn vouches_are_limited(db: &TestDb) {
    let store = &*db.store;
    let (elite, a, b, c) = (pk(1), pk(2), pk(3), pk(4));
    let vouch = |vouchee: &str, ev: &str| NewVouch {
        voucher: elite.clone(),
        vouchee: vouchee.to_owned(),
        event_id: ev.to_owned(),
        now_ms: NOW,
    };
    assert_eq!(
        store.add_vouch(&vouch(&a, "e1"), 2).await.unwrap(),
        VouchOutcome::Added
    );
    assert_eq!(
        store.add_vouch(&vouch(&a, "e2"), 2).await.unwrap(),
        VouchOutcome::AlreadyVouched
    );
    assert_eq!(
        store.add_vouch(&vouch(&b, "e3"), 2).await.unwrap(),
        VouchOutcome::Added
    );
    assert_eq!(
        store.add_vouch(&vouch(&c, "e4"), 2).await.unwrap(),
        VouchOutcome::TooMany { max: 2 }
    );
    assert_eq!(
        store.vouchees_of(&elite).await.unwrap(),
        vec![a.clone(), b.clone()]
    );
    let vouchers = store.vouchers_of(&a).await.unwrap();
    assert_eq!(
        vouchers
            .iter()
            .map(|v| v.pubkey.as_str())
            .collect::<Vec<_>>(),
        [elite.as_str()]
    );
    // A voucher without an identity row is not listed.
    db.raw(&format!(
        "INSERT INTO vouches (voucher, vouchee, event_id, created_at) VALUES ('{}', '{a}', 'e5', 1)",
        pk(9)
    ))
    .await;
    assert_eq!(store.vouchers_of(&a).await.unwrap().len(), 1);
    assert!(store.vouchers_of(&c).await.unwrap().is_empty());
}

pub async fn scores_decay_after_a_long_absence(db: &TestDb) {
    let store = &*db.store;
    let trust = TrustRules::default();
    let alice = pk(1);
    store
        .record_interaction(
            &alice,
            Interaction::Paid {
                paid: msat(10_000_000),
            },
            &trust,
            NOW,
        )
        .await
        .unwrap();
    // Ten days away: nothing lost.
    let t = store
        .touch_identity(&alice, &trust, NOW + 10 * DAY_MS)
        .await
        .unwrap();
    assert_eq!(
        (t.score, t.last_seen_ms, t.first_seen_ms),
        (10_000, NOW + 10 * DAY_MS, NOW)
    );
    // 61 days away: two 30-day periods at 25 %: 10 000 → 7 500 → 5 625.
    let back = NOW + 71 * DAY_MS;
    let t = store.touch_identity(&alice, &trust, back).await.unwrap();
    assert_eq!((t.score, t.last_seen_ms), (5_625, back));
    // Coming back again at once decays nothing more.
    assert_eq!(
        store
            .touch_identity(&alice, &trust, back + 1)
            .await
            .unwrap()
            .score,
        5_625
    );
    // A new key starts at zero.
    let fresh = store.touch_identity(&pk(2), &trust, NOW).await.unwrap();
    assert_eq!(
        (fresh.score, fresh.successes, fresh.first_seen_ms),
        (0, 0, NOW)
    );
    assert_eq!(store.identity(&pk(3)).await.unwrap(), None);
}

pub async fn concurrent_grants_never_overdraw_the_pool(db: &TestDb) {
    const SEED: u64 = 100_000;
    const ALLOWANCE: u64 = 8_000;
    const IDS: u32 = 40;
    const GRANTS: u32 = 300;
    const SESSIONS: u32 = 20;
    db.store.seed_pool(msat(SEED), NOW).await.unwrap();
    for s in 0..SESSIONS {
        funded(&*db.store, &format!("s{s}"), 50_000).await;
        let h = hold_as(&format!("s{s}"), &format!("r{s}"), 3_000, &pk(s % IDS));
        assert!(is_held(&db.store.hold(&h).await.unwrap()));
    }
    let other = db.reopen().await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..GRANTS {
        let store = if i % 2 == 0 {
            Arc::clone(&db.store)
        } else {
            Arc::clone(&other)
        };
        let cap = 2_000 + u64::from(i * 37 % 3_001);
        let a = ask(GrantKind::Chat, Some(&pk(i % IDS)), cap, Some(ALLOWANCE));
        tasks.push(tokio::spawn(async move {
            store
                .record_grant(&format!("g{i}"), &a, msat(cap), &no_credit(), NOW)
                .await
                .map(|g| (g, msat(cap)))
        }));
        if i % 15 == 0 {
            // A session request settled with a grant, at the same time.
            let s = i / 15;
            let store = if s % 2 == 0 {
                Arc::clone(&other)
            } else {
                Arc::clone(&db.store)
            };
            let mut req = settle(&format!("r{s}"), 6_000);
            req.grant = Some(ask(
                GrantKind::Chat,
                Some(&pk(s % IDS)),
                3_000,
                Some(ALLOWANCE),
            ));
            req.accounting = credit(10);
            req.now_ms = NOW;
            tasks.push(tokio::spawn(async move {
                store.settle(&req).await.map(|s| (s.absorbed, msat(3_000)))
            }));
        }
    }
    let mut zero = 0;
    let mut total = Msat::ZERO;
    for t in tasks {
        let (g, asked) = t.await.unwrap().unwrap();
        assert!(g <= asked, "absorbed {g} of an ask of {asked}");
        if g == Msat::ZERO {
            zero += 1;
        }
        total = total.checked_add(g).unwrap();
    }
    assert!(zero > 0, "the pool or the allowances must have run out");
    let status = db.store.pool_status(TODAY).await.unwrap();
    // Every msat the pool paid out is accounted for, and it paid no more than it had.
    assert_eq!(status.absorbed, total);
    assert_eq!(
        status.seeded.checked_add(status.credited).unwrap(),
        status.balance.checked_add(status.absorbed).unwrap()
    );
    assert!(status.credited > Msat::ZERO);
    // The pool was the binding limit: 40 allowances of 8 000 exceed it.
    assert!(total < msat(u64::from(IDS) * ALLOWANCE));
    assert!(
        status.balance < msat(2_000),
        "the pool was not drained: {status:?}"
    );
    let mut sum = Msat::ZERO;
    for i in 0..IDS {
        let grants = db.store.grants_for(&pk(i)).await.unwrap();
        let mine = grants
            .iter()
            .fold(Msat::ZERO, |a, g| a.checked_add(g.absorbed).unwrap());
        assert!(mine <= msat(ALLOWANCE), "{} absorbed {mine}", pk(i));
        if let Some(id) = db.store.identity(&pk(i)).await.unwrap() {
            assert_eq!(id.absorbed_today, mine);
            assert_eq!(id.absorbed, mine);
        } else {
            assert_eq!(mine, Msat::ZERO);
        }
        sum = sum.checked_add(mine).unwrap();
    }
    assert_eq!(sum, total);
    let report = consistent_ledger(&*db.store).await;
    assert_eq!(report.pool, status.balance);
}

pub async fn upgrading_keeps_the_pool_it_had(db: &TestDb) {
    // A ledger from before the free tier, whose pool already holds a refund remainder.
    let legacy = "INSERT INTO sessions (id, state, balance_msat, held_msat, deposited_msat, spent_msat, created_at, \
                  expires_at, updated_at) VALUES ('s1', 'active', 49300, 0, 50000, 0, 1, 2, 1); \
                  INSERT INTO ledger_tx (id, kind, idempotency_key, created_at) VALUES \
                  ('t1', 'deposit', 'deposit:h1', 1), ('t2', 'refund_to_pool', 'pool:x', 2); \
                  INSERT INTO ledger_entry (tx_id, account, amount_msat) VALUES \
                  ('t1', 'lightning:in', -50000), ('t1', 'session:s1', 50000), \
                  ('t2', 'session:s1', -700), ('t2', 'pool:generosity', 700);";
    let store = db.upgraded_from(3, legacy).await;
    let report = consistent_ledger(&*store).await;
    assert_eq!((report.pool, report.seeded), (msat(700), Msat::ZERO));
    assert_eq!(store.pool_status(TODAY).await.unwrap().balance, msat(700));
    // The new kinds are accepted.
    assert!(store.seed_pool(msat(1_000), NOW).await.unwrap());
    let demo = ask(GrantKind::Demo, None, 5_000, None);
    assert_eq!(
        store
            .record_grant("d1", &demo, msat(5_000), &no_credit(), NOW)
            .await
            .unwrap(),
        msat(1_700)
    );
    let report = consistent_ledger(&*store).await;
    assert_eq!(
        (report.pool, report.seeded, report.revenue),
        (Msat::ZERO, msat(1_000), msat(1_700))
    );
}

// ---- Closing the money holes (the audit's regressions) ----

/// One write failure (a full disk, or here a trigger that rolls the whole
/// transaction back as SQLite does on `SQLITE_FULL`) left a pooled SQLite
/// connection mid-transaction: every later write failed with "attempted to
/// call begin_with at non-zero transaction depth" until a restart.
pub async fn a_failed_write_does_not_poison_the_store(db: &TestDb) {
    let store = &*db.store;
    funded(store, "s1", 1_000_000).await;
    match db.dialect() {
        "sqlite" => {
            db.raw(
                "CREATE TRIGGER inject_fault BEFORE INSERT ON ledger_entry \
                 BEGIN SELECT RAISE(ROLLBACK, 'injected fault'); END",
            )
            .await;
        }
        _ => {
            db.raw(
                "CREATE FUNCTION inject_fault() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'injected fault'; END $$ \
                 LANGUAGE plpgsql; \
                 CREATE TRIGGER inject_fault BEFORE INSERT ON ledger_entry FOR EACH ROW EXECUTE FUNCTION inject_fault()",
            )
            .await;
        }
    }
    // While the fault lasts, nothing is held (or charged).
    for i in 0..4 {
        let r = store.hold(&hold("s1", &format!("bad{i}"), 1_000)).await;
        assert!(r.is_err(), "a hold succeeded while writes fail: {r:?}");
    }
    match db.dialect() {
        "sqlite" => db.raw("DROP TRIGGER inject_fault").await,
        _ => db.raw("DROP TRIGGER inject_fault ON ledger_entry").await,
    };
    // Once it is gone, the store serves again without a restart: every pooled
    // connection, not just a fresh one.
    store.ping().await.unwrap();
    for i in 0..24 {
        let id = format!("ok{i}");
        assert!(
            is_held(&store.hold(&hold("s1", &id, 1_000)).await.unwrap()),
            "hold {i}"
        );
        store.settle(&settle(&id, 700)).await.unwrap();
    }
    for i in 0..4 {
        assert!(store.request(&format!("bad{i}")).await.unwrap().is_none());
    }
    let report = consistent_ledger(store).await;
    assert_eq!(report.revenue, msat(24 * 700));
}

/// A hold taken by a live process whose request never ended (its settle was
/// lost) stayed open until a restart, blocking `close`.
pub async fn a_hold_past_its_deadline_is_released_and_a_late_settle_is_a_recorded_loss(
    db: &TestDb,
) {
    let store = &*db.store;
    funded(store, "s1", 100_000).await;
    let mut h = hold("s1", "r1", 5_000);
    h.deadline_ms = NOW + 1_000;
    assert!(is_held(&store.hold(&h).await.unwrap()));
    store.heartbeat("gw-1", NOW + 5_000).await.unwrap(); // its process is alive
    let ids =
        |rows: Vec<sluice_store::RequestRow>| rows.into_iter().map(|r| r.id).collect::<Vec<_>>();
    assert!(
        ids(store
            .abandoned_holds(NOW, NOW + 999, "gw-self")
            .await
            .unwrap())
        .is_empty()
    );
    assert_eq!(
        ids(store
            .abandoned_holds(NOW, NOW + 1_001, "gw-1")
            .await
            .unwrap()),
        vec!["r1"]
    );
    store
        .release("r1", RequestStatus::Abandoned, NOW + 1_001, &policy())
        .await
        .unwrap();
    // The owner's settlement arrives late: nothing is charged, the loss is recorded.
    match store.settle(&settle("r1", 3_000)).await {
        Err(StoreError::Released { request_id, loss }) => {
            assert_eq!((request_id.as_str(), loss), ("r1", msat(3_000)))
        }
        other => panic!("expected Released: {other:?}"),
    }
    let r = store.request("r1").await.unwrap().unwrap();
    assert_eq!(r.status, RequestStatus::Abandoned);
    assert_eq!(
        (r.charged, r.uncharged),
        (Some(Msat::ZERO), Some(msat(3_000)))
    );
    let s = store.session("s1").await.unwrap().unwrap();
    assert_eq!((s.balance, s.held), (msat(100_000), Msat::ZERO));
    consistent_ledger(store).await;
}

/// A job invoice paid while the gateway was down and seen after its expiry
/// was never looked up again: the payer lost it, the ledger never saw it.
pub async fn a_job_invoice_paid_after_its_expiry_is_still_credited(db: &TestDb) {
    let store = &*db.store;
    store.create_job(&new_job("j1", EVAL_FEE)).await.unwrap();
    store.create_job(&new_job("j2", EVAL_FEE)).await.unwrap();
    // Long past both invoices' expiry, both are still looked up.
    let hashes =
        |p: Vec<PendingJobInvoice>| p.into_iter().map(|p| p.payment_hash).collect::<Vec<_>>();
    assert_eq!(
        hashes(store.pending_job_invoices(10).await.unwrap()),
        vec!["eval-j1", "eval-j2"]
    );
    let paid = store
        .job_invoice_paid("eval-j1", "e0", "gw-test", NOW + 10 * 600_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(paid.state, JobState::Evaluating);
    // The backend says j2's invoice expired unpaid: it is looked up no more.
    store
        .job_invoice_dead("eval-j2", NOW + 10 * 600_000)
        .await
        .unwrap();
    assert!(store.pending_job_invoices(10).await.unwrap().is_empty());
    assert!(
        store
            .job("j2")
            .await
            .unwrap()
            .unwrap()
            .invoice_dead_at_ms
            .is_some()
    );
    assert_eq!(consistent_ledger(store).await.jobs_held, msat(EVAL_FEE));
}

/// A second gateway starting while another ran a long job failed it after
/// 20 s of quiet, refunded it, and the operator paid the upstream anyway.
pub async fn a_job_belongs_to_its_process_until_that_process_is_dead(db: &TestDb) {
    let store = &*db.store;
    job_executing(store, "j1", 100_000).await;
    store.job_attempt("j1", "gw-a", NOW + 3).await.unwrap();
    store.heartbeat("gw-a", NOW + 300_000).await.unwrap();
    // Five minutes of quiet work: its process beats, so nobody takes it.
    assert!(store.orphaned_jobs(NOW + 290_000).await.unwrap().is_empty());
    // Its process stops beating: the job is an orphan, adopted by one process.
    let orphans = store.orphaned_jobs(NOW + 400_000).await.unwrap();
    assert_eq!(orphans.len(), 1);
    assert_eq!(orphans[0].instance_id.as_deref(), Some("gw-a"));
    assert!(
        store
            .adopt_job("j1", Some("gw-a"), "gw-b", NOW + 400_001)
            .await
            .unwrap()
    );
    assert!(
        !store
            .adopt_job("j1", Some("gw-a"), "gw-c", NOW + 400_002)
            .await
            .unwrap()
    );
    assert_eq!(
        store
            .job("j1")
            .await
            .unwrap()
            .unwrap()
            .instance_id
            .as_deref(),
        Some("gw-b")
    );
    // A job nobody ever took (an old row) is an orphan too.
    job_executing(store, "j2", 100_000).await;
    db.raw("UPDATE jobs SET instance_id = NULL WHERE id = 'j2'")
        .await;
    let orphans: Vec<String> = store
        .orphaned_jobs(NOW)
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.id)
        .collect();
    assert!(orphans.contains(&"j2".to_owned()));
    assert!(store.adopt_job("j2", None, "gw-b", NOW + 5).await.unwrap());
}

/// Routing fees were dropped: `check-ledger` stayed "consistent" while the
/// wallet paid more than the ledger said left.
pub async fn routing_fees_are_on_the_books(db: &TestDb) {
    let store = &*db.store;
    job_executing(store, "j1", 100_000).await;
    store
        .job_finished(
            "j1",
            &completed(37_500),
            &no_credit(),
            NOW + 4,
            REFUND_EXPIRES,
            msat(DUST),
        )
        .await
        .unwrap();
    // Payout 62 sats; the claimant's invoice leaves 2 sats for routing.
    let claim = RefundEvent::Claim {
        invoice_amount: msat(60_000),
        invoice_hash: "h1".into(),
        invoice_expires_at_ms: NOW + 3_600_000,
        max_fee_budget: msat(3_000),
        min_fee_budget: Msat::ZERO,
        now_ms: NOW + 5,
    };
    store.refund_event("refund_j1", claim, NOW).await.unwrap();
    let paid = store
        .refund_event(
            "refund_j1",
            RefundEvent::PayoutSucceeded {
                payment_hash: "h1".into(),
                preimage: "p1".into(),
                fee: msat(1_250),
            },
            NOW,
        )
        .await
        .unwrap();
    assert_eq!(paid.refund.state, RefundState::Claimed);
    assert_eq!(
        (paid.refund.claimed, paid.refund.fee),
        (msat(60_000), msat(1_250))
    );
    let report = consistent_ledger(store).await;
    assert_eq!(report.paid_out, msat(60_000));
    assert_eq!(report.fees, msat(1_250));
    // The unused 750 msat of the budget went to the pool (with the sub-sat rest).
    assert_eq!(store.refund("refund_j1").await.unwrap().unwrap(), paid);
}

/// After a payout the backend reported failed, a new invoice was accepted at
/// once: if the backend was wrong (an HTLC held on the route), the refund
/// could be paid twice.
pub async fn a_failed_payout_binds_its_invoice_until_it_expires(db: &TestDb) {
    let store = &*db.store;
    job_executing(store, "j1", 100_000).await;
    store
        .job_finished(
            "j1",
            &completed(37_500),
            &no_credit(),
            NOW + 4,
            REFUND_EXPIRES,
            msat(DUST),
        )
        .await
        .unwrap();
    let claim = |hash: &str, now: i64| RefundEvent::Claim {
        invoice_amount: msat(62_000),
        invoice_hash: hash.into(),
        invoice_expires_at_ms: NOW + 60_000,
        max_fee_budget: Msat::ZERO,
        min_fee_budget: Msat::ZERO,
        now_ms: now,
    };
    store
        .refund_event("refund_j1", claim("h1", NOW + 5), NOW)
        .await
        .unwrap();
    store
        .refund_event(
            "refund_j1",
            RefundEvent::PayoutFailed {
                payment_hash: "h1".into(),
            },
            NOW,
        )
        .await
        .unwrap();
    let r = store.refund("refund_j1").await.unwrap().unwrap();
    assert_eq!(
        (
            r.refund.state,
            r.refund.failed_hash.as_deref(),
            r.refund.invoice_expires_at_ms
        ),
        (RefundState::Pending, Some("h1"), NOW + 60_000)
    );
    assert!(matches!(
        store
            .refund_event("refund_j1", claim("h2", NOW + 6), NOW)
            .await,
        Err(RefundEventError::Refused(
            RefundError::RetrySameInvoice { .. }
        ))
    ));
    // The "failed" payment arrives after all: paid once, by that invoice.
    let late = store
        .refund_event(
            "refund_j1",
            RefundEvent::PayoutSucceeded {
                payment_hash: "h1".into(),
                preimage: "p".into(),
                fee: Msat::ZERO,
            },
            NOW,
        )
        .await
        .unwrap();
    assert_eq!(late.refund.state, RefundState::Claimed);
    assert!(
        store
            .refund_event("refund_j1", claim("h2", NOW + 70_000), NOW)
            .await
            .is_err()
    );
    assert_eq!(consistent_ledger(store).await.paid_out, msat(62_000));
}

/// Ten one-sat answers reached `established`: standing must be what was
/// paid, earned over distinct days.
pub async fn paying_days_are_counted_once_a_day(db: &TestDb) {
    let store = &*db.store;
    let trust = TrustRules::default();
    let paid = Interaction::Paid { paid: msat(1_000) };
    for i in 0..10 {
        store
            .record_interaction("pk", paid, &trust, NOW + i)
            .await
            .unwrap();
    }
    let row = store.identity("pk").await.unwrap().unwrap();
    assert_eq!((row.score, row.paid_days), (10, 1));
    assert_eq!(trust.tier_of(row.score, row.paid_days), Tier::New);
    store
        .record_interaction("pk", Interaction::Free, &trust, NOW + DAY_MS)
        .await
        .unwrap();
    assert_eq!(
        store.identity("pk").await.unwrap().unwrap().paid_days,
        1,
        "a free day is not a paying day"
    );
    store
        .record_interaction("pk", paid, &trust, NOW + 2 * DAY_MS)
        .await
        .unwrap();
    let row = store.identity("pk").await.unwrap().unwrap();
    assert_eq!((row.score, row.paid_days), (11, 2));
    assert_eq!(
        row.last_paid_day,
        Some(sluice_core::day_of(NOW + 2 * DAY_MS))
    );
}

/// Balance columns are `i64`: amounts near the top must be refused or kept
/// exactly, never wrapped.
pub async fn amounts_near_the_i64_boundary_never_wrap(db: &TestDb) {
    let store = &*db.store;
    let top = u64::try_from(i64::MAX).unwrap();
    let (s, inv) = new_session("big", top - 10);
    store.create_session(&s, &inv).await.unwrap();
    store
        .credit_invoice(&inv.payment_hash, "00", NOW, &policy())
        .await
        .unwrap();
    assert_eq!(
        store.session("big").await.unwrap().unwrap().balance,
        msat(top - 10)
    );
    // A second deposit would overflow the balance: refused, nothing changes.
    store
        .add_invoice(&invoice("more", "big", 11, InvoicePurpose::Topup))
        .await
        .unwrap();
    assert!(
        store
            .credit_invoice("more", "00", NOW + 1, &policy())
            .await
            .is_err()
    );
    assert_eq!(
        store.session("big").await.unwrap().unwrap().balance,
        msat(top - 10)
    );
    // A hold above i64::MAX is refused as an amount error, not stored.
    assert!(store.hold(&hold("big", "huge", top + 1)).await.is_err());
    assert!(store.request("huge").await.unwrap().is_none());
    assert!(is_held(
        &store.hold(&hold("big", "r1", top - 10)).await.unwrap()
    ));
    store.settle(&settle("r1", top)).await.unwrap();
    let row = store.session("big").await.unwrap().unwrap();
    assert_eq!((row.balance, row.spent), (Msat::ZERO, msat(top - 10)));
    let r = store.request("r1").await.unwrap().unwrap();
    assert_eq!(r.uncharged, Some(msat(10)));
    consistent_ledger(store).await;
}
