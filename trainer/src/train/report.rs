//! What a run tells: progress [`Event`]s, each epoch's [`EpochReport`], and the run's
//! [`TrainReport`], written beside the artifact as `train-report.json` with its learning curves
//! (`train-curves.png`, [`crate::plot`]) and its final metrics in the manifest.

use super::config::TrainConfig;
use super::eval::Evaluation;
use crate::data::SourceStats;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use viralclip_engine::model::Manifest;

/// Progress, for a bar or a chat message.
#[derive(Debug, Clone)]
pub enum Event {
    Loaded {
        train: usize,
        val: usize,
        test: usize,
    },
    Caching {
        done: usize,
        total: usize,
    },
    Step {
        epoch: usize,
        step: usize,
        steps: usize,
        loss: f64,
        examples_per_s: f64,
    },
    Epoch(Box<EpochReport>),
}

impl std::fmt::Display for Event {
    /// One line of progress, for a log or a chat message.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::Loaded { train, val, test } => {
                write!(f, "data: {train} train, {val} validation, {test} test")
            }
            Event::Caching { done, total } => write!(f, "caching frozen layers {done}/{total}"),
            Event::Step {
                epoch,
                step,
                steps,
                loss,
                examples_per_s,
            } => write!(
                f,
                "epoch {} step {step}/{steps}, loss {loss:.4}, {examples_per_s:.0} ex/s",
                epoch + 1
            ),
            Event::Epoch(r) => write!(
                f,
                "epoch {} done: val loss {:.4}, emotion macro-F1 {}",
                r.epoch + 1,
                r.val.loss(),
                r.val
                    .emotions_tuned
                    .as_ref()
                    .map_or("-".into(), |m| format!("{:.3}", m.macro_f1))
            ),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochReport {
    pub epoch: usize,
    pub stage: String,
    pub train_loss: f64,
    pub val: Evaluation,
    pub thresholds: Vec<f32>,
    /// Fraction of PCGrad steps whose task gradients conflicted.
    pub conflicts: Option<f64>,
    /// Mean translation alignment loss (before its weight), when `align` was on.
    #[serde(default)]
    pub align_loss: Option<f64>,
    pub secs: f64,
    pub examples_per_s: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainReport {
    pub config: TrainConfig,
    pub sources: Vec<SourceStats>,
    pub test_sources: Vec<SourceStats>,
    pub train_examples: usize,
    pub val_examples: usize,
    pub pos_weight: Vec<f32>,
    pub epochs: Vec<EpochReport>,
    pub best_epoch: usize,
    /// The saved model, loaded back by the engine, on the validation split.
    pub val_reloaded: Evaluation,
    /// The saved model on the held-out test sources.
    pub test: Option<Evaluation>,
    pub cache_secs: f64,
    pub wall_secs: f64,
    pub labels: Vec<String>,
}

/// The directory layout a run writes.
pub fn report_path(out: &Path) -> PathBuf {
    out.join("train-report.json")
}

/// Writes the run's report: its final metrics into the artifact's manifest, the learning curves
/// (a warning if they cannot be drawn) and `train-report.json`.
pub(super) fn write(cfg: &TrainConfig, report: &TrainReport) -> Result<()> {
    // Record the final metrics in the manifest too.
    let mut manifest = Manifest::read(&cfg.out)?;
    manifest.metrics = serde_json::json!({
        "best_epoch": report.best_epoch,
        "validation": report.val_reloaded,
        "test": report.test,
    });
    manifest.write(&cfg.out)?;
    let png = cfg.out.join("train-curves.png");
    if let Err(e) = crate::plot::learning_curves(report, &png) {
        tracing::warn!("{e}");
    }
    let path = report_path(&cfg.out);
    std::fs::write(
        &path,
        serde_json::to_string_pretty(report).expect("serialises") + "\n",
    )
    .map_err(|e| Error::io(&path, e))
}
