//! Loading in-process models, fetching the bundled default with progress.

use std::{collections::BTreeMap, path::PathBuf, sync::Arc};

use anyhow::Context;
use sluice_gateway::{
    config::{Config, ModelKind},
    upstream::Upstream,
};

/// Fetch the default model if it is not cached, showing progress on stderr.
#[cfg(feature = "local")]
pub fn ensure_default_model() -> anyhow::Result<PathBuf> {
    use indicatif::{ProgressBar, ProgressStyle};
    use sluice_local::FetchProgress as P;
    let path = sluice_local::default_model_path();
    if path.exists() {
        return Ok(path);
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} ({eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let mut progress = |p: P| match p {
        P::Started { what, size_hint } => {
            eprintln!(
                "First run: fetching the default model ({what}, about 93 MB) into {}",
                path.display()
            );
            bar.set_length(size_hint.unwrap_or(0));
            bar.set_message("downloading");
        }
        P::Downloading { bytes, size_hint } => {
            if let Some(t) = size_hint {
                bar.set_length(t);
            }
            bar.set_position(bytes);
        }
        P::Extracting { bytes, total } => {
            bar.set_message("unpacking");
            bar.set_length(total);
            bar.set_position(bytes);
        }
        P::Verifying => bar.set_message("verifying"),
        P::Done { .. } => bar.finish_and_clear(),
    };
    let p = sluice_local::ensure_default_model(&mut progress)
        .context("could not fetch the default model")?;
    eprintln!("Model ready: {}", p.display());
    Ok(p)
}

/// Without the `local` feature there is no in-process model.
#[cfg(not(feature = "local"))]
pub fn ensure_default_model() -> anyhow::Result<PathBuf> {
    anyhow::bail!("this build has no in-process models (built without the `local` feature)")
}

/// Load every `local` model of the configuration.
#[cfg(feature = "local")]
pub async fn load_local_models(
    cfg: &Config,
) -> anyhow::Result<BTreeMap<String, Arc<dyn Upstream>>> {
    let mut out: BTreeMap<String, Arc<dyn Upstream>> = BTreeMap::new();
    for m in cfg.models.iter().filter(|m| m.kind == ModelKind::Local) {
        let path = match &m.path {
            Some(p) => p.clone(),
            None => tokio::task::spawn_blocking(ensure_default_model).await??,
        };
        let p = path.clone();
        let model = tokio::task::spawn_blocking(move || sluice_local::LocalModel::load(&p))
            .await?
            .with_context(|| format!("could not load model {} from {}", m.name, path.display()))?;
        tracing::info!(model = %m.name, path = %path.display(), "local model loaded");
        out.insert(
            m.name.clone(),
            Arc::new(sluice_gateway::upstream::local::LocalUpstream::new(
                Arc::new(model),
            )),
        );
    }
    Ok(out)
}

/// Without the `local` feature, a `local` model is a configuration error.
#[cfg(not(feature = "local"))]
pub async fn load_local_models(
    cfg: &Config,
) -> anyhow::Result<BTreeMap<String, Arc<dyn Upstream>>> {
    anyhow::ensure!(
        cfg.models.iter().all(|m| m.kind != ModelKind::Local),
        "this build has no in-process models (built without the `local` feature)"
    );
    Ok(BTreeMap::new())
}
