//! A BERT encoder written once for both inference and training.
//!
//! candle-nn's fused `layer_norm` and `softmax_last_dim` are fast but have no backward pass, so a
//! model built on them silently trains nothing below them. Every layer here takes a [`Mode`]:
//! `Inference` uses the fused kernels, `Training` the same maths from differentiable ops (and
//! dropout). Parameter names mirror Hugging Face checkpoints, so `vb.pp(..)` reads them directly.

mod by_hand;

use super::ops::{attention, dropout, ffn, layout, norm, projection, softmax};
pub(crate) use by_hand::Sink;
pub use by_hand::{BertTape, ParamGrads};
use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Embedding, Linear, VarBuilder};
use serde::Deserialize;

/// Which kernels a forward pass uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Scoring: fused layer norm and softmax (no backward), no dropout.
    Inference,
    /// Training: differentiable kernels, dropout on.
    Training,
    /// Differentiable kernels without dropout: deterministic gradients (tests, gradient checks).
    Autograd,
}

impl Mode {
    /// Whether this mode must be differentiable.
    pub fn differentiable(self) -> bool {
        self != Mode::Inference
    }
}

/// The fields of a Hugging Face BERT `config.json` that the encoder needs.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f32,
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f32,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub pad_token_id: usize,
    #[serde(default)]
    pub model_type: Option<String>,
    #[serde(default)]
    pub position_embedding_type: Option<String>,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_dropout() -> f32 {
    0.1
}
fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}

impl BertConfig {
    /// The ai-forever/ruBert-base shape (12 layers, hidden 768, vocab 120,138).
    pub fn rubert_base() -> Self {
        BertConfig {
            vocab_size: 120_138,
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            hidden_act: default_act(),
            hidden_dropout_prob: 0.1,
            attention_probs_dropout_prob: 0.1,
            max_position_embeddings: 512,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
            pad_token_id: 0,
            model_type: Some("bert".into()),
            position_embedding_type: Some("absolute".into()),
        }
    }

    /// Checks what this implementation supports.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if let Some(p) = &self.position_embedding_type {
            if p != "absolute" {
                return Err(format!(
                    "position_embedding_type {p:?} is not supported (only absolute)"
                ));
            }
        }
        match self.hidden_act.as_str() {
            "gelu" | "gelu_new" | "gelu_pytorch_tanh" | "relu" => Ok(()),
            a => Err(format!("hidden_act {a:?} is not supported")),
        }
    }
}

/// Whether a model in `dtype` keeps f32 copies of its small vectors for scoring (see
/// [`LayerNorm::precise`]): the 16-bit ones.
fn keeps_f32_params(dtype: DType) -> bool {
    matches!(dtype, DType::BF16 | DType::F16)
}

/// `name` (a vector of `size`) from `vb` in f32 when the model is 16-bit and has it: the scoring
/// path's copy of a bias or a norm's parameter, unrounded.
fn f32_copy(vb: &VarBuilder, size: usize, name: &str, init: f64) -> Result<Option<Tensor>> {
    if !keeps_f32_params(vb.dtype()) || !vb.contains_tensor(name) {
        return Ok(None);
    }
    vb.get_with_hints_dtype(size, name, candle_nn::Init::Const(init), DType::F32)
        .map(Some)
}

/// Layer normalisation with weights named `weight`/`bias` (or the old `gamma`/`beta`).
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    /// In a 16-bit model, `weight` and `bias` as stored, in f32: rounding a norm's parameters to
    /// bf16 moves scores most of what rounding every weight does (1,000 Russian texts, e5-small:
    /// 90th percentile of the popularity's error 6.0e-3 with every weight rounded, 2.0e-3 with the
    /// norms' kept), so scoring normalises with these. A few kilobytes a layer.
    precise: Option<(Tensor, Tensor)>,
    eps: f64,
}

impl LayerNorm {
    pub fn load(vb: VarBuilder, size: usize, eps: f64) -> Result<Self> {
        let (w, b) = if vb.contains_tensor("gamma") {
            ("gamma", "beta")
        } else {
            ("weight", "bias")
        };
        let precise = match (f32_copy(&vb, size, w, 1.0)?, f32_copy(&vb, size, b, 0.0)?) {
            (Some(w), Some(b)) => Some((w, b)),
            _ => None,
        };
        Ok(LayerNorm {
            weight: vb.get_with_hints(size, w, candle_nn::Init::Const(1.0))?,
            bias: vb.get_with_hints(size, b, candle_nn::Init::Const(0.0))?,
            precise,
            eps,
        })
    }

    /// The scoring path's gamma and beta: the unrounded f32 copies in a 16-bit model, else the
    /// model's own.
    fn scoring_params(&self) -> (&Tensor, &Tensor) {
        match &self.precise {
            Some((w, b)) => (w, b),
            None => (&self.weight, &self.bias),
        }
    }

    /// The training forward pass outside any graph (for training by hand) of this norm over a
    /// residual branch: `(r, y)` with `r = dropout(x + bias) + res` and `y` its norm, in one pass
    /// ([`norm::bias_dropout_add_norm`]).
    fn after_branch(
        &self,
        x: &Tensor,
        bias: &Tensor,
        res: &Tensor,
        p: f32,
        seed: Option<u64>,
    ) -> Result<(Tensor, Tensor)> {
        let (g, b) = (self.weight.detach(), self.bias.detach());
        norm::bias_dropout_add_norm(x, bias, res, &g, &b, p, seed, self.eps)
    }

    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        match mode {
            // A 16-bit model normalises in f32 with its unrounded parameters.
            Mode::Inference if self.precise.is_some() => {
                let (w, b) = self.scoring_params();
                let y = candle_nn::ops::layer_norm(&x.to_dtype(DType::F32)?, w, b, self.eps as f32)?;
                y.to_dtype(x.dtype())
            }
            Mode::Inference => {
                candle_nn::ops::layer_norm(&x.contiguous()?, &self.weight, &self.bias, self.eps as f32)
            }
            Mode::Training | Mode::Autograd => norm::layer_norm(x, &self.weight, &self.bias, self.eps),
        }
    }
}

/// `softmax(scale · scores + mask)` over the last dimension: candle's fused softmax for
/// inference, the differentiable one ([`softmax::scaled_masked_softmax`]) for training.
fn attention_probs(scores: &Tensor, mask: &Tensor, scale: f64, mode: Mode) -> Result<Tensor> {
    match mode {
        Mode::Inference => candle_nn::ops::softmax_last_dim(&(scores * scale)?.broadcast_add(mask)?),
        Mode::Training | Mode::Autograd => softmax::scaled_masked_softmax(scores, mask, scale),
    }
}

/// Dropout in [`Mode::Training`], nothing otherwise.
pub(crate) fn dropout(x: &Tensor, p: f32, mode: Mode) -> Result<Tensor> {
    if mode == Mode::Training && p > 0.0 {
        dropout::dropout(x, p)
    } else {
        Ok(x.clone())
    }
}

fn linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    candle_nn::linear(in_dim, out_dim, vb)
}

#[derive(Debug, Clone)]
struct Embeddings {
    word: Embedding,
    position: Tensor,
    token_type: Tensor,
    norm: LayerNorm,
    dropout: f32,
}

impl Embeddings {
    fn load(vb: VarBuilder, c: &BertConfig) -> Result<Self> {
        let word = candle_nn::embedding(c.vocab_size, c.hidden_size, vb.pp("word_embeddings"))?;
        let position = vb
            .pp("position_embeddings")
            .get((c.max_position_embeddings, c.hidden_size), "weight")?;
        let token_type = vb
            .pp("token_type_embeddings")
            .get((c.type_vocab_size, c.hidden_size), "weight")?;
        Ok(Embeddings {
            word,
            position,
            token_type,
            norm: LayerNorm::load(vb.pp("LayerNorm"), c.hidden_size, c.layer_norm_eps)?,
            dropout: c.hidden_dropout_prob,
        })
    }

    fn forward(&self, ids: &Tensor, mode: Mode) -> Result<Tensor> {
        let (_b, t) = ids.dims2()?;
        let x = self.word.forward(ids)?;
        // Absolute positions 0..t and token type 0 for every token (single-segment input).
        let pos = self.position.narrow(0, 0, t)?;
        let typ = self.token_type.narrow(0, 0, 1)?;
        let x = x.broadcast_add(&(pos.broadcast_add(&typ)?))?;
        dropout(&self.norm.forward(&x, mode)?, self.dropout, mode)
    }
}

#[derive(Debug, Clone)]
struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    out_norm: LayerNorm,
    heads: usize,
    head_dim: usize,
    act: Activation,
    dropout: f32,
    attn_dropout: f32,
    /// In a 16-bit model, the attention output's and the FFN output's biases in f32, unrounded,
    /// for the scoring path's norms (see [`LayerNorm`]'s `precise`).
    precise_biases: (Option<Tensor>, Option<Tensor>),
    /// Inference-only packed weights (see [`Bert::prepare_inference`]).
    fused: Option<Fused>,
}

/// A projection's weight on the scoring path, (out, in) as stored. On the CPU it is transposed
/// once, to (in, out) row-major: at the CPU's batch sizes (up to 2,048 tokens) gemm takes the
/// layer's products faster so than through the transposed view, up to 3.75× for the FFN output's
/// inner dimension of 3,072 (ruBert-base shape, 4 × 128 tokens: 10.6 → 5.3 ms; `bench
/// --profile`). cuBLAS takes either layout alike, so CUDA keeps the stored one (no copy). Used
/// for the packed QKV weight (a copy anyway) and the FFN output's; the attention output's and
/// the FFN input's gained a few percent at most, not worth a second copy of their weights.
#[derive(Debug, Clone)]
enum ScoringWeight {
    Stored(Tensor),
    RowMajor(Tensor),
}

impl ScoringWeight {
    fn new(w: &Tensor) -> Result<Self> {
        Ok(if w.device().is_cpu() {
            ScoringWeight::RowMajor(w.t()?.contiguous()?)
        } else {
            ScoringWeight::Stored(w.clone())
        })
    }

    /// `x · wᵀ`.
    fn product(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            ScoringWeight::Stored(w) => x.matmul(&w.t()?),
            ScoringWeight::RowMajor(wt) => x.matmul(wt),
        }
    }
}

/// Weights repacked for scoring: one (3h, h) query/key/value matrix with the attention scale
/// folded into the query rows, so each layer runs one projection GEMM over all tokens at once.
#[derive(Debug, Clone)]
struct Fused {
    /// Query (scaled by 1/√d), key and value weights packed as one (3h, h).
    qkv_w: ScoringWeight,
    qkv_b: Tensor,
    /// [bias; gamma; beta] of the attention output projection and its norm, then of the FFN
    /// output and its norm, in f32 whatever the model's dtype (see [`norm::add_norm`]).
    attn_add_norm: Tensor,
    out_add_norm: Tensor,
    output_w: ScoringWeight,
}

#[derive(Debug, Clone, Copy)]
enum Activation {
    GeluErf,
    GeluTanh,
    Relu,
}

impl Layer {
    fn load(vb: VarBuilder, c: &BertConfig) -> Result<Self> {
        let h = c.hidden_size;
        let att = vb.pp("attention");
        let act = match c.hidden_act.as_str() {
            "gelu" => Activation::GeluErf,
            "relu" => Activation::Relu,
            _ => Activation::GeluTanh,
        };
        Ok(Layer {
            query: linear(h, h, att.pp("self").pp("query"))?,
            key: linear(h, h, att.pp("self").pp("key"))?,
            value: linear(h, h, att.pp("self").pp("value"))?,
            attn_out: linear(h, h, att.pp("output").pp("dense"))?,
            attn_norm: LayerNorm::load(att.pp("output").pp("LayerNorm"), h, c.layer_norm_eps)?,
            intermediate: linear(h, c.intermediate_size, vb.pp("intermediate").pp("dense"))?,
            output: linear(c.intermediate_size, h, vb.pp("output").pp("dense"))?,
            out_norm: LayerNorm::load(vb.pp("output").pp("LayerNorm"), h, c.layer_norm_eps)?,
            heads: c.num_attention_heads,
            head_dim: h / c.num_attention_heads,
            act,
            dropout: c.hidden_dropout_prob,
            attn_dropout: c.attention_probs_dropout_prob,
            precise_biases: (
                f32_copy(&att.pp("output").pp("dense"), h, "bias", 0.0)?,
                f32_copy(&vb.pp("output").pp("dense"), h, "bias", 0.0)?,
            ),
            fused: None,
        })
    }

    fn prepare_inference(&mut self) -> Result<()> {
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let q_w = (self.query.weight() * scale)?;
        let q_b = match self.query.bias() {
            Some(b) => (b * scale)?,
            None => Tensor::zeros(self.query.weight().dim(0)?, q_w.dtype(), q_w.device())?,
        };
        let bias = |l: &Linear| -> Result<Tensor> {
            match l.bias() {
                Some(b) => Ok(b.clone()),
                None => Tensor::zeros(l.weight().dim(0)?, q_w.dtype(), q_w.device()),
            }
        };
        let qkv_w = ScoringWeight::new(&Tensor::cat(&[&q_w, self.key.weight(), self.value.weight()], 0)?)?;
        let qkv_b = Tensor::cat(&[&q_b, &bias(&self.key)?, &bias(&self.value)?], 0)?;
        // The norms' packs, in f32 (unrounded in a 16-bit model, see [`LayerNorm`]).
        let pack = |b: &Option<Tensor>, l: &Linear, n: &LayerNorm| -> Result<Tensor> {
            let b = match b {
                Some(b) => b.clone(),
                None => bias(l)?,
            };
            let (g, beta) = n.scoring_params();
            norm::pack_add_norm(&b, g, beta)
        };
        let (attn_b, out_b) = &self.precise_biases;
        let attn_add_norm = pack(attn_b, &self.attn_out, &self.attn_norm)?;
        let out_add_norm = pack(out_b, &self.output, &self.out_norm)?;
        self.fused = Some(Fused {
            qkv_w,
            qkv_b,
            attn_add_norm,
            out_add_norm,
            output_w: ScoringWeight::new(self.output.weight())?,
        });
        Ok(())
    }

    /// `x @ w.t() + b` on the (rows, features) view of `x`: one plain GEMM whatever the batch.
    fn linear2d(x: &Tensor, l: &Linear) -> Result<Tensor> {
        let y = x.matmul(&l.weight().t()?)?;
        match l.bias() {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }

    /// The scoring path: packed QKV, 2-D GEMMs, fused softmax and layer norm, no dropout.
    fn forward_fused(&self, f: &Fused, x: &Tensor, mask: &Tensor, cls_only: bool) -> Result<Tensor> {
        let (b, t, h) = x.dims3()?;
        let x2 = x.contiguous()?.reshape((b * t, h))?;
        let mask = mask.reshape((b, t))?;
        let (xq, tq) = if cls_only {
            (x.narrow(1, 0, 1)?.contiguous()?, 1)
        } else {
            (x.clone(), t)
        };
        let one_kernel = attention::attention_fits(&x2, t, self.head_dim);
        let ctx = if let (ScoringWeight::Stored(w), false, true) =
            (&f.qkv_w, one_kernel, attention::packed_attention_fits(&x2))
        {
            // The projection with its bias from the GEMM's epilogue; the attention's products
            // read it in place and write the context in token order (no split, no merge).
            let qkv = ffn::gemm_bias(&x2, w, &f.qkv_b)?;
            attention::packed_attention(&qkv, &mask, b, t, tq, self.heads, self.head_dim)?
        } else if one_kernel {
            // One kernel from the packed projection to the context in token order.
            let qkv = f.qkv_w.product(&x2)?;
            attention::attention(&qkv, &f.qkv_b, &mask, b, t, tq, self.heads, self.head_dim)?
        } else {
            // (b·t, 3h) -> (3, b, heads, t, d) with the bias added: one pass for all three.
            let qkv = f.qkv_w.product(&x2)?;
            let qkv = layout::qkv_split(&qkv, &f.qkv_b, b, t, self.heads, self.head_dim)?;
            let (q, k, v) = (qkv.get(0)?, qkv.get(1)?, qkv.get(2)?);
            let q = if cls_only {
                q.narrow(2, 0, 1)?.contiguous()?
            } else {
                q
            };
            let probs = attention::attention_probs(&q, &k, &mask)?;
            layout::merge_heads(&probs.matmul(&v)?)?.reshape((b * tq, h))?
        };
        let xq2 = xq.reshape((b * tq, h))?;
        // GEMMs without their bias; each bias rides in the fused pass that follows.
        let gemm = |x: &Tensor, l: &Linear| x.matmul(&l.weight().t()?);
        let attn = norm::add_norm(
            &gemm(&ctx, &self.attn_out)?,
            &xq2,
            &f.attn_add_norm,
            self.attn_norm.eps,
        )?;
        let inner = match self.act {
            Activation::GeluErf => match self.intermediate.bias() {
                Some(bias) if ffn::gemm_gelu_fits(&attn) => {
                    ffn::gemm_gelu(&attn, self.intermediate.weight(), bias)?
                }
                Some(bias) => ffn::bias_gelu(&gemm(&attn, &self.intermediate)?, bias)?,
                None => gemm(&attn, &self.intermediate)?.gelu_erf()?,
            },
            Activation::GeluTanh => Self::linear2d(&attn, &self.intermediate)?.gelu()?,
            Activation::Relu => Self::linear2d(&attn, &self.intermediate)?.relu()?,
        };
        norm::add_norm(
            &f.output_w.product(&inner)?,
            &attn,
            &f.out_add_norm,
            self.out_norm.eps,
        )?
        .reshape((b, tq, h))
    }

    /// `x`: (b, t, h); `mask`: additive (b, 1, 1, t). With `cls_only`, only the first token's
    /// output is computed (queries from it alone), which is all the heads read from the last layer.
    fn forward(&self, x: &Tensor, mask: &Tensor, mode: Mode, cls_only: bool) -> Result<Tensor> {
        if let (Mode::Inference, Some(f)) = (mode, &self.fused) {
            return self.forward_fused(f, x, mask, cls_only);
        }
        // Every projection as one 2-D product over the (tokens, features) rows: one GEMM forward
        // and two backward, where a batched product with the weight broadcast over the batch
        // also sums the weight's gradient over it.
        let (b, t, h) = x.dims3()?;
        let split = |y: Tensor, len: usize| layout::split_heads(&y, b, len, self.heads);
        let linear = |x: &Tensor, l: &Linear| projection::linear(x, l.weight(), l.bias());
        let xq = if cls_only { x.narrow(1, 0, 1)? } else { x.clone() };
        let tq = xq.dim(1)?;
        let (x2, xq2) = (x.reshape((b * t, h))?, xq.reshape((b * tq, h))?);
        let q = split(linear(&xq2, &self.query)?, tq)?;
        let k = split(linear(&x2, &self.key)?, t)?;
        let v = split(linear(&x2, &self.value)?, t)?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let probs = attention_probs(&q.matmul(&k.t()?)?, mask, scale, mode)?;
        let probs = dropout(&probs, self.attn_dropout, mode)?;
        let ctx = layout::merge_heads_train(&probs.matmul(&v)?)?;
        let attn = dropout(&linear(&ctx, &self.attn_out)?, self.dropout, mode)?;
        let attn = self.attn_norm.forward(&(attn + &xq2)?, mode)?;
        let inner = match (self.act, self.intermediate.bias()) {
            // One differentiable pass for the bias and GELU.
            (Activation::GeluErf, Some(bias)) => ffn::bias_gelu_train(
                &projection::linear(&attn, self.intermediate.weight(), None)?,
                bias,
            )?,
            (act, _) => {
                let inner = linear(&attn, &self.intermediate)?;
                match act {
                    Activation::GeluErf => inner.gelu_erf()?,
                    Activation::GeluTanh => inner.gelu()?,
                    Activation::Relu => inner.relu()?,
                }
            }
        };
        let out = dropout(&linear(&inner, &self.output)?, self.dropout, mode)?;
        self.out_norm.forward(&(out + attn)?, mode)?.reshape((b, tq, h))
    }
}

/// The encoder: embeddings and `num_hidden_layers` transformer layers.
#[derive(Debug, Clone)]
pub struct Bert {
    embeddings: Embeddings,
    layers: Vec<Layer>,
    config: BertConfig,
    pooling: Pooling,
}

/// How the heads' input is read off the last layer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// The first token's state (the seed's model; BERT's pre-training trains it).
    #[default]
    Cls,
    /// The mean of the real tokens' states: how e5 and other sentence encoders were trained (and
    /// where multilingual ones put a sentence and its translation close together).
    Mean,
}

impl std::str::FromStr for Pooling {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "cls" => Ok(Pooling::Cls),
            "mean" => Ok(Pooling::Mean),
            _ => Err(format!("{s:?}: expected cls or mean")),
        }
    }
}

impl Bert {
    /// Loads from `vb` whose root holds `embeddings.*` and `encoder.layer.N.*`.
    pub fn load(vb: VarBuilder, config: &BertConfig) -> Result<Self> {
        config.validate().map_err(candle_core::Error::msg)?;
        let embeddings = Embeddings::load(vb.pp("embeddings"), config)?;
        let layers = (0..config.num_hidden_layers)
            .map(|i| Layer::load(vb.pp(format!("encoder.layer.{i}")), config))
            .collect::<Result<Vec<_>>>()?;
        Ok(Bert {
            embeddings,
            layers,
            config: config.clone(),
            pooling: Pooling::Cls,
        })
    }

    /// What [`Bert::cls`] and [`Bert::cls_from`] return: the [CLS] state (the default) or the mean
    /// over the real tokens.
    pub fn set_pooling(&mut self, pooling: Pooling) {
        self.pooling = pooling;
    }

    pub fn pooling(&self) -> Pooling {
        self.pooling
    }

    /// Masked mean over tokens: `x` (b, t, h), `mask` 0/1 (b, t) → (b, h). Differentiable.
    fn mean_pool(x: &Tensor, mask: &Tensor) -> Result<Tensor> {
        x.broadcast_mul(&Self::mean_weights(mask, x.dtype())?)?.sum(1)
    }

    /// Each token's share of the mean over real tokens, (b, t, 1): 1/count for a real token, 0
    /// for padding. The training path by hand keeps it for the mean's gradient.
    fn mean_weights(mask: &Tensor, dtype: DType) -> Result<Tensor> {
        let m = mask.to_dtype(dtype)?.unsqueeze(2)?;
        m.broadcast_div(&m.sum_keepdim(1)?.clamp(1.0, f64::INFINITY)?)
    }

    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// Repacks the weights for scoring (packed QKV with the attention scale folded in). Call it on
    /// a model that only scores: the packed copy does not follow later changes to the weights, so
    /// the trainer prepares only its frozen layers ([`Bert::prepare_inference_below`]) and its
    /// trainable ones always take the plain path.
    pub fn prepare_inference(&mut self) -> Result<()> {
        self.prepare_inference_below(self.layers.len())
    }

    /// [`Bert::prepare_inference`] for layers `0..upto` only: the trainer's frozen layers, which
    /// never change, so its one pass over them (the cache) takes the fused path.
    pub fn prepare_inference_below(&mut self, upto: usize) -> Result<()> {
        for l in self.layers.iter_mut().take(upto) {
            l.prepare_inference()?;
        }
        Ok(())
    }

    /// Additive attention mask (b, 1, 1, t) from a 0/1 mask (b, t).
    pub fn additive_mask(mask: &Tensor, dtype: DType) -> Result<Tensor> {
        let (b, t) = mask.dims2()?;
        let m = mask.to_dtype(DType::F32)?;
        let add = ((m - 1.0)? * 1e9)?; // 0 where attended, -1e9 where padded
        add.reshape((b, 1, 1, t))?.to_dtype(dtype)
    }

    /// Hidden states of every token: (b, t, hidden).
    pub fn forward(&self, ids: &Tensor, mask: &Tensor, mode: Mode) -> Result<Tensor> {
        let mut x = self.embeddings.forward(ids, mode)?;
        let add = Self::additive_mask(mask, x.dtype())?;
        for layer in &self.layers {
            x = layer.forward(&x, &add, mode, false)?;
        }
        Ok(x)
    }

    /// Hidden states entering layer `upto` (embeddings, then layers `0..upto`): (b, t, hidden).
    /// With frozen lower layers these can be computed once and cached.
    pub fn hidden_before(&self, ids: &Tensor, mask: &Tensor, upto: usize, mode: Mode) -> Result<Tensor> {
        let mut x = self.embeddings.forward(ids, mode)?;
        let add = Self::additive_mask(mask, x.dtype())?;
        for layer in &self.layers[..upto.min(self.layers.len())] {
            x = layer.forward(&x, &add, mode, false)?;
        }
        Ok(x)
    }

    /// The heads' input (the [CLS] state, or the token mean with [`Pooling::Mean`]) from hidden
    /// states entering layer `from` (see [`Bert::hidden_before`]).
    pub fn cls_from(&self, hidden: &Tensor, mask: &Tensor, from: usize, mode: Mode) -> Result<Tensor> {
        let add = Self::additive_mask(mask, hidden.dtype())?;
        let n = self.layers.len();
        let cls_only = self.pooling == Pooling::Cls;
        let mut x = hidden.clone();
        for (i, layer) in self.layers.iter().enumerate().skip(from) {
            x = layer.forward(&x, &add, mode, cls_only && i + 1 == n)?;
        }
        self.pool(&x, mask)
    }

    /// `x`: the last layer's output, one row per token, or only [CLS]'s when the last layer ran
    /// with `cls_only` (then the first row is that one).
    fn pool(&self, x: &Tensor, mask: &Tensor) -> Result<Tensor> {
        match self.pooling {
            Pooling::Mean => Self::mean_pool(x, mask),
            Pooling::Cls => x.narrow(1, 0, 1)?.squeeze(1),
        }
    }

    /// Number of transformer layers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// The heads' input: the first ([CLS]) token's final hidden state, (b, hidden), for which the
    /// last layer computes only that row; or the mean of the real tokens' ([`Pooling::Mean`]).
    pub fn cls(&self, ids: &Tensor, mask: &Tensor, mode: Mode) -> Result<Tensor> {
        let mut x = self.embeddings.forward(ids, mode)?;
        let add = Self::additive_mask(mask, x.dtype())?;
        let n = self.layers.len();
        let cls_only = self.pooling == Pooling::Cls;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(&x, &add, mode, cls_only && i + 1 == n)?;
        }
        self.pool(&x, mask)
    }
}
