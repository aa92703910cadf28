//! The SQL of [`crate::PoolStore`] (the generosity pool and its grants).
//!
//! Expanded once per dialect, after [`crate::common::store_impl`] (whose
//! helpers and imports it uses), with the same arguments.

macro_rules! pool_impl {
    ($store:ty, $conn:ty, $dialect:literal) => {
        #[async_trait::async_trait]
        impl $crate::PoolStore for $store {
            async fn seed_pool(&self, amount: Msat, now_ms: i64) -> Result<bool, StoreError> {
                if amount == Msat::ZERO {
                    return Ok(false);
                }
                let posting = Posting::pool_seed(amount)?;
                let mut tx = self.begin_write().await?;
                // The key `pool-seed` makes this once-only, across processes too.
                let seeded = write_posting(&mut tx, &posting, now_ms).await?;
                tx.commit().await?;
                Ok(seeded)
            }

            async fn pool_balance(&self) -> Result<Msat, StoreError> {
                let balance: Option<i64> = sqlx::query_scalar("SELECT balance_msat FROM pool WHERE id = 'generosity'")
                    .fetch_optional(&self.pool)
                    .await?;
                msat(balance.ok_or_else(|| StoreError::Database("the pool row is missing".to_owned()))?)
            }

            async fn pool_status(&self, day: i64) -> Result<PoolStatus, StoreError> {
                let mut tx = self.begin_read().await?;
                let balance: Option<i64> = sqlx::query_scalar("SELECT balance_msat FROM pool WHERE id = 'generosity'")
                    .fetch_optional(&mut *tx)
                    .await?;
                let equity: i64 = sqlx::query_scalar(
                    "SELECT CAST(COALESCE(SUM(amount_msat), 0) AS BIGINT) FROM ledger_entry WHERE account = 'equity:operator'",
                )
                .fetch_one(&mut *tx)
                .await?;
                let credited: i64 = sqlx::query_scalar(
                    "SELECT CAST(COALESCE(SUM(e.amount_msat), 0) AS BIGINT) FROM ledger_entry e \
                     JOIN ledger_tx t ON t.id = e.tx_id WHERE t.kind = 'pool_credit' AND e.account = 'pool:generosity'",
                )
                .fetch_one(&mut *tx)
                .await?;
                let (grants_today, absorbed_today): (i64, i64) = sqlx::query_as(
                    "SELECT CAST(COUNT(*) AS BIGINT), CAST(COALESCE(SUM(absorbed_msat), 0) AS BIGINT) \
                     FROM free_grants WHERE day = $1",
                )
                .bind(day)
                .fetch_one(&mut *tx)
                .await?;
                let absorbed: i64 =
                    sqlx::query_scalar("SELECT CAST(COALESCE(SUM(absorbed_msat), 0) AS BIGINT) FROM free_grants")
                        .fetch_one(&mut *tx)
                        .await?;
                tx.rollback().await?;
                Ok(PoolStatus {
                    balance: msat(balance.ok_or_else(|| StoreError::Database("the pool row is missing".to_owned()))?)?,
                    seeded: msat(equity.checked_neg().ok_or(StoreError::Amount(sluice_core::AmountError::Overflow))?)?,
                    grants_today: u64::try_from(grants_today).unwrap_or_default(),
                    absorbed_today: msat(absorbed_today)?,
                    credited: msat(credited)?,
                    absorbed: msat(absorbed)?,
                })
            }

            async fn record_grant(
                &self,
                id: &str,
                ask: &GrantAsk,
                actual: Msat,
                acct: &Accounting,
                now_ms: i64,
            ) -> Result<Msat, StoreError> {
                let mut tx = self.begin_write().await?;
                // Every grant locks the pool first, so once we hold it a concurrent
                // recording of the same id has committed (and is seen) or not started.
                lock_pool(&mut tx).await?;
                let recorded: Option<i64> = sqlx::query_scalar("SELECT absorbed_msat FROM free_grants WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?;
                let posted: Option<i64> = match recorded {
                    Some(v) => Some(v),
                    None => sqlx::query_scalar(
                        "SELECT e.amount_msat FROM ledger_entry e JOIN ledger_tx t ON t.id = e.tx_id \
                         WHERE t.idempotency_key = $1 AND e.account = 'revenue'",
                    )
                    .bind(format!("grant:{id}"))
                    .fetch_optional(&mut *tx)
                    .await?,
                };
                if let Some(v) = posted {
                    tx.rollback().await?;
                    return msat(v);
                }
                let granted = write_grant(&mut tx, id, ask, actual, now_ms).await?;
                if granted == Msat::ZERO {
                    tx.rollback().await?;
                    return Ok(Msat::ZERO);
                }
                if let Some(pubkey) = &ask.pubkey {
                    apply_interaction(&mut tx, pubkey, Interaction::served(Msat::ZERO), &acct.trust, now_ms).await?;
                }
                tx.commit().await?;
                Ok(granted)
            }

            async fn grant(&self, id: &str) -> Result<Option<GrantRow>, StoreError> {
                let raw: Option<$crate::common::GrantRaw> =
                    sqlx::query_as(concat!("SELECT ", grant_columns!(), " FROM free_grants WHERE id = $1"))
                        .bind(id)
                        .fetch_optional(&self.pool)
                        .await?;
                raw.map(GrantRow::try_from).transpose()
            }

            async fn grants_for(&self, pubkey: &str) -> Result<Vec<GrantRow>, StoreError> {
                let raws: Vec<$crate::common::GrantRaw> = sqlx::query_as(concat!(
                    "SELECT ",
                    grant_columns!(),
                    " FROM free_grants WHERE pubkey = $1 ORDER BY created_at DESC, id DESC"
                ))
                .bind(pubkey)
                .fetch_all(&self.pool)
                .await?;
                raws.into_iter().map(GrantRow::try_from).collect()
            }
        }
    };
}
pub(crate) use pool_impl;
