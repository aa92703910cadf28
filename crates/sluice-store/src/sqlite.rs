//! The embedded store: one SQLite file in WAL mode.
//!
//! Writes are serialised twice over: inside the process by an async mutex
//! (fair, so a busy gateway never starves one request in SQLite's busy
//! handler), and across processes by `BEGIN IMMEDIATE`, which takes the
//! database write lock at the start of every write transaction so two writers
//! can never deadlock upgrading a read lock.

use std::ops::{Deref, DerefMut};
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
};
use sqlx::{Sqlite, Transaction};
use tokio::sync::{Mutex, OwnedMutexGuard};

/// How long a statement waits for another process's write lock.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Pooled connections for a file database (readers run in parallel under WAL).
pub const MAX_CONNECTIONS: u32 = 8;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

/// The SQLite [`Store`](crate::Store).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    write_lock: Arc<Mutex<()>>,
}

/// A write transaction holding the process's write lock until it ends.
pub(crate) struct WriteTx {
    tx: Transaction<'static, Sqlite>,
    _guard: OwnedMutexGuard<()>,
}

impl WriteTx {
    pub(crate) async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }

    pub(crate) async fn rollback(self) -> Result<(), sqlx::Error> {
        self.tx.rollback().await
    }
}

impl Deref for WriteTx {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        &self.tx
    }
}

impl DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.tx
    }
}

impl SqliteStore {
    /// Open (creating if missing) and migrate the database at `url`:
    /// `sqlite://path/to/file.db`, `sqlite:file.db`, or `sqlite::memory:` for a
    /// private in-memory database (one connection, gone when the store is dropped).
    ///
    /// Several processes opening a new file at once contend for it while one
    /// creates the schema; an open that finds the database locked beyond the
    /// busy timeout is tried again, a few times, before giving up.
    pub async fn connect(url: &str) -> Result<Self, crate::StoreError> {
        let mut attempt = 0u64;
        loop {
            match Self::connect_once(url).await {
                Err(crate::StoreError::Database(m))
                    if attempt < 4 && (m.contains("locked") || m.contains("busy")) =>
                {
                    attempt += 1;
                    tracing::warn!(attempt, "database locked while opening; trying again");
                    tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                }
                other => return other,
            }
        }
    }

    async fn connect_once(url: &str) -> Result<Self, crate::StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let pool = if in_memory {
            // An in-memory database lives as long as a connection to it: keep exactly one.
            SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .connect_with(options)
                .await?
        } else {
            SqlitePoolOptions::new()
                .max_connections(MAX_CONNECTIONS)
                .connect_with(options.journal_mode(SqliteJournalMode::Wal))
                .await?
        };
        let store = SqliteStore {
            pool,
            write_lock: Arc::new(Mutex::new(())),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Apply pending migrations under the database write lock, so two
    /// processes opening a new file at once do not both apply them.
    async fn migrate(&self) -> Result<(), crate::StoreError> {
        let mut tx = self.begin_write().await?;
        MIGRATOR.run(&mut *tx.tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The connection pool (for tools that need raw access).
    pub fn pool(&self) -> &SqlitePool {
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
        let _guard = self.write_lock.lock().await;
        Ok(sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&self.pool)
            .await?
            .rows_affected())
    }

    async fn begin_write(&self) -> Result<WriteTx, sqlx::Error> {
        let guard = Arc::clone(&self.write_lock).lock_owned().await;
        let tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        Ok(WriteTx { tx, _guard: guard })
    }

    async fn begin_read(&self) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
        self.pool.begin().await
    }
}

crate::common::store_impl!(SqliteStore, SqliteConnection, "sqlite");
