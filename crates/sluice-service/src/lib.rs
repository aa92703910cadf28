//! sluice's service layer: the gateway's domain behind one [`Sluice`] value.
//!
//! The HTTP gateway (`sluice-gateway`) extracts a request, makes service
//! calls and maps [`ServiceError`] to a status; provider nodes and the
//! simulator reuse the same value without HTTP. `Sluice` owns the store, the
//! Lightning backend, the upstreams, the oracle, the clock, the id generator,
//! the policies and the task tracker.
//!
//! Modules, lowest first (a module uses only those above it):
//! - [`error`]: [`ServiceError`] and its [`ErrorKind`];
//! - [`config`]: the configuration file's shape and defaults;
//! - [`upstream`]: the `Upstream` port and its OpenAI-compatible, Anthropic
//!   and local adapters; [`tokens`]: counting tokens as an upstream would;
//!   [`metering`]: what an answer used and what it costs, written once;
//! - [`request`]: a chat request parsed, counted and bounded;
//! - [`oracle`]: the BTC/USD price; [`estimates`]: learned output estimates;
//! - [`free`]: the free tier's settings and in-flight promises;
//! - [`auth`]: credentials verified, and what they allow; [`identity`]: Nostr
//!   identities verified, challenge login, standing, vouches;
//! - [`pricing`]: a request priced before it runs; [`quote`]: priced, unpaid;
//! - [`sessions`]: sessions opened, looked up and topped up; [`l402`]: L402
//!   challenges and tokens (prepaid balances stored as sessions);
//! - [`refunds`]: refunds claimed, paid once and reconciled; [`invoices`]:
//!   how long an invoice is looked after;
//! - [`chat`]: a chat request held, answered, metered and settled ([`Sluice::chat`]);
//!   [`demo`]: an answer the pool pays for;
//! - [`jobs`]: two-phase jobs, their runner and their takeover after a crash;
//! - [`payments`]: the one place a settled invoice is dispatched;
//! - [`background`]: the loops, [`Sluice::start`] and [`background::Running::shutdown`];
//! - [`builder`]: a `Sluice` from its configuration ([`Sluice::builder`]);
//! - [`dev`]: the dev network's customer side, and the LNbits webhook;
//!   [`health`]: whether the service can take money now.
//!
//! The rest of the domain (metering and chat) is moving here from the
//! gateway: see ARCHITECTURE.md.

pub mod auth;
pub mod background;
pub mod builder;
pub mod chat;
pub mod config;
pub mod demo;
pub mod dev;
pub mod error;
pub mod estimates;
pub mod free;
pub mod health;
pub mod identity;
pub mod invoices;
pub mod jobs;
pub mod l402;
pub mod metering;
pub mod oracle;
pub mod payments;
pub mod pricing;
pub mod quote;
pub mod refunds;
pub mod request;
pub mod sessions;
pub mod tokens;
pub mod upstream;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use sluice_core::{ModelRates, Msat, OutputBudget, SessionPolicy};
use sluice_env::{Clock, Ids};
use sluice_lightning::{Lightning, dev::DevWallet, lnbits::LnBits};
use sluice_store::Store;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub use config::Config;
pub use error::{ErrorKind, ServiceError};

use crate::{config::TokenizerKind, oracle::PriceOracle, upstream::Upstream};

/// A model for sale.
pub struct ModelEntry {
    /// Public name.
    pub name: String,
    /// The upstream's name for it.
    pub upstream_model: String,
    /// `"openai"`, `"anthropic"` or `"local"`.
    pub kind: &'static str,
    /// Its rate card.
    pub rates: ModelRates,
    /// Its output-token policy.
    pub budget: OutputBudget,
    /// Tokenizer for estimates when the upstream cannot count.
    pub tokenizer: TokenizerKind,
    /// Where it is answered.
    pub upstream: Arc<dyn Upstream>,
    /// The output-limit field its (OpenAI-compatible) upstream reads.
    pub limit_field: config::OutputLimitField,
    /// Time allowed for the upstream's first byte.
    pub timeout: Duration,
    /// Time allowed between chunks that carry output.
    pub idle: Duration,
    /// The most one request may take, streamed or not.
    pub max_duration: Duration,
}

impl ModelEntry {
    /// How long a hold for this model may stay open: its longest request
    /// plus a grace for settling (retries included). Any process releases a
    /// hold still open past it.
    pub fn hold_lifetime(&self) -> Duration {
        self.max_duration + self.timeout + HOLD_GRACE
    }
}

/// What a hold is given beyond its model's longest request, to be settled.
pub const HOLD_GRACE: Duration = Duration::from_secs(60);

/// The jobs models, chosen at start.
#[derive(Debug, Clone)]
pub struct JobModels {
    /// Evaluates requests.
    pub eval: String,
    /// Does the work.
    pub work: String,
}

/// The service: everything the domain needs, and nothing of HTTP.
///
/// A clone shares the store, the backends, the tasks and the in-flight
/// state; tests clone it to play a second gateway process on one database.
#[derive(Clone)]
pub struct Sluice {
    /// The database.
    pub store: Arc<dyn Store>,
    /// The wall clock every decision and stored time reads.
    pub clock: Arc<dyn Clock>,
    /// Where new ids come from.
    pub ids: Arc<dyn Ids>,
    /// The Lightning backend.
    pub lightning: Arc<dyn Lightning>,
    /// The dev wallet, when it is the backend (the gateway mounts `/v1/dev/pay`).
    pub dev_wallet: Option<Arc<DevWallet>>,
    /// The LNbits backend, when it is the backend (the gateway mounts its webhook).
    pub lnbits: Option<Arc<LnBits>>,
    /// BTC/USD.
    pub oracle: Arc<dyn PriceOracle>,
    /// Models by public name.
    pub models: Arc<BTreeMap<String, ModelEntry>>,
    /// Session limits.
    pub policy: SessionPolicy,
    /// How long invoices stay payable.
    pub invoice_expiry: Duration,
    /// How long a session credential is valid.
    pub credential_ttl: Duration,
    /// The macaroon root secret (shared by every process on the database).
    pub root_secret: [u8; 32],
    /// This process's id (crash reconciliation).
    pub instance_id: String,
    /// Background work that must finish before shutdown (settlements).
    pub tasks: TaskTracker,
    /// Stops background loops.
    pub shutdown: CancellationToken,
    /// How often pending invoices are looked up.
    pub poll_interval: Duration,
    /// A process silent this long is presumed dead (its holds are released).
    pub stale_after: Duration,
    /// L402 settings.
    pub l402: config::L402Config,
    /// Learned output-token estimates and their calibration.
    pub estimates: Arc<estimates::Estimators>,
    /// Job settings.
    pub jobs: config::JobsConfig,
    /// The evaluation and work models, when jobs are enabled.
    pub job_models: Option<JobModels>,
    /// Free-tier settings.
    pub free: free::FreeTier,
    /// What this process has promised from the pool to requests in flight.
    pub free_inflight: Arc<free::InFlight>,
    /// Identity settings.
    pub identity: config::IdentityConfig,
    /// Demo endpoint settings.
    pub demo: config::DemoConfig,
    /// The gateway's public base URL, if configured (NIP-98 URLs are checked
    /// against it; claim hints and webhooks are built from it).
    pub public_url: Option<String>,
    /// Refund payouts' routing-fee budget.
    pub refunds: config::RefundsConfig,
}

impl std::fmt::Debug for Sluice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sluice")
            .field("instance_id", &self.instance_id)
            .field("lightning", &self.lightning.name())
            .field("models", &self.models.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Sluice {
    /// A call to an upstream, stamped with this service's clock and ids.
    pub fn call(
        &self,
        body: serde_json::Map<String, serde_json::Value>,
        messages: Vec<(String, String)>,
        max_tokens: u64,
    ) -> upstream::ChatCall {
        let mut b = [0u8; 12];
        self.ids.fill(&mut b);
        upstream::ChatCall {
            body,
            messages,
            max_tokens,
            id: format!("chatcmpl-{}", hex::encode(b)),
            created: self.clock.now_secs(),
        }
    }

    /// Unix milliseconds now, by the service's clock.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// A fresh id: `prefix_` and 24 hex digits.
    pub fn new_id(&self, prefix: &str) -> String {
        self.ids.new_id(prefix)
    }

    /// Before this instant (ms), a gateway process that has not sent a
    /// heartbeat, or a payout that has not moved, counts as stopped at `now_ms`.
    pub fn stale_before(&self, now_ms: i64) -> i64 {
        now_ms.saturating_sub(i64::try_from(self.stale_after.as_millis()).unwrap_or(i64::MAX))
    }

    /// The session rules for a balance: L402 tokens have no minimum balance
    /// (they are prepaid per request), sessions have the configured one.
    pub fn policy_for(&self, session_id: &str) -> SessionPolicy {
        if is_token_session(session_id) {
            SessionPolicy {
                min_balance: Msat::ZERO,
                ..self.policy
            }
        } else {
            self.policy
        }
    }
}

/// The session-id prefix of L402 tokens' balances.
pub const TOKEN_SESSION_PREFIX: &str = "l402_";

/// Whether a session id is an L402 token's balance.
pub fn is_token_session(session_id: &str) -> bool {
    session_id.starts_with(TOKEN_SESSION_PREFIX)
}

/// How a capability (a job id, and the refund id derived from it) appears in
/// logs: a short hash that ties log lines together without granting anything.
/// Other ids (sessions, requests) are not capabilities and are logged as they are.
pub fn log_ref(id: &str) -> String {
    use sha2::Digest;
    let capability = id.starts_with("job_") || id.starts_with("refund_job_");
    if !capability {
        return id.to_owned();
    }
    let digest = sha2::Sha256::digest(id.as_bytes());
    format!("job#{}", hex::encode(&digest[..6]))
}
