//! Building a gateway: the service from its configuration
//! (`sluice_service::builder`), then what only HTTP needs.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use sluice_store::Store;

pub use sluice_service::builder::{BuildError, Env};

use crate::{
    config::Config, ratelimit::RateLimiter, state::AppState, state::Sluice, upstream::Upstream,
};

/// Build the whole gateway state from a configuration.
pub async fn build_state(
    cfg: &Config,
    prebuilt: BTreeMap<String, Arc<dyn Upstream>>,
) -> Result<AppState, BuildError> {
    let store = sluice_store::connect(&cfg.database.url).await?;
    build_state_with_store(cfg, store, prebuilt).await
}

/// Build the gateway state over an already opened store (`cfg.database` is ignored).
pub async fn build_state_with_store(
    cfg: &Config,
    store: Arc<dyn Store>,
    prebuilt: BTreeMap<String, Arc<dyn Upstream>>,
) -> Result<AppState, BuildError> {
    build_state_with(cfg, store, prebuilt, Env::system()).await
}

/// [`build_state_with_store`] on a given clock and id generator (a manual
/// clock in tests and the simulator; the dev wallet dates invoices by it too).
pub async fn build_state_with(
    cfg: &Config,
    store: Arc<dyn Store>,
    prebuilt: BTreeMap<String, Arc<dyn Upstream>>,
    env: Env,
) -> Result<AppState, BuildError> {
    // HTTP settings first: a bad one leaves nothing written (the pool unseeded).
    for o in &cfg.server.cors_origins {
        let ok = o == "*"
            || ((o.starts_with("http://") || o.starts_with("https://"))
                && axum::http::HeaderValue::from_str(o).is_ok()
                && !o.ends_with('/'));
        if !ok {
            return Err(BuildError::Config(format!(
                "server.cors_origins: {o:?} is not an origin like \"https://app.example\" (scheme and host, no path) or \"*\""
            )));
        }
    }
    let sluice = Sluice::builder(cfg)
        .store(store)
        .upstreams(prebuilt)
        .env(env)
        .build()
        .await?;
    Ok(AppState {
        sluice: Arc::new(sluice),
        limiter: Arc::new(RateLimiter::new(
            cfg.server.public_rate_per_minute,
            Duration::from_secs(60),
        )),
        nip98_limiter: Arc::new(RateLimiter::new(
            cfg.identity.nip98_per_minute,
            Duration::from_secs(60),
        )),
        demo_limiter: Arc::new(RateLimiter::new(
            cfg.demo.per_hour,
            Duration::from_secs(3600),
        )),
        max_body_bytes: cfg.server.max_body_bytes,
        cors_origins: cfg.server.cors_origins.clone(),
        limits: crate::server::Limits {
            header_timeout: Duration::from_secs(cfg.server.header_timeout_secs.max(1)),
            max_connections: cfg.server.max_connections,
            per_ip: cfg.server.max_connections_per_ip,
            max_header_buffer: MAX_HEADER_BUFFER,
        },
        body_timeout: Duration::from_secs(cfg.server.body_timeout_secs.max(1)),
        health: Arc::default(),
    })
}

/// The largest header block buffered (hyper answers a bare 431 beyond it);
/// half of it is the largest answered in the API's error shape.
const MAX_HEADER_BUFFER: usize = 64 * 1024;
