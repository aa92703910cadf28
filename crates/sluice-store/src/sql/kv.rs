//! The SQL of [`crate::KvStore`] (secrets and learned estimator states, by
//! name).
//!
//! Expanded once per dialect, after [`crate::common::store_impl`] (whose
//! helpers and imports it uses), with the same arguments.

macro_rules! kv_impl {
    ($store:ty, $conn:ty, $dialect:literal) => {
        #[async_trait::async_trait]
        impl $crate::KvStore for $store {
            async fn secret(&self, name: &str, fresh: [u8; 32]) -> Result<[u8; 32], StoreError> {
                // Insert-if-absent then read: whichever process inserts first wins, everyone reads the winner.
                let mut tx = self.begin_write().await?;
                sqlx::query("INSERT INTO secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
                    .bind(name)
                    .bind(hex::encode(fresh))
                    .execute(&mut *tx)
                    .await?;
                let value: String = sqlx::query_scalar("SELECT value FROM secrets WHERE name = $1")
                    .bind(name)
                    .fetch_one(&mut *tx)
                    .await?;
                tx.commit().await?;
                parse_secret(&value)
            }

            async fn estimator_state(&self, model: &str, class: &str) -> Result<Option<String>, StoreError> {
                Ok(sqlx::query_scalar("SELECT state FROM output_estimators WHERE model = $1 AND class = $2")
                    .bind(model)
                    .bind(class)
                    .fetch_optional(&self.pool)
                    .await?)
            }

            async fn save_estimator_state(&self, model: &str, class: &str, state: &str, now_ms: i64) -> Result<(), StoreError> {
                let mut tx = self.begin_write().await?;
                sqlx::query(
                    "INSERT INTO output_estimators (model, class, state, updated_at) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (model, class) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at",
                )
                .bind(model)
                .bind(class)
                .bind(state)
                .bind(now_ms)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn secret_get(&self, name: &str) -> Result<Option<[u8; 32]>, StoreError> {
                let value: Option<String> = sqlx::query_scalar("SELECT value FROM secrets WHERE name = $1")
                    .bind(name)
                    .fetch_optional(&self.pool)
                    .await?;
                value.as_deref().map(parse_secret).transpose()
            }

            async fn secret_delete(&self, name: &str) -> Result<bool, StoreError> {
                let mut tx = self.begin_write().await?;
                let n = sqlx::query("DELETE FROM secrets WHERE name = $1").bind(name).execute(&mut *tx).await?;
                tx.commit().await?;
                Ok(n.rows_affected() > 0)
            }
        }
    };
}
pub(crate) use kv_impl;
