//! The SQL of [`crate::HoldStore`] (held requests: the hold, its settlement or
//! release, and the holds of stopped processes).
//!
//! Expanded once per dialect, after [`crate::common::store_impl`] (whose
//! helpers and imports it uses), with the same arguments.

macro_rules! holds_impl {
    ($store:ty, $conn:ty, $dialect:literal) => {
        #[async_trait::async_trait]
        impl $crate::HoldStore for $store {
            async fn hold(&self, hold: &NewHold) -> Result<HoldOutcome, StoreError> {
                let amount = hold.hold.to_i64()?;
                let expires_at = expiry_ms(hold.now_ms, hold.ttl_ms)?;
                let caps = normalise_caps(&hold.caps);
                let cap_keys = cap_keys_json(&caps)?;
                let posting = Posting::hold(&hold.session_id, &hold.request_id, hold.hold)?;
                for _ in 0..HOLD_ATTEMPTS {
                    let mut tx = self.begin_write().await?;
                    let taken: Option<i64> = sqlx::query_scalar(
                        "UPDATE sessions SET balance_msat = balance_msat - $2, held_msat = held_msat + $2, \
                         expires_at = $4, updated_at = $3 \
                         WHERE id = $1 AND state = 'active' AND expires_at > $3 AND balance_msat >= $2 \
                         RETURNING balance_msat",
                    )
                    .bind(hold.session_id.as_str())
                    .bind(amount)
                    .bind(hold.now_ms)
                    .bind(expires_at)
                    .fetch_optional(&mut *tx)
                    .await?;
                    let Some(balance) = taken else {
                        let row: Option<(String, i64, i64)> =
                            sqlx::query_as("SELECT state, balance_msat, expires_at FROM sessions WHERE id = $1")
                                .bind(hold.session_id.as_str())
                                .fetch_optional(&mut *tx)
                                .await?;
                        tx.rollback().await?;
                        let Some((state, balance, session_expires)) = row else {
                            return Ok(HoldOutcome::NoSession);
                        };
                        let state = effective_state(parse_state(&state)?, session_expires, hold.now_ms);
                        if state != SessionState::Active {
                            return Ok(HoldOutcome::NotActive(state));
                        }
                        if balance < amount {
                            return Ok(HoldOutcome::Insufficient { balance: msat(balance)? });
                        }
                        // The session changed between the update and the read: try again.
                        continue;
                    };
                    for cap in &caps {
                        let limit = cap.cap.to_i64()?;
                        sqlx::query(
                            "INSERT INTO spend_caps (key, committed_msat) VALUES ($1, 0) ON CONFLICT (key) DO NOTHING",
                        )
                        .bind(cap.key.as_str())
                        .execute(&mut *tx)
                        .await?;
                        let committed: Option<i64> = sqlx::query_scalar(
                            "UPDATE spend_caps SET committed_msat = committed_msat + $2 \
                             WHERE key = $1 AND committed_msat + $2 <= $3 RETURNING committed_msat",
                        )
                        .bind(cap.key.as_str())
                        .bind(amount)
                        .bind(limit)
                        .fetch_optional(&mut *tx)
                        .await?;
                        if committed.is_none() {
                            let committed: i64 =
                                sqlx::query_scalar("SELECT committed_msat FROM spend_caps WHERE key = $1")
                                    .bind(cap.key.as_str())
                                    .fetch_one(&mut *tx)
                                    .await?;
                            tx.rollback().await?;
                            return Ok(HoldOutcome::CapExceeded { cap: cap.cap, committed: msat(committed)? });
                        }
                    }
                    sqlx::query(
                        "INSERT INTO requests (id, session_id, model, est_input_tokens, max_output_tokens, \
                         hold_msat, btc_usd_micros, status, stream, instance_id, cap_keys, created_at, pubkey, deadline_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, 'held', $8, $9, $10, $11, \
                         COALESCE($12, (SELECT pubkey FROM sessions WHERE id = $2)), $13)",
                    )
                    .bind(hold.request_id.as_str())
                    .bind(hold.session_id.as_str())
                    .bind(hold.model.as_str())
                    .bind(to_i64(hold.est_input_tokens)?)
                    .bind(to_i64(hold.max_output_tokens)?)
                    .bind(amount)
                    .bind(to_i64(hold.btc_usd_micros)?)
                    .bind(hold.stream)
                    .bind(hold.instance_id.as_str())
                    .bind(cap_keys.as_str())
                    .bind(hold.now_ms)
                    .bind(hold.pubkey.as_deref())
                    .bind(hold.deadline_ms)
                    .execute(&mut *tx)
                    .await?;
                    if !write_posting(&mut tx, &posting, hold.now_ms).await? {
                        tx.rollback().await?;
                        return Err(StoreError::Conflict(format!("request {} was held before", hold.request_id)));
                    }
                    tx.commit().await?;
                    return Ok(HoldOutcome::Held { balance: msat(balance)? });
                }
                Err(StoreError::Conflict("the session kept changing concurrently; retry".to_owned()))
            }

            async fn settle(&self, settle: &SettleRequest) -> Result<Settled, StoreError> {
                self.finish(Finish::Settle(settle)).await
            }

            async fn release(
                &self,
                request_id: &str,
                status: RequestStatus,
                now_ms: i64,
                policy: &SessionPolicy,
            ) -> Result<Settled, StoreError> {
                self.finish(Finish::Release { request_id, status, now_ms, policy }).await
            }

            async fn request(&self, id: &str) -> Result<Option<RequestRow>, StoreError> {
                let raw: Option<$crate::common::RequestRaw> =
                    sqlx::query_as(concat!("SELECT ", request_columns!(), " FROM requests r WHERE r.id = $1"))
                        .bind(id)
                        .fetch_optional(&self.pool)
                        .await?;
                raw.map(RequestRow::try_from).transpose()
            }

            async fn abandoned_holds(&self, stale_before_ms: i64, now_ms: i64, own_instance: &str) -> Result<Vec<RequestRow>, StoreError> {
                let raws: Vec<$crate::common::RequestRaw> = sqlx::query_as(concat!(
                    "SELECT ",
                    request_columns!(),
                    " FROM requests r LEFT JOIN gateway_instances g ON g.id = r.instance_id \
                     WHERE r.status = 'held' AND (r.deadline_at < $2 OR \
                       ((r.instance_id IS NULL OR r.instance_id <> $3) AND (g.id IS NULL OR g.heartbeat_at < $1))) \
                     ORDER BY r.created_at, r.id"
                ))
                .bind(stale_before_ms)
                .bind(now_ms)
                .bind(own_instance)
                .fetch_all(&self.pool)
                .await?;
                raws.into_iter().map(RequestRow::try_from).collect()
            }
        }
    };
}
pub(crate) use holds_impl;
