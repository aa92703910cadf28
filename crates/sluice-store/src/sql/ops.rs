//! The SQL of [`crate::OpsStore`] (operations: the dialect, instances and their
//! heartbeats, the health probe, the ledger check, the dev wallet's rows).
//!
//! Expanded once per dialect, after [`crate::common::store_impl`] (whose
//! helpers and imports it uses), with the same arguments.

macro_rules! ops_impl {
    ($store:ty, $conn:ty, $dialect:literal) => {
        #[async_trait::async_trait]
        impl $crate::OpsStore for $store {
            fn dialect(&self) -> &'static str {
                $dialect
            }

            async fn heartbeat(&self, instance_id: &str, now_ms: i64) -> Result<(), StoreError> {
                let mut tx = self.begin_write().await?;
                sqlx::query(
                    "INSERT INTO gateway_instances (id, heartbeat_at) VALUES ($1, $2) \
                     ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
                )
                .bind(instance_id)
                .bind(now_ms)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn retire_instance(&self, instance_id: &str) -> Result<(), StoreError> {
                let mut tx = self.begin_write().await?;
                sqlx::query("DELETE FROM gateway_instances WHERE id = $1").bind(instance_id).execute(&mut *tx).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn check_ledger(&self) -> Result<LedgerReport, StoreError> {
                // One snapshot, so concurrent writers cannot make a consistent ledger look torn.
                let mut tx = self.begin_read().await?;
                let transactions: i64 =
                    sqlx::query_scalar("SELECT CAST(COUNT(*) AS BIGINT) FROM ledger_tx").fetch_one(&mut *tx).await?;
                let unbalanced: Vec<String> = sqlx::query_scalar(
                    "SELECT t.id FROM ledger_tx t JOIN ledger_entry e ON e.tx_id = t.id \
                     GROUP BY t.id HAVING SUM(e.amount_msat) <> 0 ORDER BY t.id",
                )
                .fetch_all(&mut *tx)
                .await?;
                let mismatched_sessions: Vec<String> = sqlx::query_scalar(
                    "SELECT s.id FROM sessions s \
                     LEFT JOIN (SELECT account, SUM(amount_msat) AS total FROM ledger_entry GROUP BY account) a \
                       ON a.account = 'session:' || s.id \
                     LEFT JOIN (SELECT account, SUM(amount_msat) AS total FROM ledger_entry GROUP BY account) h \
                       ON h.account = 'session:' || s.id || ':held' \
                     WHERE s.balance_msat <> COALESCE(a.total, 0) OR s.held_msat <> COALESCE(h.total, 0) \
                     ORDER BY s.id",
                )
                .fetch_all(&mut *tx)
                .await?;
                let mismatched_jobs: Vec<String> = sqlx::query_scalar(
                    "SELECT j.id FROM jobs j \
                     LEFT JOIN (SELECT account, SUM(amount_msat) AS total FROM ledger_entry GROUP BY account) a \
                       ON a.account = 'job:' || j.id \
                     WHERE COALESCE(a.total, 0) <> CASE j.state WHEN 'evaluating' THEN j.eval_amount_msat \
                       WHEN 'executing' THEN COALESCE(j.work_amount_msat, 0) ELSE 0 END \
                     ORDER BY j.id",
                )
                .fetch_all(&mut *tx)
                .await?;
                let mismatched_refunds: Vec<String> = sqlx::query_scalar(
                    "SELECT r.id FROM refunds r \
                     LEFT JOIN (SELECT account, SUM(amount_msat) AS total FROM ledger_entry GROUP BY account) a \
                       ON a.account = 'refund:' || r.id \
                     WHERE COALESCE(a.total, 0) <> \
                       CASE WHEN r.state IN ('pending', 'paying') THEN r.payout_msat ELSE 0 END \
                     ORDER BY r.id",
                )
                .fetch_all(&mut *tx)
                .await?;
                let (balances, held): (i64, i64) = sqlx::query_as(
                    "SELECT CAST(COALESCE(SUM(balance_msat), 0) AS BIGINT), \
                     CAST(COALESCE(SUM(held_msat), 0) AS BIGINT) FROM sessions",
                )
                .fetch_one(&mut *tx)
                .await?;
                let (lightning_in, revenue, jobs_held, refunds_owed, pool, paid_out, equity, fees): (i64, i64, i64, i64, i64, i64, i64, i64) =
                    sqlx::query_as(
                        "SELECT \
                     CAST(COALESCE(SUM(CASE WHEN account = 'lightning:in' THEN amount_msat ELSE 0 END), 0) AS BIGINT), \
                     CAST(COALESCE(SUM(CASE WHEN account = 'revenue' THEN amount_msat ELSE 0 END), 0) AS BIGINT), \
                     CAST(COALESCE(SUM(CASE WHEN account LIKE 'job:%' THEN amount_msat ELSE 0 END), 0) AS BIGINT), \
                     CAST(COALESCE(SUM(CASE WHEN account LIKE 'refund:%' THEN amount_msat ELSE 0 END), 0) AS BIGINT), \
                     CAST(COALESCE(SUM(CASE WHEN account = 'pool:generosity' THEN amount_msat ELSE 0 END), 0) AS BIGINT), \
                     CAST(COALESCE(SUM(CASE WHEN account = 'lightning:out' THEN amount_msat ELSE 0 END), 0) AS BIGINT), \
                     CAST(COALESCE(SUM(CASE WHEN account = 'equity:operator' THEN amount_msat ELSE 0 END), 0) AS BIGINT), \
                     CAST(COALESCE(SUM(CASE WHEN account = 'lightning:fees' THEN amount_msat ELSE 0 END), 0) AS BIGINT) \
                     FROM ledger_entry WHERE account IN ('lightning:in', 'revenue', 'pool:generosity', 'lightning:out', \
                     'equity:operator', 'lightning:fees') \
                     OR account LIKE 'job:%' OR account LIKE 'refund:%'",
                    )
                .fetch_one(&mut *tx)
                .await?;
                let pool_row: Option<i64> = sqlx::query_scalar("SELECT balance_msat FROM pool WHERE id = 'generosity'")
                    .fetch_optional(&mut *tx)
                    .await?;
                tx.rollback().await?;
                let received = lightning_in.checked_neg().ok_or(StoreError::Amount(sluice_core::AmountError::Overflow))?;
                let seeded = equity.checked_neg().ok_or(StoreError::Amount(sluice_core::AmountError::Overflow))?;
                Ok(LedgerReport {
                    transactions: u64::try_from(transactions).unwrap_or_default(),
                    unbalanced,
                    mismatched_sessions,
                    mismatched_jobs,
                    mismatched_refunds,
                    pool_mismatch: pool_row != Some(pool),
                    received: msat(received)?,
                    seeded: msat(seeded)?,
                    balances: msat(balances)?,
                    held: msat(held)?,
                    revenue: msat(revenue)?,
                    jobs_held: msat(jobs_held)?,
                    refunds_owed: msat(refunds_owed)?,
                    pool: msat(pool)?,
                    paid_out: msat(paid_out)?,
                    fees: msat(fees)?,
                })
            }

            fn dev_wallet_rows(self: std::sync::Arc<Self>) -> std::sync::Arc<dyn $crate::DevWalletRows> {
                self
            }

            async fn ping(&self) -> Result<(), StoreError> {
                self.before_ping()?;
                let mut tx = self.begin_write().await?;
                // A write that changes a row: a no-op update may write nothing.
                sqlx::query(
                    "INSERT INTO health_probe (id, beats) VALUES (1, 1) \
                     ON CONFLICT (id) DO UPDATE SET beats = health_probe.beats + 1",
                )
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(())
            }
        }
    };
}
pub(crate) use ops_impl;
