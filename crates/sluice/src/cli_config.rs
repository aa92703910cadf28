//! Configuration layering: defaults → TOML file → `SLUICE_*` environment.
//!
//! Environment keys name a section and a key joined by `__`, e.g.
//! `SLUICE_DATABASE__URL=postgres://...` or `SLUICE_SERVER__LISTEN=0.0.0.0:8080`.

use std::path::Path;

use anyhow::Context;
use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use sluice_gateway::Config;

const SECTIONS: [&str; 14] = [
    "l402__",
    "jobs__",
    "refunds__",
    "estimates__",
    "identity__",
    "trust__",
    "free_tier__",
    "demo__",
    "server__",
    "database__",
    "lightning__",
    "oracle__",
    "sessions__",
    "pricing__",
];

/// Load the configuration.
pub fn load(path: Option<&Path>) -> anyhow::Result<Config> {
    let mut fig = Figment::from(Serialized::defaults(serde_json::json!({})));
    if let Some(p) = path {
        anyhow::ensure!(p.exists(), "config file {} does not exist", p.display());
        fig = fig.merge(Toml::file(p));
    }
    fig = fig.merge(
        Env::prefixed("SLUICE_")
            .filter(|k| {
                let k = k.as_str().to_ascii_lowercase();
                SECTIONS.iter().any(|s| k.starts_with(s))
            })
            .split("__"),
    );
    fig.extract::<Config>().with_context(|| match path {
        Some(p) => format!(
            "invalid configuration in {} or SLUICE_* environment",
            p.display()
        ),
        None => "invalid configuration in SLUICE_* environment".to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_parses_and_matches_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../example.config.toml");
        let cfg = load(Some(&path)).unwrap();
        let d = Config::default();
        assert_eq!(cfg.server.listen, d.server.listen);
        assert_eq!(cfg.server.max_body_bytes, d.server.max_body_bytes);
        assert_eq!(cfg.server.instance_stale_secs, d.server.instance_stale_secs);
        assert_eq!(cfg.database.url, d.database.url);
        assert_eq!(
            cfg.lightning.invoice_expiry_secs,
            d.lightning.invoice_expiry_secs
        );
        assert_eq!(cfg.oracle.cache_secs, d.oracle.cache_secs);
        assert_eq!(cfg.oracle.timeout_secs, d.oracle.timeout_secs);
        assert_eq!(cfg.sessions.min_deposit_sats, d.sessions.min_deposit_sats);
        assert_eq!(cfg.sessions.ttl_secs, d.sessions.ttl_secs);
        assert_eq!(cfg.l402.enabled, d.l402.enabled);
        assert_eq!(cfg.l402.valid_secs, d.l402.valid_secs);
        assert_eq!(cfg.l402.prepay, d.l402.prepay);
        assert_eq!(cfg.server.header_timeout_secs, d.server.header_timeout_secs);
        assert_eq!(cfg.server.max_connections, d.server.max_connections);
        assert_eq!(
            cfg.server.max_connections_per_ip,
            d.server.max_connections_per_ip
        );
        assert_eq!(cfg.oracle.max_move_pct, d.oracle.max_move_pct);
        assert_eq!(cfg.oracle.max_age_secs, d.oracle.max_age_secs);
        assert_eq!(cfg.refunds.fee_budget_pct, d.refunds.fee_budget_pct);
        assert_eq!(
            cfg.estimates.per_payer_per_hour,
            d.estimates.per_payer_per_hour
        );
        assert_eq!(cfg.trust.rules(), d.trust.rules());
        assert_eq!(cfg.trust.min_tier_cost_days, d.trust.min_tier_cost_days);
        assert_eq!(cfg.models.len(), 1);
        assert_eq!(cfg.models[0].default_max_tokens, 512);
        assert_eq!(cfg.models[0].max_duration_secs, 600);
    }

    #[test]
    fn unknown_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.toml");
        std::fs::write(&p, "[server]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n").unwrap();
        let err = format!("{:#}", load(Some(&p)).unwrap_err());
        assert!(err.contains("lisen"), "{err}");
        assert!(load(Some(Path::new("/nonexistent/sluice.toml"))).is_err());
    }
}
