//! The SQL of [`crate::RefundStore`] (refunds: owed when a balance closes or a
//! job ends, claimed, paid once, expired).
//!
//! Expanded once per dialect, after [`crate::common::store_impl`] (whose
//! helpers and imports it uses), with the same arguments.

macro_rules! refunds_impl {
    ($store:ty, $conn:ty, $dialect:literal) => {
        #[async_trait::async_trait]
        impl $crate::RefundStore for $store {
            async fn refund(&self, id: &str) -> Result<Option<RefundRow>, StoreError> {
                let raw: Option<$crate::common::RefundRaw> =
                    sqlx::query_as(concat!("SELECT ", refund_columns!(), " FROM refunds WHERE id = $1"))
                        .bind(id)
                        .fetch_optional(&self.pool)
                        .await?;
                raw.map(RefundRow::try_from).transpose()
            }

            async fn paying_refunds(&self, updated_before_ms: i64) -> Result<Vec<RefundRow>, StoreError> {
                let raws: Vec<$crate::common::RefundRaw> = sqlx::query_as(concat!(
                    "SELECT ",
                    refund_columns!(),
                    " FROM refunds WHERE state = 'paying' AND updated_at < $1 ORDER BY updated_at, id"
                ))
                .bind(updated_before_ms)
                .fetch_all(&self.pool)
                .await?;
                raws.into_iter().map(RefundRow::try_from).collect()
            }

            async fn refunds_for(&self, owner_id: &str) -> Result<Vec<RefundRow>, StoreError> {
                let raws: Vec<$crate::common::RefundRaw> = sqlx::query_as(concat!(
                    "SELECT ",
                    refund_columns!(),
                    " FROM refunds WHERE owner_id = $1 ORDER BY created_at DESC, id DESC"
                ))
                .bind(owner_id)
                .fetch_all(&self.pool)
                .await?;
                raws.into_iter().map(RefundRow::try_from).collect()
            }

            async fn close_session(
                &self,
                id: &str,
                now_ms: i64,
                refund_expires_at_ms: i64,
                dust: Msat,
            ) -> Result<Option<RefundRow>, StoreError> {
                let mut tx = self.begin_write().await?;
                // Lock and read in one statement (a no-op update), on both dialects.
                let row: Option<(String, i64, i64)> = sqlx::query_as(
                    "UPDATE sessions SET updated_at = updated_at WHERE id = $1 RETURNING state, balance_msat, held_msat",
                )
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
                let (state, balance, held) = row.ok_or(StoreError::NotFound)?;
                if state == SessionState::AwaitingPayment.as_str() {
                    return Err(StoreError::Conflict("the session was never funded".to_owned()));
                }
                if held != 0 {
                    return Err(StoreError::Conflict("requests are in flight; close when they finish".to_owned()));
                }
                sqlx::query("UPDATE sessions SET balance_msat = 0, state = 'closed', expires_at = $2, updated_at = $2 WHERE id = $1")
                    .bind(id)
                    .bind(now_ms)
                    .execute(&mut *tx)
                    .await?;
                let balance = Msat::from_i64(balance)?;
                if balance == Msat::ZERO {
                    tx.commit().await?;
                    return Ok(None);
                }
                // Numbered per session, under the session's lock: a session closed,
                // revived and closed again within one millisecond owes two refunds.
                let (prior,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM refunds WHERE owner_id = $1")
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await?;
                // Zero-padded, so ids of one millisecond sort in order as text.
                let refund_id = format!("refund_{id}_{:06}", prior.saturating_add(1));
                let owed = Posting::refund_owed(sluice_core::Account::Session(id.to_owned()), &refund_id, balance)?;
                write_new_postings(&mut tx, std::slice::from_ref(&owed), now_ms).await?;
                offer_refund(
                    &mut tx,
                    &Offer {
                        refund_id: &refund_id,
                        owner_kind: "session",
                        owner_id: id,
                        amount: balance,
                        dust,
                        expires_at_ms: refund_expires_at_ms,
                        now_ms,
                    },
                )
                .await?;
                let raw: $crate::common::RefundRaw =
                    sqlx::query_as(concat!("SELECT ", refund_columns!(), " FROM refunds WHERE id = $1"))
                        .bind(&refund_id)
                        .fetch_one(&mut *tx)
                        .await?;
                tx.commit().await?;
                Ok(Some(RefundRow::try_from(raw)?))
            }

            async fn refund_event(&self, id: &str, event: RefundEvent, now_ms: i64) -> Result<RefundRow, RefundEventError> {
                Ok(self.apply_refund_event(id, event, now_ms).await??)
            }

            async fn expired_refunds(&self, now_ms: i64) -> Result<Vec<RefundRow>, StoreError> {
                let raws: Vec<$crate::common::RefundRaw> = sqlx::query_as(concat!(
                    "SELECT ",
                    refund_columns!(),
                    " FROM refunds WHERE state = 'pending' AND expires_at <= $1 ORDER BY expires_at, id"
                ))
                .bind(now_ms)
                .fetch_all(&self.pool)
                .await?;
                raws.into_iter().map(RefundRow::try_from).collect()
            }
        }
    };
}
pub(crate) use refunds_impl;
