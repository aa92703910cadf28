//! A fresh database per test, on either backend, plus the fixtures the cases share.

use std::str::FromStr as _;
use std::sync::Arc;

use sluice_core::{Msat, SessionPolicy, TokenUsage};
use sluice_store::postgres::PgStore;
use sluice_store::sqlite::SqliteStore;
use sluice_store::{
    Accounting, Credit, HoldOutcome, InvoicePurpose, NewHold, NewInvoice, NewSession,
    RequestStatus, SettleRequest, SpendCap, Store,
};
use sqlx::postgres::PgConnectOptions;

/// Where the PostgreSQL tests connect unless `SLUICE_TEST_PG_URL` says otherwise.
pub const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A fixed "now" (unix ms) so expiry arithmetic in the tests is exact.
pub const NOW: i64 = 1_700_000_000_000;

/// One test's database.
pub struct TestDb {
    /// The store under test.
    pub store: Arc<dyn Store>,
    backend: Backend,
}

enum Backend {
    Sqlite {
        store: SqliteStore,
        url: String,
        _dir: tempfile::TempDir,
    },
    Pg {
        store: PgStore,
        base_url: String,
        schema: String,
    },
}

impl TestDb {
    /// A new SQLite file in a temporary directory.
    pub async fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("sluice.db").display());
        let store = SqliteStore::connect(&url).await.unwrap();
        TestDb {
            store: Arc::new(store.clone()),
            backend: Backend::Sqlite {
                store,
                url,
                _dir: dir,
            },
        }
    }

    /// A fresh schema in the test PostgreSQL database. Fails (never skips)
    /// when PostgreSQL is unreachable.
    pub async fn postgres() -> TestDb {
        let base_url =
            std::env::var("SLUICE_TEST_PG_URL").unwrap_or_else(|_| DEFAULT_PG_URL.to_owned());
        let (store, schema) = PgStore::connect_isolated(&base_url)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "cannot open a test schema on PostgreSQL at {base_url}: {e}. \
                 Start PostgreSQL or point SLUICE_TEST_PG_URL at one."
                )
            });
        TestDb {
            store: Arc::new(store.clone()),
            backend: Backend::Pg {
                store,
                base_url,
                schema,
            },
        }
    }

    /// Which backend this is.
    pub fn dialect(&self) -> &'static str {
        self.store.dialect()
    }

    /// Another store on the same database, as a second gateway process would open it
    /// (its own pool; migrations run again and must be a no-op).
    pub async fn reopen(&self) -> Result<Arc<dyn Store>, sluice_store::StoreError> {
        Ok(match &self.backend {
            Backend::Sqlite { url, .. } => Arc::new(SqliteStore::connect(url).await?),
            Backend::Pg {
                base_url, schema, ..
            } => {
                let options = PgConnectOptions::from_str(base_url)?
                    .options([("search_path", schema.as_str())]);
                Arc::new(PgStore::connect_with(options, 4).await?)
            }
        })
    }

    /// Open `n` stores at once on a brand-new database (a second file, or a
    /// second schema), as gateway processes starting together would, and
    /// return one of them after the others are closed. Every open must succeed.
    pub async fn open_fresh_concurrently(&self, n: usize) -> Arc<dyn Store> {
        match &self.backend {
            Backend::Sqlite { _dir: dir, .. } => {
                let url = format!("sqlite://{}", dir.path().join("fresh.db").display());
                let opens = (0..n).map(|_| SqliteStore::connect(&url));
                let mut stores: Vec<SqliteStore> = futures::future::join_all(opens)
                    .await
                    .into_iter()
                    .map(|r| r.unwrap())
                    .collect();
                let keep = stores.pop().unwrap();
                for s in stores {
                    s.close().await;
                }
                Arc::new(keep)
            }
            Backend::Pg {
                store,
                base_url,
                schema,
            } => {
                let fresh = format!("{schema}_fresh");
                store
                    .debug_execute(&format!("CREATE SCHEMA {fresh}"))
                    .await
                    .unwrap();
                let options = PgConnectOptions::from_str(base_url)
                    .unwrap()
                    .options([("search_path", fresh.as_str())]);
                let opens = (0..n).map(|_| PgStore::connect_with(options.clone(), 2));
                let mut stores: Vec<PgStore> = futures::future::join_all(opens)
                    .await
                    .into_iter()
                    .map(|r| r.unwrap())
                    .collect();
                let keep = stores.pop().unwrap();
                for s in stores {
                    s.close().await;
                }
                Arc::new(keep)
            }
        }
    }

    /// The migration versions recorded in the database `open_fresh_concurrently`
    /// made, one row per application, in order.
    pub async fn fresh_migrations(&self) -> Vec<i64> {
        let sql = "SELECT version FROM _sqlx_migrations ORDER BY version";
        match &self.backend {
            Backend::Sqlite { _dir: dir, .. } => {
                let url = format!("sqlite://{}", dir.path().join("fresh.db").display());
                let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
                let v: Vec<i64> = sqlx::query_scalar(sql).fetch_all(&pool).await.unwrap();
                pool.close().await;
                v
            }
            Backend::Pg {
                base_url, schema, ..
            } => {
                let options = PgConnectOptions::from_str(base_url)
                    .unwrap()
                    .options([("search_path", format!("{schema}_fresh"))]);
                let pool = sqlx::PgPool::connect_with(options).await.unwrap();
                let v: Vec<i64> = sqlx::query_scalar(sql).fetch_all(&pool).await.unwrap();
                pool.close().await;
                v
            }
        }
    }

    /// A brand-new database (a second file, or a second schema) migrated only
    /// up to `version`, with `legacy_sql` run on it, then opened as a store (which
    /// applies the later migrations), as an upgraded gateway would find it.
    pub async fn upgraded_from(&self, version: i64, legacy_sql: &str) -> Arc<dyn Store> {
        let dialect = self.dialect();
        let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("migrations")
            .join(dialect);
        // A migrator over the first migrations only: the same files, so their
        // checksums match when the store later applies the rest.
        let old = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(&source).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_owned();
            let v: i64 = name.split('_').next().unwrap().parse().unwrap();
            if v <= version {
                std::fs::copy(&path, old.path().join(&name)).unwrap();
            }
        }
        let migrator = sqlx::migrate::Migrator::new(old.path()).await.unwrap();
        match &self.backend {
            Backend::Sqlite { _dir: dir, .. } => {
                let url = format!("sqlite://{}", dir.path().join("legacy.db").display());
                let options = sqlx::sqlite::SqliteConnectOptions::from_str(&url)
                    .unwrap()
                    .create_if_missing(true)
                    .foreign_keys(true);
                let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
                migrator.run(&pool).await.unwrap();
                sqlx::raw_sql(sqlx::AssertSqlSafe(legacy_sql.to_owned()))
                    .execute(&pool)
                    .await
                    .unwrap();
                pool.close().await;
                Arc::new(SqliteStore::connect(&url).await.unwrap())
            }
            Backend::Pg {
                store,
                base_url,
                schema,
            } => {
                let fresh = format!("{schema}_fresh");
                store
                    .debug_execute(&format!("CREATE SCHEMA {fresh}"))
                    .await
                    .unwrap();
                let options = PgConnectOptions::from_str(base_url)
                    .unwrap()
                    .options([("search_path", fresh.as_str())]);
                let pool = sqlx::PgPool::connect_with(options.clone()).await.unwrap();
                migrator.run(&pool).await.unwrap();
                sqlx::raw_sql(sqlx::AssertSqlSafe(legacy_sql.to_owned()))
                    .execute(&pool)
                    .await
                    .unwrap();
                pool.close().await;
                Arc::new(PgStore::connect_with(options, 2).await.unwrap())
            }
        }
    }

    /// Run raw SQL behind the store's back (to tamper with rows).
    pub async fn raw(&self, sql: &str) -> u64 {
        match &self.backend {
            Backend::Sqlite { store, .. } => store.debug_execute(sql).await.unwrap(),
            Backend::Pg { store, .. } => store.debug_execute(sql).await.unwrap(),
        }
    }

    /// Drop the test's database.
    pub async fn cleanup(self) {
        drop(self.store);
        match self.backend {
            Backend::Sqlite { store, .. } => store.close().await,
            Backend::Pg { store, schema, .. } => {
                // A schema made by `open_fresh_concurrently`, if any.
                store
                    .debug_execute(&format!("DROP SCHEMA IF EXISTS {schema}_fresh CASCADE"))
                    .await
                    .unwrap();
                store.cleanup().await.unwrap()
            }
        }
    }
}

/// The session policy the cases use: pause below 10 sat, one-hour TTL.
pub fn policy() -> SessionPolicy {
    SessionPolicy {
        min_deposit_sats: 1,
        max_deposit_sats: 10_000_000,
        min_balance: Msat::from_msat(10_000),
        ttl_secs: 3_600,
    }
}

/// The policy's TTL in ms.
pub const TTL_MS: i64 = 3_600_000;

/// A session and its deposit invoice (`dep-<id>`) for `amount` msat.
pub fn new_session(id: &str, amount: u64) -> (NewSession, NewInvoice) {
    (
        NewSession {
            id: id.to_owned(),
            created_at_ms: NOW,
            expires_at_ms: NOW + 600_000,
            pubkey: None,
        },
        invoice(&format!("dep-{id}"), id, amount, InvoicePurpose::Deposit),
    )
}

/// An invoice for `session`.
pub fn invoice(hash: &str, session: &str, amount: u64, purpose: InvoicePurpose) -> NewInvoice {
    NewInvoice {
        payment_hash: hash.to_owned(),
        bolt11: format!("lnbcrt{hash}"),
        amount: Msat::from_msat(amount),
        purpose,
        session_id: session.to_owned(),
        created_at_ms: NOW,
        expires_at_ms: NOW + 600_000,
    }
}

/// Create session `id` and credit its deposit of `amount` msat at `NOW`.
pub async fn funded(store: &dyn Store, id: &str, amount: u64) {
    let (s, inv) = new_session(id, amount);
    store.create_session(&s, &inv).await.unwrap();
    let credit = store
        .credit_invoice(&inv.payment_hash, "00", NOW, &policy())
        .await
        .unwrap();
    assert!(matches!(credit, Credit::Credited { .. }), "{credit:?}");
}

/// A hold of `amount` msat on `session` for `request`, at `NOW`.
pub fn hold(session: &str, request: &str, amount: u64) -> NewHold {
    NewHold {
        request_id: request.to_owned(),
        session_id: session.to_owned(),
        model: "test-model".to_owned(),
        est_input_tokens: 12,
        max_output_tokens: 64,
        hold: Msat::from_msat(amount),
        btc_usd_micros: 100_000_000_000,
        caps: vec![],
        instance_id: "gw-1".to_owned(),
        stream: false,
        now_ms: NOW,
        ttl_ms: TTL_MS,
        pubkey: None,
        deadline_ms: NOW + 600_000,
    }
}

/// Settle `request` at an actual cost of `actual` msat, at `NOW + 1000`.
pub fn settle(request: &str, actual: u64) -> SettleRequest {
    SettleRequest {
        request_id: request.to_owned(),
        usage: TokenUsage {
            input: 12,
            output: 40,
        },
        actual_cost: Msat::from_msat(actual),
        latency_ms: 250,
        status: RequestStatus::Settled,
        now_ms: NOW + 1_000,
        policy: policy(),
        grant: None,
        accounting: no_credit(),
    }
}

/// Accounting without pool credits, so revenue is exactly what was charged.
pub fn no_credit() -> Accounting {
    Accounting {
        pool_credit_pct: 0,
        ..Default::default()
    }
}

/// A spend cap.
pub fn cap(key: &str, msat: u64) -> SpendCap {
    SpendCap {
        key: key.to_owned(),
        cap: Msat::from_msat(msat),
    }
}

/// Whether an outcome is a successful hold.
pub fn is_held(o: &HoldOutcome) -> bool {
    matches!(o, HoldOutcome::Held { .. })
}
