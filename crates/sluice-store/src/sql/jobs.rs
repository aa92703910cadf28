//! The SQL of [`crate::JobStore`] (two-phase jobs: their invoices, phases,
//! owners and outcomes).
//!
//! Expanded once per dialect, after [`crate::common::store_impl`] (whose
//! helpers and imports it uses), with the same arguments.

macro_rules! jobs_impl {
    ($store:ty, $conn:ty, $dialect:literal) => {
        #[async_trait::async_trait]
        impl $crate::JobStore for $store {
            async fn create_job(&self, job: &NewJob) -> Result<(), StoreError> {
                let inv = &job.eval_invoice;
                let mut tx = self.begin_write().await?;
                sqlx::query(
                    "INSERT INTO jobs (id, state, request, eval_model, work_model, eval_hash, eval_bolt11, \
                     eval_amount_msat, eval_expires_at, attempts, created_at, updated_at, pubkey) \
                     VALUES ($1, 'awaiting_eval_payment', $2, $3, $4, $5, $6, $7, $8, 0, $9, $9, $10)",
                )
                .bind(job.id.as_str())
                .bind(job.request.as_str())
                .bind(job.eval_model.as_str())
                .bind(job.work_model.as_str())
                .bind(inv.payment_hash.as_str())
                .bind(inv.bolt11.as_str())
                .bind(inv.amount.to_i64()?)
                .bind(inv.expires_at_ms)
                .bind(job.created_at_ms)
                .bind(job.pubkey.as_deref())
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn job(&self, id: &str) -> Result<Option<JobRow>, StoreError> {
                let raw: Option<$crate::common::JobRaw> =
                    sqlx::query_as(concat!("SELECT ", job_columns!(), " FROM jobs WHERE id = $1"))
                        .bind(id)
                        .fetch_optional(&self.pool)
                        .await?;
                raw.map(JobRow::try_from).transpose()
            }

            async fn pending_job_invoices(&self, limit: u32) -> Result<Vec<PendingJobInvoice>, StoreError> {
                let rows: Vec<(String, String, String, i64)> = sqlx::query_as(
                    "SELECT id, phase, payment_hash, expires_at FROM ( \
                       SELECT id, 'eval' AS phase, eval_hash AS payment_hash, eval_expires_at AS expires_at, created_at \
                       FROM jobs WHERE state = 'awaiting_eval_payment' AND invoice_dead_at IS NULL \
                       UNION ALL \
                       SELECT id, 'work' AS phase, work_hash AS payment_hash, work_expires_at AS expires_at, created_at \
                       FROM jobs WHERE state = 'awaiting_work_payment' AND invoice_dead_at IS NULL \
                     ) p ORDER BY created_at, id LIMIT $1",
                )
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|(job_id, phase, payment_hash, expires_at_ms)| PendingJobInvoice {
                        job_id,
                        phase: if phase == "work" { JobPhase::Work } else { JobPhase::Eval },
                        payment_hash,
                        expires_at_ms,
                    })
                    .collect())
            }

            async fn job_invoice_paid(
                &self,
                payment_hash: &str,
                preimage_hex: &str,
                instance_id: &str,
                now_ms: i64,
            ) -> Result<Option<JobRow>, StoreError> {
                let mut tx = self.begin_write().await?;
                let raw: Option<$crate::common::JobRaw> = sqlx::query_as(concat!(
                    "SELECT ",
                    job_columns!(),
                    " FROM jobs WHERE eval_hash = $1 OR work_hash = $1"
                ))
                .bind(payment_hash)
                .fetch_optional(&mut *tx)
                .await?;
                let Some(job) = raw.map(JobRow::try_from).transpose()? else {
                    tx.rollback().await?;
                    return Err(StoreError::NotFound);
                };
                let (event, amount) = if job.eval_invoice.payment_hash == payment_hash {
                    (JobEvent::EvalPaid, job.eval_invoice.amount)
                } else {
                    let work = job.work_invoice.as_ref().ok_or(StoreError::NotFound)?;
                    (JobEvent::WorkPaid, work.amount)
                };
                let posting = Posting::job_paid(&job.id, payment_hash, amount)?;
                // The conditional update is the lock: a concurrent recording of the same
                // payment waits on the job row, then finds it moved on and matches nothing.
                let advanced = match sluice_core::job::next(job.state, &event) {
                    Ok(_) => advance_job(&mut tx, &job.id, job.state, &event, now_ms).await?,
                    Err(_) => false,
                };
                if !advanced {
                    let recorded: Option<String> =
                        sqlx::query_scalar("SELECT id FROM ledger_tx WHERE idempotency_key = $1")
                            .bind(posting.idempotency_key.as_str())
                            .fetch_optional(&mut *tx)
                            .await?;
                    let state: Option<String> = sqlx::query_scalar("SELECT state FROM jobs WHERE id = $1")
                        .bind(job.id.as_str())
                        .fetch_optional(&mut *tx)
                        .await?;
                    tx.rollback().await?;
                    return match recorded {
                        Some(_) => Ok(None),
                        None => Err(StoreError::Conflict(format!(
                            "job {} is {}: its {} payment cannot be recorded",
                            job.id,
                            state.unwrap_or_default(),
                            event.name()
                        ))),
                    };
                }
                if !write_posting(&mut tx, &posting, now_ms).await? {
                    tx.rollback().await?;
                    return Ok(None);
                }
                // The process that recorded the payment runs the next phase: it owns the job
                // from here, so no reconciler takes it for an orphan before that phase starts.
                let paid_columns = if event == JobEvent::EvalPaid {
                    "UPDATE jobs SET eval_preimage = $2, eval_paid_at = $3, instance_id = $4 WHERE id = $1"
                } else {
                    "UPDATE jobs SET work_preimage = $2, work_paid_at = $3, instance_id = $4 WHERE id = $1"
                };
                sqlx::query(paid_columns)
                    .bind(job.id.as_str())
                    .bind(preimage_hex)
                    .bind(now_ms)
                    .bind(instance_id)
                    .execute(&mut *tx)
                    .await?;
                let after = read_job(&mut tx, &job.id).await?.ok_or(StoreError::NotFound)?;
                tx.commit().await?;
                Ok(Some(after))
            }

            async fn job_attempt(&self, id: &str, instance_id: &str, now_ms: i64) -> Result<u32, StoreError> {
                let mut tx = self.begin_write().await?;
                let attempts: Option<i64> = sqlx::query_scalar(
                    "UPDATE jobs SET attempts = attempts + 1, updated_at = $2, instance_id = $3 WHERE id = $1 \
                     RETURNING attempts",
                )
                .bind(id)
                .bind(now_ms)
                .bind(instance_id)
                .fetch_optional(&mut *tx)
                .await?;
                let Some(attempts) = attempts else {
                    tx.rollback().await?;
                    return Err(StoreError::NotFound);
                };
                tx.commit().await?;
                u32::try_from(attempts).map_err(|_| StoreError::Database("corrupt row: bad attempts".to_owned()))
            }

            async fn job_evaluated(
                &self,
                id: &str,
                outcome: &Evaluation,
                acct: &Accounting,
                now_ms: i64,
                refund_expires_at_ms: i64,
                dust: Msat,
            ) -> Result<JobRow, StoreError> {
                let event = match outcome {
                    Evaluation::Accepted { .. } => JobEvent::Accepted,
                    Evaluation::AcceptedFree { .. } => JobEvent::AcceptedFree,
                    Evaluation::Rejected { reason } => JobEvent::Rejected { reason: reason.clone() },
                    Evaluation::Failed { reason } => JobEvent::Failed { reason: reason.clone() },
                };
                let mut tx = self.begin_write().await?;
                let job = take_job(&mut tx, id, JobState::Evaluating, &event, now_ms, "is not being evaluated").await?;
                let paid = job.eval_invoice.amount;
                // Accepted or rejected, the evaluation was done: its fee is earned.
                let actual = match outcome {
                    Evaluation::Failed { .. } => Msat::ZERO,
                    _ => paid,
                };
                let (charged, refund_id) = settle_job_phase(
                    &mut tx,
                    &PhaseSettle {
                        job_id: id,
                        phase: JobPhase::Eval,
                        paid,
                        actual,
                        dust,
                        refund_expires_at_ms,
                        now_ms,
                    },
                )
                .await?;
                match outcome {
                    Evaluation::Accepted {
                        work_invoice,
                        grant,
                        btc_usd_micros,
                        est_input_tokens,
                        est_output_tokens,
                    } => {
                        sqlx::query(
                            "UPDATE jobs SET work_hash = $2, work_bolt11 = $3, work_amount_msat = $4, \
                             work_expires_at = $5, work_btc_usd_micros = $6, est_input_tokens = $7, \
                             est_output_tokens = $8 WHERE id = $1",
                        )
                        .bind(id)
                        .bind(work_invoice.payment_hash.as_str())
                        .bind(work_invoice.bolt11.as_str())
                        .bind(work_invoice.amount.to_i64()?)
                        .bind(work_invoice.expires_at_ms)
                        .bind(to_i64(*btc_usd_micros)?)
                        .bind(to_i64(*est_input_tokens)?)
                        .bind(to_i64(*est_output_tokens)?)
                        .execute(&mut *tx)
                        .await?;
                        if let Some(ask) = grant {
                            store_job_grant(&mut tx, id, "partial", ask).await?;
                        }
                    }
                    Evaluation::AcceptedFree { grant, btc_usd_micros, est_input_tokens, est_output_tokens } => {
                        // No work invoice: the work columns stay NULL.
                        sqlx::query(
                            "UPDATE jobs SET work_btc_usd_micros = $2, est_input_tokens = $3, est_output_tokens = $4 \
                             WHERE id = $1",
                        )
                        .bind(id)
                        .bind(to_i64(*btc_usd_micros)?)
                        .bind(to_i64(*est_input_tokens)?)
                        .bind(to_i64(*est_output_tokens)?)
                        .execute(&mut *tx)
                        .await?;
                        store_job_grant(&mut tx, id, "free", grant).await?;
                    }
                    Evaluation::Rejected { reason } | Evaluation::Failed { reason } => {
                        sqlx::query("UPDATE jobs SET reason = $2 WHERE id = $1")
                            .bind(id)
                            .bind(reason.as_str())
                            .execute(&mut *tx)
                            .await?;
                    }
                }
                if let Some(refund_id) = refund_id {
                    sqlx::query("UPDATE jobs SET refund_id = $2 WHERE id = $1")
                        .bind(id)
                        .bind(refund_id.as_str())
                        .execute(&mut *tx)
                        .await?;
                }
                credit_pool(&mut tx, &format!("{id}:eval"), charged, acct.pool_credit_pct, now_ms).await?;
                if matches!(outcome, Evaluation::Rejected { .. } | Evaluation::Failed { .. }) {
                    if let Some(pubkey) = &job.pubkey {
                        apply_interaction(&mut tx, pubkey, Interaction::Failed, &acct.trust, now_ms).await?;
                    }
                }
                let after = read_job(&mut tx, id).await?.ok_or(StoreError::NotFound)?;
                tx.commit().await?;
                Ok(after)
            }

            async fn job_finished(
                &self,
                id: &str,
                outcome: &WorkOutcome,
                acct: &Accounting,
                now_ms: i64,
                refund_expires_at_ms: i64,
                dust: Msat,
            ) -> Result<JobRow, StoreError> {
                let event = match outcome {
                    WorkOutcome::Completed { .. } => JobEvent::Completed,
                    WorkOutcome::Failed { reason } => JobEvent::Failed { reason: reason.clone() },
                };
                let mut tx = self.begin_write().await?;
                let job = take_job(&mut tx, id, JobState::Executing, &event, now_ms, "is not executing").await?;
                // Only a free job executes without a work invoice: it paid nothing.
                let paid = match (&job.work_invoice, job.free_tier.as_deref()) {
                    (Some(w), _) => w.amount,
                    (None, Some("free")) => Msat::ZERO,
                    (None, _) => {
                        tx.rollback().await?;
                        return Err(StoreError::Database(
                            "corrupt row: an executing job without a work invoice".to_owned(),
                        ));
                    }
                };
                let actual = match outcome {
                    WorkOutcome::Completed { actual_charge, .. } => *actual_charge,
                    WorkOutcome::Failed { .. } => Msat::ZERO,
                };
                // The pool absorbs its part of completed work first (job → pool → identity).
                let mut absorbed = None;
                if let (WorkOutcome::Completed { .. }, Some(_)) = (outcome, job.free_tier.as_deref()) {
                    let (tier, allowance): (Option<String>, Option<i64>) =
                        sqlx::query_as("SELECT grant_tier, grant_allowance_msat FROM jobs WHERE id = $1")
                            .bind(id)
                            .fetch_one(&mut *tx)
                            .await?;
                    let ask = GrantAsk {
                        kind: GrantKind::Job,
                        pubkey: job.pubkey.clone(),
                        tier: parse_tier(tier.as_deref().unwrap_or_default())?,
                        model: job.work_model.clone(),
                        cap: job.absorb_cap.unwrap_or(Msat::ZERO),
                        allowance: allowance.map(msat).transpose()?,
                    };
                    absorbed = Some(write_grant(&mut tx, id, &ask, actual, now_ms).await?);
                }
                let payer_part = actual.checked_sub(absorbed.unwrap_or(Msat::ZERO))?;
                let (charged, refund_id) = if paid > Msat::ZERO {
                    settle_job_phase(
                        &mut tx,
                        &PhaseSettle {
                            job_id: id,
                            phase: JobPhase::Work,
                            paid,
                            actual: payer_part,
                            dust,
                            refund_expires_at_ms,
                            now_ms,
                        },
                    )
                    .await?
                } else {
                    (Msat::ZERO, None)
                };
                credit_pool(&mut tx, &format!("{id}:work"), charged, acct.pool_credit_pct, now_ms).await?;
                match outcome {
                    WorkOutcome::Completed { result, usage, .. } => {
                        sqlx::query(
                            "UPDATE jobs SET result = $2, input_tokens = $3, output_tokens = $4, work_charged_msat = $5, \
                             absorbed_msat = $6 WHERE id = $1",
                        )
                        .bind(id)
                        .bind(result.as_str())
                        .bind(to_i64(usage.input)?)
                        .bind(to_i64(usage.output)?)
                        .bind(charged.to_i64()?)
                        .bind(absorbed.map(|g| g.to_i64()).transpose()?)
                        .execute(&mut *tx)
                        .await?;
                    }
                    WorkOutcome::Failed { reason } => {
                        sqlx::query("UPDATE jobs SET reason = $2, work_charged_msat = $3 WHERE id = $1")
                            .bind(id)
                            .bind(reason.as_str())
                            .bind(charged.to_i64()?)
                            .execute(&mut *tx)
                            .await?;
                    }
                }
                if let Some(refund_id) = refund_id {
                    sqlx::query("UPDATE jobs SET refund_id = $2 WHERE id = $1")
                        .bind(id)
                        .bind(refund_id.as_str())
                        .execute(&mut *tx)
                        .await?;
                }
                if let Some(pubkey) = &job.pubkey {
                    let interaction = match outcome {
                        // The evaluation fee was charged in full when the job was accepted.
                        WorkOutcome::Completed { .. } => Interaction::served(job.eval_invoice.amount.checked_add(charged)?),
                        WorkOutcome::Failed { .. } => Interaction::Failed,
                    };
                    apply_interaction(&mut tx, pubkey, interaction, &acct.trust, now_ms).await?;
                }
                let after = read_job(&mut tx, id).await?.ok_or(StoreError::NotFound)?;
                tx.commit().await?;
                Ok(after)
            }

            async fn jobs_in_states(&self, states: &[JobState]) -> Result<Vec<JobRow>, StoreError> {
                let mut jobs = Vec::new();
                // One query per state keeps the SQL static and the same in both dialects.
                for state in states {
                    let raws: Vec<$crate::common::JobRaw> = sqlx::query_as(concat!(
                        "SELECT ",
                        job_columns!(),
                        " FROM jobs WHERE state = $1 ORDER BY created_at, id"
                    ))
                    .bind(state.as_str())
                    .fetch_all(&self.pool)
                    .await?;
                    for raw in raws {
                        jobs.push(JobRow::try_from(raw)?);
                    }
                }
                jobs.sort_by(|a, b| a.created_at_ms.cmp(&b.created_at_ms).then_with(|| a.id.cmp(&b.id)));
                jobs.dedup_by(|later, first| later.id == first.id);
                Ok(jobs)
            }

            async fn orphaned_jobs(&self, stale_before_ms: i64) -> Result<Vec<JobRow>, StoreError> {
                let raws: Vec<$crate::common::JobRaw> = sqlx::query_as(concat!(
                    "SELECT ",
                    job_columns!(),
                    " FROM jobs WHERE state IN ('evaluating', 'executing') AND (instance_id IS NULL OR instance_id NOT IN \
                     (SELECT id FROM gateway_instances WHERE heartbeat_at >= $1)) ORDER BY created_at, id"
                ))
                .bind(stale_before_ms)
                .fetch_all(&self.pool)
                .await?;
                raws.into_iter().map(JobRow::try_from).collect()
            }

            async fn adopt_job(&self, id: &str, from_instance: Option<&str>, to_instance: &str, now_ms: i64) -> Result<bool, StoreError> {
                let mut tx = self.begin_write().await?;
                let changed = match from_instance {
                    Some(from) => sqlx::query("UPDATE jobs SET instance_id = $3, updated_at = $4 WHERE id = $1 AND instance_id = $2")
                        .bind(id)
                        .bind(from)
                        .bind(to_instance)
                        .bind(now_ms)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected(),
                    None => sqlx::query("UPDATE jobs SET instance_id = $2, updated_at = $3 WHERE id = $1 AND instance_id IS NULL")
                        .bind(id)
                        .bind(to_instance)
                        .bind(now_ms)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected(),
                };
                tx.commit().await?;
                Ok(changed == 1)
            }

            async fn job_invoice_dead(&self, payment_hash: &str, now_ms: i64) -> Result<(), StoreError> {
                let mut tx = self.begin_write().await?;
                sqlx::query(
                    "UPDATE jobs SET invoice_dead_at = $2 WHERE invoice_dead_at IS NULL AND \
                     ((state = 'awaiting_eval_payment' AND eval_hash = $1) OR (state = 'awaiting_work_payment' AND work_hash = $1))",
                )
                .bind(payment_hash)
                .bind(now_ms)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(())
            }
        }
    };
}
pub(crate) use jobs_impl;
