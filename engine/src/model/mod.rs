//! The multitask model: one definition ([`bert`], [`heads`]) for scoring and for training, and the
//! artifact format that ships it ([`artifact`]).

pub mod artifact;
pub mod bert;
pub mod checks;
#[cfg(all(test, feature = "cuda"))]
mod cuda_launch;
pub mod heads;
pub mod kernels;
pub mod step;
pub mod train_ops;

pub use artifact::{BaseEncoder, EncoderFiles, LoadedModel, Manifest, Thresholds, WeightStore};
pub use bert::{Bert, BertConfig, BertTape, Mode, ParamGrads, Pooling};
pub use heads::{init_heads, EmotionHead, HeadTape, Logits, MultiTask, PopularityHead};
