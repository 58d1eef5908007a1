//! What a run keeps between epochs, and across a restart: the best epoch so far and its weights
//! and thresholds, the epochs' reports, and a checkpoint (`checkpoint/`: the optimiser's state and
//! `state.json`) to resume from.

use super::config::TrainConfig;
use super::report::EpochReport;
use super::weights;
use crate::data::EMOTIONS;
use crate::error::{Error, Result};
use crate::optim::AdamW;
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use viralclip_engine::model::{artifact, Manifest};

#[derive(Serialize, Deserialize)]
pub(super) struct ResumeState {
    pub(super) next_epoch: usize,
    pub(super) step: usize,
    pub(super) best_epoch: usize,
    /// The best [`super::SelectBy::key`] so far (lower is better).
    #[serde(alias = "best_loss")]
    best_key: f64,
    pub(super) epochs: Vec<EpochReport>,
}

/// The run's state and the best epoch's weights and thresholds.
pub(super) struct Kept {
    pub(super) state: ResumeState,
    /// The kept epoch's tensors (see [`weights::snapshot`]), once an epoch was kept.
    params: Option<HashMap<String, Tensor>>,
    pub(super) thresholds: Vec<f32>,
    /// Epochs since the kept one.
    pub(super) stale: usize,
    dir: PathBuf,
}

impl Kept {
    /// A fresh start, or with `resume` the state `checkpoint/` holds (the optimiser's moments
    /// loaded into `opt`) and the artifact's weights as the kept ones.
    pub(super) fn start(cfg: &TrainConfig, opt: &mut AdamW, device: &Device) -> Result<Kept> {
        let dir = cfg.out.join("checkpoint");
        let mut state = ResumeState {
            next_epoch: 0,
            step: 0,
            best_epoch: 0,
            best_key: f64::INFINITY,
            epochs: Vec::new(),
        };
        if cfg.resume && dir.join("state.json").is_file() {
            let text = std::fs::read_to_string(dir.join("state.json")).map_err(|e| Error::io(&dir, e))?;
            state = serde_json::from_str(&text).map_err(|e| Error::data(&dir, e.to_string()))?;
            opt.load(&dir.join("optimizer.safetensors"))?;
            tracing::info!(epoch = state.next_epoch, "resumed");
        }
        let params = if state.next_epoch > 0 && cfg.out.join("weights.safetensors").is_file() {
            Some(candle_core::safetensors::load(
                cfg.out.join("weights.safetensors"),
                device,
            )?)
        } else {
            None
        };
        let thresholds = state
            .epochs
            .iter()
            .find(|e| e.epoch == state.best_epoch)
            .map(|e| e.thresholds.clone())
            .unwrap_or_else(|| vec![0.5; EMOTIONS]);
        let stale = state
            .epochs
            .iter()
            .rev()
            .take_while(|e| e.epoch != state.best_epoch)
            .count();
        Ok(Kept {
            state,
            params,
            thresholds,
            stale,
            dir,
        })
    }

    /// Records an epoch: kept (its weights snapshot, its thresholds) when its validation is the
    /// best so far by `cfg.select_by`, or when there is no validation.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn record(
        &mut self,
        cfg: &TrainConfig,
        report: EpochReport,
        thresholds: Vec<f32>,
        opt: &AdamW,
        (frozen, last): (bool, bool),
        from_init: &HashSet<String>,
        no_validation: bool,
    ) -> Result<()> {
        let key = cfg.select_by.key(&report.val);
        let improved = key < self.state.best_key || no_validation;
        let epoch = report.epoch;
        self.state.epochs.push(report);
        if improved {
            self.state.best_key = key;
            self.state.best_epoch = epoch;
            self.thresholds = thresholds;
            self.params = Some(weights::snapshot(cfg, opt, frozen, last, from_init)?);
            self.stale = 0;
        } else {
            self.stale += 1;
        }
        Ok(())
    }

    /// Whether the kept weights include encoder layers.
    pub(super) fn has_layers(&self) -> bool {
        self.params
            .as_ref()
            .is_some_and(|p| p.keys().any(|k| k.starts_with("bert.")))
    }

    /// Saves the model so far (the kept weights with `manifest`) and a checkpoint to resume from
    /// after `epoch`.
    pub(super) fn save(
        &mut self,
        cfg: &TrainConfig,
        manifest: &Manifest,
        opt: &AdamW,
        epoch: usize,
    ) -> Result<()> {
        if let Some(p) = &self.params {
            artifact::save(&cfg.out, manifest, p)?;
        }
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        self.state.next_epoch = epoch + 1;
        opt.save(&self.dir.join("optimizer.safetensors"))?;
        std::fs::write(
            self.dir.join("state.json"),
            serde_json::to_string(&self.state).expect("serialises"),
        )
        .map_err(|e| Error::io(&self.dir, e))
    }
}
