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

use sqlx::Sqlite;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
};
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
    /// The database file and its identity when opened: a file removed or
    /// replaced under a running gateway makes [`Store::ping`](crate::Store::ping) fail.
    file: Option<(std::path::PathBuf, FileId)>,
}

/// What tells one file from another at the same path (device and inode on Unix).
type FileId = (u64, u64);

fn file_id(path: &std::path::Path) -> Option<FileId> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
    }
    #[cfg(not(unix))]
    {
        std::fs::metadata(path).ok().map(|_| (0, 0))
    }
}

/// A transaction on one pooled connection, begun and ended with plain SQL
/// statements, holding the process's write lock (for writes) until it ends.
///
/// A transaction that does not end in a successful `COMMIT` or `ROLLBACK`
/// (an error, a dropped future, a failed commit) closes its connection
/// instead of returning it to the pool. SQLite rolls a transaction back by
/// itself on some errors (a full disk, an I/O error); a connection whose
/// transaction state is then unknown must not serve the next caller, or one
/// fault would poison the pool until a restart.
pub(crate) struct WriteTx {
    conn: PoolConnection<Sqlite>,
    open: bool,
    _guard: Option<OwnedMutexGuard<()>>,
}

impl WriteTx {
    async fn begin(
        mut conn: PoolConnection<Sqlite>,
        statement: &'static str,
        guard: Option<OwnedMutexGuard<()>>,
    ) -> Result<WriteTx, sqlx::Error> {
        if let Err(e) = sqlx::raw_sql(statement).execute(&mut *conn).await {
            conn.close_on_drop();
            return Err(e);
        }
        Ok(WriteTx {
            conn,
            open: true,
            _guard: guard,
        })
    }

    async fn end(mut self, statement: &'static str) -> Result<(), sqlx::Error> {
        let result = sqlx::raw_sql(statement).execute(&mut *self.conn).await;
        self.open = false;
        if result.is_err() {
            // Whatever state the transaction is in, this connection is done.
            let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *self.conn).await;
            self.conn.close_on_drop();
        }
        result.map(|_| ())
    }

    pub(crate) async fn commit(self) -> Result<(), sqlx::Error> {
        self.end("COMMIT").await
    }

    pub(crate) async fn rollback(self) -> Result<(), sqlx::Error> {
        self.end("ROLLBACK").await
    }
}

impl Drop for WriteTx {
    fn drop(&mut self) {
        if self.open {
            // Dropped mid-transaction (an error returned early, or a cancelled
            // future): closing the connection rolls the transaction back.
            self.conn.close_on_drop();
        }
    }
}

impl Deref for WriteTx {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        &self.conn
    }
}

impl DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.conn
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
        Self::connect_with(url, true).await
    }

    /// Open the database at `url`, which must already exist (for tools that
    /// read an existing database and must not create an empty one).
    pub async fn connect_existing(url: &str) -> Result<Self, crate::StoreError> {
        Self::connect_with(url, false).await
    }

    async fn connect_with(url: &str, create: bool) -> Result<Self, crate::StoreError> {
        let mut attempt = 0u64;
        loop {
            match Self::connect_once(url, create).await {
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

    async fn connect_once(url: &str, create: bool) -> Result<Self, crate::StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(create)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let path = options.get_filename().to_path_buf();
        if !create && !in_memory && !path.exists() {
            return Err(crate::StoreError::Database(format!(
                "no database at {}",
                path.display()
            )));
        }
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
        let file = (!in_memory)
            .then(|| file_id(&path).map(|id| (path, id)))
            .flatten();
        let store = SqliteStore {
            pool,
            write_lock: Arc::new(Mutex::new(())),
            file,
        };
        if create {
            store.migrate().await?;
        } else {
            let applied: Option<i64> =
                sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
                    .fetch_one(&store.pool)
                    .await
                    .unwrap_or(None);
            crate::require_current_schema(applied, &MIGRATOR)?;
        }
        Ok(store)
    }

    /// Apply pending migrations under the database write lock, so two
    /// processes opening a new file at once do not both apply them. (sqlx's
    /// own transaction here: the migrator nests its savepoints in it.)
    async fn migrate(&self) -> Result<(), crate::StoreError> {
        let _guard = self.write_lock.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        MIGRATOR.run(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Whether the database file is still the one opened (the health check's
    /// first step: SQLite goes on writing to a removed file's open handle).
    pub(crate) fn before_ping(&self) -> Result<(), crate::StoreError> {
        match &self.file {
            Some((path, id)) if file_id(path) != Some(*id) => {
                Err(crate::StoreError::Database(format!(
                    "the database file {} was removed or replaced",
                    path.display()
                )))
            }
            _ => Ok(()),
        }
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
        let conn = self.pool.acquire().await?;
        WriteTx::begin(conn, "BEGIN IMMEDIATE", Some(guard)).await
    }

    async fn begin_read(&self) -> Result<WriteTx, sqlx::Error> {
        let conn = self.pool.acquire().await?;
        WriteTx::begin(conn, "BEGIN", None).await
    }
}

crate::common::store_impl!(SqliteStore, SqliteConnection, "sqlite");
crate::sql::kv::kv_impl!(SqliteStore, SqliteConnection, "sqlite");
crate::sql::sessions::sessions_impl!(SqliteStore, SqliteConnection, "sqlite");
crate::sql::holds::holds_impl!(SqliteStore, SqliteConnection, "sqlite");
crate::sql::jobs::jobs_impl!(SqliteStore, SqliteConnection, "sqlite");
crate::sql::refunds::refunds_impl!(SqliteStore, SqliteConnection, "sqlite");
crate::sql::pool::pool_impl!(SqliteStore, SqliteConnection, "sqlite");
crate::sql::identities::identities_impl!(SqliteStore, SqliteConnection, "sqlite");
crate::sql::ops::ops_impl!(SqliteStore, SqliteConnection, "sqlite");
