//! viralclip's trainer: fine-tunes the engine's multitask model (the very same code, in its
//! differentiable mode) on popularity and emotion data and writes the artifact the engine loads.
//!
//! # Layout
//! - [`data`]: the data formats, with counted skipped rows; stable `#part=` splits of a file.
//! - [`train`]: split, tokenise once, cache the frozen layers, train (heads, then top layers with
//!   PCGrad), validate, checkpoint, save, re-measure through the engine.
//! - [`pcgrad`], [`optim`] (AdamW, schedule), [`metrics`] (F1, ROC-AUC, thresholds): pure pieces.
//! - [`plot`]: the learning-curves PNG.
//! - [`bench`]: step times of the schedule's stages (`viralclip bench --train-steps`).

pub mod bench;
pub mod data;
pub mod error;
pub mod metrics;
pub mod optim;
pub mod pcgrad;
pub mod plot;
pub mod train;

pub use error::{Error, Result};
pub use train::{train, Event, SelectBy, TrainConfig, TrainReport};

/// A BERT small enough for unit tests: 3 layers of width 16.
#[cfg(test)]
pub(crate) fn tiny_bert(vocab_size: usize) -> viralclip_engine::model::BertConfig {
    viralclip_engine::model::BertConfig {
        vocab_size,
        hidden_size: 16,
        num_hidden_layers: 3,
        num_attention_heads: 2,
        intermediate_size: 32,
        max_position_embeddings: 16,
        ..viralclip_engine::model::BertConfig::rubert_base()
    }
}
