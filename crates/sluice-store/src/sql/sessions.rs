//! The SQL of [`crate::SessionStore`] (sessions and their invoices: created,
//! credited exactly once, expired).
//!
//! Expanded once per dialect, after [`crate::common::store_impl`] (whose
//! helpers and imports it uses), with the same arguments.

macro_rules! sessions_impl {
    ($store:ty, $conn:ty, $dialect:literal) => {
        #[async_trait::async_trait]
        impl $crate::SessionStore for $store {
            async fn session_invoices(&self, session_id: &str) -> Result<Vec<InvoiceRow>, StoreError> {
                let raws: Vec<$crate::common::InvoiceRaw> = sqlx::query_as(concat!(
                    "SELECT ",
                    invoice_columns!(),
                    " FROM invoices WHERE session_id = $1 ORDER BY created_at DESC, payment_hash"
                ))
                .bind(session_id)
                .fetch_all(&self.pool)
                .await?;
                raws.into_iter().map(InvoiceRow::try_from).collect()
            }

            async fn create_session(&self, session: &NewSession, deposit: &NewInvoice) -> Result<(), StoreError> {
                if deposit.session_id != session.id {
                    return Err(StoreError::Conflict("the deposit invoice is for another session".to_owned()));
                }
                let mut tx = self.begin_write().await?;
                sqlx::query(
                    "INSERT INTO sessions (id, state, balance_msat, held_msat, deposited_msat, spent_msat, \
                     created_at, expires_at, updated_at, pubkey) \
                     VALUES ($1, 'awaiting_payment', 0, 0, 0, 0, $2, $3, $2, $4)",
                )
                .bind(session.id.as_str())
                .bind(session.created_at_ms)
                .bind(session.expires_at_ms)
                .bind(session.pubkey.as_deref())
                .execute(&mut *tx)
                .await?;
                insert_invoice(&mut tx, deposit).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn session(&self, id: &str) -> Result<Option<SessionRow>, StoreError> {
                let raw: Option<$crate::common::SessionRaw> =
                    sqlx::query_as(concat!("SELECT ", session_columns!(), " FROM sessions WHERE id = $1"))
                        .bind(id)
                        .fetch_optional(&self.pool)
                        .await?;
                raw.map(SessionRow::try_from).transpose()
            }

            async fn add_invoice(&self, invoice: &NewInvoice) -> Result<(), StoreError> {
                let mut tx = self.begin_write().await?;
                let exists: Option<String> = sqlx::query_scalar("SELECT id FROM sessions WHERE id = $1")
                    .bind(invoice.session_id.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
                if exists.is_none() {
                    tx.rollback().await?;
                    return Err(StoreError::NotFound);
                }
                insert_invoice(&mut tx, invoice).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn invoice(&self, payment_hash: &str) -> Result<Option<InvoiceRow>, StoreError> {
                let raw: Option<$crate::common::InvoiceRaw> =
                    sqlx::query_as(concat!("SELECT ", invoice_columns!(), " FROM invoices WHERE payment_hash = $1"))
                        .bind(payment_hash)
                        .fetch_optional(&self.pool)
                        .await?;
                raw.map(InvoiceRow::try_from).transpose()
            }

            async fn pending_invoices(&self, limit: u32) -> Result<Vec<InvoiceRow>, StoreError> {
                let raws: Vec<$crate::common::InvoiceRaw> = sqlx::query_as(concat!(
                    "SELECT ",
                    invoice_columns!(),
                    " FROM invoices WHERE state = 'pending' ORDER BY created_at, payment_hash LIMIT $1"
                ))
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
                raws.into_iter().map(InvoiceRow::try_from).collect()
            }

            async fn credit_invoice(
                &self,
                payment_hash: &str,
                preimage_hex: &str,
                now_ms: i64,
                policy: &SessionPolicy,
            ) -> Result<Credit, StoreError> {
                let expires_at = expiry(now_ms, policy)?;
                let mut tx = self.begin_write().await?;
                // The conditional update is the lock: a concurrent credit of the same
                // invoice waits on the row and then matches nothing.
                let claimed: Option<(i64, String)> = sqlx::query_as(
                    "UPDATE invoices SET state = 'settled', preimage = $2, settled_at = $3 \
                     WHERE payment_hash = $1 AND state <> 'settled' RETURNING amount_msat, session_id",
                )
                .bind(payment_hash)
                .bind(preimage_hex)
                .bind(now_ms)
                .fetch_optional(&mut *tx)
                .await?;
                let Some((amount, session_id)) = claimed else {
                    let exists: Option<String> =
                        sqlx::query_scalar("SELECT payment_hash FROM invoices WHERE payment_hash = $1")
                            .bind(payment_hash)
                            .fetch_optional(&mut *tx)
                            .await?;
                    tx.rollback().await?;
                    return match exists {
                        Some(_) => Ok(Credit::AlreadyCredited),
                        None => Err(StoreError::NotFound),
                    };
                };
                let amount = msat(amount)?;
                let posting = Posting::deposit(&session_id, payment_hash, amount)?;
                if !write_posting(&mut tx, &posting, now_ms).await? {
                    tx.rollback().await?;
                    return Ok(Credit::AlreadyCredited);
                }
                let balance: i64 = sqlx::query_scalar(
                    "UPDATE sessions SET balance_msat = balance_msat + $2, deposited_msat = deposited_msat + $2, \
                     updated_at = $3 WHERE id = $1 RETURNING balance_msat",
                )
                .bind(session_id.as_str())
                .bind(amount.to_i64()?)
                .bind(now_ms)
                .fetch_one(&mut *tx)
                .await?;
                let balance = msat(balance)?;
                // Money arrived: whatever the session was (even expired), it is funded now.
                let state = policy.funded_state(balance);
                sqlx::query("UPDATE sessions SET state = $2, expires_at = $3 WHERE id = $1")
                    .bind(session_id.as_str())
                    .bind(state.as_str())
                    .bind(expires_at)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(Credit::Credited { session_id, state, balance })
            }

            async fn expire_invoice(&self, payment_hash: &str) -> Result<(), StoreError> {
                let mut tx = self.begin_write().await?;
                let changed = sqlx::query(
                    "UPDATE invoices SET state = 'expired' WHERE payment_hash = $1 AND state = 'pending'",
                )
                .bind(payment_hash)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if changed == 0 {
                    let exists: Option<String> =
                        sqlx::query_scalar("SELECT payment_hash FROM invoices WHERE payment_hash = $1")
                            .bind(payment_hash)
                            .fetch_optional(&mut *tx)
                            .await?;
                    if exists.is_none() {
                        tx.rollback().await?;
                        return Err(StoreError::NotFound);
                    }
                }
                tx.commit().await?;
                Ok(())
            }

            async fn issued_invoice(&self, payment_hash: &str) -> Result<bool, StoreError> {
                let found: Option<i64> = sqlx::query_scalar(
                    "SELECT 1 FROM invoices WHERE payment_hash = $1 \
                     UNION ALL SELECT 1 FROM jobs WHERE eval_hash = $1 OR work_hash = $1 LIMIT 1",
                )
                .bind(payment_hash)
                .fetch_optional(&self.pool)
                .await?;
                Ok(found.is_some())
            }
        }
    };
}
pub(crate) use sessions_impl;
