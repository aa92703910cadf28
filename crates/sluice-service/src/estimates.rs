//! Learned output-token estimates: one [`OutputEstimator`] per model and
//! request class, starting from the model's configured default, updated by
//! settled requests and saved in the store (last writer wins: several
//! gateways on one database each learn and share their latest state).
//!
//! What is learned cannot be steered by one payer: an answer cut by its output
//! limit is a censored observation (its natural length is at least what it
//! produced: [`OutputEstimator::observe_at_least`]), and each payer (session,
//! L402 token, identity) contributes at most `per_payer_per_hour` observations
//! to one model and class per hour.
//!
//! Also the P90 calibration: the share of requests whose actual cost was at
//! most the P90 estimate made before they ran, exported at `/metrics`.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use sluice_core::{
    Calibration, EstimatorConfig, EstimatorState, Msat, OutputEstimator, Prior, RequestClass,
};
use sluice_store::Store;

/// An estimator is saved on its 1st, 17th, 33rd... observation.
pub const SAVE_EVERY: u64 = 16;

/// What a settled request teaches the estimators.
#[derive(Debug, Clone)]
pub struct Observed {
    /// Public model name.
    pub model: String,
    /// The request's class.
    pub class: RequestClass,
    /// The model's default output limit (the prior of a fresh estimator).
    pub default_max_output: u64,
    /// Actual output tokens.
    pub output_tokens: u64,
    /// Actual cost.
    pub actual: Msat,
    /// The P90 cost estimated before the request ran.
    pub p90_estimate: Msat,
    /// The answer was cut by its output limit (so it would have been longer).
    pub censored: bool,
    /// Who paid (a session, an L402 token, an identity), to bound what one payer teaches.
    pub payer: String,
}

/// Estimators by (model, class), and calibration by model.
#[derive(Default)]
pub struct Estimators {
    map: Mutex<HashMap<(String, RequestClass), OutputEstimator>>,
    calibration: Mutex<HashMap<String, Calibration>>,
    per_payer_per_hour: u32,
    /// Observations taken this hour, per payer, model and class.
    learned: Mutex<HashMap<PayerClass, (i64, u32)>>,
}

/// (payer, model, class).
type PayerClass = (String, String, RequestClass);

/// Entries kept in the per-payer count before old hours are swept.
const MAX_TRACKED_PAYERS: usize = 100_000;

fn fresh(default_max_output: u64) -> Option<OutputEstimator> {
    OutputEstimator::new(
        Prior::from_default_max_output(default_max_output),
        EstimatorConfig::default(),
    )
    .ok()
}

impl Estimators {
    /// Estimators taking at most `per_payer_per_hour` observations from one
    /// payer for one model and class per hour (0: no bound).
    pub fn new(per_payer_per_hour: u32) -> Estimators {
        Estimators {
            per_payer_per_hour,
            ..Estimators::default()
        }
    }

    /// Count one observation from `payer`; false when it is over its hourly share.
    fn within_share(&self, o: &Observed, now_ms: i64) -> bool {
        if self.per_payer_per_hour == 0 {
            return true;
        }
        let hour = now_ms / 3_600_000;
        let Ok(mut learned) = self.learned.lock() else {
            return false;
        };
        if learned.len() > MAX_TRACKED_PAYERS {
            learned.retain(|_, (h, _)| *h == hour);
        }
        let e = learned
            .entry((o.payer.clone(), o.model.clone(), o.class))
            .or_insert((hour, 0));
        if e.0 != hour {
            *e = (hour, 0);
        }
        if e.1 >= self.per_payer_per_hour {
            return false;
        }
        e.1 += 1;
        true
    }

    /// The estimator for `model` and `class`: cached, else saved, else from the default.
    pub async fn get(
        &self,
        store: &Arc<dyn Store>,
        model: &str,
        class: RequestClass,
        default_max_output: u64,
    ) -> Option<OutputEstimator> {
        let key = (model.to_owned(), class);
        if let Some(e) = self.map.lock().ok()?.get(&key) {
            return Some(e.clone());
        }
        let loaded = match store.estimator_state(model, class.as_str()).await {
            Ok(Some(s)) => EstimatorState::decode(&s)
                .ok()
                .and_then(|st| OutputEstimator::from_state(st).ok()),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "could not load an output estimator; starting from the default");
                None
            }
        };
        let e = loaded.or_else(|| fresh(default_max_output))?;
        self.map.lock().ok()?.entry(key).or_insert(e.clone());
        Some(e)
    }

    /// Learn from a settled request and save the estimator; record whether its
    /// actual cost was within the P90 estimate made before it ran.
    pub async fn observe(&self, store: &Arc<dyn Store>, o: Observed, now_ms: i64) {
        if let Ok(mut c) = self.calibration.lock() {
            c.entry(o.model.clone())
                .or_default()
                .record(o.actual, o.p90_estimate);
        }
        if !self.within_share(&o, now_ms) {
            return;
        }
        let Some(mut e) = self
            .get(store, &o.model, o.class, o.default_max_output)
            .await
        else {
            return;
        };
        if o.censored {
            e.observe_at_least(o.output_tokens);
        } else {
            e.observe(o.output_tokens);
        }
        let state = e.to_state().encode();
        if let Ok(mut m) = self.map.lock() {
            m.insert((o.model.clone(), o.class), e);
        }
        if let Err(err) = store
            .save_estimator_state(&o.model, o.class.as_str(), &state, now_ms)
            .await
        {
            tracing::warn!(error = %err, "could not save an output estimator");
        }
    }

    /// Save every estimator (at shutdown, so a graceful restart forgets nothing).
    pub async fn flush(&self, store: &Arc<dyn Store>, now_ms: i64) {
        let states: Vec<((String, RequestClass), String)> = match self.map.lock() {
            Ok(m) => m
                .iter()
                .map(|(k, e)| (k.clone(), e.to_state().encode()))
                .collect(),
            Err(_) => return,
        };
        for ((model, class), state) in states {
            if let Err(err) = store
                .save_estimator_state(&model, class.as_str(), &state, now_ms)
                .await
            {
                tracing::warn!(error = %err, "could not save an output estimator");
            }
        }
    }

    /// Prometheus text for the calibration of every model.
    pub fn metrics(&self) -> String {
        let mut out = String::from(
            "# HELP sluice_estimate_p90_calibration Share of settled requests whose actual cost was at most their P90 estimate.\n\
             # TYPE sluice_estimate_p90_calibration gauge\n",
        );
        let mut counts = String::from(
            "# HELP sluice_estimate_requests_total Settled requests measured for calibration.\n\
             # TYPE sluice_estimate_requests_total counter\n",
        );
        if let Ok(c) = self.calibration.lock() {
            let mut models: Vec<_> = c.iter().collect();
            models.sort_by(|a, b| a.0.cmp(b.0));
            for (model, cal) in models {
                let model = model.replace('\\', "\\\\").replace('"', "\\\"");
                if let Some(bps) = cal.share_bps() {
                    out.push_str(&format!(
                        "sluice_estimate_p90_calibration{{model=\"{model}\"}} {}.{:04}\n",
                        bps / 10_000,
                        bps % 10_000
                    ));
                }
                counts.push_str(&format!(
                    "sluice_estimate_requests_total{{model=\"{model}\"}} {}\n",
                    cal.total()
                ));
            }
        }
        out + &counts
    }
}
