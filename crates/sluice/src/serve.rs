//! `sluice serve` and `sluice check-ledger`.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::Context;
use sluice_gateway::config::{Config, ModelConfig, ModelKind};

use crate::{cli_config, local};

/// Apply `--model`: the path of the default local model (added when no model is configured).
pub fn with_models(mut cfg: Config, model: Option<PathBuf>) -> Config {
    if cfg.models.is_empty() {
        cfg.models.push(ModelConfig::default_local(model));
    } else if let Some(p) = model {
        match cfg
            .models
            .iter_mut()
            .find(|m| m.kind == ModelKind::Local && m.path.is_none())
        {
            Some(m) => m.path = Some(p),
            None => cfg.models.push(ModelConfig::default_local(Some(p))),
        }
    }
    cfg
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down: finishing in-flight requests");
}

/// Run the gateway until SIGINT/SIGTERM.
pub async fn run(
    config: Option<PathBuf>,
    model: Option<PathBuf>,
    listen: Option<SocketAddr>,
) -> anyhow::Result<()> {
    let mut cfg = with_models(cli_config::load(config.as_deref())?, model);
    if let Some(l) = listen {
        cfg.server.listen = l;
    }
    let prebuilt = local::load_local_models(&cfg).await?;
    let state = sluice_gateway::build_state(&cfg, prebuilt)
        .await
        .context("could not start the gateway")?;
    if !state.sluice.lightning.is_real_money() {
        tracing::warn!(
            "Lightning backend: dev wallet — invoices are real BOLT11 but NOT real money"
        );
    }
    let listener = tokio::net::TcpListener::bind(cfg.server.listen)
        .await
        .with_context(|| format!("could not listen on {}", cfg.server.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(
        listen = %addr,
        database = state.sluice.store.dialect(),
        lightning = state.sluice.lightning.name(),
        models = ?state.sluice.models.keys().collect::<Vec<_>>(),
        "sluice gateway listening"
    );
    sluice_gateway::serve(
        listener,
        state,
        cfg.server.max_body_bytes,
        shutdown_signal(),
    )
    .await?;
    Ok(())
}

/// Check the ledger of the configured database; exit non-zero when it does not balance.
pub async fn check_ledger(config: Option<PathBuf>) -> anyhow::Result<()> {
    let cfg = cli_config::load(config.as_deref())?;
    let store = sluice_store::connect_existing(&cfg.database.url)
        .await
        .context("could not open the database")?;
    let r = store.check_ledger().await?;
    println!("ledger transactions:     {}", r.transactions);
    println!("received over Lightning: {} msat", r.received.msat());
    println!("seeded by the operator:  {} msat", r.seeded.msat());
    println!("session balances:        {} msat", r.balances.msat());
    println!("held for requests:       {} msat", r.held.msat());
    println!("revenue:                 {} msat", r.revenue.msat());
    println!("held for jobs:           {} msat", r.jobs_held.msat());
    println!("refunds owed:            {} msat", r.refunds_owed.msat());
    println!("generosity pool:         {} msat", r.pool.msat());
    println!("paid out:                {} msat", r.paid_out.msat());
    println!("routing fees of payouts: {} msat", r.fees.msat());
    if r.is_consistent() {
        println!(
            "OK: every transaction balances; received + seeded = balances + held + revenue + jobs + \
             refunds owed + pool + paid out + routing fees; every session, job, refund and the pool \
             match the ledger"
        );
        Ok(())
    } else {
        anyhow::bail!(
            "ledger check FAILED: unbalanced transactions {:?}, mismatched sessions {:?}, jobs {:?}, refunds {:?}, pool row differs from the ledger: {}",
            r.unbalanced,
            r.mismatched_sessions,
            r.mismatched_jobs,
            r.mismatched_refunds,
            r.pool_mismatch
        )
    }
}
