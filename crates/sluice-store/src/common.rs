//! What both stores share: raw row shapes, their conversion into the public
//! row types, and the whole `impl Store` written once as a macro.
//!
//! The SQL is deliberately the common subset of SQLite and PostgreSQL (`$n`
//! placeholders, `ON CONFLICT`, `RETURNING`, `CAST(... AS BIGINT)` around
//! sums), so one text serves both and the two stores cannot drift apart. What
//! differs per dialect lives in each store's inherent `begin_write` /
//! `begin_read`: SQLite takes the write lock up front (`BEGIN IMMEDIATE`),
//! PostgreSQL relies on row locks taken by conditional `UPDATE`s.

use sluice_core::{
    AmountError, JobState, Msat, Refund, RefundState, SessionPolicy, SessionState, Tier,
};

use crate::{
    DevInvoiceRow, GrantKind, GrantRow, IdentityRow, InvoicePurpose, InvoiceRow, InvoiceState,
    JobInvoice, JobRow, RefundRow, RequestRow, RequestStatus, SessionRow, SpendCap, StoreError,
};

/// Attempts of a hold whose conditional update failed although a re-read says
/// it should have succeeded (a concurrent settle changed the row in between).
pub(crate) const HOLD_ATTEMPTS: usize = 5;

/// Session columns, in [`SessionRaw`] order (a macro so queries stay `&'static str`).
macro_rules! session_columns {
    () => {
        "id, state, balance_msat, held_msat, deposited_msat, spent_msat, created_at, expires_at"
    };
}
pub(crate) use session_columns;

/// A ledger transaction's id: the digest of its idempotency key, which is
/// unique, so the id is too (and the store needs no randomness). Two writers
/// of one key then clash on both columns; the insert's `ON CONFLICT DO
/// NOTHING` (no target) absorbs either.
pub(crate) fn ledger_tx_id(idempotency_key: &str) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(idempotency_key.as_bytes()))
}

/// A `u64` quantity as a `BIGINT`.
pub(crate) fn to_i64(v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Amount(AmountError::Overflow))
}

fn from_i64(v: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| corrupt(what))
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Database(format!("corrupt row: bad {what}"))
}

/// `now + ttl` in unix ms.
pub(crate) fn expiry(now_ms: i64, policy: &SessionPolicy) -> Result<i64, StoreError> {
    policy
        .ttl_secs
        .checked_mul(1_000)
        .and_then(|ms| i64::try_from(ms).ok())
        .and_then(|ms| now_ms.checked_add(ms))
        .ok_or(StoreError::Amount(AmountError::Overflow))
}

/// `now + ttl_ms` in unix ms.
pub(crate) fn expiry_ms(now_ms: i64, ttl_ms: i64) -> Result<i64, StoreError> {
    now_ms
        .checked_add(ttl_ms)
        .ok_or(StoreError::Amount(AmountError::Overflow))
}

/// A stored session state.
pub(crate) fn parse_state(s: &str) -> Result<SessionState, StoreError> {
    SessionState::parse(s).ok_or_else(|| corrupt("session state"))
}

/// A stored amount.
pub(crate) fn msat(v: i64) -> Result<Msat, StoreError> {
    Msat::from_i64(v).map_err(|_| corrupt("amount"))
}

/// The caps of a hold in lock order (sorted by key, so concurrent holds lock
/// cap rows in the same order and cannot deadlock), one per key (the tightest).
pub(crate) fn normalise_caps(caps: &[SpendCap]) -> Vec<SpendCap> {
    let mut out: Vec<SpendCap> = caps.to_vec();
    out.sort_by(|a, b| a.key.cmp(&b.key).then(a.cap.cmp(&b.cap)));
    out.dedup_by(|later, first| later.key == first.key);
    out
}

/// The cap keys as stored on the request row.
pub(crate) fn cap_keys_json(caps: &[SpendCap]) -> Result<String, StoreError> {
    serde_json::to_string(&caps.iter().map(|c| c.key.as_str()).collect::<Vec<_>>())
        .map_err(|e| StoreError::Database(e.to_string()))
}

/// The cap keys of a stored request row.
pub(crate) fn parse_cap_keys(s: &str) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(s).map_err(|_| corrupt("cap_keys"))
}

/// A secret as stored (hex) back to bytes.
pub(crate) fn parse_secret(hex_value: &str) -> Result<[u8; 32], StoreError> {
    hex::decode(hex_value)
        .ok()
        .and_then(|v| <[u8; 32]>::try_from(v).ok())
        .ok_or_else(|| corrupt("secret"))
}

/// A `sessions` row as read.
#[derive(sqlx::FromRow)]
pub(crate) struct SessionRaw {
    id: String,
    state: String,
    balance_msat: i64,
    held_msat: i64,
    deposited_msat: i64,
    spent_msat: i64,
    created_at: i64,
    expires_at: i64,
}

impl TryFrom<SessionRaw> for SessionRow {
    type Error = StoreError;
    fn try_from(r: SessionRaw) -> Result<Self, StoreError> {
        Ok(SessionRow {
            id: r.id,
            state: parse_state(&r.state)?,
            balance: msat(r.balance_msat)?,
            held: msat(r.held_msat)?,
            deposited: msat(r.deposited_msat)?,
            spent: msat(r.spent_msat)?,
            created_at_ms: r.created_at,
            expires_at_ms: r.expires_at,
        })
    }
}

/// Invoice columns, in [`InvoiceRaw`] order.
macro_rules! invoice_columns {
    () => {
        "payment_hash, bolt11, amount_msat, purpose, session_id, state, preimage, created_at, expires_at, settled_at"
    };
}
pub(crate) use invoice_columns;

/// An `invoices` row as read.
#[derive(sqlx::FromRow)]
pub(crate) struct InvoiceRaw {
    payment_hash: String,
    bolt11: String,
    amount_msat: i64,
    purpose: String,
    session_id: String,
    state: String,
    preimage: Option<String>,
    created_at: i64,
    expires_at: i64,
    settled_at: Option<i64>,
}

impl InvoiceState {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            InvoiceState::Pending => "pending",
            InvoiceState::Settled => "settled",
            InvoiceState::Expired => "expired",
        }
    }

    /// Parse a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => InvoiceState::Pending,
            "settled" => InvoiceState::Settled,
            "expired" => InvoiceState::Expired,
            _ => return None,
        })
    }
}

impl InvoicePurpose {
    /// Parse a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "deposit" => InvoicePurpose::Deposit,
            "topup" => InvoicePurpose::Topup,
            _ => return None,
        })
    }
}

impl TryFrom<InvoiceRaw> for InvoiceRow {
    type Error = StoreError;
    fn try_from(r: InvoiceRaw) -> Result<Self, StoreError> {
        Ok(InvoiceRow {
            payment_hash: r.payment_hash,
            bolt11: r.bolt11,
            amount: msat(r.amount_msat)?,
            purpose: InvoicePurpose::parse(&r.purpose).ok_or_else(|| corrupt("invoice purpose"))?,
            session_id: r.session_id,
            state: InvoiceState::parse(&r.state).ok_or_else(|| corrupt("invoice state"))?,
            preimage: r.preimage,
            created_at_ms: r.created_at,
            expires_at_ms: r.expires_at,
            settled_at_ms: r.settled_at,
        })
    }
}

/// Request columns, in [`RequestRaw`] order (table alias `r`).
macro_rules! request_columns {
    () => {
        "r.id, r.session_id, r.model, r.est_input_tokens, r.max_output_tokens, r.hold_msat, r.btc_usd_micros, \
         r.input_tokens, r.output_tokens, r.charged_msat, r.uncharged_msat, r.latency_ms, r.status, r.stream, \
         r.instance_id, r.pubkey, r.absorbed_msat, r.created_at, r.finished_at"
    };
}
pub(crate) use request_columns;

/// A `requests` row as read.
#[derive(sqlx::FromRow)]
pub(crate) struct RequestRaw {
    id: String,
    session_id: String,
    model: String,
    est_input_tokens: i64,
    max_output_tokens: i64,
    hold_msat: i64,
    btc_usd_micros: i64,
    input_tokens: Option<i64>,
    output_tokens: Option<i64>,
    charged_msat: Option<i64>,
    uncharged_msat: Option<i64>,
    latency_ms: Option<i64>,
    status: String,
    stream: bool,
    instance_id: String,
    pubkey: Option<String>,
    absorbed_msat: Option<i64>,
    created_at: i64,
    finished_at: Option<i64>,
}

impl TryFrom<RequestRaw> for RequestRow {
    type Error = StoreError;
    fn try_from(r: RequestRaw) -> Result<Self, StoreError> {
        let opt_u64 = |v: Option<i64>, what: &str| v.map(|v| from_i64(v, what)).transpose();
        Ok(RequestRow {
            id: r.id,
            session_id: r.session_id,
            model: r.model,
            est_input_tokens: from_i64(r.est_input_tokens, "est_input_tokens")?,
            max_output_tokens: from_i64(r.max_output_tokens, "max_output_tokens")?,
            hold: msat(r.hold_msat)?,
            btc_usd_micros: from_i64(r.btc_usd_micros, "btc_usd_micros")?,
            input_tokens: opt_u64(r.input_tokens, "input_tokens")?,
            output_tokens: opt_u64(r.output_tokens, "output_tokens")?,
            charged: r.charged_msat.map(msat).transpose()?,
            uncharged: r.uncharged_msat.map(msat).transpose()?,
            latency_ms: opt_u64(r.latency_ms, "latency_ms")?,
            status: RequestStatus::parse(&r.status).ok_or_else(|| corrupt("request status"))?,
            stream: r.stream,
            instance_id: r.instance_id,
            pubkey: r.pubkey,
            absorbed: r.absorbed_msat.map(msat).transpose()?,
            created_at_ms: r.created_at,
            finished_at_ms: r.finished_at,
        })
    }
}

/// A `dev_invoices` row as read.
#[derive(sqlx::FromRow)]
pub(crate) struct DevInvoiceRaw {
    issuer: String,
    payment_hash: String,
    preimage: String,
    bolt11: String,
    amount_msat: i64,
    expires_at: i64,
    paid_at: Option<i64>,
}

impl TryFrom<DevInvoiceRaw> for DevInvoiceRow {
    type Error = StoreError;
    fn try_from(r: DevInvoiceRaw) -> Result<Self, StoreError> {
        Ok(DevInvoiceRow {
            issuer: r.issuer,
            payment_hash: r.payment_hash,
            preimage: r.preimage,
            bolt11: r.bolt11,
            amount: msat(r.amount_msat)?,
            expires_at_ms: r.expires_at,
            paid_at_ms: r.paid_at,
        })
    }
}

/// Job columns, in [`JobRaw`] order.
macro_rules! job_columns {
    () => {
        "id, state, request, eval_model, work_model, eval_hash, eval_bolt11, eval_amount_msat, eval_expires_at, \
         work_hash, work_bolt11, work_amount_msat, work_expires_at, reason, result, work_btc_usd_micros, \
         est_input_tokens, est_output_tokens, input_tokens, output_tokens, work_charged_msat, refund_id, attempts, \
         pubkey, free_tier, absorb_cap_msat, absorbed_msat, created_at, updated_at, instance_id, invoice_dead_at"
    };
}
pub(crate) use job_columns;

/// A `jobs` row as read.
#[derive(sqlx::FromRow)]
pub(crate) struct JobRaw {
    id: String,
    state: String,
    request: String,
    eval_model: String,
    work_model: String,
    eval_hash: String,
    eval_bolt11: String,
    eval_amount_msat: i64,
    eval_expires_at: i64,
    work_hash: Option<String>,
    work_bolt11: Option<String>,
    work_amount_msat: Option<i64>,
    work_expires_at: Option<i64>,
    reason: Option<String>,
    result: Option<String>,
    work_btc_usd_micros: Option<i64>,
    est_input_tokens: Option<i64>,
    est_output_tokens: Option<i64>,
    input_tokens: Option<i64>,
    output_tokens: Option<i64>,
    work_charged_msat: Option<i64>,
    refund_id: Option<String>,
    attempts: i64,
    pubkey: Option<String>,
    free_tier: Option<String>,
    absorb_cap_msat: Option<i64>,
    absorbed_msat: Option<i64>,
    created_at: i64,
    updated_at: i64,
    instance_id: Option<String>,
    invoice_dead_at: Option<i64>,
}

impl TryFrom<JobRaw> for JobRow {
    type Error = StoreError;
    fn try_from(r: JobRaw) -> Result<Self, StoreError> {
        let opt_u64 = |v: Option<i64>, what: &str| v.map(|v| from_i64(v, what)).transpose();
        let work_invoice = match (
            r.work_hash,
            r.work_bolt11,
            r.work_amount_msat,
            r.work_expires_at,
        ) {
            (Some(payment_hash), Some(bolt11), Some(amount), Some(expires_at_ms)) => {
                Some(JobInvoice {
                    payment_hash,
                    bolt11,
                    amount: msat(amount)?,
                    expires_at_ms,
                })
            }
            (None, None, None, None) => None,
            _ => return Err(corrupt("work invoice")),
        };
        Ok(JobRow {
            id: r.id,
            state: JobState::parse(&r.state).ok_or_else(|| corrupt("job state"))?,
            request: r.request,
            eval_model: r.eval_model,
            work_model: r.work_model,
            eval_invoice: JobInvoice {
                payment_hash: r.eval_hash,
                bolt11: r.eval_bolt11,
                amount: msat(r.eval_amount_msat)?,
                expires_at_ms: r.eval_expires_at,
            },
            work_invoice,
            reason: r.reason,
            result: r.result,
            work_btc_usd_micros: opt_u64(r.work_btc_usd_micros, "work_btc_usd_micros")?,
            est_input_tokens: opt_u64(r.est_input_tokens, "est_input_tokens")?,
            est_output_tokens: opt_u64(r.est_output_tokens, "est_output_tokens")?,
            input_tokens: opt_u64(r.input_tokens, "input_tokens")?,
            output_tokens: opt_u64(r.output_tokens, "output_tokens")?,
            work_charged: r.work_charged_msat.map(msat).transpose()?,
            refund_id: r.refund_id,
            attempts: u32::try_from(r.attempts).map_err(|_| corrupt("attempts"))?,
            pubkey: r.pubkey,
            free_tier: r.free_tier,
            absorb_cap: r.absorb_cap_msat.map(msat).transpose()?,
            absorbed: r.absorbed_msat.map(msat).transpose()?,
            created_at_ms: r.created_at,
            updated_at_ms: r.updated_at,
            instance_id: r.instance_id,
            invoice_dead_at_ms: r.invoice_dead_at,
        })
    }
}

/// Identity columns, in [`IdentityRaw`] order.
macro_rules! identity_columns {
    () => {
        "pubkey, score, successes, failures, paid_msat, absorbed_msat, absorbed_today_msat, absorbed_day, \
         first_seen, last_seen, paid_days, last_paid_day"
    };
}
pub(crate) use identity_columns;

/// An `identities` row as read.
#[derive(sqlx::FromRow)]
pub(crate) struct IdentityRaw {
    pubkey: String,
    score: i64,
    successes: i64,
    failures: i64,
    paid_msat: i64,
    absorbed_msat: i64,
    absorbed_today_msat: i64,
    absorbed_day: i64,
    first_seen: i64,
    last_seen: i64,
    paid_days: i64,
    last_paid_day: Option<i64>,
}

impl TryFrom<IdentityRaw> for IdentityRow {
    type Error = StoreError;
    fn try_from(r: IdentityRaw) -> Result<Self, StoreError> {
        Ok(IdentityRow {
            pubkey: r.pubkey,
            score: from_i64(r.score, "score")?,
            successes: from_i64(r.successes, "successes")?,
            failures: from_i64(r.failures, "failures")?,
            paid: msat(r.paid_msat)?,
            absorbed: msat(r.absorbed_msat)?,
            absorbed_today: msat(r.absorbed_today_msat)?,
            absorbed_day: r.absorbed_day,
            first_seen_ms: r.first_seen,
            last_seen_ms: r.last_seen,
            paid_days: from_i64(r.paid_days, "paid_days")?,
            last_paid_day: r.last_paid_day,
        })
    }
}

/// Grant columns, in [`GrantRaw`] order.
macro_rules! grant_columns {
    () => {
        "id, kind, pubkey, tier, model, requested_msat, absorbed_msat, day, created_at"
    };
}
pub(crate) use grant_columns;

/// A `free_grants` row as read.
#[derive(sqlx::FromRow)]
pub(crate) struct GrantRaw {
    id: String,
    kind: String,
    pubkey: Option<String>,
    tier: String,
    model: String,
    requested_msat: i64,
    absorbed_msat: i64,
    day: i64,
    created_at: i64,
}

impl TryFrom<GrantRaw> for GrantRow {
    type Error = StoreError;
    fn try_from(r: GrantRaw) -> Result<Self, StoreError> {
        Ok(GrantRow {
            id: r.id,
            kind: GrantKind::parse(&r.kind).ok_or_else(|| corrupt("grant kind"))?,
            pubkey: r.pubkey,
            tier: Tier::parse(&r.tier).ok_or_else(|| corrupt("grant tier"))?,
            model: r.model,
            requested: msat(r.requested_msat)?,
            absorbed: msat(r.absorbed_msat)?,
            day: r.day,
            created_at_ms: r.created_at,
        })
    }
}

/// A stored tier name.
pub(crate) fn parse_tier(s: &str) -> Result<Tier, StoreError> {
    Tier::parse(s).ok_or_else(|| corrupt("tier"))
}

/// The refund id of a job: one per job, since a job owes at most one refund
/// (a failed evaluation ends the job; otherwise only the work phase refunds).
pub(crate) fn job_refund_id(job_id: &str) -> String {
    format!("refund_{job_id}")
}

/// Refund columns, in [`RefundRaw`] order.
macro_rules! refund_columns {
    () => {
        "id, owner_kind, owner_id, state, amount_msat, payout_msat, expires_at, payment_hash, preimage, \
         lookup_required, created_at, updated_at, claimed_msat, fee_msat, failed_hash, retry_until"
    };
}
pub(crate) use refund_columns;

/// A `refunds` row as read.
#[derive(sqlx::FromRow)]
pub(crate) struct RefundRaw {
    id: String,
    owner_kind: String,
    owner_id: String,
    state: String,
    amount_msat: i64,
    payout_msat: i64,
    expires_at: i64,
    payment_hash: Option<String>,
    preimage: Option<String>,
    lookup_required: bool,
    created_at: i64,
    updated_at: i64,
    claimed_msat: Option<i64>,
    fee_msat: Option<i64>,
    failed_hash: Option<String>,
    retry_until: Option<i64>,
}

impl TryFrom<RefundRaw> for RefundRow {
    type Error = StoreError;
    fn try_from(r: RefundRaw) -> Result<Self, StoreError> {
        Ok(RefundRow {
            id: r.id,
            owner_kind: r.owner_kind,
            owner_id: r.owner_id,
            refund: Refund {
                state: RefundState::parse(&r.state).ok_or_else(|| corrupt("refund state"))?,
                amount: msat(r.amount_msat)?,
                payout: msat(r.payout_msat)?,
                expires_at_ms: r.expires_at,
                payment_hash: r.payment_hash,
                lookup_required: r.lookup_required,
                preimage: r.preimage,
                claimed: msat(r.claimed_msat.unwrap_or(0))?,
                fee: msat(r.fee_msat.unwrap_or(0))?,
                failed_hash: r.failed_hash,
                invoice_expires_at_ms: r.retry_until.unwrap_or(0),
            },
            created_at_ms: r.created_at,
            updated_at_ms: r.updated_at,
        })
    }
}

/// A refund to offer (see `offer_refund` in [`store_impl`]).
pub(crate) struct Offer<'a> {
    /// The refund id.
    pub(crate) refund_id: &'a str,
    /// `"job"` or `"session"`.
    pub(crate) owner_kind: &'a str,
    /// The job or session id.
    pub(crate) owner_id: &'a str,
    /// The exact refund.
    pub(crate) amount: Msat,
    /// Below this the refund goes to the pool whole.
    pub(crate) dust: Msat,
    /// When the offer lapses, unix ms.
    pub(crate) expires_at_ms: i64,
    /// Now, unix ms.
    pub(crate) now_ms: i64,
}

/// One job phase to settle (see `settle_job_phase` in [`store_impl`]).
pub(crate) struct PhaseSettle<'a> {
    /// The job.
    pub(crate) job_id: &'a str,
    /// Which phase.
    pub(crate) phase: sluice_core::JobPhase,
    /// What the phase's invoice paid.
    pub(crate) paid: Msat,
    /// The actual charge (0 when the phase failed).
    pub(crate) actual: Msat,
    /// Dust threshold of the refund.
    pub(crate) dust: Msat,
    /// When the refund offer lapses, unix ms.
    pub(crate) refund_expires_at_ms: i64,
    /// Now, unix ms.
    pub(crate) now_ms: i64,
}

/// The time a refund event happens at: its own time when it carries one, else
/// the caller's `now_ms` (payout outcomes carry none).
pub(crate) fn refund_event_time(event: &sluice_core::RefundEvent, now_ms: i64) -> i64 {
    match event {
        sluice_core::RefundEvent::Claim { now_ms, .. }
        | sluice_core::RefundEvent::Expire { now_ms } => *now_ms,
        _ => now_ms,
    }
}

/// A job event the core refused, as the store reports it.
pub(crate) fn job_conflict(e: sluice_core::JobError) -> StoreError {
    StoreError::Conflict(e.to_string())
}

/// What ends a held request: a settlement at actual cost or a full release.
pub(crate) enum Finish<'a> {
    /// [`crate::Store::settle`].
    Settle(&'a crate::SettleRequest),
    /// [`crate::Store::release`].
    Release {
        /// The request.
        request_id: &'a str,
        /// `Failed` or `Abandoned`.
        status: RequestStatus,
        /// Now, unix ms.
        now_ms: i64,
        /// Session policy.
        policy: &'a SessionPolicy,
    },
}

/// The shared SQL plumbing of one dialect (its imports, the posting and
/// locking helpers, the multi-step transactions); the per-domain trait
/// impls in `crate::sql` are expanded after it, with the same arguments.
/// `$store` must have a `pool` field and
/// inherent `begin_write()` (a transaction that will write: on SQLite it holds
/// the database write lock from its first statement) and `begin_read()` (one
/// consistent snapshot); `$conn` is the dialect's connection type.
macro_rules! store_impl {
    ($store:ty, $conn:ty, $dialect:literal) => {
        use $crate::common::{
            Finish, HOLD_ATTEMPTS, Offer, PhaseSettle, cap_keys_json, expiry, expiry_ms, grant_columns,
            identity_columns, invoice_columns, job_columns, job_conflict, job_refund_id, ledger_tx_id, msat, normalise_caps,
            parse_cap_keys, parse_secret, parse_state, parse_tier, refund_columns, refund_event_time, request_columns,
            session_columns, to_i64,
        };
        use $crate::{
            Accounting, ChallengeUse, Credit, DevInvoiceRow, Evaluation, GrantAsk, GrantKind, GrantRow, HoldOutcome,
            IdentityRow, InvoiceRow, JobRow, LedgerReport, NewHold, NewInvoice, NewJob, NewSession, NewVouch,
            PendingJobInvoice, PoolStatus, RefundEventError, RefundRow, RequestRow, RequestStatus, SessionRow,
            SettleRequest, Settled, StoreError, VouchOutcome, WorkOutcome,
        };
        use sluice_core::{
            Account, Interaction, JobEvent, JobPhase, JobState, Msat, Posting, Refund, RefundEvent, SessionPolicy,
            SessionState, TrustRules, day_of, effective_state, remaining_allowance,
        };

        /// Lock the pool row (a no-op update: a row lock held to the end of the
        /// transaction on PostgreSQL) and read its balance.
        async fn lock_pool(conn: &mut $conn) -> Result<Msat, StoreError> {
            let balance: Option<i64> = sqlx::query_scalar(
                "UPDATE pool SET balance_msat = balance_msat WHERE id = 'generosity' RETURNING balance_msat",
            )
            .fetch_optional(&mut *conn)
            .await?;
            msat(balance.ok_or_else(|| StoreError::Database("the pool row is missing".to_owned()))?)
        }

        /// Lock an identity, creating it (score 0, first and last seen now) when absent.
        async fn lock_identity(conn: &mut $conn, pubkey: &str, now_ms: i64) -> Result<IdentityRow, StoreError> {
            sqlx::query(
                "INSERT INTO identities (pubkey, first_seen, last_seen) VALUES ($1, $2, $2) \
                 ON CONFLICT (pubkey) DO NOTHING",
            )
            .bind(pubkey)
            .bind(now_ms)
            .execute(&mut *conn)
            .await?;
            let raw: $crate::common::IdentityRaw = sqlx::query_as(concat!(
                "UPDATE identities SET last_seen = last_seen WHERE pubkey = $1 RETURNING ",
                identity_columns!()
            ))
            .bind(pubkey)
            .fetch_one(&mut *conn)
            .await?;
            IdentityRow::try_from(raw)
        }

        /// Apply one interaction to an identity (created if absent): lazy decay, then
        /// the interaction's points, its count, what it paid, seen now; a failure
        /// also costs each of its vouchers (locked after it, in key order).
        async fn apply_interaction(
            conn: &mut $conn,
            pubkey: &str,
            interaction: Interaction,
            trust: &TrustRules,
            now_ms: i64,
        ) -> Result<IdentityRow, StoreError> {
            let current = lock_identity(conn, pubkey, now_ms).await?;
            let score = trust.after(trust.decayed(current.score, current.last_seen_ms, now_ms), interaction);
            let (successes, failures, paid) = match interaction {
                Interaction::Paid { paid } => (1i64, 0i64, paid),
                Interaction::Free => (1, 0, Msat::ZERO),
                Interaction::Failed => (0, 1, Msat::ZERO),
            };
            // A day with a payment counts once towards the identity's paying days.
            let today = sluice_core::day_of(now_ms);
            let new_paying_day = paid > Msat::ZERO && current.last_paid_day != Some(today);
            let raw: $crate::common::IdentityRaw = sqlx::query_as(concat!(
                "UPDATE identities SET score = $2, successes = successes + $3, failures = failures + $4, \
                 paid_msat = paid_msat + $5, last_seen = $6, paid_days = paid_days + $7, \
                 last_paid_day = CASE WHEN $8 THEN $9 ELSE last_paid_day END WHERE pubkey = $1 RETURNING ",
                identity_columns!()
            ))
            .bind(pubkey)
            .bind(to_i64(score)?)
            .bind(successes)
            .bind(failures)
            .bind(paid.to_i64()?)
            .bind(now_ms)
            .bind(i64::from(new_paying_day))
            .bind(paid > Msat::ZERO)
            .bind(today)
            .fetch_one(&mut *conn)
            .await?;
            if interaction == Interaction::Failed {
                let vouchers: Vec<String> =
                    sqlx::query_scalar("SELECT voucher FROM vouches WHERE vouchee = $1 ORDER BY voucher")
                        .bind(pubkey)
                        .fetch_all(&mut *conn)
                        .await?;
                for voucher in vouchers.iter().filter(|v| v.as_str() != pubkey) {
                    let row: Option<(i64, i64)> = sqlx::query_as(
                        "UPDATE identities SET last_seen = last_seen WHERE pubkey = $1 RETURNING score, last_seen",
                    )
                    .bind(voucher.as_str())
                    .fetch_optional(&mut *conn)
                    .await?;
                    // A voucher without an identity row has nothing to lose.
                    let Some((stored, last_seen)) = row else { continue };
                    let stored = u64::try_from(stored).map_err(|_| StoreError::Database("corrupt row: bad score".to_owned()))?;
                    let decayed = trust.decayed(stored, last_seen, now_ms);
                    // Decay is made permanent here, so its clock restarts (as when the
                    // identity is next seen); without decay the voucher's absence is kept.
                    let seen = if decayed != stored { now_ms } else { last_seen };
                    sqlx::query("UPDATE identities SET score = $2, last_seen = $3 WHERE pubkey = $1")
                        .bind(voucher.as_str())
                        .bind(to_i64(trust.after_vouchee_failed(decayed))?)
                        .bind(seen)
                        .execute(&mut *conn)
                        .await?;
                }
            }
            IdentityRow::try_from(raw)
        }

        /// Record a grant for `id`: lock the pool (and the identity), absorb
        /// `sluice_core::grant(cap, actual, pool, allowance left)`, and when that is
        /// more than zero write the `grant:<id>` posting, the identity's absorption
        /// (a new UTC day starts from zero) and the audit row. Returns the amount.
        async fn write_grant(
            conn: &mut $conn,
            id: &str,
            ask: &GrantAsk,
            actual: Msat,
            now_ms: i64,
        ) -> Result<Msat, StoreError> {
            let pool = lock_pool(conn).await?;
            let today = day_of(now_ms);
            let allowance_left = match &ask.pubkey {
                Some(pubkey) => {
                    let identity = lock_identity(conn, pubkey, now_ms).await?;
                    ask.allowance
                        .map(|a| remaining_allowance(a, identity.absorbed_today, identity.absorbed_day, today))
                }
                None => ask.allowance,
            };
            let granted = sluice_core::grant(ask.cap, actual, pool, allowance_left);
            if granted == Msat::ZERO {
                return Ok(Msat::ZERO);
            }
            let posting = Posting::grant(id, granted)?;
            write_new_postings(conn, std::slice::from_ref(&posting), now_ms).await?;
            if let Some(pubkey) = &ask.pubkey {
                sqlx::query(
                    "UPDATE identities SET absorbed_today_msat = \
                     CASE WHEN absorbed_day = $2 THEN absorbed_today_msat ELSE 0 END + $3, \
                     absorbed_day = $2, absorbed_msat = absorbed_msat + $3 WHERE pubkey = $1",
                )
                .bind(pubkey.as_str())
                .bind(today)
                .bind(granted.to_i64()?)
                .execute(&mut *conn)
                .await?;
            }
            sqlx::query(
                "INSERT INTO free_grants (id, kind, pubkey, tier, model, requested_msat, absorbed_msat, day, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(id)
            .bind(ask.kind.as_str())
            .bind(ask.pubkey.as_deref())
            .bind(ask.tier.as_str())
            .bind(ask.model.as_str())
            .bind(ask.cap.min(actual).to_i64()?)
            .bind(granted.to_i64()?)
            .bind(today)
            .bind(now_ms)
            .execute(&mut *conn)
            .await?;
            Ok(granted)
        }

        /// Store a job's free-tier decision, from which `job_finished` rebuilds its grant.
        async fn store_job_grant(conn: &mut $conn, id: &str, free_tier: &str, ask: &GrantAsk) -> Result<(), StoreError> {
            sqlx::query(
                "UPDATE jobs SET free_tier = $2, absorb_cap_msat = $3, grant_tier = $4, grant_allowance_msat = $5, \
                 pubkey = COALESCE(pubkey, $6) WHERE id = $1",
            )
            .bind(id)
            .bind(free_tier)
            .bind(ask.cap.to_i64()?)
            .bind(ask.tier.as_str())
            .bind(ask.allowance.map(|a| a.to_i64()).transpose()?)
            .bind(ask.pubkey.as_deref())
            .execute(&mut *conn)
            .await?;
            Ok(())
        }

        /// Credit the pool its share (`pct` percent) of `charged`, under key
        /// `pool-credit:<source>`; nothing when the share is zero.
        async fn credit_pool(
            conn: &mut $conn,
            source: &str,
            charged: Msat,
            pct: u32,
            now_ms: i64,
        ) -> Result<(), StoreError> {
            let share = sluice_core::pool_credit(charged, pct)?;
            if share == Msat::ZERO {
                return Ok(());
            }
            let posting = Posting::pool_credit(source, share)?;
            write_new_postings(conn, std::slice::from_ref(&posting), now_ms).await
        }

        /// Write each of `postings`; one that was posted before means the state
        /// that caused it was applied before, which the caller's conditional
        /// update should have excluded: a conflict.
        async fn write_new_postings(conn: &mut $conn, postings: &[Posting], now_ms: i64) -> Result<(), StoreError> {
            for posting in postings {
                if !write_posting(conn, posting, now_ms).await? {
                    return Err(StoreError::Conflict(format!("{} was posted before", posting.idempotency_key)));
                }
            }
            Ok(())
        }

        /// Offer a refund: the core's `Offer` transition from a fresh refund, its
        /// row, and its postings (the sub-sat remainder or a dust refund to the pool,
        /// so `refund:<id>` keeps exactly the claimable whole sats).
        async fn offer_refund(conn: &mut $conn, offer: &Offer<'_>) -> Result<(), StoreError> {
            let step = sluice_core::refund::transition(
                &Refund::new(),
                RefundEvent::Offer {
                    amount: offer.amount,
                    dust_threshold: offer.dust,
                    expires_at_ms: offer.expires_at_ms,
                },
            )
            .map_err(|e| StoreError::Conflict(e.to_string()))?;
            let r = &step.refund;
            sqlx::query(
                "INSERT INTO refunds (id, owner_kind, owner_id, state, amount_msat, payout_msat, expires_at, \
                 payment_hash, preimage, lookup_required, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11)",
            )
            .bind(offer.refund_id)
            .bind(offer.owner_kind)
            .bind(offer.owner_id)
            .bind(r.state.as_str())
            .bind(r.amount.to_i64()?)
            .bind(r.payout.to_i64()?)
            .bind(r.expires_at_ms)
            .bind(r.payment_hash.as_deref())
            .bind(r.preimage.as_deref())
            .bind(r.lookup_required)
            .bind(offer.now_ms)
            .execute(&mut *conn)
            .await?;
            write_new_postings(conn, &step.postings(offer.refund_id)?, offer.now_ms).await
        }

        /// Settle one phase of a job (`Posting::job_settle`) and offer what is
        /// left of its payment as the job's refund. Returns the charge and the
        /// refund id when a refund is owed.
        async fn settle_job_phase(conn: &mut $conn, p: &PhaseSettle<'_>) -> Result<(Msat, Option<String>), StoreError> {
            let refund_id = job_refund_id(p.job_id);
            let posting = Posting::job_settle(p.job_id, p.phase, &refund_id, p.paid, p.actual)?;
            write_new_postings(conn, std::slice::from_ref(&posting), p.now_ms).await?;
            let charged = sluice_core::settle(p.paid, p.actual).charged;
            let refund = sluice_core::refund_amount(p.paid, p.actual);
            if refund == Msat::ZERO {
                return Ok((charged, None));
            }
            offer_refund(
                conn,
                &Offer {
                    refund_id: &refund_id,
                    owner_kind: "job",
                    owner_id: p.job_id,
                    amount: refund,
                    dust: p.dust,
                    expires_at_ms: p.refund_expires_at_ms,
                    now_ms: p.now_ms,
                },
            )
            .await?;
            Ok((charged, Some(refund_id)))
        }

        /// Read job `id` and advance it from `from` by `event` (conditionally, so one
        /// caller wins), or say why not: [`StoreError::NotFound`], or a conflict
        /// "job <id> <not_in_state>". On an error the caller's transaction is dropped,
        /// which rolls it back.
        async fn take_job(
            conn: &mut $conn,
            id: &str,
            from: JobState,
            event: &JobEvent,
            now_ms: i64,
            not_in_state: &str,
        ) -> Result<JobRow, StoreError> {
            let job = read_job(conn, id).await?.ok_or(StoreError::NotFound)?;
            if job.state != from || !advance_job(conn, id, from, event, now_ms).await? {
                return Err(StoreError::Conflict(format!("job {id} {not_in_state}")));
            }
            Ok(job)
        }

        async fn read_job(conn: &mut $conn, id: &str) -> Result<Option<JobRow>, StoreError> {
            let raw: Option<$crate::common::JobRaw> =
                sqlx::query_as(concat!("SELECT ", job_columns!(), " FROM jobs WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(&mut *conn)
                    .await?;
            raw.map(JobRow::try_from).transpose()
        }

        /// Move a job out of `from` (checked by the core) into the state `event`
        /// leads to, conditionally: false when the job is not in `from` any more.
        async fn advance_job(
            conn: &mut $conn,
            id: &str,
            from: JobState,
            event: &JobEvent,
            now_ms: i64,
        ) -> Result<bool, StoreError> {
            let to = sluice_core::job::next(from, event).map_err(job_conflict)?;
            let changed = sqlx::query("UPDATE jobs SET state = $3, updated_at = $4 WHERE id = $1 AND state = $2")
                .bind(id)
                .bind(from.as_str())
                .bind(to.as_str())
                .bind(now_ms)
                .execute(&mut *conn)
                .await?
                .rows_affected();
            Ok(changed == 1)
        }

        /// Write `posting` (ledger transaction and legs); `false` when its
        /// idempotency key was posted before, in which case nothing was written.
        async fn write_posting(conn: &mut $conn, posting: &Posting, now_ms: i64) -> Result<bool, StoreError> {
            if !posting.is_balanced() {
                return Err(StoreError::Conflict(format!("unbalanced posting {}", posting.idempotency_key)));
            }
            let id = ledger_tx_id(&posting.idempotency_key);
            let inserted = sqlx::query(
                "INSERT INTO ledger_tx (id, kind, idempotency_key, created_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(id.as_str())
            .bind(posting.kind.as_str())
            .bind(posting.idempotency_key.as_str())
            .bind(now_ms)
            .execute(&mut *conn)
            .await?
            .rows_affected();
            if inserted == 0 {
                return Ok(false);
            }
            for leg in &posting.legs {
                sqlx::query("INSERT INTO ledger_entry (tx_id, account, amount_msat) VALUES ($1, $2, $3)")
                    .bind(id.as_str())
                    .bind(leg.account.key())
                    .bind(leg.amount_msat)
                    .execute(&mut *conn)
                    .await?;
                // The pool row follows its account in the same transaction (its CHECK
                // refuses a negative pool).
                if leg.account == Account::GenerosityPool {
                    let changed =
                        sqlx::query("UPDATE pool SET balance_msat = balance_msat + $1 WHERE id = 'generosity'")
                            .bind(leg.amount_msat)
                            .execute(&mut *conn)
                            .await?
                            .rows_affected();
                    if changed != 1 {
                        return Err(StoreError::Database("the pool row is missing".to_owned()));
                    }
                }
            }
            Ok(true)
        }

        async fn insert_invoice(conn: &mut $conn, invoice: &NewInvoice) -> Result<(), StoreError> {
            sqlx::query(
                "INSERT INTO invoices (payment_hash, bolt11, amount_msat, purpose, session_id, state, created_at, \
                 expires_at) VALUES ($1, $2, $3, $4, $5, 'pending', $6, $7)",
            )
            .bind(invoice.payment_hash.as_str())
            .bind(invoice.bolt11.as_str())
            .bind(invoice.amount.to_i64()?)
            .bind(invoice.purpose.as_str())
            .bind(invoice.session_id.as_str())
            .bind(invoice.created_at_ms)
            .bind(invoice.expires_at_ms)
            .execute(&mut *conn)
            .await?;
            Ok(())
        }

        impl $store {
            /// End a held request (settle or release) in one transaction.
            async fn finish(&self, finish: Finish<'_>) -> Result<Settled, StoreError> {
                let (request_id, status, now_ms, policy) = match &finish {
                    Finish::Settle(s) => {
                        if !matches!(s.status, RequestStatus::Settled | RequestStatus::ClientGone) {
                            return Err(StoreError::Conflict(format!("cannot settle as {}", s.status.as_str())));
                        }
                        (s.request_id.as_str(), s.status, s.now_ms, &s.policy)
                    }
                    Finish::Release { request_id, status, now_ms, policy } => {
                        if !matches!(status, RequestStatus::Failed | RequestStatus::Abandoned) {
                            return Err(StoreError::Conflict(format!("cannot release as {}", status.as_str())));
                        }
                        (*request_id, *status, *now_ms, *policy)
                    }
                };
                let mut tx = self.begin_write().await?;
                // Claiming the row first makes a second settle (from any process) see
                // a non-held request and stop here.
                let claimed: Option<(String, i64, String, Option<String>)> = sqlx::query_as(
                    "UPDATE requests SET status = $2, finished_at = $3 WHERE id = $1 AND status = 'held' \
                     RETURNING session_id, hold_msat, cap_keys, pubkey",
                )
                .bind(request_id)
                .bind(status.as_str())
                .bind(now_ms)
                .fetch_optional(&mut *tx)
                .await?;
                let Some((session_id, hold, cap_keys, pubkey)) = claimed else {
                    let current: Option<String> = sqlx::query_scalar("SELECT status FROM requests WHERE id = $1")
                        .bind(request_id)
                        .fetch_optional(&mut *tx)
                        .await?;
                    // Released before its settlement (past its deadline, or by a peer that took
                    // this process for dead): the answer's cost is the operator's loss, recorded.
                    if let (Finish::Settle(s), Some("abandoned")) = (&finish, current.as_deref()) {
                        sqlx::query(
                            "UPDATE requests SET input_tokens = $2, output_tokens = $3, uncharged_msat = $4 \
                             WHERE id = $1 AND status = 'abandoned' AND COALESCE(uncharged_msat, 0) = 0",
                        )
                        .bind(request_id)
                        .bind(to_i64(s.usage.input)?)
                        .bind(to_i64(s.usage.output)?)
                        .bind(s.actual_cost.to_i64()?)
                        .execute(&mut *tx)
                        .await?;
                        tx.commit().await?;
                        return Err(StoreError::Released {
                            request_id: request_id.to_owned(),
                            loss: s.actual_cost,
                        });
                    }
                    tx.rollback().await?;
                    return Err(match current {
                        None => StoreError::NotFound,
                        Some(s) => StoreError::Conflict(format!("request {request_id} is {s}, not held")),
                    });
                };
                let hold = msat(hold)?;
                // Lock order: request, session, pool, identity, spend caps. The session is
                // locked before the pool (a session close locks its session, then the pool).
                sqlx::query("UPDATE sessions SET updated_at = updated_at WHERE id = $1")
                    .bind(session_id.as_str())
                    .execute(&mut *tx)
                    .await?;
                let mut absorbed = None;
                let (settlement, posting, usage, latency) = match &finish {
                    Finish::Settle(s) => {
                        // The pool absorbs what it can first; the payer is charged the rest,
                        // capped at the hold.
                        let payer_part = match &s.grant {
                            Some(ask) => {
                                let g = write_grant(&mut tx, request_id, ask, s.actual_cost, now_ms).await?;
                                absorbed = Some(g);
                                s.actual_cost.checked_sub(g)?
                            }
                            None => s.actual_cost,
                        };
                        let split = sluice_core::settle(hold, payer_part);
                        let posting = Posting::settle(&session_id, request_id, hold, split)?;
                        (split, posting, Some(s.usage), Some(to_i64(s.latency_ms)?))
                    }
                    Finish::Release { .. } => {
                        let split = sluice_core::settle(hold, Msat::ZERO);
                        (split, Posting::release(&session_id, request_id, hold)?, None, None)
                    }
                };
                if !write_posting(&mut tx, &posting, now_ms).await? {
                    tx.rollback().await?;
                    return Err(StoreError::Conflict(format!("request {request_id} was settled before")));
                }
                let (balance, stored, expires_at): (i64, String, i64) = sqlx::query_as(
                    "UPDATE sessions SET balance_msat = balance_msat + $2, held_msat = held_msat - $3, \
                     spent_msat = spent_msat + $4, updated_at = $5 WHERE id = $1 \
                     RETURNING balance_msat, state, expires_at",
                )
                .bind(session_id.as_str())
                .bind(settlement.released.to_i64()?)
                .bind(hold.to_i64()?)
                .bind(settlement.charged.to_i64()?)
                .bind(now_ms)
                .fetch_one(&mut *tx)
                .await?;
                let balance = msat(balance)?;
                let (state, expires_at) = match parse_state(&stored)? {
                    // Activity keeps a live session alive; an expired one stays expired.
                    SessionState::Active | SessionState::Paused => {
                        let expires = if expires_at > now_ms { expiry(now_ms, policy)? } else { expires_at };
                        (policy.funded_state(balance), expires)
                    }
                    other => (other, expires_at),
                };
                sqlx::query("UPDATE sessions SET state = $2, expires_at = $3 WHERE id = $1")
                    .bind(session_id.as_str())
                    .bind(state.as_str())
                    .bind(expires_at)
                    .execute(&mut *tx)
                    .await?;
                if let Finish::Settle(s) = &finish {
                    // Every paid settlement feeds the pool its share.
                    credit_pool(&mut tx, request_id, settlement.charged, s.accounting.pool_credit_pct, now_ms).await?;
                    if let Some(pubkey) = &pubkey {
                        apply_interaction(
                            &mut tx,
                            pubkey,
                            Interaction::served(settlement.charged),
                            &s.accounting.trust,
                            now_ms,
                        )
                        .await?;
                    }
                }
                // What was released no longer counts against the caps; the charge still does.
                let released = settlement.released.to_i64()?;
                if released > 0 {
                    for key in parse_cap_keys(&cap_keys)? {
                        sqlx::query("UPDATE spend_caps SET committed_msat = committed_msat - $2 WHERE key = $1")
                            .bind(key.as_str())
                            .bind(released)
                            .execute(&mut *tx)
                            .await?;
                    }
                }
                sqlx::query(
                    "UPDATE requests SET input_tokens = $2, output_tokens = $3, charged_msat = $4, \
                     uncharged_msat = $5, latency_ms = $6, absorbed_msat = $7 WHERE id = $1",
                )
                .bind(request_id)
                .bind(usage.map(|u| to_i64(u.input)).transpose()?)
                .bind(usage.map(|u| to_i64(u.output)).transpose()?)
                .bind(settlement.charged.to_i64()?)
                .bind(settlement.uncharged.to_i64()?)
                .bind(latency)
                .bind(absorbed.map(|g| g.to_i64()).transpose()?)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(Settled {
                    charged: settlement.charged,
                    absorbed: absorbed.unwrap_or(Msat::ZERO),
                    released: settlement.released,
                    balance,
                    state: effective_state(state, expires_at, now_ms),
                })
            }

            /// [`Store::refund_event`]: the outer error is the store's, the inner the
            /// state machine's refusal (after which nothing was written).
            async fn apply_refund_event(
                &self,
                id: &str,
                event: RefundEvent,
                now_ms: i64,
            ) -> Result<Result<RefundRow, sluice_core::RefundError>, StoreError> {
                let now_ms = refund_event_time(&event, now_ms);
                let mut tx = self.begin_write().await?;
                // The no-op update locks the row (PostgreSQL), so concurrent events on one
                // refund apply one after the other, each to the state the previous left.
                let raw: Option<$crate::common::RefundRaw> = sqlx::query_as(concat!(
                    "UPDATE refunds SET updated_at = updated_at WHERE id = $1 RETURNING ",
                    refund_columns!()
                ))
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
                let Some(row) = raw.map(RefundRow::try_from).transpose()? else {
                    tx.rollback().await?;
                    return Err(StoreError::NotFound);
                };
                // An invoice proves at most one refund's payout: one already
                // claimed by another refund (paid, paying or failed) is refused.
                if let RefundEvent::Claim { invoice_hash, .. } = &event {
                    let other: Option<String> = sqlx::query_scalar(
                        "SELECT id FROM refunds WHERE (payment_hash = $1 OR failed_hash = $1) AND id <> $2 LIMIT 1",
                    )
                    .bind(invoice_hash.as_str())
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?;
                    if other.is_some() {
                        tx.rollback().await?;
                        return Err(StoreError::Conflict("this invoice was already used for another refund".to_owned()));
                    }
                }
                let step = match sluice_core::refund::transition(&row.refund, event) {
                    Ok(step) => step,
                    Err(refused) => {
                        tx.rollback().await?;
                        return Ok(Err(refused));
                    }
                };
                let r = &step.refund;
                sqlx::query(
                    "UPDATE refunds SET state = $2, amount_msat = $3, payout_msat = $4, expires_at = $5, \
                     payment_hash = $6, preimage = $7, lookup_required = $8, updated_at = $9, claimed_msat = $10, \
                     fee_msat = $11, failed_hash = $12, retry_until = $13 WHERE id = $1",
                )
                .bind(id)
                .bind(r.state.as_str())
                .bind(r.amount.to_i64()?)
                .bind(r.payout.to_i64()?)
                .bind(r.expires_at_ms)
                .bind(r.payment_hash.as_deref())
                .bind(r.preimage.as_deref())
                .bind(r.lookup_required)
                .bind(now_ms)
                .bind(r.claimed.to_i64()?)
                .bind(r.fee.to_i64()?)
                .bind(r.failed_hash.as_deref())
                .bind(r.invoice_expires_at_ms)
                .execute(&mut *tx)
                .await?;
                write_new_postings(&mut tx, &step.postings(id)?, now_ms).await?;
                tx.commit().await?;
                Ok(Ok(RefundRow { refund: step.refund, updated_at_ms: now_ms, ..row }))
            }
        }

        #[async_trait::async_trait]
        impl $crate::DevWalletRows for $store {
            async fn dev_invoice_insert(&self, invoice: &DevInvoiceRow) -> Result<(), StoreError> {
                let mut tx = self.begin_write().await?;
                sqlx::query(
                    "INSERT INTO dev_invoices (payment_hash, preimage, bolt11, amount_msat, expires_at, paid_at, issuer) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(invoice.payment_hash.as_str())
                .bind(invoice.preimage.as_str())
                .bind(invoice.bolt11.as_str())
                .bind(invoice.amount.to_i64()?)
                .bind(invoice.expires_at_ms)
                .bind(invoice.paid_at_ms)
                .bind(invoice.issuer.as_str())
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn dev_invoice(&self, payment_hash: &str) -> Result<Option<DevInvoiceRow>, StoreError> {
                let raw: Option<$crate::common::DevInvoiceRaw> = sqlx::query_as(
                    "SELECT issuer, payment_hash, preimage, bolt11, amount_msat, expires_at, paid_at \
                     FROM dev_invoices WHERE payment_hash = $1",
                )
                .bind(payment_hash)
                .fetch_optional(&self.pool)
                .await?;
                raw.map(DevInvoiceRow::try_from).transpose()
            }

            async fn dev_invoice_mark_paid(&self, payment_hash: &str, paid_at_ms: i64) -> Result<bool, StoreError> {
                let mut tx = self.begin_write().await?;
                let changed = sqlx::query(
                    "UPDATE dev_invoices SET paid_at = $2 WHERE payment_hash = $1 AND paid_at IS NULL",
                )
                .bind(payment_hash)
                .bind(paid_at_ms)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                tx.commit().await?;
                Ok(changed == 1)
            }
        }

    };
}
pub(crate) use store_impl;
