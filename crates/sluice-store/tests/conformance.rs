//! The store conformance suite: every case in `conformance/cases.rs` runs once
//! against SQLite (a temporary file per test) and once against PostgreSQL (a
//! fresh schema per test in the database at `SLUICE_TEST_PG_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`; the PostgreSQL tests fail, never
//! skip, when it is unreachable).
#![allow(
    clippy::disallowed_methods,
    reason = "fixtures spawn concurrent writers on bare tasks"
)]
#![allow(clippy::unwrap_used, missing_docs)]

mod conformance {
    pub mod cases;
    pub mod harness;
}

/// Expand every case as a `#[tokio::test]` for one backend.
macro_rules! conformance_suite {
    ($backend:ident: $($case:ident),* $(,)?) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    use futures::FutureExt as _;
                    let db = crate::conformance::harness::TestDb::$backend().await;
                    // Clean up (drop the PostgreSQL schema) even when the case fails.
                    let outcome = std::panic::AssertUnwindSafe(crate::conformance::cases::$case(&db))
                        .catch_unwind()
                        .await;
                    db.cleanup().await;
                    if let Err(panic) = outcome {
                        std::panic::resume_unwind(panic);
                    }
                }
            )*
        }
    };
}

/// The list of cases, once, for both backends, grouped by the store trait
/// each exercises (a case may touch others on the way).
macro_rules! all_cases {
    ($backend:ident) => {
        conformance_suite!($backend:
            // SessionStore: sessions and their invoices
            session_create_and_get,
            credit_is_idempotent,
            concurrent_credits_credit_once,
            credit_of_unknown_invoice_is_not_found,
            topup_resumes_a_paused_session,
            an_expired_session_revives_when_money_arrives,
            pending_invoices_and_expiry,
            session_invoices_lists_every_invoice_of_one_session,
            // HoldStore: holds, settlements, releases
            hold_refused_while_awaiting_payment,
            hold_refused_when_insufficient,
            hold_refused_when_expired,
            hold_refused_when_paused,
            spend_caps_limit_holds,
            settle_charges_at_most_the_hold,
            settling_twice_is_a_conflict,
            concurrent_settles_settle_once,
            release_returns_the_whole_hold,
            settling_an_expired_session_keeps_it_expired,
            abandoned_holds_follow_heartbeats,
            concurrent_holds_never_overdraw,
            a_hold_past_its_deadline_is_released_and_a_late_settle_is_a_recorded_loss,
            // JobStore: two-phase jobs
            job_happy_path_refunds_the_unspent_work_payment,
            a_rejected_job_earns_its_fee_and_owes_nothing,
            a_failed_evaluation_refunds_its_fee,
            failed_work_refunds_the_whole_work_payment,
            job_payments_are_recorded_once,
            concurrent_job_outcomes_apply_once,
            jobs_are_listed_by_state,
            a_job_invoice_paid_after_its_expiry_is_still_credited,
            a_job_belongs_to_its_process_until_that_process_is_dead,
            // RefundStore: refunds owed, claimed, paid, expired
            closing_a_session_refunds_its_balance_once,
            a_session_closed_twice_in_one_millisecond_owes_two_refunds,
            a_refund_is_claimed_and_paid_once,
            a_failed_payout_can_be_claimed_again,
            unclaimed_refunds_expire_into_the_pool,
            routing_fees_are_on_the_books,
            a_failed_payout_binds_its_invoice_until_it_expires,
            // PoolStore: the generosity pool and its grants
            the_pool_is_seeded_once,
            a_paid_settle_credits_the_pool_and_the_identity,
            a_partial_grant_settles_the_rest_on_the_payer,
            grants_are_capped_by_allowance_and_pool,
            the_allowance_starts_again_each_day,
            recording_a_grant_twice_absorbs_once,
            free_and_partial_jobs_use_the_pool,
            concurrent_grants_never_overdraw_the_pool,
            upgrading_keeps_the_pool_it_had,
            // IdentityStore: identities, trust, challenges, vouches
            a_rejected_job_costs_its_identity_and_vouchers,
            challenges_and_events_work_once,
            vouches_are_limited,
            scores_decay_after_a_long_absence,
            paying_days_are_counted_once_a_day,
            // KvStore: secrets and estimator states
            secret_is_stable,
            secrets_can_be_read_without_creating_and_deleted,
            estimator_states_are_saved_per_model_and_class,
            // OpsStore and the store as a whole: the ledger, migrations, faults, the dev wallet's rows
            ledger_is_consistent_after_a_workload_and_notices_tampering,
            upgrading_the_ledger_keeps_its_rows,
            concurrent_opens_migrate_once,
            a_failed_write_does_not_poison_the_store,
            amounts_near_the_i64_boundary_never_wrap,
            dev_invoices,
        );
    };
}

all_cases!(sqlite);
all_cases!(postgres);

/// `sluice_store::connect` picks the backend from the URL scheme.
mod dispatch {
    use crate::conformance::harness::{DEFAULT_PG_URL, NOW, funded, hold, is_held, policy};
    use sluice_store::postgres::PgStore;

    #[tokio::test]
    async fn in_memory_sqlite_works_end_to_end() {
        let store = sluice_store::connect("sqlite::memory:").await.unwrap();
        assert_eq!(store.dialect(), "sqlite");
        funded(&*store, "s1", 20_000).await;
        assert!(is_held(
            &store.hold(&hold("s1", "r1", 5_000)).await.unwrap()
        ));
        store
            .release("r1", sluice_store::RequestStatus::Failed, NOW, &policy())
            .await
            .unwrap();
        store.expire_invoice("dep-s1").await.unwrap();
        assert!(store.check_ledger().await.unwrap().is_consistent());
    }

    #[tokio::test]
    async fn sqlite_file_urls_create_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.db");
        let store = sluice_store::connect(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        assert!(path.exists());
        store.heartbeat("gw", NOW).await.unwrap();
        drop(store);
        // Reopening finds the data.
        let store = sluice_store::connect(&format!("sqlite:{}", path.display()))
            .await
            .unwrap();
        assert!(
            store
                .abandoned_holds(NOW, NOW, "gw")
                .await
                .unwrap()
                .is_empty()
        );
    }

    /// A database file removed under a running gateway went unnoticed (SQLite
    /// writes on to the open handle), and `check-ledger` then created an empty
    /// database at the path and called it consistent.
    #[tokio::test]
    async fn a_removed_database_file_fails_the_health_probe_and_is_never_recreated_by_a_reader() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gone.db");
        let url = format!("sqlite:{}", path.display());
        let missing = sluice_store::connect_existing(&url).await;
        assert!(
            matches!(&missing, Err(sluice_store::StoreError::Database(m)) if m.contains("no database")),
            "{:?}",
            missing.err()
        );
        assert!(!path.exists(), "a reader created the file");
        let store = sluice_store::connect(&url).await.unwrap();
        store.ping().await.unwrap();
        std::fs::remove_file(&path).unwrap();
        let r = store.ping().await;
        assert!(
            matches!(&r, Err(sluice_store::StoreError::Database(m)) if m.contains("removed")),
            "{r:?}"
        );
        assert!(sluice_store::connect_existing(&url).await.is_err());
    }

    #[tokio::test]
    async fn postgres_urls_open_postgres() {
        let base =
            std::env::var("SLUICE_TEST_PG_URL").unwrap_or_else(|_| DEFAULT_PG_URL.to_owned());
        // Keep the connect inside a private schema so the shared database stays clean.
        let (isolated, schema) = PgStore::connect_isolated(&base).await.unwrap_or_else(|e| {
            panic!("PostgreSQL at {base} unreachable: {e}; set SLUICE_TEST_PG_URL")
        });
        let sep = if base.contains('?') { '&' } else { '?' };
        for scheme_url in [
            base.clone(),
            base.replacen("postgres://", "postgresql://", 1),
        ] {
            let url = format!("{scheme_url}{sep}options=-c%20search_path%3D{schema}");
            let store = sluice_store::connect(&url).await.unwrap();
            assert_eq!(store.dialect(), "postgres");
            assert_eq!(store.secret("k", [3; 32]).await.unwrap(), [3; 32]);
        }
        isolated.cleanup().await.unwrap();
    }

    #[tokio::test]
    async fn other_schemes_are_refused() {
        let r = sluice_store::connect("mysql://localhost/db").await;
        assert!(matches!(r, Err(sluice_store::StoreError::Database(_))));
    }
}
