//! The seed's two heads on the [CLS] vector, with its parameter names (`nn.Sequential` indices),
//! and the multitask model that joins them to the encoder.

use super::bert::{Bert, BertConfig, Mode, ParamGrads, Sink};
use super::ops::{dropout, ffn, projection, switches};
use candle_core::{Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

fn dropout(x: Tensor, p: f32, mode: Mode) -> Result<Tensor> {
    super::bert::dropout(&x, p, mode)
}

/// A head's linear layer: candle's for scoring, one graph node for training
/// ([`projection::linear`]).
fn linear(l: &Linear, x: &Tensor, mode: Mode) -> Result<Tensor> {
    if mode.differentiable() {
        projection::linear(x, l.weight(), l.bias())
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
        let [p0, p3] = POPULARITY_DROPOUT;
        let x = dropout(linear(&self.l0, cls, mode)?.relu()?, p0, mode)?;
        let x = dropout(linear(&self.l3, &x, mode)?.relu()?, p3, mode)?;
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
        let x = dropout(linear(&self.l0, cls, mode)?.relu()?, EMOTION_DROPOUT[0], mode)?;
        linear(&self.l3, &x, mode)
    }
}

/// A hidden layer's bias, outside any graph (the heads' layers all have one).
fn hidden_bias(l: &Linear) -> Result<Tensor> {
    l.bias()
        .map(Tensor::detach)
        .ok_or_else(|| candle_core::Error::Msg("a head's hidden layer without a bias".into()))
}

/// What a head's forward pass by hand keeps for its backward pass: each hidden layer's input,
/// product (before its bias), dropout rate and seed, and the last layer's input.
pub struct HeadTape {
    hidden: Vec<(Tensor, Tensor, f32, Option<u64>)>,
    last_in: Tensor,
}

/// A head's forward pass outside candle's graph: hidden layers (linear, ReLU, dropout at the
/// given rate with the given seed) and a last linear layer; the logits and the tape.
fn head_taped(
    hidden: &[&Linear],
    dropout: &[(f32, Option<u64>)],
    last: &Linear,
    cls: &Tensor,
) -> Result<(Tensor, HeadTape)> {
    let lin = |l: &Linear, x: &Tensor| {
        projection::linear(x, &l.weight().detach(), l.bias().map(|b| b.detach()).as_ref())
    };
    let mut x = cls.detach();
    let mut tape = Vec::with_capacity(hidden.len());
    for (l, &(p, seed)) in hidden.iter().zip(dropout) {
        // The product, then its bias, ReLU and dropout in one pass.
        let z = projection::linear(&x, &l.weight().detach(), None)?;
        let a = ffn::bias_relu_dropout(&z, &hidden_bias(l)?, p, seed)?;
        tape.push((x, z, p, seed));
        x = a;
    }
    let y = lin(last, &x)?;
    Ok((
        y,
        HeadTape {
            hidden: tape,
            last_in: x,
        },
    ))
}

/// The backward pass of [`head_taped`] from the logits' gradient `dy` (b, out): the input's
/// gradient (b, hidden) and every weight's.
fn head_backward(
    hidden: &[&Linear],
    last: &Linear,
    tape: &HeadTape,
    dy: &Tensor,
) -> Result<(Tensor, ParamGrads)> {
    let mut grads = ParamGrads::new();
    let mut sink = Sink::new(&mut grads);
    let mut dx = sink.project(last, &tape.last_in, dy, 1)?;
    for (l, (x, z, p, seed)) in hidden.iter().zip(&tape.hidden).rev() {
        let dz = ffn::bias_relu_dropout_backward(z, &hidden_bias(l)?, &dx, *p, *seed)?;
        dx = sink.project(l, x, &dz, 1)?;
    }
    sink.flush()?;
    drop(sink);
    Ok((dx, grads))
}

/// The popularity head's dropout rates, as [`PopularityHead::forward`] applies them.
const POPULARITY_DROPOUT: [f32; 2] = [0.3, 0.2];
/// The emotion head's.
const EMOTION_DROPOUT: [f32; 1] = [0.3];

/// Both heads' forward passes by hand ([`MultiTask::heads_taped`]): each head's logits and tape,
/// where it was asked for.
pub struct HeadsTaped {
    pub popularity: Option<(Tensor, HeadTape)>,
    pub emotions: Option<(Tensor, HeadTape)>,
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

impl MultiTask {
    /// Whether the heads can train by hand on these [CLS] states ([`MultiTask::heads_taped`]):
    /// where the training path's fused passes run.
    pub fn heads_by_hand(&self, cls: &Tensor) -> bool {
        switches::fused_training(&[cls, self.emotion.l0.weight(), self.popularity.l0.weight()])
    }

    /// The heads' training forward pass outside candle's graph, keeping what their backward
    /// passes need ([`MultiTask::popularity_backward`], [`MultiTask::emotion_backward`]): the
    /// same arithmetic as [`MultiTask::heads`] and, with dropout on (`Mode::Training`), the same
    /// masks, drawn in the same order (the popularity head's two, then the emotion head's) even
    /// for a head not asked for. The popularity logits are (b, 1) here.
    pub fn heads_taped(
        &self,
        cls: &Tensor,
        mode: Mode,
        popularity: bool,
        emotions: bool,
    ) -> Result<HeadsTaped> {
        let seed = |p: f32| {
            (
                p,
                (mode == Mode::Training)
                    .then(|| dropout::dropout_seed(p))
                    .flatten(),
            )
        };
        let pop_seeds = POPULARITY_DROPOUT.map(seed);
        let emo_seeds = EMOTION_DROPOUT.map(seed);
        let p = &self.popularity;
        let e = &self.emotion;
        Ok(HeadsTaped {
            popularity: popularity
                .then(|| head_taped(&[&p.l0, &p.l3], &pop_seeds, &p.l6, cls))
                .transpose()?,
            emotions: emotions
                .then(|| head_taped(&[&e.l0], &emo_seeds, &e.l3, cls))
                .transpose()?,
        })
    }

    /// The popularity head's backward pass from its logits' gradient (b, 1): the [CLS] states'
    /// gradient and the head's weights'.
    pub fn popularity_backward(&self, tape: &HeadTape, dlogits: &Tensor) -> Result<(Tensor, ParamGrads)> {
        let p = &self.popularity;
        head_backward(&[&p.l0, &p.l3], &p.l6, tape, dlogits)
    }

    /// The emotion head's backward pass from its logits' gradient (b, labels).
    pub fn emotion_backward(&self, tape: &HeadTape, dlogits: &Tensor) -> Result<(Tensor, ParamGrads)> {
        let e = &self.emotion;
        head_backward(&[&e.l0], &e.l3, tape, dlogits)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ops::testing::max_diff;
    use candle_core::{DType, Device, Var};

    /// The heads by hand (forward, dropout masks, backward) give the graph's logits and
    /// gradients, for the [CLS] states and every head weight, with dropout on and off.
    #[test]
    fn heads_by_hand_give_the_graphs_gradients() {
        let dev = Device::Cpu;
        let varmap = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
        let (hidden, labels, b) = (32, 28, 6);
        let model = MultiTask {
            bert: Bert::load(
                vb.pp("bert"),
                &serde_json::from_str(
                    r#"{"vocab_size": 50, "hidden_size": 32, "num_hidden_layers": 1,
                        "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 16}"#,
                )
                .unwrap(),
            )
            .unwrap(),
            popularity: PopularityHead::load(vb.pp("popularity_head"), hidden).unwrap(),
            emotion: EmotionHead::load(vb.pp("emotion_head"), hidden, labels).unwrap(),
        };
        let cls = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, hidden), &dev).unwrap()).unwrap();
        // The gradient of a random linear function of the logits is these weights.
        let wp = Tensor::randn(0f32, 1.0, b, &dev).unwrap();
        let we = Tensor::randn(0f32, 1.0, (b, labels), &dev).unwrap();
        let heads: Vec<Tensor> = {
            let data = varmap.data().lock().unwrap();
            data.iter()
                .filter(|(n, _)| n.contains("_head."))
                .map(|(_, v)| v.as_tensor().clone())
                .collect()
        };
        assert_eq!(heads.len(), 10);
        assert!(model.heads_by_hand(cls.as_tensor()));
        for mode in [Mode::Training, Mode::Autograd] {
            dropout::seed_dropout(41);
            let logits = model.heads(cls.as_tensor(), mode).unwrap();
            let loss = ((&logits.popularity * &wp).unwrap().sum_all().unwrap()
                + (&logits.emotions * &we).unwrap().sum_all().unwrap())
            .unwrap();
            let gs = loss.backward().unwrap();
            dropout::seed_dropout(41);
            let h = model.heads_taped(cls.as_tensor(), mode, true, true).unwrap();
            let (xp, tp) = h.popularity.unwrap();
            let (xe, te) = h.emotions.unwrap();
            assert_eq!(
                max_diff(&xp.squeeze(1).unwrap(), &logits.popularity),
                0.0,
                "{mode:?}"
            );
            assert_eq!(max_diff(&xe, &logits.emotions), 0.0, "{mode:?}");
            let (cp, gp) = model.popularity_backward(&tp, &wp.unsqueeze(1).unwrap()).unwrap();
            let (ce, ge) = model.emotion_backward(&te, &we).unwrap();
            let dcls = (cp + ce).unwrap();
            let want = gs.get(cls.as_tensor()).unwrap();
            assert!(max_diff(&dcls, want) < 1e-5, "{mode:?}: [CLS] gradient");
            let by_hand: Vec<(Tensor, Tensor)> = gp.into_iter().chain(ge).collect();
            assert_eq!(by_hand.len(), heads.len());
            for p in &heads {
                let (_, g) = by_hand
                    .iter()
                    .find(|(q, _)| q.id() == p.id())
                    .expect("a gradient");
                let want = gs.get(p).unwrap();
                let d = max_diff(g, want);
                assert!(d < 1e-5, "{mode:?}: {:?} differs by {d}", p.dims());
                assert!(want.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() > 0.0);
            }
        }
    }
}
