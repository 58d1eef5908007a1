//! What a run is asked to do: [`TrainConfig`] (the seed's recipe by default) and what picks the
//! kept epoch ([`SelectBy`]).

use super::eval::Evaluation;
use crate::data::Source;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use viralclip_engine::model::Pooling;

/// Everything a run needs; defaults are the seed's recipe.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainConfig {
    pub encoder_dir: PathBuf,
    pub base_repo: String,
    pub out: PathBuf,
    pub data: Vec<Source>,
    /// Held-out sources measured once, on the saved model.
    pub test: Vec<Source>,
    pub val_fraction: f64,
    pub seed: u64,
    pub batch_size: usize,
    pub max_length: usize,
    /// Learning rate of the encoder layers before `unfrozen_lr_mult` (the seed: 2e-5).
    pub lr: f64,
    /// Learning rate of the heads (default: `lr`).
    pub head_lr: Option<f64>,
    /// Encoder layers train at `lr × unfrozen_lr_mult` (the seed: 10× lower).
    pub unfrozen_lr_mult: f64,
    pub weight_decay: f64,
    pub warmup_steps: usize,
    pub frozen_epochs: usize,
    pub unfrozen_epochs: usize,
    pub unfreeze_layers: usize,
    pub pcgrad: bool,
    pub clip_norm: f64,
    /// Stop after this many epochs without a better validation loss.
    pub patience: usize,
    /// Use at most this many training examples (a quick run).
    pub max_train: Option<usize>,
    pub resume: bool,
    /// Store fine-tuned encoder matrices in fp16 (half the artifact). The per-epoch metrics are
    /// then those of the fp32 weights; `val_reloaded` measures the artifact as stored.
    #[serde(default)]
    pub f16_layers: bool,
    /// Start from this model's heads and fine-tuned layers instead of fresh heads over the base
    /// encoder (continue training a shipped model on new or more data).
    #[serde(default)]
    pub init: Option<PathBuf>,
    /// What picks the best epoch and drives early stopping.
    #[serde(default)]
    pub select_by: SelectBy,
    /// Weight of the translation alignment: in the epochs that train layers, each row with a
    /// `pair` (the text it was translated from, as ru_go_emotions keeps it) pulls its vector
    /// (what the heads read) toward the current model's vector of that original, so what the
    /// emotion head learned from the original language carries over. The loss (relative squared
    /// distance) joins the emotion task's. 0: off.
    #[serde(default)]
    pub align: f64,
    /// What the heads read off the encoder: [CLS] (the seed's) or the token mean (how e5 was
    /// trained). Stored in the manifest; `--init` must match its model's.
    #[serde(default)]
    pub pooling: Pooling,
}

/// The validation number that picks the kept epoch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SelectBy {
    /// Summed validation loss of both tasks (the seed's choice).
    #[default]
    Loss,
    /// Emotion macro-F1 with tuned thresholds (ties and no emotion rows: the loss).
    MacroF1,
}

impl std::str::FromStr for SelectBy {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "loss" => Ok(SelectBy::Loss),
            "macro-f1" => Ok(SelectBy::MacroF1),
            _ => Err(format!("{s:?}: expected loss or macro-f1")),
        }
    }
}

impl SelectBy {
    /// Lower is better.
    pub fn key(self, ev: &Evaluation) -> f64 {
        match (self, &ev.emotions_tuned) {
            (SelectBy::MacroF1, Some(m)) => -m.macro_f1 + 1e-6 * ev.loss(),
            _ => ev.loss(),
        }
    }
}

impl TrainConfig {
    pub fn new(encoder_dir: PathBuf, out: PathBuf, data: Vec<Source>) -> Self {
        TrainConfig {
            encoder_dir,
            base_repo: "intfloat/multilingual-e5-small".into(),
            out,
            data,
            test: Vec::new(),
            val_fraction: 0.1,
            seed: 42,
            batch_size: 16,
            max_length: 128,
            lr: 2e-5,
            head_lr: None,
            unfrozen_lr_mult: 0.1,
            weight_decay: 0.01,
            warmup_steps: 500,
            frozen_epochs: 2,
            unfrozen_epochs: 3,
            unfreeze_layers: 2,
            pcgrad: true,
            clip_norm: 1.0,
            patience: 2,
            max_train: None,
            resume: false,
            f16_layers: false,
            init: None,
            select_by: SelectBy::Loss,
            align: 0.0,
            pooling: Pooling::Cls,
        }
    }

    /// The settings a run cannot start with, refused before anything loads.
    pub(super) fn check(&self) -> Result<()> {
        if self.batch_size == 0 || self.frozen_epochs + self.unfrozen_epochs == 0 {
            return Err(Error::Config("batch size and epochs must be positive".into()));
        }
        if self.align < 0.0 || !self.align.is_finite() {
            return Err(Error::Config("--align must be a weight >= 0".into()));
        }
        if !(0.0..0.9).contains(&self.val_fraction) {
            return Err(Error::Config("--val-fraction must be in [0, 0.9)".into()));
        }
        Ok(())
    }
}
