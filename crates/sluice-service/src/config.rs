//! The gateway's typed configuration, with defaults for every key.
//!
//! The binary layers defaults → `sluice.toml` → `SLUICE_*` environment onto
//! this type; `example.config.toml` at the repository root documents every key.

use std::{net::SocketAddr, path::PathBuf};

use serde::Deserialize;

/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default database: SQLite in the working directory.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://sluice.db";
/// Default request body limit (1 MiB).
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
/// Default BTC/USD price when nothing else is configured.
pub const DEFAULT_BTC_USD: &str = "100000";
/// Default invoice expiry.
pub const DEFAULT_INVOICE_EXPIRY_SECS: u64 = 3600;
/// Default silence after which a gateway process is presumed dead.
pub const DEFAULT_INSTANCE_STALE_SECS: u64 = 20;
/// Name of the bundled local model.
pub const DEFAULT_LOCAL_MODEL_NAME: &str = "smollm2-135m";

/// A secret string that never prints.
#[derive(Clone, Deserialize, Default, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wrap a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The secret value; call only where it is sent.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// HTTP server.
    pub server: ServerConfig,
    /// Database.
    pub database: DatabaseConfig,
    /// Lightning backend.
    pub lightning: LightningConfig,
    /// BTC/USD oracle.
    pub oracle: OracleConfig,
    /// Session limits.
    pub sessions: SessionsConfig,
    /// Defaults applied to every model's price.
    pub pricing: PricingConfig,
    /// L402 pay-per-request.
    pub l402: L402Config,
    /// Two-phase jobs and refunds.
    pub jobs: JobsConfig,
    /// Refund payouts and their routing fees.
    pub refunds: RefundsConfig,
    /// Learned output-length estimates.
    pub estimates: EstimatesConfig,
    /// Nostr identity: login challenges, identity tokens, NIP-98.
    pub identity: IdentityConfig,
    /// Trust scores and tiers.
    pub trust: TrustConfig,
    /// The free tier and its generosity pool.
    pub free_tier: FreeTierConfig,
    /// The unpaid demo endpoint.
    pub demo: DemoConfig,
    /// Models for sale. Empty: the bundled local model.
    pub models: Vec<ModelConfig>,
}

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Listen address.
    pub listen: SocketAddr,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Public base URL of this gateway (used for Lightning webhooks), e.g. `https://sluice.example`.
    pub public_url: Option<String>,
    /// Unauthenticated requests allowed per client IP per minute (session creation, dev pay).
    pub public_rate_per_minute: u32,
    /// A gateway process silent this long is presumed dead and its open holds are released.
    pub instance_stale_secs: u64,
    /// Web origins allowed to call the API from a browser (CORS), e.g. a page that logs in
    /// with a NIP-07 extension; `["*"]` allows any. Empty: no CORS headers.
    pub cors_origins: Vec<String>,
    /// Seconds a client has to send a request's headers; an idle keep-alive
    /// connection is closed after this long too.
    pub header_timeout_secs: u64,
    /// Seconds a client has to send a request's body.
    pub body_timeout_secs: u64,
    /// Connections open at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Connections open at once from one client IP (IPv6: one /64); more are closed.
    pub max_connections_per_ip: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: DEFAULT_LISTEN
                .parse()
                .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 8080))),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            public_url: None,
            public_rate_per_minute: 60,
            instance_stale_secs: DEFAULT_INSTANCE_STALE_SECS,
            cors_origins: Vec::new(),
            header_timeout_secs: 10,
            body_timeout_secs: 30,
            max_connections: 1024,
            max_connections_per_ip: 64,
        }
    }
}

/// `[database]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://path.db` or `postgres://user@host/db`.
    pub url: String,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: DEFAULT_DATABASE_URL.to_owned(),
        }
    }
}

/// Which Lightning backend.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LightningBackend {
    /// The built-in dev wallet (not real money).
    #[default]
    Dev,
    /// An LNbits wallet.
    Lnbits,
    /// An LND node over REST.
    Lnd,
    /// A Core Lightning node over clnrest.
    Cln,
}

/// `[lightning]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LightningConfig {
    /// Backend.
    pub backend: LightningBackend,
    /// Seconds a deposit or top-up invoice stays payable.
    pub invoice_expiry_secs: u64,
    /// Seconds between looks at pending invoices (the fallback when a push is missed).
    pub poll_interval_secs: u64,
    /// LNbits base URL.
    pub url: Option<String>,
    /// LNbits invoice/read key.
    pub invoice_key: Option<Secret>,
    /// LNbits admin key (needed only to pay out).
    pub admin_key: Option<Secret>,
    /// LND macaroon, hex (invoice + offchain rights, or admin).
    pub macaroon: Option<Secret>,
    /// Core Lightning rune allowing invoice, listinvoices, listpays and pay.
    pub rune: Option<Secret>,
    /// PEM file of the node's TLS certificate (LND's tls.cert, CLN's ca.pem).
    pub tls_cert: Option<PathBuf>,
    /// LNbits: the server's `LNBITS_RESERVE_FEE_MIN`, msat. LNbits cannot cap one
    /// payment's fee; a refund claim must leave at least its reserve for routing.
    pub lnbits_fee_reserve_min_msat: u64,
    /// LNbits: the server's `LNBITS_RESERVE_FEE_PERCENT`, in parts per million.
    pub lnbits_fee_reserve_ppm: u64,
}

impl Default for LightningConfig {
    fn default() -> Self {
        LightningConfig {
            backend: LightningBackend::Dev,
            invoice_expiry_secs: DEFAULT_INVOICE_EXPIRY_SECS,
            poll_interval_secs: 2,
            url: None,
            invoice_key: None,
            admin_key: None,
            macaroon: None,
            rune: None,
            tls_cert: None,
            lnbits_fee_reserve_min_msat: sluice_lightning::lnbits::DEFAULT_FEE_RESERVE_MIN.msat(),
            lnbits_fee_reserve_ppm: sluice_lightning::lnbits::DEFAULT_FEE_RESERVE_PPM,
        }
    }
}

/// `[oracle]`: a fixed price, or an HTTP source with cache, timeout and fallback.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OracleConfig {
    /// A fixed BTC/USD price (dev and tests). Wins over `url`.
    pub fixed_btc_usd: Option<f64>,
    /// HTTP source answering JSON, e.g. CoinGecko's simple price endpoint.
    pub url: Option<String>,
    /// JSON pointer to the price in the answer (`/bitcoin/usd` for CoinGecko).
    pub json_pointer: String,
    /// Seconds a fetched price is reused.
    pub cache_secs: u64,
    /// Seconds before a fetch is abandoned.
    pub timeout_secs: u64,
    /// Price used when the source fails and no good price was ever fetched.
    pub fallback_btc_usd: f64,
    /// A quote more than this many percent away from the last good one is refused
    /// (the first quote is checked against the fallback price, ten times wider).
    pub max_move_pct: u32,
    /// Seconds after which the last good price is stale (`/healthz` says so).
    pub max_age_secs: u64,
}

impl Default for OracleConfig {
    fn default() -> Self {
        OracleConfig {
            fixed_btc_usd: None,
            url: None,
            json_pointer: "/bitcoin/usd".to_owned(),
            cache_secs: 60,
            timeout_secs: 5,
            fallback_btc_usd: 100_000.0,
            max_move_pct: 20,
            max_age_secs: 900,
        }
    }
}

/// `[sessions]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionsConfig {
    /// Smallest deposit or top-up.
    pub min_deposit_sats: u64,
    /// Largest deposit or top-up.
    pub max_deposit_sats: u64,
    /// Below this available balance a session pauses.
    pub min_balance_sats: u64,
    /// Inactivity before a session expires.
    pub ttl_secs: u64,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        SessionsConfig {
            min_deposit_sats: 100,
            max_deposit_sats: 1_000_000,
            min_balance_sats: 10,
            ttl_secs: 86_400,
        }
    }
}

/// `[l402]`: pay-per-request with L402 tokens (Aperture-compatible).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct L402Config {
    /// Answer unauthenticated paid requests with a 402 challenge (else 401).
    pub enabled: bool,
    /// Seconds a token stays valid (its `sluice_valid_until` caveat).
    pub valid_secs: u64,
    /// What an L402 request prepays and holds.
    pub prepay: L402Prepay,
}

/// What an L402 request prepays and holds.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum L402Prepay {
    /// The P90 estimate (or less, when the request's `max_tokens` bounds it);
    /// a longer answer costs the operator the difference, never the payer.
    #[default]
    P90,
    /// The most the request may cost (its output limit).
    Max,
}

impl Default for L402Config {
    fn default() -> Self {
        L402Config {
            enabled: true,
            valid_secs: 30 * 86_400,
            prepay: L402Prepay::P90,
        }
    }
}

/// `[jobs]`: two-phase jobs (evaluation fee, then work) and refunds.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobsConfig {
    /// Serve `/v1/jobs`.
    pub enabled: bool,
    /// The evaluation fee, sats.
    pub eval_fee_sats: u64,
    /// The model that evaluates requests (default: the one with the cheapest output).
    pub eval_model: Option<String>,
    /// The model that does the work (default: the first configured).
    pub work_model: Option<String>,
    /// The longest request accepted, in characters.
    pub max_request_chars: usize,
    /// Seconds a refund can be claimed before it goes to the generosity pool.
    pub refund_expiry_secs: u64,
    /// Refunds below this many msat go to the generosity pool: the smallest
    /// payout (of jobs, sessions and L402 tokens alike).
    pub dust_msat: u64,
}

impl Default for JobsConfig {
    fn default() -> Self {
        JobsConfig {
            enabled: true,
            eval_fee_sats: 10,
            eval_model: None,
            work_model: None,
            max_request_chars: 500,
            refund_expiry_secs: 7 * 86_400,
            dust_msat: 1_000,
        }
    }
}

/// `[refunds]`: how payouts of refunds spend on routing fees. The claimant
/// bears them: a claim invoice may be for less than the refund, by at most
/// the budget below, and what it leaves is the most the payout may spend on
/// routing (what it does not spend goes to the generosity pool).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RefundsConfig {
    /// The most a claim invoice may leave for fees, percent of the refund.
    pub fee_budget_pct: u32,
    /// ...or this many sats, when that is more.
    pub fee_budget_min_sats: u64,
    /// A claim invoice may expire at most this many seconds ahead: after a payout
    /// the backend reported failed, only that invoice may be retried until it
    /// expires, so its expiry bounds how long a refund can be held up.
    pub max_invoice_expiry_secs: u64,
}

impl Default for RefundsConfig {
    fn default() -> Self {
        RefundsConfig {
            fee_budget_pct: 5,
            fee_budget_min_sats: 2,
            max_invoice_expiry_secs: 86_400,
        }
    }
}

impl RefundsConfig {
    /// The most a claim invoice for a `payout` refund may leave for fees.
    pub fn max_fee_budget(&self, payout: sluice_core::Msat) -> sluice_core::Msat {
        let pct = u128::from(payout.msat()) * u128::from(self.fee_budget_pct.min(100)) / 100;
        let pct = sluice_core::Msat::from_msat(u64::try_from(pct).unwrap_or(u64::MAX));
        let floor = sluice_core::Msat::from_msat(self.fee_budget_min_sats.saturating_mul(1_000));
        pct.max(floor).min(payout)
    }
}

/// `[estimates]`: learning output lengths from settled requests.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EstimatesConfig {
    /// Observations one payer (session, L402 token or identity) may contribute to one
    /// model and request class per hour; more are not learned (0: no bound).
    pub per_payer_per_hour: u32,
}

impl Default for EstimatesConfig {
    fn default() -> Self {
        EstimatesConfig {
            per_payer_per_hour: 16,
        }
    }
}

/// `[identity]`: identity by Nostr key, no accounts.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdentityConfig {
    /// Seconds a login challenge can be answered.
    pub challenge_ttl_secs: u64,
    /// Seconds an identity token is valid.
    pub token_ttl_secs: u64,
    /// How far (seconds, either way) a signed event's `created_at` may be from now:
    /// NIP-98 headers, login and vouch events.
    pub event_window_secs: u64,
    /// Most keys one elite identity may vouch for.
    pub max_vouches: u32,
    /// NIP-98 signed requests allowed per client IP per minute (0 = unlimited).
    pub nip98_per_minute: u32,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            challenge_ttl_secs: 300,
            token_ttl_secs: 30 * 86_400,
            event_window_secs: 60,
            max_vouches: 5,
            nip98_per_minute: 120,
        }
    }
}

/// `[trust]`: how scores are earned and lost, and the tier thresholds. A score
/// is what an identity has paid (one point per `sats_per_point` sats).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrustConfig {
    /// Score to be `established`.
    pub established: u64,
    /// Score to be `trusted`.
    pub trusted: u64,
    /// Score to be `elite`.
    pub elite: u64,
    /// Distinct UTC days with a payment to be `established`.
    pub established_days: u64,
    /// Distinct UTC days with a payment to be `trusted`.
    pub trusted_days: u64,
    /// Distinct UTC days with a payment to be `elite`.
    pub elite_days: u64,
    /// One point per this many sats paid.
    pub sats_per_point: u64,
    /// Each tier must cost at least this many days of its daily allowance (checked at start).
    pub min_tier_cost_days: u64,
    /// Points lost per rejected or failed job.
    pub failure_penalty: u64,
    /// Points a voucher loses when its vouchee fails.
    pub vouch_penalty: u64,
    /// Days of absence before the score decays; each further such period decays it again.
    pub decay_after_days: u32,
    /// Percent lost per decay period.
    pub decay_pct: u32,
}

impl Default for TrustConfig {
    fn default() -> Self {
        let r = sluice_core::TrustRules::default();
        TrustConfig {
            established: r.established,
            trusted: r.trusted,
            elite: r.elite,
            established_days: r.established_days,
            trusted_days: r.trusted_days,
            elite_days: r.elite_days,
            sats_per_point: r.sats_per_point,
            min_tier_cost_days: 30,
            failure_penalty: r.failure_penalty,
            vouch_penalty: r.vouch_penalty,
            decay_after_days: r.decay_after_days,
            decay_pct: r.decay_pct,
        }
    }
}

impl TrustConfig {
    /// The core's rules.
    pub fn rules(&self) -> sluice_core::TrustRules {
        sluice_core::TrustRules {
            established: self.established,
            trusted: self.trusted,
            elite: self.elite,
            established_days: self.established_days,
            trusted_days: self.trusted_days,
            elite_days: self.elite_days,
            sats_per_point: self.sats_per_point,
            failure_penalty: self.failure_penalty,
            vouch_penalty: self.vouch_penalty,
            decay_after_days: self.decay_after_days,
            decay_pct: self.decay_pct,
        }
    }
}

/// `[free_tier]`: free answers paid from a generosity pool.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FreeTierConfig {
    /// Give free or partly free answers to identities with an allowance.
    pub enabled: bool,
    /// The pool's seed, sats, put in once on the first start.
    pub pool_seed_sats: u64,
    /// Percent of every paid charge credited to the pool.
    pub pool_credit_pct: u32,
    /// Daily allowance of `new` identities, sats.
    pub allowance_new_sats: u64,
    /// Daily allowance of `established` identities, sats.
    pub allowance_established_sats: u64,
    /// Daily allowance of `trusted` identities, sats.
    pub allowance_trusted_sats: u64,
    /// Daily allowance of `elite` identities, sats.
    pub allowance_elite_sats: u64,
}

impl Default for FreeTierConfig {
    fn default() -> Self {
        FreeTierConfig {
            enabled: true,
            pool_seed_sats: 10_000,
            pool_credit_pct: 10,
            allowance_new_sats: 0,
            allowance_established_sats: 50,
            allowance_trusted_sats: 200,
            allowance_elite_sats: 1_000,
        }
    }
}

impl FreeTierConfig {
    /// The core's allowances.
    pub fn allowances(&self) -> Result<sluice_core::Allowances, sluice_core::AmountError> {
        Ok(sluice_core::Allowances {
            new: sluice_core::Msat::from_sats(self.allowance_new_sats)?,
            established: sluice_core::Msat::from_sats(self.allowance_established_sats)?,
            trusted: sluice_core::Msat::from_sats(self.allowance_trusted_sats)?,
            elite: sluice_core::Msat::from_sats(self.allowance_elite_sats)?,
        })
    }
}

/// `[demo]`: `GET /v1/demo?request=...`, answered without payment from the
/// cheapest model and paid from the generosity pool.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DemoConfig {
    /// Serve the demo endpoint.
    pub enabled: bool,
    /// Demo answers per client IP per hour.
    pub per_hour: u32,
    /// Output tokens per demo answer.
    pub max_tokens: u64,
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig {
            enabled: true,
            per_hour: 5,
            max_tokens: 128,
        }
    }
}

/// `[pricing]`: defaults for every model (each model may override).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PricingConfig {
    /// Monthly infrastructure cost, USD, amortised per request.
    pub infra_monthly_usd: f64,
    /// Expected requests per month (the divisor).
    pub expected_monthly_requests: u64,
    /// Operator margin, percent.
    pub margin_pct: f64,
}

impl Default for PricingConfig {
    fn default() -> Self {
        PricingConfig {
            infra_monthly_usd: 0.0,
            expected_monthly_requests: 100_000,
            margin_pct: 0.0,
        }
    }
}

/// Upstream kind.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// Any OpenAI-compatible chat completions server.
    Openai,
    /// Anthropic's Messages API.
    Anthropic,
    /// A GGUF model run in-process.
    Local,
}

/// Which tokenizer approximates a model's token counts for estimates.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum TokenizerKind {
    /// tiktoken `cl100k_base`.
    #[default]
    Cl100k,
    /// tiktoken `o200k_base`.
    O200k,
}

/// `[[models]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Public name clients ask for.
    pub name: String,
    /// Upstream kind.
    pub kind: ModelKind,
    /// Upstream base URL (`.../v1` for OpenAI-compatible servers).
    pub base_url: Option<String>,
    /// Upstream API key.
    pub api_key: Option<Secret>,
    /// The model name the upstream knows (default: `name`).
    pub upstream_model: Option<String>,
    /// GGUF path for `local` (default: the bundled model, fetched on first use).
    pub path: Option<PathBuf>,
    /// USD per million input tokens.
    pub input_usd_per_mtok: f64,
    /// USD per million output tokens.
    pub output_usd_per_mtok: f64,
    /// Override of `[pricing].infra_monthly_usd`.
    pub infra_monthly_usd: Option<f64>,
    /// Override of `[pricing].expected_monthly_requests`.
    pub expected_monthly_requests: Option<u64>,
    /// Override of `[pricing].margin_pct`.
    pub margin_pct: Option<f64>,
    /// Output tokens reserved when a request gives no `max_tokens`.
    #[serde(default = "default_max_tokens")]
    pub default_max_tokens: u64,
    /// The most output tokens a request may ask for.
    #[serde(default = "max_output_tokens")]
    pub max_output_tokens: u64,
    /// Context length (0 = unchecked).
    #[serde(default)]
    pub context_length: u64,
    /// Tokenizer for estimates (ignored for `local`, which counts exactly).
    #[serde(default)]
    pub tokenizer: TokenizerKind,
    /// Seconds to wait for the upstream's first byte.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// Seconds allowed between stream chunks that carry output (keep-alives do not count).
    #[serde(default = "default_idle")]
    pub idle_timeout_secs: u64,
    /// The most seconds one request may take, streamed or not; a stream is cut
    /// there and charged for what was generated. A hold ends by then (plus a grace).
    #[serde(default = "default_max_duration")]
    pub max_duration_secs: u64,
    /// The one output-limit field the upstream reads, set to what the hold pays
    /// for (every other limit field is removed): `max_tokens` (llama.cpp,
    /// vLLM, Ollama, most servers) or `max_completion_tokens` (OpenAI's
    /// reasoning models).
    #[serde(default)]
    pub output_limit_field: OutputLimitField,
}

/// The output-limit field an OpenAI-compatible upstream reads.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum OutputLimitField {
    /// `max_tokens`.
    #[default]
    MaxTokens,
    /// `max_completion_tokens`.
    MaxCompletionTokens,
}

impl OutputLimitField {
    /// The field's name.
    pub fn as_str(self) -> &'static str {
        match self {
            OutputLimitField::MaxTokens => "max_tokens",
            OutputLimitField::MaxCompletionTokens => "max_completion_tokens",
        }
    }
}

fn default_max_tokens() -> u64 {
    512
}
fn max_output_tokens() -> u64 {
    4096
}
fn default_timeout() -> u64 {
    120
}
fn default_idle() -> u64 {
    30
}
fn default_max_duration() -> u64 {
    600
}

impl ModelConfig {
    /// The bundled local model, used when no model is configured.
    pub fn default_local(path: Option<PathBuf>) -> ModelConfig {
        ModelConfig {
            name: DEFAULT_LOCAL_MODEL_NAME.to_owned(),
            kind: ModelKind::Local,
            base_url: None,
            api_key: None,
            upstream_model: None,
            path,
            // A tiny model on the operator's own CPU: mostly the machine's cost
            // (30 USD a month over 10,000 requests), a little per token, 10% margin.
            input_usd_per_mtok: 2.0,
            output_usd_per_mtok: 10.0,
            infra_monthly_usd: Some(30.0),
            expected_monthly_requests: Some(10_000),
            margin_pct: Some(10.0),
            default_max_tokens: 256,
            max_output_tokens: 1024,
            context_length: 8192,
            tokenizer: TokenizerKind::Cl100k,
            timeout_secs: 300,
            idle_timeout_secs: 60,
            max_duration_secs: 600,
            output_limit_field: OutputLimitField::MaxTokens,
        }
    }
}
