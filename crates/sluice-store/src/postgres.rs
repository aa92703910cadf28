//! The shared store: PostgreSQL, for several gateway processes on one database.
//!
//! Transactions run at READ COMMITTED. Every money-moving statement is a
//! conditional `UPDATE` whose row lock serialises concurrent writers of the
//! same row, and PostgreSQL re-checks the condition against the committed row
//! after the wait, so a double spend or double credit simply matches nothing.
//! Row locks are always taken in the order request → invoice → session →
//! spend caps (sorted by key), and job → refund, so writers cannot deadlock.
//! A refund event locks its refund row first with a no-op `UPDATE`, so events
//! on one refund apply one after another, each to the state the last one left.
//!
//! Migrations run at connect under sqlx's session advisory lock
//! (`pg_advisory_lock` keyed by database name), so several gateways starting
//! at once apply them exactly once.

use std::str::FromStr as _;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{Connection as _, Postgres, Transaction};

/// Pooled connections per process by default.
pub const MAX_CONNECTIONS: u32 = 10;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// The PostgreSQL [`Store`](crate::Store).
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    /// The private schema of a [`PgStore::connect_isolated`] store.
    schema: Option<String>,
}

impl PgStore {
    /// Connect to `url` (`postgres://user@host:port/db`) and apply migrations.
    pub async fn connect(url: &str) -> Result<Self, crate::StoreError> {
        Self::connect_with(PgConnectOptions::from_str(url)?, MAX_CONNECTIONS).await
    }

    /// Connect to the existing database at `url` without migrating it: a
    /// schema older than this binary's is an error (for tools that read a
    /// live database and must not change it).
    pub async fn connect_existing(url: &str) -> Result<Self, crate::StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .connect_with(PgConnectOptions::from_str(url)?)
            .await?;
        let applied: Option<i64> =
            sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
                .fetch_one(&pool)
                .await
                .unwrap_or(None);
        crate::require_current_schema(applied, &MIGRATOR)?;
        Ok(PgStore { pool, schema: None })
    }

    /// Connect with explicit options and pool size, then apply migrations.
    pub async fn connect_with(
        options: PgConnectOptions,
        max_connections: u32,
    ) -> Result<Self, crate::StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(PgStore { pool, schema: None })
    }

    /// A store in a fresh random schema of the database at `base_url` (every
    /// pooled connection's `search_path` is that schema), for tests that must
    /// not see each other's rows. Returns the schema name; [`PgStore::cleanup`]
    /// drops it.
    pub async fn connect_isolated(base_url: &str) -> Result<(PgStore, String), crate::StoreError> {
        let options = PgConnectOptions::from_str(base_url)?;
        let schema = format!(
            "sluice_test_{}",
            sluice_env::Ids::new_hex(&sluice_env::OsIds)
        );
        let mut admin = PgConnection::connect_with(&options).await?;
        // The name is ours (fixed prefix and hex), so formatting it into DDL is safe.
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(&mut admin)
            .await?;
        let isolated = options.clone().options([("search_path", schema.as_str())]);
        match Self::connect_with(isolated, MAX_CONNECTIONS).await {
            Ok(mut store) => {
                admin.close().await?;
                store.schema = Some(schema.clone());
                Ok((store, schema))
            }
            Err(e) => {
                // Do not leave an empty schema behind.
                let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "DROP SCHEMA IF EXISTS {schema} CASCADE"
                )))
                .execute(&mut admin)
                .await;
                let _ = admin.close().await;
                Err(e)
            }
        }
    }

    /// Drop the private schema of an isolated store (no-op for others) and close the pool.
    pub async fn cleanup(self) -> Result<(), crate::StoreError> {
        if let Some(schema) = &self.schema {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP SCHEMA IF EXISTS {schema} CASCADE"
            )))
            .execute(&self.pool)
            .await?;
        }
        self.pool.close().await;
        Ok(())
    }

    /// The connection pool (for tools that need raw access).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Close every connection.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Run one raw statement. Tests use this to tamper with rows and prove
    /// that [`Store::check_ledger`](crate::Store::check_ledger) notices.
    #[doc(hidden)]
    pub async fn debug_execute(&self, sql: &str) -> Result<u64, crate::StoreError> {
        Ok(sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&self.pool)
            .await?
            .rows_affected())
    }

    /// Nothing to check before the health probe's write (see the SQLite store's).
    pub(crate) fn before_ping(&self) -> Result<(), crate::StoreError> {
        Ok(())
    }

    async fn begin_write(&self) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        self.pool.begin().await
    }

    async fn begin_read(&self) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        self.pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
    }
}

crate::common::store_impl!(PgStore, PgConnection, "postgres");
crate::sql::kv::kv_impl!(PgStore, PgConnection, "postgres");
crate::sql::sessions::sessions_impl!(PgStore, PgConnection, "postgres");
crate::sql::holds::holds_impl!(PgStore, PgConnection, "postgres");
crate::sql::jobs::jobs_impl!(PgStore, PgConnection, "postgres");
crate::sql::refunds::refunds_impl!(PgStore, PgConnection, "postgres");
crate::sql::pool::pool_impl!(PgStore, PgConnection, "postgres");
crate::sql::identities::identities_impl!(PgStore, PgConnection, "postgres");
crate::sql::ops::ops_impl!(PgStore, PgConnection, "postgres");
