//! The multitask model: one definition ([`bert`], [`heads`]) for scoring and for training over the
//! fused operations by family ([`ops`]), the optimiser's passes ([`step`] for all parameters at
//! once, [`adam`] one tensor at a time), the device checks `bench` prints ([`checks`]), and the
//! artifact format that ships it ([`artifact`]).

pub mod adam;
pub mod artifact;
pub mod bert;
pub mod checks;
#[cfg(all(test, feature = "cuda"))]
mod cuda_launch;
pub mod heads;
pub mod ops;
pub mod step;

pub use artifact::{BaseEncoder, EncoderFiles, LoadedModel, Manifest, Thresholds, WeightStore};
pub use bert::{Bert, BertConfig, BertTape, Mode, ParamGrads, Pooling};
pub use heads::{init_heads, EmotionHead, HeadTape, Logits, MultiTask, PopularityHead};
