//! Building the service from its configuration: the store, the Lightning
//! backend, the oracle, the models and their upstreams, the clock and ids.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use async_trait::async_trait;
use sluice_core::{BtcUsd, ModelRates, Msat, OutputBudget, SessionPolicy};
use sluice_env::{Clock, Ids, OsIds, SystemClock};
use sluice_lightning::{
    Lightning, LightningError, PaymentHash, Preimage,
    dev::{DevInvoiceRecord, DevSide, DevWallet, DevWalletStore},
    lnbits::LnBits,
};
use sluice_store::{DevInvoiceRow, DevWalletRows, Store};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    ModelEntry, Sluice,
    config::{Config, LightningBackend, ModelConfig, ModelKind},
    oracle::{FixedOracle, HttpOracle, PriceOracle, usd_from_f64},
    upstream::{Upstream, anthropic::AnthropicUpstream, openai::OpenAiUpstream},
};

/// How long a session credential is valid.
pub const CREDENTIAL_TTL: Duration = Duration::from_secs(30 * 86_400);

/// Why the service could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The configuration is wrong.
    #[error("configuration error: {0}")]
    Config(String),
    /// The database could not be opened.
    #[error("database: {0}")]
    Store(#[from] sluice_store::StoreError),
    /// The Lightning backend could not be set up.
    #[error("lightning: {0}")]
    Lightning(#[from] LightningError),
}

/// The dev wallet keeps its invoices in the gateway's store.
pub struct StoreDevWallet {
    /// Where the node key is kept (a secret).
    pub store: Arc<dyn Store>,
    /// Where the invoices are kept.
    pub rows: Arc<dyn DevWalletRows>,
}

impl StoreDevWallet {
    /// The dev wallet over `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        let rows = store.clone().dev_wallet_rows();
        StoreDevWallet { store, rows }
    }
}

fn store_err(e: sluice_store::StoreError) -> LightningError {
    LightningError::Backend(format!("dev wallet store: {e}"))
}

#[async_trait]
impl DevWalletStore for StoreDevWallet {
    async fn node_key(&self, fresh: [u8; 32]) -> Result<[u8; 32], LightningError> {
        self.store
            .secret("dev_wallet_node_key", fresh)
            .await
            .map_err(store_err)
    }

    async fn insert(&self, i: &DevInvoiceRecord) -> Result<(), LightningError> {
        self.rows
            .dev_invoice_insert(&DevInvoiceRow {
                issuer: i.issuer.as_str().to_owned(),
                payment_hash: i.payment_hash.to_hex(),
                preimage: i.preimage.to_hex(),
                bolt11: i.bolt11.clone(),
                amount: i.amount,
                expires_at_ms: i.expires_at_ms,
                paid_at_ms: i.paid_at_ms,
            })
            .await
            .map_err(store_err)
    }

    async fn get(&self, hash: &PaymentHash) -> Result<Option<DevInvoiceRecord>, LightningError> {
        let Some(r) = self
            .rows
            .dev_invoice(&hash.to_hex())
            .await
            .map_err(store_err)?
        else {
            return Ok(None);
        };
        Ok(Some(DevInvoiceRecord {
            issuer: DevSide::parse(&r.issuer).ok_or_else(|| {
                LightningError::Backend("a dev invoice has an unknown issuer".into())
            })?,
            payment_hash: PaymentHash::from_hex(&r.payment_hash)?,
            preimage: Preimage::from_hex(&r.preimage)?,
            bolt11: r.bolt11,
            amount: r.amount,
            expires_at_ms: r.expires_at_ms,
            paid_at_ms: r.paid_at_ms,
        }))
    }

    async fn mark_paid(&self, hash: &PaymentHash, paid_at_ms: i64) -> Result<bool, LightningError> {
        self.rows
            .dev_invoice_mark_paid(&hash.to_hex(), paid_at_ms)
            .await
            .map_err(store_err)
    }
}

fn usd(v: f64, what: &str) -> Result<sluice_core::UsdMicros, BuildError> {
    usd_from_f64(v)
        .ok_or_else(|| BuildError::Config(format!("{what} must be a non-negative number, got {v}")))
}

fn btc(v: f64, what: &str) -> Result<BtcUsd, BuildError> {
    BtcUsd::new(usd(v, what)?).map_err(|e| BuildError::Config(format!("{what}: {e}")))
}

/// The rate card of a configured model.
pub fn rates_of(m: &ModelConfig, cfg: &Config) -> Result<ModelRates, BuildError> {
    let margin = m.margin_pct.unwrap_or(cfg.pricing.margin_pct);
    if !margin.is_finite() || !(0.0..=10_000.0).contains(&margin) {
        return Err(BuildError::Config(format!(
            "model {}: margin_pct must be between 0 and 10000",
            m.name
        )));
    }
    Ok(ModelRates {
        input_per_mtok: usd(m.input_usd_per_mtok, "input_usd_per_mtok")?,
        output_per_mtok: usd(m.output_usd_per_mtok, "output_usd_per_mtok")?,
        infra_monthly: usd(
            m.infra_monthly_usd.unwrap_or(cfg.pricing.infra_monthly_usd),
            "infra_monthly_usd",
        )?,
        expected_monthly_requests: m
            .expected_monthly_requests
            .unwrap_or(cfg.pricing.expected_monthly_requests),
        margin_bps: (margin * 100.0).round() as u32,
    })
}

/// The oracle the configuration asks for.
pub fn oracle_of(cfg: &Config) -> Result<Arc<dyn PriceOracle>, BuildError> {
    let o = &cfg.oracle;
    if let Some(p) = o.fixed_btc_usd {
        return Ok(Arc::new(FixedOracle(btc(p, "oracle.fixed_btc_usd")?)));
    }
    let fallback = btc(o.fallback_btc_usd, "oracle.fallback_btc_usd")?;
    match &o.url {
        Some(url) => Ok(Arc::new(HttpOracle::new(
            url.clone(),
            o.json_pointer.clone(),
            Duration::from_secs(o.cache_secs),
            Duration::from_secs(o.timeout_secs),
            fallback,
            o.max_move_pct,
            Duration::from_secs(o.max_age_secs),
        ))),
        None => Ok(Arc::new(FixedOracle(fallback))),
    }
}

/// The models for sale. `prebuilt` supplies upstreams built by the caller
/// (the in-process local models), keyed by model name.
pub fn models_of(
    cfg: &Config,
    client: &reqwest::Client,
    mut prebuilt: BTreeMap<String, Arc<dyn Upstream>>,
) -> Result<BTreeMap<String, ModelEntry>, BuildError> {
    let mut out = BTreeMap::new();
    for m in &cfg.models {
        if out.contains_key(&m.name) {
            return Err(BuildError::Config(format!(
                "model {} is configured twice",
                m.name
            )));
        }
        let timeout = Duration::from_secs(m.timeout_secs);
        let idle = Duration::from_secs(m.idle_timeout_secs);
        let need_url = || {
            m.base_url.clone().ok_or_else(|| {
                BuildError::Config(format!("model {}: base_url is required", m.name))
            })
        };
        let (upstream, kind): (Arc<dyn Upstream>, &'static str) = match m.kind {
            ModelKind::Openai => {
                (Arc::new(OpenAiUpstream::new(client.clone(), &need_url()?, m.api_key.clone(), timeout, idle)), "openai")
            }
            ModelKind::Anthropic => (
                Arc::new(AnthropicUpstream::new(client.clone(), &need_url()?, m.api_key.clone(), timeout, idle)),
                "anthropic",
            ),
            ModelKind::Local => (
                prebuilt.remove(&m.name).ok_or_else(|| {
                    BuildError::Config(format!(
                        "model {}: local models need this build's `local` feature and a loaded model",
                        m.name
                    ))
                })?,
                "local",
            ),
        };
        if m.max_output_tokens == 0 {
            return Err(BuildError::Config(format!(
                "model {}: max_output_tokens must be positive",
                m.name
            )));
        }
        out.insert(
            m.name.clone(),
            ModelEntry {
                name: m.name.clone(),
                upstream_model: m.upstream_model.clone().unwrap_or_else(|| m.name.clone()),
                kind,
                rates: rates_of(m, cfg)?,
                budget: OutputBudget {
                    default_max_output: m.default_max_tokens,
                    max_output: m.max_output_tokens,
                    context_length: m.context_length,
                },
                tokenizer: m.tokenizer,
                upstream,
                limit_field: m.output_limit_field,
                timeout,
                idle,
                max_duration: Duration::from_secs(m.max_duration_secs.max(1)),
            },
        );
    }
    Ok(out)
}

fn read_cert(path: Option<&std::path::Path>) -> Result<Option<String>, BuildError> {
    path.map(|p| {
        std::fs::read_to_string(p)
            .map_err(|e| BuildError::Config(format!("lightning.tls_cert {}: {e}", p.display())))
    })
    .transpose()
}

/// The jobs' models: configured, or the cheapest output (evaluation) and the first (work).
pub fn job_models_of(
    cfg: &Config,
    models: &[(String, ModelRates)],
) -> Result<Option<crate::JobModels>, BuildError> {
    if !cfg.jobs.enabled || models.is_empty() {
        return Ok(None);
    }
    let known = |name: &str, key: &str| {
        if models.iter().any(|(n, _)| n == name) {
            Ok(name.to_owned())
        } else {
            Err(BuildError::Config(format!(
                "jobs.{key} = {name:?} is not a configured model"
            )))
        }
    };
    let eval = match &cfg.jobs.eval_model {
        Some(m) => known(m, "eval_model")?,
        None => models
            .iter()
            .min_by_key(|(_, r)| r.output_per_mtok)
            .map(|(n, _)| n.clone())
            .unwrap_or_default(),
    };
    let work = match &cfg.jobs.work_model {
        Some(m) => known(m, "work_model")?,
        None => cfg
            .models
            .first()
            .map(|m| m.name.clone())
            .unwrap_or_default(),
    };
    Ok(Some(crate::JobModels { eval, work }))
}

/// The session policy of a configuration.
pub fn policy_of(cfg: &Config) -> Result<SessionPolicy, BuildError> {
    let s = &cfg.sessions;
    if s.min_deposit_sats == 0 || s.min_deposit_sats > s.max_deposit_sats {
        return Err(BuildError::Config(
            "sessions: need 0 < min_deposit_sats <= max_deposit_sats".into(),
        ));
    }
    Ok(SessionPolicy {
        min_deposit_sats: s.min_deposit_sats,
        max_deposit_sats: s.max_deposit_sats,
        min_balance: Msat::from_sats(s.min_balance_sats)
            .map_err(|e| BuildError::Config(e.to_string()))?,
        ttl_secs: s.ttl_secs,
    })
}

/// What the service reads from its environment: the clock and the ids.
#[derive(Clone, Debug)]
pub struct Env {
    /// The wall clock.
    pub clock: Arc<dyn Clock>,
    /// Where ids come from.
    pub ids: Arc<dyn Ids>,
}

impl Env {
    /// The host's clock and the operating system's generator: a real gateway.
    pub fn system() -> Env {
        Env {
            clock: Arc::new(SystemClock),
            ids: Arc::new(OsIds),
        }
    }
}

/// Builds a [`Sluice`] from a configuration: [`Sluice::builder`].
pub struct Builder<'a> {
    cfg: &'a Config,
    store: Option<Arc<dyn Store>>,
    prebuilt: BTreeMap<String, Arc<dyn Upstream>>,
    env: Env,
}

impl Sluice {
    /// A builder from `cfg`: the database at `cfg.database.url`, the host's
    /// clock and OS ids, unless told otherwise.
    pub fn builder(cfg: &Config) -> Builder<'_> {
        Builder {
            cfg,
            store: None,
            prebuilt: BTreeMap::new(),
            env: Env::system(),
        }
    }
}

impl Builder<'_> {
    /// Over an already opened store (`cfg.database` is then ignored).
    pub fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// Upstreams built elsewhere, by model name (the in-process models).
    pub fn upstreams(mut self, prebuilt: BTreeMap<String, Arc<dyn Upstream>>) -> Self {
        self.prebuilt = prebuilt;
        self
    }

    /// On this clock and id generator (a manual clock in tests and the
    /// simulator; the dev wallet dates its invoices by it too).
    pub fn env(mut self, env: Env) -> Self {
        self.env = env;
        self
    }

    /// Open what is needed and build the service (not started: see [`Sluice::start`]).
    pub async fn build(self) -> Result<Sluice, BuildError> {
        let Builder {
            cfg,
            store,
            prebuilt,
            env,
        } = self;
        // Job and L402 token ids are capabilities: foreseeable ones only
        // where no real money moves.
        if env.ids.is_predictable() && !matches!(cfg.lightning.backend, LightningBackend::Dev) {
            return Err(BuildError::Config(
                "seeded (predictable) ids are for the dev wallet only: job and L402 token ids are capabilities".into(),
            ));
        }
        let store = match store {
            Some(s) => s,
            None => sluice_store::connect(&cfg.database.url).await?,
        };
        // reqwest is built without a TLS crypto provider; rustls needs exactly one.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let policy = policy_of(cfg)?;
        let poll_interval = Duration::from_secs(cfg.lightning.poll_interval_secs.max(1));
        type Backends = (
            Arc<dyn Lightning>,
            Option<Arc<DevWallet>>,
            Option<Arc<LnBits>>,
        );
        let (lightning, dev_wallet, lnbits): Backends = match cfg.lightning.backend {
            LightningBackend::Dev => {
                let w = Arc::new(
                    DevWallet::open_with_clock(
                        Arc::new(StoreDevWallet::new(store.clone())),
                        env.clock.clone(),
                    )
                    .await?,
                );
                (w.clone(), Some(w), None)
            }
            LightningBackend::Lnbits => {
                let l = &cfg.lightning;
                let (Some(url), Some(key)) = (&l.url, &l.invoice_key) else {
                    return Err(BuildError::Config(
                        "lightning.backend = \"lnbits\" needs lightning.url and lightning.invoice_key"
                            .into(),
                    ));
                };
                let webhook_url =
                    cfg.server.public_url.as_ref().map(|u| {
                        format!("{}/v1/lightning/lnbits/webhook", u.trim_end_matches('/'))
                    });
                let ln = sluice_lightning::lnbits::LnBits::new(
                    sluice_lightning::lnbits::LnBitsConfig {
                        url: url.clone(),
                        invoice_key: key.expose().to_owned(),
                        admin_key: l.admin_key.as_ref().map(|k| k.expose().to_owned()),
                        poll_interval,
                        timeout: Duration::from_secs(10),
                        webhook_url,
                        fee_reserve_min: Msat::from_msat(l.lnbits_fee_reserve_min_msat),
                        fee_reserve_ppm: l.lnbits_fee_reserve_ppm,
                    },
                )?;
                let ln = Arc::new(ln);
                (ln.clone(), None, Some(ln))
            }
            LightningBackend::Lnd => {
                let l = &cfg.lightning;
                let (Some(url), Some(mac)) = (&l.url, &l.macaroon) else {
                    return Err(BuildError::Config(
                        "lightning.backend = \"lnd\" needs lightning.url and lightning.macaroon"
                            .into(),
                    ));
                };
                let mut c =
                    sluice_lightning::lnd::LndConfig::new(url.clone(), mac.expose().to_owned());
                c.tls_cert_pem = read_cert(l.tls_cert.as_deref())?;
                c.poll_interval = poll_interval;
                (Arc::new(sluice_lightning::lnd::Lnd::new(c)?), None, None)
            }
            LightningBackend::Cln => {
                let l = &cfg.lightning;
                let (Some(url), Some(rune)) = (&l.url, &l.rune) else {
                    return Err(BuildError::Config(
                        "lightning.backend = \"cln\" needs lightning.url and lightning.rune".into(),
                    ));
                };
                let mut c =
                    sluice_lightning::cln::ClnConfig::new(url.clone(), rune.expose().to_owned());
                c.tls_cert_pem = read_cert(l.tls_cert.as_deref())?;
                c.poll_interval = poll_interval;
                (Arc::new(sluice_lightning::cln::Cln::new(c)?), None, None)
            }
        };
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| BuildError::Config(format!("HTTP client: {e}")))?;
        let models = models_of(cfg, &client, prebuilt)?;
        let models_for_jobs: Vec<(String, ModelRates)> =
            models.values().map(|m| (m.name.clone(), m.rates)).collect();
        for m in models.values() {
            crate::tokens::warm(m.tokenizer);
        }
        let root_secret = store.secret("macaroon_root", sluice_env::secret()).await?;
        let free = free_tier_of(cfg)?;
        let seed = Msat::from_sats(cfg.free_tier.pool_seed_sats)
            .map_err(|e| BuildError::Config(format!("free_tier.pool_seed_sats: {e}")))?;
        if seed > Msat::ZERO && store.seed_pool(seed, env.clock.now_ms()).await? {
            tracing::info!(sats = seed.to_sats_floor(), "generosity pool seeded");
        }
        Ok(Sluice {
            store,
            lightning,
            dev_wallet,
            lnbits,
            oracle: oracle_of(cfg)?,
            models: Arc::new(models),
            policy,
            invoice_expiry: Duration::from_secs(cfg.lightning.invoice_expiry_secs),
            credential_ttl: CREDENTIAL_TTL,
            root_secret,
            instance_id: env.ids.new_id("gw"),
            clock: env.clock,
            ids: env.ids,
            tasks: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            poll_interval,
            stale_after: Duration::from_secs(cfg.server.instance_stale_secs.max(1)),
            l402: cfg.l402.clone(),
            estimates: Arc::new(crate::estimates::Estimators::new(
                cfg.estimates.per_payer_per_hour,
            )),
            job_models: job_models_of(cfg, &models_for_jobs)?,
            jobs: cfg.jobs.clone(),
            free,
            free_inflight: Arc::default(),
            identity: cfg.identity.clone(),
            demo: cfg.demo.clone(),
            public_url: cfg.server.public_url.clone(),
            refunds: cfg.refunds.clone(),
        })
    }
}

/// The free-tier settings of a configuration, checked.
pub fn free_tier_of(cfg: &Config) -> Result<crate::free::FreeTier, BuildError> {
    let trust = cfg.trust.rules();
    trust
        .validate()
        .map_err(|e| BuildError::Config(format!("trust: {e}")))?;
    let f = &cfg.free_tier;
    if f.pool_credit_pct > 100 {
        return Err(BuildError::Config(format!(
            "free_tier.pool_credit_pct must be between 0 and 100, not {}",
            f.pool_credit_pct
        )));
    }
    let allowances = f
        .allowances()
        .map_err(|e| BuildError::Config(format!("free_tier allowances: {e}")))?;
    sluice_core::check_tier_costs(&trust, &allowances, cfg.trust.min_tier_cost_days)
        .map_err(|e| BuildError::Config(format!("trust: {e}")))?;
    Ok(crate::free::FreeTier {
        enabled: f.enabled,
        allowances,
        accounting: sluice_store::Accounting {
            pool_credit_pct: f.pool_credit_pct,
            trust,
        },
    })
}
