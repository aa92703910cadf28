//! The SQL of [`crate::IdentityStore`] (identities, trust, login challenges,
//! seen events and vouches).
//!
//! Expanded once per dialect, after [`crate::common::store_impl`] (whose
//! helpers and imports it uses), with the same arguments.

macro_rules! identities_impl {
    ($store:ty, $conn:ty, $dialect:literal) => {
        #[async_trait::async_trait]
        impl $crate::IdentityStore for $store {
            async fn identity(&self, pubkey: &str) -> Result<Option<IdentityRow>, StoreError> {
                let raw: Option<$crate::common::IdentityRaw> =
                    sqlx::query_as(concat!("SELECT ", identity_columns!(), " FROM identities WHERE pubkey = $1"))
                        .bind(pubkey)
                        .fetch_optional(&self.pool)
                        .await?;
                raw.map(IdentityRow::try_from).transpose()
            }

            async fn touch_identity(
                &self,
                pubkey: &str,
                trust: &TrustRules,
                now_ms: i64,
            ) -> Result<IdentityRow, StoreError> {
                let mut tx = self.begin_write().await?;
                let current = lock_identity(&mut tx, pubkey, now_ms).await?;
                let score = trust.decayed(current.score, current.last_seen_ms, now_ms);
                let raw: $crate::common::IdentityRaw = sqlx::query_as(concat!(
                    "UPDATE identities SET score = $2, last_seen = $3 WHERE pubkey = $1 RETURNING ",
                    identity_columns!()
                ))
                .bind(pubkey)
                .bind(to_i64(score)?)
                .bind(now_ms)
                .fetch_one(&mut *tx)
                .await?;
                tx.commit().await?;
                IdentityRow::try_from(raw)
            }

            async fn record_interaction(
                &self,
                pubkey: &str,
                interaction: Interaction,
                trust: &TrustRules,
                now_ms: i64,
            ) -> Result<IdentityRow, StoreError> {
                let mut tx = self.begin_write().await?;
                let row = apply_interaction(&mut tx, pubkey, interaction, trust, now_ms).await?;
                tx.commit().await?;
                Ok(row)
            }

            async fn create_challenge(&self, nonce: &str, expires_at_ms: i64) -> Result<(), StoreError> {
                let mut tx = self.begin_write().await?;
                // Forget challenges that lapsed more than an hour before this one was issued.
                sqlx::query("DELETE FROM identity_challenges WHERE expires_at < $1")
                    .bind(expires_at_ms.saturating_sub(2 * 3_600_000))
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("INSERT INTO identity_challenges (nonce, expires_at) VALUES ($1, $2)")
                    .bind(nonce)
                    .bind(expires_at_ms)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn consume_challenge(&self, nonce: &str, now_ms: i64) -> Result<ChallengeUse, StoreError> {
                let mut tx = self.begin_write().await?;
                let expires_at: Option<i64> =
                    sqlx::query_scalar("DELETE FROM identity_challenges WHERE nonce = $1 RETURNING expires_at")
                        .bind(nonce)
                        .fetch_optional(&mut *tx)
                        .await?;
                tx.commit().await?;
                Ok(match expires_at {
                    None => ChallengeUse::Unknown,
                    Some(t) if t <= now_ms => ChallengeUse::Expired,
                    Some(_) => ChallengeUse::Consumed,
                })
            }

            async fn remember_event(&self, event_id: &str, expires_at_ms: i64, now_ms: i64) -> Result<bool, StoreError> {
                let mut tx = self.begin_write().await?;
                sqlx::query("DELETE FROM seen_events WHERE expires_at <= $1")
                    .bind(now_ms)
                    .execute(&mut *tx)
                    .await?;
                let inserted = sqlx::query(
                    "INSERT INTO seen_events (id, expires_at) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
                )
                .bind(event_id)
                .bind(expires_at_ms)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                tx.commit().await?;
                Ok(inserted == 1)
            }

            async fn add_vouch(&self, vouch: &NewVouch, max_active: u32) -> Result<VouchOutcome, StoreError> {
                let mut tx = self.begin_write().await?;
                // Lock the voucher's identity row (created if absent), so concurrent
                // vouches by one voucher count one after the other.
                lock_identity(&mut tx, &vouch.voucher, vouch.now_ms).await?;
                let existing: Option<String> =
                    sqlx::query_scalar("SELECT event_id FROM vouches WHERE voucher = $1 AND vouchee = $2")
                        .bind(vouch.voucher.as_str())
                        .bind(vouch.vouchee.as_str())
                        .fetch_optional(&mut *tx)
                        .await?;
                if existing.is_some() {
                    tx.rollback().await?;
                    return Ok(VouchOutcome::AlreadyVouched);
                }
                let active: i64 =
                    sqlx::query_scalar("SELECT CAST(COUNT(*) AS BIGINT) FROM vouches WHERE voucher = $1")
                        .bind(vouch.voucher.as_str())
                        .fetch_one(&mut *tx)
                        .await?;
                if active >= i64::from(max_active) {
                    tx.rollback().await?;
                    return Ok(VouchOutcome::TooMany { max: max_active });
                }
                sqlx::query("INSERT INTO vouches (voucher, vouchee, event_id, created_at) VALUES ($1, $2, $3, $4)")
                    .bind(vouch.voucher.as_str())
                    .bind(vouch.vouchee.as_str())
                    .bind(vouch.event_id.as_str())
                    .bind(vouch.now_ms)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(VouchOutcome::Added)
            }

            async fn vouchers_of(&self, vouchee: &str) -> Result<Vec<IdentityRow>, StoreError> {
                let raws: Vec<$crate::common::IdentityRaw> = sqlx::query_as(concat!(
                    "SELECT ",
                    identity_columns!(),
                    " FROM identities WHERE pubkey IN (SELECT voucher FROM vouches WHERE vouchee = $1) ORDER BY pubkey"
                ))
                .bind(vouchee)
                .fetch_all(&self.pool)
                .await?;
                raws.into_iter().map(IdentityRow::try_from).collect()
            }

            async fn vouchees_of(&self, voucher: &str) -> Result<Vec<String>, StoreError> {
                Ok(sqlx::query_scalar("SELECT vouchee FROM vouches WHERE voucher = $1 ORDER BY vouchee")
                    .bind(voucher)
                    .fetch_all(&self.pool)
                    .await?)
            }
        }
    };
}
pub(crate) use identities_impl;
