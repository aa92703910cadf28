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

/// The `impl Store` for one dialect. `$store` must have a `pool` field and
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
            SettleRequest, Settled, Store, StoreError, VouchOutcome, WorkOutcome,
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

        #[async_trait::async_trait]
        impl Store for $store {
            fn dialect(&self) -> &'static str {
                $dialect
            }

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
pub(crate) use store_impl;
