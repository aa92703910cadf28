//! sluice's ledger and state in SQL: one [`Store`] trait, two implementations
//! ([`sqlite::SqliteStore`], the embedded default, and [`postgres::PgStore`],
//! for several gateway processes on one database).
//!
//! Architecture invariant: only this crate talks SQL. Every movement of value
//! is a [`sluice_core::Posting`] written in the same database transaction as
//! the state change that caused it, under a unique idempotency key.
//!
//! Times are unix milliseconds (`i64`); amounts are msat (`i64` columns,
//! never negative except the `lightning:in` ledger account).

use async_trait::async_trait;
use sluice_core::{Interaction, Msat, SessionPolicy, SessionState, TokenUsage, TrustRules};

mod common;
mod identity;
pub mod postgres;
mod sql;
pub mod sqlite;

pub use identity::{
    Accounting, ChallengeUse, GrantAsk, GrantKind, GrantRow, IdentityRow, NewVouch, PoolStatus,
    VouchOutcome,
};

/// Open the store named by `url`, applying migrations: `sqlite:` URLs open
/// [`sqlite::SqliteStore`], `postgres:` / `postgresql:` URLs [`postgres::PgStore`].
pub async fn connect(url: &str) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    open(url, false).await
}

/// Open the existing database at `url` without creating or migrating it (a
/// SQLite file that is not there, or a schema older than this binary's, is
/// an error): for tools that read a live database.
pub async fn connect_existing(url: &str) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    open(url, true).await
}

async fn open(url: &str, existing: bool) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    if url.starts_with("sqlite:") {
        Ok(std::sync::Arc::new(if existing {
            sqlite::SqliteStore::connect_existing(url).await?
        } else {
            sqlite::SqliteStore::connect(url).await?
        }))
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        Ok(std::sync::Arc::new(if existing {
            postgres::PgStore::connect_existing(url).await?
        } else {
            postgres::PgStore::connect(url).await?
        }))
    } else {
        Err(StoreError::Database(
            "unsupported database URL: expected sqlite:, postgres: or postgresql:".to_owned(),
        ))
    }
}

/// Refuse a database whose newest applied migration (`applied`, `None`: not
/// a sluice database) is older than this binary's newest.
pub(crate) fn require_current_schema(
    applied: Option<i64>,
    migrator: &sqlx::migrate::Migrator,
) -> Result<(), StoreError> {
    let newest = migrator.iter().map(|m| m.version).max().unwrap_or(0);
    match applied {
        Some(v) if v >= newest => Ok(()),
        Some(v) => Err(StoreError::Database(format!(
            "the database's schema is at migration {v} and this binary expects {newest}: start `sluice serve` on it once to migrate"
        ))),
        None => Err(StoreError::Database(
            "not a sluice database (no migrations applied)".to_owned(),
        )),
    }
}

/// Errors from the store. Database text never reaches clients: the gateway
/// maps [`StoreError::Database`] to a generic 500.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A row that must exist does not.
    #[error("not found")]
    NotFound,
    /// A uniqueness or state precondition failed (e.g. settling a request twice).
    #[error("conflict: {0}")]
    Conflict(String),
    /// Amount arithmetic failed.
    #[error(transparent)]
    Amount(#[from] sluice_core::AmountError),
    /// The database failed.
    #[error("database error: {0}")]
    Database(String),
    /// A settlement arrived for a request whose hold was already released
    /// (past its deadline, or by a peer that took its process for dead): the
    /// payer got the hold back, and the answer's cost is the operator's loss,
    /// recorded on the request as uncharged.
    #[error("request {request_id} was released before it settled; {loss} is the operator's loss")]
    Released {
        /// The request.
        request_id: String,
        /// The answer's actual cost, which nobody was charged.
        loss: Msat,
    },
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            // A duplicate id or payment hash is the caller's conflict, not a database failure.
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                StoreError::Conflict("a row with this key already exists".to_owned())
            }
            _ => StoreError::Database(e.to_string()),
        }
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        StoreError::Database(e.to_string())
    }
}

/// What an invoice pays for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvoicePurpose {
    /// The first deposit of a session.
    Deposit,
    /// A later top-up of a session.
    Topup,
}

impl InvoicePurpose {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            InvoicePurpose::Deposit => "deposit",
            InvoicePurpose::Topup => "topup",
        }
    }
}

/// A new invoice to record (created at the Lightning backend first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewInvoice {
    /// Hex payment hash (primary key).
    pub payment_hash: String,
    /// BOLT11.
    pub bolt11: String,
    /// Amount.
    pub amount: Msat,
    /// What it pays for.
    pub purpose: InvoicePurpose,
    /// The session it funds.
    pub session_id: String,
    /// Created, unix ms.
    pub created_at_ms: i64,
    /// Expires, unix ms.
    pub expires_at_ms: i64,
}

/// Stored invoice state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvoiceState {
    /// Not paid yet.
    Pending,
    /// Paid and credited.
    Settled,
    /// Expired unpaid.
    Expired,
}

/// A stored invoice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvoiceRow {
    /// Hex payment hash.
    pub payment_hash: String,
    /// BOLT11.
    pub bolt11: String,
    /// Invoice amount.
    pub amount: Msat,
    /// What it pays for.
    pub purpose: InvoicePurpose,
    /// The session it funds.
    pub session_id: String,
    /// State.
    pub state: InvoiceState,
    /// Hex preimage once settled.
    pub preimage: Option<String>,
    /// Created, unix ms.
    pub created_at_ms: i64,
    /// Expires, unix ms.
    pub expires_at_ms: i64,
    /// Settled, unix ms.
    pub settled_at_ms: Option<i64>,
}

/// A new session, created with its deposit invoice in one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSession {
    /// Session id.
    pub id: String,
    /// Created, unix ms.
    pub created_at_ms: i64,
    /// Initial expiry (the deposit invoice's expiry; refreshed when funded).
    pub expires_at_ms: i64,
    /// The identity presented at creation: the session's requests count for
    /// it when they present no identity of their own.
    pub pubkey: Option<String>,
}

/// A stored session. `balance` is what is available; `held` is in flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    /// Session id.
    pub id: String,
    /// Stored state (see [`sluice_core::effective_state`] for expiry).
    pub state: SessionState,
    /// Available balance.
    pub balance: Msat,
    /// Held for in-flight requests.
    pub held: Msat,
    /// Total credited from settled invoices.
    pub deposited: Msat,
    /// Total charged.
    pub spent: Msat,
    /// Created, unix ms.
    pub created_at_ms: i64,
    /// Expires, unix ms (refreshed by each request and each credit).
    pub expires_at_ms: i64,
}

/// Outcome of crediting a settled invoice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credit {
    /// Credited now; the session's state after.
    Credited {
        /// The funded session.
        session_id: String,
        /// Its state after the credit.
        state: SessionState,
        /// Its balance after the credit.
        balance: Msat,
    },
    /// This invoice was credited before: nothing changed.
    AlreadyCredited,
}

/// A spend cap from an attenuated credential: all holds under `key` together
/// may not exceed `cap` (committed = charged + currently held).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpendCap {
    /// Stable key of the caveat (hex of the macaroon chain signature at that caveat).
    pub key: String,
    /// The cap.
    pub cap: Msat,
}

/// A hold to take for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewHold {
    /// Request id (unique).
    pub request_id: String,
    /// The paying session.
    pub session_id: String,
    /// Public model name.
    pub model: String,
    /// Counted input tokens.
    pub est_input_tokens: u64,
    /// Maximum output tokens reserved for.
    pub max_output_tokens: u64,
    /// Amount to hold.
    pub hold: Msat,
    /// Locked BTC price, micro-USD per BTC.
    pub btc_usd_micros: u64,
    /// Spend caps to respect and charge against.
    pub caps: Vec<SpendCap>,
    /// The gateway process taking the hold (for crash reconciliation).
    pub instance_id: String,
    /// Whether the client asked for a stream.
    pub stream: bool,
    /// Now, unix ms. The session must be active and unexpired at this time.
    pub now_ms: i64,
    /// Session TTL: a successful hold refreshes expiry to `now + ttl`.
    pub ttl_ms: i64,
    /// The identity presented with the request, bound to it (its trust record
    /// is updated when the request settles). `None`: the session's identity,
    /// if it was created with one.
    pub pubkey: Option<String>,
    /// When the hold must have ended, unix ms: any process releases a hold
    /// still open past it ([`Store::abandoned_holds`]).
    pub deadline_ms: i64,
}

/// Outcome of a hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldOutcome {
    /// Held; balance after.
    Held {
        /// Available after the hold.
        balance: Msat,
    },
    /// The available balance cannot cover the hold. Nothing changed.
    Insufficient {
        /// Available now.
        balance: Msat,
    },
    /// The session is not active (awaiting payment, paused or expired). Nothing changed.
    NotActive(SessionState),
    /// A spend cap would be exceeded. Nothing changed.
    CapExceeded {
        /// The cap.
        cap: Msat,
        /// Already committed under it.
        committed: Msat,
    },
    /// No such session.
    NoSession,
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestStatus {
    /// Hold taken, upstream call in flight.
    Held,
    /// Completed and settled at actual cost.
    Settled,
    /// The client went away mid-stream; settled for what was generated.
    ClientGone,
    /// Upstream failed before any output: the hold was released.
    Failed,
    /// Found open after a crash: the hold was released.
    Abandoned,
}

impl RequestStatus {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestStatus::Held => "held",
            RequestStatus::Settled => "settled",
            RequestStatus::ClientGone => "client_gone",
            RequestStatus::Failed => "failed",
            RequestStatus::Abandoned => "abandoned",
        }
    }

    /// Parse a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "held" => RequestStatus::Held,
            "settled" => RequestStatus::Settled,
            "client_gone" => RequestStatus::ClientGone,
            "failed" => RequestStatus::Failed,
            "abandoned" => RequestStatus::Abandoned,
            _ => return None,
        })
    }
}

/// Settle a held request at its actual cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettleRequest {
    /// The request.
    pub request_id: String,
    /// Actual token counts.
    pub usage: TokenUsage,
    /// Actual cost at the locked price (before capping at the hold).
    pub actual_cost: Msat,
    /// Upstream latency (to the last byte), ms.
    pub latency_ms: u64,
    /// `Settled` or `ClientGone`.
    pub status: RequestStatus,
    /// Now, unix ms.
    pub now_ms: i64,
    /// Session policy (min balance decides `paused`; TTL refreshes expiry).
    pub policy: SessionPolicy,
    /// The free-tier grant decided for this request (a partial decision: the
    /// hold covers only the payer's part). Recorded in the same transaction:
    /// the pool absorbs what it can and the payer is charged the rest of the
    /// actual cost, capped at the hold.
    pub grant: Option<GrantAsk>,
    /// Pool credit share and trust rules.
    pub accounting: Accounting,
}

/// A settled request's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    /// Charged to the payer (≤ hold).
    pub charged: Msat,
    /// Absorbed by the generosity pool.
    pub absorbed: Msat,
    /// Released back to the balance.
    pub released: Msat,
    /// Session balance after.
    pub balance: Msat,
    /// Session state after.
    pub state: SessionState,
}

/// A stored request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRow {
    /// Request id.
    pub id: String,
    /// Paying session.
    pub session_id: String,
    /// Public model name.
    pub model: String,
    /// Counted input tokens.
    pub est_input_tokens: u64,
    /// Reserved output tokens.
    pub max_output_tokens: u64,
    /// Held amount.
    pub hold: Msat,
    /// Locked BTC price, micro-USD.
    pub btc_usd_micros: u64,
    /// Actual input tokens (once settled).
    pub input_tokens: Option<u64>,
    /// Actual output tokens (once settled).
    pub output_tokens: Option<u64>,
    /// Charged amount (once final; 0 when released).
    pub charged: Option<Msat>,
    /// Cost above the hold that was not charged.
    pub uncharged: Option<Msat>,
    /// Upstream latency, ms.
    pub latency_ms: Option<u64>,
    /// Status.
    pub status: RequestStatus,
    /// Streamed?
    pub stream: bool,
    /// Gateway instance that took the hold.
    pub instance_id: String,
    /// The identity bound to the request.
    pub pubkey: Option<String>,
    /// What the generosity pool absorbed (once settled with a grant).
    pub absorbed: Option<Msat>,
    /// Created, unix ms.
    pub created_at_ms: i64,
    /// Finalised, unix ms.
    pub finished_at_ms: Option<i64>,
}

/// Result of checking the ledger against the state tables.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LedgerReport {
    /// Number of ledger transactions.
    pub transactions: u64,
    /// Transactions whose legs do not sum to zero (ids).
    pub unbalanced: Vec<String>,
    /// Sessions whose stored balance or held amount differ from the ledger (ids).
    pub mismatched_sessions: Vec<String>,
    /// Jobs whose `job:<id>` balance differs from the payment their state holds
    /// (the evaluation fee while evaluating, the work payment while executing, else 0).
    pub mismatched_jobs: Vec<String>,
    /// Refunds whose `refund:<id>` balance differs from what the row owes
    /// (the payout while pending or paying, else 0).
    pub mismatched_refunds: Vec<String>,
    /// Whether the `pool` row's balance differs from the `pool:generosity` account.
    pub pool_mismatch: bool,
    /// Total received over Lightning (minus the `lightning:in` balance).
    pub received: Msat,
    /// What the operator put in (minus the `equity:operator` balance): the pool's seed.
    pub seeded: Msat,
    /// Sum of session balances.
    pub balances: Msat,
    /// Sum of held amounts.
    pub held: Msat,
    /// Revenue.
    pub revenue: Msat,
    /// Paid for jobs and not yet re-priced (the `job:<id>` accounts).
    pub jobs_held: Msat,
    /// Refunds owed and claimable (the `refund:<id>` accounts: payable whole sats).
    pub refunds_owed: Msat,
    /// The generosity pool: its seed, revenue credits, refund remainders,
    /// dust and unclaimed refunds, less grants.
    pub pool: Msat,
    /// Paid out over Lightning (the `lightning:out` account).
    pub paid_out: Msat,
    /// Routing fees spent by payouts (the `lightning:fees` account).
    pub fees: Msat,
}

impl LedgerReport {
    /// The ledger balances and matches the state tables: what was received
    /// plus what was seeded equals balances + held + revenue + jobs held +
    /// refunds owed + pool + paid out + routing fees.
    pub fn is_consistent(&self) -> bool {
        self.unbalanced.is_empty()
            && !self.pool_mismatch
            && self.mismatched_sessions.is_empty()
            && self.mismatched_jobs.is_empty()
            && self.mismatched_refunds.is_empty()
            && self
                .balances
                .checked_add(self.held)
                .and_then(|v| v.checked_add(self.revenue))
                .and_then(|v| v.checked_add(self.jobs_held))
                .and_then(|v| v.checked_add(self.refunds_owed))
                .and_then(|v| v.checked_add(self.pool))
                .and_then(|v| v.checked_add(self.paid_out))
                .and_then(|v| v.checked_add(self.fees))
                .ok()
                == self.received.checked_add(self.seeded).ok()
    }
}

/// A dev-wallet invoice (the dev wallet keeps its preimages here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevInvoiceRow {
    /// Which side of the dev network issued it: `"gateway"` or `"customer"`.
    pub issuer: String,
    /// Hex payment hash.
    pub payment_hash: String,
    /// Hex preimage.
    pub preimage: String,
    /// BOLT11.
    pub bolt11: String,
    /// Amount.
    pub amount: Msat,
    /// Expires, unix ms.
    pub expires_at_ms: i64,
    /// Paid, unix ms.
    pub paid_at_ms: Option<i64>,
}

/// A new two-phase job with its evaluation invoice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewJob {
    /// Job id (`job_…`).
    pub id: String,
    /// The request text (validated by `sluice_core::job::validate_request`).
    pub request: String,
    /// The model that evaluates the request.
    pub eval_model: String,
    /// The model that does the work.
    pub work_model: String,
    /// The evaluation fee invoice.
    pub eval_invoice: JobInvoice,
    /// Created, unix ms.
    pub created_at_ms: i64,
    /// The identity presented when the job was created.
    pub pubkey: Option<String>,
}

/// An invoice of one phase of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobInvoice {
    /// Hex payment hash.
    pub payment_hash: String,
    /// BOLT11.
    pub bolt11: String,
    /// Amount.
    pub amount: Msat,
    /// Expires, unix ms.
    pub expires_at_ms: i64,
}

/// A stored job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRow {
    /// Job id.
    pub id: String,
    /// State.
    pub state: sluice_core::JobState,
    /// The request text.
    pub request: String,
    /// Evaluation model.
    pub eval_model: String,
    /// Work model.
    pub work_model: String,
    /// The evaluation invoice.
    pub eval_invoice: JobInvoice,
    /// The work invoice (once accepted).
    pub work_invoice: Option<JobInvoice>,
    /// Why the evaluation rejected it, or why it failed.
    pub reason: Option<String>,
    /// The work's result text.
    pub result: Option<String>,
    /// BTC price locked when the work invoice was made, micro-USD.
    pub work_btc_usd_micros: Option<u64>,
    /// Estimated input tokens of the work.
    pub est_input_tokens: Option<u64>,
    /// Estimated (charged) output tokens of the work.
    pub est_output_tokens: Option<u64>,
    /// Actual input tokens of the work.
    pub input_tokens: Option<u64>,
    /// Actual output tokens of the work.
    pub output_tokens: Option<u64>,
    /// What the work was charged (≤ its invoice).
    pub work_charged: Option<Msat>,
    /// The refund of this job (`refund_<job id>`), once one is owed.
    pub refund_id: Option<String>,
    /// How many times evaluation or work was started (crash resumes count).
    pub attempts: u32,
    /// The identity bound to the job.
    pub pubkey: Option<String>,
    /// The free-tier decision for the work: `"free"` or `"partial"`.
    pub free_tier: Option<String>,
    /// The most the pool may absorb of the work (the decision's `absorb`).
    pub absorb_cap: Option<Msat>,
    /// What the pool absorbed (once the work completed).
    pub absorbed: Option<Msat>,
    /// Created, unix ms.
    pub created_at_ms: i64,
    /// Last change, unix ms.
    pub updated_at_ms: i64,
    /// The gateway process running (or that last ran) its evaluation or work.
    pub instance_id: Option<String>,
    /// When the backend reported the invoice it awaits expired unpaid, unix ms.
    pub invoice_dead_at_ms: Option<i64>,
}

/// How an evaluation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Evaluation {
    /// Accepted: the work is quoted and invoiced (at the payer's part of
    /// the quote when `grant` is a partial free-tier decision).
    Accepted {
        /// The work invoice.
        work_invoice: JobInvoice,
        /// A partial free-tier decision: the pool absorbs up to `grant.cap`
        /// after the work.
        grant: Option<GrantAsk>,
        /// Locked BTC price, micro-USD.
        btc_usd_micros: u64,
        /// Estimated input tokens.
        est_input_tokens: u64,
        /// Charged output tokens of the estimate.
        est_output_tokens: u64,
    },
    /// Accepted and free: the pool pays for the work, so there is no work
    /// invoice and the job goes straight to `executing`.
    AcceptedFree {
        /// The grant, recorded when the work completes.
        grant: GrantAsk,
        /// Locked BTC price, micro-USD.
        btc_usd_micros: u64,
        /// Estimated input tokens.
        est_input_tokens: u64,
        /// Charged output tokens of the estimate.
        est_output_tokens: u64,
    },
    /// Refused, with the evaluator's reason (the fee is earned).
    Rejected {
        /// Why.
        reason: String,
    },
    /// The evaluation could not be done (the fee is refunded).
    Failed {
        /// Why.
        reason: String,
    },
}

/// How the work ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkOutcome {
    /// Done: re-priced at actual cost; the rest of the work payment is refunded.
    Completed {
        /// The answer.
        result: String,
        /// Actual tokens.
        usage: TokenUsage,
        /// Actual charge at the locked price (capped at the work invoice by the store).
        actual_charge: Msat,
    },
    /// Failed: the whole work payment is refunded.
    Failed {
        /// Why.
        reason: String,
    },
}

/// A job invoice that is not paid yet (for the poller).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingJobInvoice {
    /// The job.
    pub job_id: String,
    /// Which phase it pays.
    pub phase: sluice_core::JobPhase,
    /// Hex payment hash.
    pub payment_hash: String,
    /// Expires, unix ms.
    pub expires_at_ms: i64,
}

/// A stored refund.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundRow {
    /// Refund id (`refund_<job or session id>`).
    pub id: String,
    /// What owes it: `"job"` or `"session"`.
    pub owner_kind: String,
    /// The job or session id.
    pub owner_id: String,
    /// The refund as the core's state machine sees it.
    pub refund: sluice_core::Refund,
    /// Created, unix ms.
    pub created_at_ms: i64,
    /// Last change, unix ms.
    pub updated_at_ms: i64,
}

/// The dev wallet's invoices, kept in the gateway's database: a store of
/// their own beside [`Store`] (nothing of the money's books).
#[async_trait]
pub trait DevWalletRows: Send + Sync + 'static {
    /// Record a dev-wallet invoice.
    async fn dev_invoice_insert(&self, invoice: &DevInvoiceRow) -> Result<(), StoreError>;

    /// A dev-wallet invoice by hex payment hash.
    async fn dev_invoice(&self, payment_hash: &str) -> Result<Option<DevInvoiceRow>, StoreError>;

    /// Mark a dev-wallet invoice paid; false if it was already paid (or unknown).
    async fn dev_invoice_mark_paid(
        &self,
        payment_hash: &str,
        paid_at_ms: i64,
    ) -> Result<bool, StoreError>;
}

/// Secrets and learned estimator states, by name.
#[async_trait]
pub trait KvStore: Send + Sync + 'static {
    /// A named 32-byte secret, created from `fresh` the first time it is asked
    /// for and the same for every process on this database afterwards.
    async fn secret(&self, name: &str, fresh: [u8; 32]) -> Result<[u8; 32], StoreError>;

    /// The saved output-token estimator of `model` and request `class` (its text encoding).
    async fn estimator_state(&self, model: &str, class: &str)
    -> Result<Option<String>, StoreError>;

    /// Save an output-token estimator (last writer wins: estimates are advisory).
    async fn save_estimator_state(
        &self,
        model: &str,
        class: &str,
        state: &str,
        now_ms: i64,
    ) -> Result<(), StoreError>;

    /// A named secret, if it exists (never creates one).
    async fn secret_get(&self, name: &str) -> Result<Option<[u8; 32]>, StoreError>;

    /// Delete a named secret (revoking whatever it signs); true if it existed.
    async fn secret_delete(&self, name: &str) -> Result<bool, StoreError>;
}

/// Sessions and their invoices: created, credited exactly once, expired.
#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Every invoice of a session, newest first.
    async fn session_invoices(&self, session_id: &str) -> Result<Vec<InvoiceRow>, StoreError>;

    /// Create a session with its deposit invoice, atomically.
    async fn create_session(
        &self,
        session: &NewSession,
        deposit: &NewInvoice,
    ) -> Result<(), StoreError>;

    /// A session by id.
    async fn session(&self, id: &str) -> Result<Option<SessionRow>, StoreError>;

    /// Record a top-up invoice for an existing session.
    async fn add_invoice(&self, invoice: &NewInvoice) -> Result<(), StoreError>;

    /// An invoice by payment hash.
    async fn invoice(&self, payment_hash: &str) -> Result<Option<InvoiceRow>, StoreError>;

    /// Pending invoices (oldest first, at most `limit`), to look up at start and on a timer.
    async fn pending_invoices(&self, limit: u32) -> Result<Vec<InvoiceRow>, StoreError>;

    /// Credit a settled invoice to its session: the deposit posting, invoice
    /// `settled`, session balance up, state `active` (or `paused` when still
    /// below the minimum), expiry refreshed to `now + ttl`. Idempotent by
    /// payment hash: a repeat returns [`Credit::AlreadyCredited`] and changes nothing.
    async fn credit_invoice(
        &self,
        payment_hash: &str,
        preimage_hex: &str,
        now_ms: i64,
        policy: &SessionPolicy,
    ) -> Result<Credit, StoreError>;

    /// Mark a pending invoice expired (no money moves).
    async fn expire_invoice(&self, payment_hash: &str) -> Result<(), StoreError>;

    /// Whether this gateway issued an invoice with this payment hash (a
    /// session's or a job's).
    async fn issued_invoice(&self, payment_hash: &str) -> Result<bool, StoreError>;
}

/// Held requests: the hold, its settlement or release, and the holds of
/// stopped processes.
#[async_trait]
pub trait HoldStore: Send + Sync + 'static {
    /// Atomically take a hold: only if the session is active and unexpired at
    /// `now`, its balance covers the hold and every cap allows it. Writes the
    /// request row (status `held`) and the hold posting.
    async fn hold(&self, hold: &NewHold) -> Result<HoldOutcome, StoreError>;

    /// Settle a held request at `min(actual, hold)`, releasing the rest, in one
    /// transaction. A request that is not `held` is a [`StoreError::Conflict`].
    async fn settle(&self, settle: &SettleRequest) -> Result<Settled, StoreError>;

    /// Release a held request's whole hold with `status` (`Failed` or `Abandoned`).
    /// A request that is not `held` is a [`StoreError::Conflict`].
    async fn release(
        &self,
        request_id: &str,
        status: RequestStatus,
        now_ms: i64,
        policy: &SessionPolicy,
    ) -> Result<Settled, StoreError>;

    /// A request by id.
    async fn request(&self, id: &str) -> Result<Option<RequestRow>, StoreError>;

    /// Held requests whose gateway instance has not sent a heartbeat since
    /// `stale_before_ms` (or never did), abandoned by a crash, or whose
    /// deadline is before `now_ms`: to release. The holds of `own_instance`
    /// (the caller, alive by definition) are listed only past their deadline:
    /// a process whose own heartbeats failed (a database outage) must not
    /// release its live requests' holds.
    async fn abandoned_holds(
        &self,
        stale_before_ms: i64,
        now_ms: i64,
        own_instance: &str,
    ) -> Result<Vec<RequestRow>, StoreError>;
}

/// Two-phase jobs: their invoices, phases, owners and outcomes.
#[async_trait]
pub trait JobStore: Send + Sync + 'static {
    /// Create a job (state `awaiting_eval_payment`) with its evaluation invoice.
    async fn create_job(&self, job: &NewJob) -> Result<(), StoreError>;

    /// A job by id.
    async fn job(&self, id: &str) -> Result<Option<JobRow>, StoreError>;

    /// Job invoices not paid yet, expired or not, until the backend has said
    /// they are definitely unpaid ([`Store::job_invoice_dead`]): a payment
    /// seen after its expiry is still credited (oldest first, at most `limit`).
    async fn pending_job_invoices(&self, limit: u32) -> Result<Vec<PendingJobInvoice>, StoreError>;

    /// The backend says the invoice a job awaits expired unpaid: stop looking it up.
    async fn job_invoice_dead(&self, payment_hash: &str, now_ms: i64) -> Result<(), StoreError>;

    /// Jobs evaluating or executing whose gateway process has not sent a
    /// heartbeat since `stale_before_ms` (or never took them): to resume or fail.
    async fn orphaned_jobs(&self, stale_before_ms: i64) -> Result<Vec<JobRow>, StoreError>;

    /// Take a job over from `from_instance` (its dead process), conditionally:
    /// true for the one process that did.
    async fn adopt_job(
        &self,
        id: &str,
        from_instance: Option<&str>,
        to_instance: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError>;

    /// A job invoice settled: post `Posting::job_paid` and advance the job
    /// (`awaiting_eval_payment → evaluating` or `awaiting_work_payment → executing`),
    /// conditionally, in one transaction, the job now owned by gateway process
    /// `instance_id` (which runs the next phase). Returns the job after; `None` when this
    /// payment was already recorded (idempotent by payment hash, also across processes).
    /// An unknown hash is [`StoreError::NotFound`].
    async fn job_invoice_paid(
        &self,
        payment_hash: &str,
        preimage_hex: &str,
        instance_id: &str,
        now_ms: i64,
    ) -> Result<Option<JobRow>, StoreError>;

    /// Count a start of evaluation or work (crash resumes included) by gateway
    /// process `instance_id`, which now owns the job, and return the count.
    async fn job_attempt(
        &self,
        id: &str,
        instance_id: &str,
        now_ms: i64,
    ) -> Result<u32, StoreError>;

    /// Record how an evaluation ended, only from `evaluating` (else [`StoreError::Conflict`]):
    /// the evaluation phase is settled (`Posting::job_settle(.., Eval, ..)`: charged in
    /// full when accepted or rejected, refunded when failed, offering the refund with
    /// `refund_expires_at_ms` and `dust`), and the state advances, in one transaction.
    ///
    /// A rejected or failed evaluation counts as a failure of the job's identity
    /// (and costs its vouchers), in the same transaction; the pool is credited
    /// its share of the evaluation fee charged.
    async fn job_evaluated(
        &self,
        id: &str,
        outcome: &Evaluation,
        acct: &Accounting,
        now_ms: i64,
        refund_expires_at_ms: i64,
        dust: Msat,
    ) -> Result<JobRow, StoreError>;

    /// Record how the work ended, only from `executing` (else [`StoreError::Conflict`]):
    /// the work phase is settled at `min(actual, paid)` (or 0 when failed), the rest
    /// offered as a refund (dust and sub-sat remainders to the generosity pool), and the
    /// state advances to `complete` or `failed`, in one transaction.
    ///
    /// A job with a free-tier decision records its grant first (`GrantAsk` rules,
    /// on the actual charge) and settles the payer's part at `actual - absorbed`;
    /// the pool is credited its share of what the payer was charged; the identity
    /// gets a success (paid or free) or a failure.
    async fn job_finished(
        &self,
        id: &str,
        outcome: &WorkOutcome,
        acct: &Accounting,
        now_ms: i64,
        refund_expires_at_ms: i64,
        dust: Msat,
    ) -> Result<JobRow, StoreError>;

    /// Jobs in any of `states` (to resume or fail them at start).
    async fn jobs_in_states(
        &self,
        states: &[sluice_core::JobState],
    ) -> Result<Vec<JobRow>, StoreError>;
}

/// Refunds: owed when a balance closes or a job ends, claimed, paid once, expired.
#[async_trait]
pub trait RefundStore: Send + Sync + 'static {
    /// A refund by id.
    async fn refund(&self, id: &str) -> Result<Option<RefundRow>, StoreError>;

    /// Apply one event of the core's refund state machine
    /// (`sluice_core::refund::transition`) to a stored refund, writing its new state and
    /// the postings of its effects in one transaction (the row locked on PostgreSQL).
    /// The core's error is returned as [`RefundEventError::Refused`] and changes nothing.
    /// `now_ms` is the event's time unless it carries its own (a claim, an expiry).
    async fn refund_event(
        &self,
        id: &str,
        event: sluice_core::RefundEvent,
        now_ms: i64,
    ) -> Result<RefundRow, RefundEventError>;

    /// Refunds whose payout started before `updated_before_ms` and has no
    /// recorded outcome (unknown, or the gateway stopped mid-payout).
    async fn paying_refunds(&self, updated_before_ms: i64) -> Result<Vec<RefundRow>, StoreError>;

    /// Every refund owed by a job or session, newest first.
    async fn refunds_for(&self, owner_id: &str) -> Result<Vec<RefundRow>, StoreError>;

    /// Close a session: its whole available balance becomes a refund
    /// (`refund_<session id>_<n>`, numbered per session, dust and the sub-sat rest to the pool) and the
    /// session ends (`expired`, balance 0), in one transaction. Refused with
    /// [`StoreError::Conflict`] while requests hold funds or before it was funded;
    /// `Ok(None)` when there was nothing left to refund.
    async fn close_session(
        &self,
        id: &str,
        now_ms: i64,
        refund_expires_at_ms: i64,
        dust: Msat,
    ) -> Result<Option<RefundRow>, StoreError>;

    /// Pending refunds past their expiry at `now_ms` (to expire them into the pool).
    async fn expired_refunds(&self, now_ms: i64) -> Result<Vec<RefundRow>, StoreError>;

    // ---- identity, trust and the free tier ----
}

/// The generosity pool and its grants.
#[async_trait]
pub trait PoolStore: Send + Sync + 'static {
    /// Seed the generosity pool with `amount` (`Posting::pool_seed`) unless it
    /// was seeded before, whatever the amount then. True when seeded now.
    async fn seed_pool(&self, amount: Msat, now_ms: i64) -> Result<bool, StoreError>;

    /// The pool's balance now (one row read: for decisions on every request).
    async fn pool_balance(&self) -> Result<Msat, StoreError>;

    /// The pool's balance, totals, and the grants of UTC day `day` (sums over
    /// the ledger and the audit rows: for `GET /v1/pool`, not per request).
    async fn pool_status(&self, day: i64) -> Result<PoolStatus, StoreError>;

    /// Record a grant for work done outside a session hold (a fully free chat
    /// request, a demo answer): see [`GrantAsk`] for the rules. `actual` is the
    /// work's actual cost. Returns what the pool absorbed (zero: nothing was
    /// written). When `ask.pubkey` is set, the identity also gets a served
    /// interaction (`Interaction::Free`). Idempotent by `id`: a repeat returns
    /// the amount recorded the first time and writes nothing.
    async fn record_grant(
        &self,
        id: &str,
        ask: &GrantAsk,
        actual: Msat,
        acct: &Accounting,
        now_ms: i64,
    ) -> Result<Msat, StoreError>;

    /// The grant recorded for request, job or demo answer `id`.
    async fn grant(&self, id: &str) -> Result<Option<GrantRow>, StoreError>;

    /// Every grant of an identity, newest first.
    async fn grants_for(&self, pubkey: &str) -> Result<Vec<GrantRow>, StoreError>;
}

/// Identities, trust, login challenges, seen events and vouches.
#[async_trait]
pub trait IdentityStore: Send + Sync + 'static {
    /// An identity by pubkey.
    async fn identity(&self, pubkey: &str) -> Result<Option<IdentityRow>, StoreError>;

    /// Mark an identity seen now, creating it (score 0) the first time. Decay
    /// is applied to the stored score first, so that coming back after a long
    /// absence does not erase the absence. Returns the row after.
    async fn touch_identity(
        &self,
        pubkey: &str,
        trust: &TrustRules,
        now_ms: i64,
    ) -> Result<IdentityRow, StoreError>;

    /// Apply one interaction to an identity (created if absent): decay, then
    /// `TrustRules::after`, the success or failure count, what it paid; a
    /// failure also costs each of its vouchers `vouch_penalty`. One transaction.
    async fn record_interaction(
        &self,
        pubkey: &str,
        interaction: Interaction,
        trust: &TrustRules,
        now_ms: i64,
    ) -> Result<IdentityRow, StoreError>;

    /// Store a login challenge nonce until `expires_at_ms`.
    async fn create_challenge(&self, nonce: &str, expires_at_ms: i64) -> Result<(), StoreError>;

    /// Use up a login challenge: each nonce works once.
    async fn consume_challenge(&self, nonce: &str, now_ms: i64)
    -> Result<ChallengeUse, StoreError>;

    /// Remember a signed event id (NIP-98) until `expires_at_ms`; false when
    /// it was seen before: a replay. Forgets expired ids as it goes.
    async fn remember_event(
        &self,
        event_id: &str,
        expires_at_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError>;

    /// Store a vouch, unless the voucher already has `max_active` vouches.
    async fn add_vouch(
        &self,
        vouch: &NewVouch,
        max_active: u32,
    ) -> Result<VouchOutcome, StoreError>;

    /// The identities vouching for `vouchee`.
    async fn vouchers_of(&self, vouchee: &str) -> Result<Vec<IdentityRow>, StoreError>;

    /// The keys `voucher` vouches for.
    async fn vouchees_of(&self, voucher: &str) -> Result<Vec<String>, StoreError>;
}

/// Operations: the dialect, instances and their heartbeats, the health probe,
/// the ledger check, the dev wallet's rows.
#[async_trait]
pub trait OpsStore: Send + Sync + 'static {
    /// `"sqlite"` or `"postgres"`.
    fn dialect(&self) -> &'static str;

    /// Record that gateway `instance_id` is alive at `now_ms`.
    async fn heartbeat(&self, instance_id: &str, now_ms: i64) -> Result<(), StoreError>;

    /// Forget a gateway instance (graceful shutdown).
    async fn retire_instance(&self, instance_id: &str) -> Result<(), StoreError>;

    /// A cheap write that changes a row, to tell whether the database
    /// accepts writes now (and, for SQLite, that its file is still there).
    async fn ping(&self) -> Result<(), StoreError>;

    /// Check every ledger transaction balances and every session's stored
    /// balance and held amount equal what the ledger derives.
    async fn check_ledger(&self) -> Result<LedgerReport, StoreError>;

    /// The dev wallet's rows in this database (kept apart from the money
    /// store: only the dev wallet uses them).
    fn dev_wallet_rows(self: std::sync::Arc<Self>) -> std::sync::Arc<dyn DevWalletRows>;
}

/// The persistence port of the gateway: every per-domain store at once.
/// Each method is one transaction; the lock order stays inside the store.
pub trait Store:
    KvStore + SessionStore + HoldStore + JobStore + RefundStore + PoolStore + IdentityStore + OpsStore
{
}

impl<
    T: KvStore
        + SessionStore
        + HoldStore
        + JobStore
        + RefundStore
        + PoolStore
        + IdentityStore
        + OpsStore,
> Store for T
{
}

/// Why a refund event was not applied.
#[derive(Debug, thiserror::Error)]
pub enum RefundEventError {
    /// The refund's state machine refused it (nothing changed).
    #[error(transparent)]
    Refused(#[from] sluice_core::RefundError),
    /// The store failed (or the refund does not exist: `StoreError::NotFound`).
    #[error(transparent)]
    Store(#[from] StoreError),
}
