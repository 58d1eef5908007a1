//! The seed's two heads on the [CLS] vector, with its parameter names (`nn.Sequential` indices),
//! and the multitask model that joins them to the encoder.

use super::bert::{Bert, BertConfig, Mode};
use candle_core::{Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

fn dropout(x: Tensor, p: f32, mode: Mode) -> Result<Tensor> {
    super::bert::dropout(&x, p, mode)
}

/// A head's linear layer: candle's for scoring, one graph node for training
/// ([`super::train_ops::linear`]).
fn linear(l: &Linear, x: &Tensor, mode: Mode) -> Result<Tensor> {
    if mode.differentiable() {
        super::train_ops::linear(x, l.weight(), l.bias())
    } else {
        l.forward(x)
    }
}

/// hidden → 256 → ReLU → Dropout(0.3) → 128 → ReLU → Dropout(0.2) → 1 (a logit).
#[derive(Debug, Clone)]
pub struct PopularityHead {
    l0: Linear,
    l3: Linear,
    l6: Linear,
}

impl PopularityHead {
    pub fn load(vb: VarBuilder, hidden: usize) -> Result<Self> {
        Ok(PopularityHead {
            l0: candle_nn::linear(hidden, 256, vb.pp("0"))?,
            l3: candle_nn::linear(256, 128, vb.pp("3"))?,
            l6: candle_nn::linear(128, 1, vb.pp("6"))?,
        })
    }

    /// (b, hidden) → (b,) logits.
    pub fn forward(&self, cls: &Tensor, mode: Mode) -> Result<Tensor> {
        let x = dropout(linear(&self.l0, cls, mode)?.relu()?, 0.3, mode)?;
        let x = dropout(linear(&self.l3, &x, mode)?.relu()?, 0.2, mode)?;
        linear(&self.l6, &x, mode)?.squeeze(1)
    }
}

/// hidden → 256 → ReLU → Dropout(0.3) → labels (logits).
#[derive(Debug, Clone)]
pub struct EmotionHead {
    l0: Linear,
    l3: Linear,
}

impl EmotionHead {
    pub fn load(vb: VarBuilder, hidden: usize, labels: usize) -> Result<Self> {
        Ok(EmotionHead {
            l0: candle_nn::linear(hidden, 256, vb.pp("0"))?,
            l3: candle_nn::linear(256, labels, vb.pp("3"))?,
        })
    }

    /// (b, hidden) → (b, labels) logits.
    pub fn forward(&self, cls: &Tensor, mode: Mode) -> Result<Tensor> {
        let x = dropout(linear(&self.l0, cls, mode)?.relu()?, 0.3, mode)?;
        linear(&self.l3, &x, mode)
    }
}

/// Logits of both tasks for a batch.
#[derive(Debug, Clone)]
pub struct Logits {
    /// (b,)
    pub popularity: Tensor,
    /// (b, labels)
    pub emotions: Tensor,
}

/// Encoder + popularity head + emotion head. Parameter prefixes: `bert.`, `popularity_head.`,
/// `emotion_head.` (the seed's `MultiTaskClassifier`).
#[derive(Debug, Clone)]
pub struct MultiTask {
    pub bert: Bert,
    pub popularity: PopularityHead,
    pub emotion: EmotionHead,
}

impl MultiTask {
    pub fn load(vb: VarBuilder, config: &BertConfig, labels: usize) -> Result<Self> {
        let h = config.hidden_size;
        Ok(MultiTask {
            bert: Bert::load(vb.pp("bert"), config)?,
            popularity: PopularityHead::load(vb.pp("popularity_head"), h)?,
            emotion: EmotionHead::load(vb.pp("emotion_head"), h, labels)?,
        })
    }

    /// `ids`: (b, t) u32; `mask`: (b, t) 0/1.
    /// See [`Bert::prepare_inference`].
    pub fn prepare_inference(&mut self) -> Result<()> {
        self.bert.prepare_inference()
    }

    pub fn forward(&self, ids: &Tensor, mask: &Tensor, mode: Mode) -> Result<Logits> {
        let cls = self.bert.cls(ids, mask, mode)?;
        self.heads(&cls, mode)
    }

    /// The heads alone, on precomputed [CLS] vectors (b, hidden).
    pub fn heads(&self, cls: &Tensor, mode: Mode) -> Result<Logits> {
        Ok(Logits {
            popularity: self.popularity.forward(cls, mode)?,
            emotions: self.emotion.forward(cls, mode)?,
        })
    }
}

/// Fresh head weights, initialised as PyTorch's `nn.Linear` does (uniform ±1/√fan_in for weights
/// and biases), from a deterministic generator seeded with `seed`.
pub fn init_heads(
    hidden: usize,
    labels: usize,
    seed: u64,
) -> Result<std::collections::HashMap<String, Tensor>> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        // xorshift64*: good enough for initial weights, and reproducible everywhere.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 24) as f32
    };
    let mut out = std::collections::HashMap::new();
    let layers = [
        ("popularity_head.0", hidden, 256),
        ("popularity_head.3", 256, 128),
        ("popularity_head.6", 128, 1),
        ("emotion_head.0", hidden, 256),
        ("emotion_head.3", 256, labels),
    ];
    for (name, fan_in, fan_out) in layers {
        let bound = 1.0 / (fan_in as f32).sqrt();
        let mut uniform = |n: usize| -> Vec<f32> { (0..n).map(|_| (next() * 2.0 - 1.0) * bound).collect() };
        let w = Tensor::from_vec(
            uniform(fan_in * fan_out),
            (fan_out, fan_in),
            &candle_core::Device::Cpu,
        )?;
        let b = Tensor::from_vec(uniform(fan_out), fan_out, &candle_core::Device::Cpu)?;
        out.insert(format!("{name}.weight"), w);
        out.insert(format!("{name}.bias"), b);
    }
    Ok(out)
}
