//! A BERT encoder written once for both inference and training.
//!
//! candle-nn's fused `layer_norm` and `softmax_last_dim` are fast but have no backward pass, so a
//! model built on them silently trains nothing below them. Every layer here takes a [`Mode`]:
//! `Inference` uses the fused kernels, `Training` the same maths from differentiable ops (and
//! dropout). Parameter names mirror Hugging Face checkpoints, so `vb.pp(..)` reads them directly.

use super::{kernels, train_ops};
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
    /// ([`train_ops::bias_dropout_add_norm`]).
    fn after_branch(
        &self,
        x: &Tensor,
        bias: &Tensor,
        res: &Tensor,
        p: f32,
        seed: Option<u64>,
    ) -> Result<(Tensor, Tensor)> {
        let (g, b) = (self.weight.detach(), self.bias.detach());
        train_ops::bias_dropout_add_norm(x, bias, res, &g, &b, p, seed, self.eps)
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
            Mode::Training | Mode::Autograd => train_ops::layer_norm(x, &self.weight, &self.bias, self.eps),
        }
    }
}

/// `softmax(scale · scores + mask)` over the last dimension: candle's fused softmax for
/// inference, the differentiable one ([`train_ops::scaled_masked_softmax`]) for training.
fn attention_probs(scores: &Tensor, mask: &Tensor, scale: f64, mode: Mode) -> Result<Tensor> {
    match mode {
        Mode::Inference => candle_nn::ops::softmax_last_dim(&(scores * scale)?.broadcast_add(mask)?),
        Mode::Training | Mode::Autograd => train_ops::scaled_masked_softmax(scores, mask, scale),
    }
}

/// Dropout in [`Mode::Training`], nothing otherwise.
pub(crate) fn dropout(x: &Tensor, p: f32, mode: Mode) -> Result<Tensor> {
    if mode == Mode::Training && p > 0.0 {
        train_ops::dropout(x, p)
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
    /// output and its norm, in f32 whatever the model's dtype (see [`super::kernels::add_norm`]).
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
            kernels::pack_add_norm(&b, g, beta)
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
        let one_kernel = kernels::attention_fits(&x2, t, self.head_dim);
        let ctx = if let (ScoringWeight::Stored(w), false, true) =
            (&f.qkv_w, one_kernel, kernels::packed_attention_fits(&x2))
        {
            // The projection with its bias from the GEMM's epilogue; the attention's products
            // read it in place and write the context in token order (no split, no merge).
            let qkv = kernels::gemm_bias(&x2, w, &f.qkv_b)?;
            kernels::packed_attention(&qkv, &mask, b, t, tq, self.heads, self.head_dim)?
        } else if one_kernel {
            // One kernel from the packed projection to the context in token order.
            let qkv = f.qkv_w.product(&x2)?;
            kernels::attention(&qkv, &f.qkv_b, &mask, b, t, tq, self.heads, self.head_dim)?
        } else {
            // (b·t, 3h) -> (3, b, heads, t, d) with the bias added: one pass for all three.
            let qkv = f.qkv_w.product(&x2)?;
            let qkv = kernels::qkv_split(&qkv, &f.qkv_b, b, t, self.heads, self.head_dim)?;
            let (q, k, v) = (qkv.get(0)?, qkv.get(1)?, qkv.get(2)?);
            let q = if cls_only {
                q.narrow(2, 0, 1)?.contiguous()?
            } else {
                q
            };
            let probs = kernels::attention_probs(&q, &k, &mask)?;
            kernels::merge_heads(&probs.matmul(&v)?)?.reshape((b * tq, h))?
        };
        let xq2 = xq.reshape((b * tq, h))?;
        // GEMMs without their bias; each bias rides in the fused pass that follows.
        let gemm = |x: &Tensor, l: &Linear| x.matmul(&l.weight().t()?);
        let attn = kernels::add_norm(
            &gemm(&ctx, &self.attn_out)?,
            &xq2,
            &f.attn_add_norm,
            self.attn_norm.eps,
        )?;
        let inner = match self.act {
            Activation::GeluErf => match self.intermediate.bias() {
                Some(bias) if kernels::gemm_gelu_fits(&attn) => {
                    kernels::gemm_gelu(&attn, self.intermediate.weight(), bias)?
                }
                Some(bias) => kernels::bias_gelu(&gemm(&attn, &self.intermediate)?, bias)?,
                None => gemm(&attn, &self.intermediate)?.gelu_erf()?,
            },
            Activation::GeluTanh => Self::linear2d(&attn, &self.intermediate)?.gelu()?,
            Activation::Relu => Self::linear2d(&attn, &self.intermediate)?.relu()?,
        };
        kernels::add_norm(
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
        let split = |y: Tensor, len: usize| train_ops::split_heads(&y, b, len, self.heads);
        let linear = |x: &Tensor, l: &Linear| train_ops::linear(x, l.weight(), l.bias());
        let xq = if cls_only { x.narrow(1, 0, 1)? } else { x.clone() };
        let tq = xq.dim(1)?;
        let (x2, xq2) = (x.reshape((b * t, h))?, xq.reshape((b * tq, h))?);
        let q = split(linear(&xq2, &self.query)?, tq)?;
        let k = split(linear(&x2, &self.key)?, t)?;
        let v = split(linear(&x2, &self.value)?, t)?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let probs = attention_probs(&q.matmul(&k.t()?)?, mask, scale, mode)?;
        let probs = dropout(&probs, self.attn_dropout, mode)?;
        let ctx = train_ops::merge_heads(&probs.matmul(&v)?)?;
        let attn = dropout(&linear(&ctx, &self.attn_out)?, self.dropout, mode)?;
        let attn = self.attn_norm.forward(&(attn + &xq2)?, mode)?;
        let inner = match (self.act, self.intermediate.bias()) {
            // One differentiable pass for the bias and GELU.
            (Activation::GeluErf, Some(bias)) => {
                train_ops::bias_gelu(&train_ops::linear(&attn, self.intermediate.weight(), None)?, bias)?
            }
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

/// What a layer's taped training pass ([`Layer::forward_taped`]) keeps for its backward pass.
struct LayerTape {
    /// Input rows (b·t, h) and query rows (b·tq, h): the same unless only [CLS] is queried.
    x: Tensor,
    xq: Tensor,
    /// Heads (b, heads, tq|t, d).
    q: Tensor,
    k: Tensor,
    v: Tensor,
    /// Attention probabilities, and after dropout.
    p: Tensor,
    pd: Tensor,
    /// Context rows (b·tq, h); the first norm's input and output; the FFN product before its
    /// bias, and after bias + GELU; the second norm's input.
    c: Tensor,
    r1: Tensor,
    y1: Tensor,
    u: Tensor,
    g: Tensor,
    r2: Tensor,
    /// Dropout seeds: attention probabilities, attention output, FFN output.
    seeds: [Option<u64>; 3],
    b: usize,
    t: usize,
    tq: usize,
}

/// Weights' gradients of a backward pass by hand: (the parameter's tensor, its gradient).
pub type ParamGrads = Vec<(Tensor, Tensor)>;

/// Where a layer's backward pass by hand puts its weights' gradients: one set, or (`split`: the
/// number of texts of the first part) two sets, each summed over its own texts' rows only. Rows
/// never meet in a layer, so one backward pass from the gradient of two tasks' losses (each on
/// its own texts) gives each task's own weight gradients this way.
///
/// Bias and layer-norm gradients (sums over rows) wait in the sink until [`Sink::flush`] takes
/// them all in one [`train_ops::column_sums`]: one launch a layer on CUDA instead of one a
/// tensor and part (twenty a layer when the tasks share a batch).
pub(crate) struct Sink<'a> {
    first: &'a mut ParamGrads,
    rest: Option<(&'a mut ParamGrads, usize)>,
    /// (parameter, the rows whose sum is its gradient, rows a text), waiting for [`Sink::flush`].
    sums: Vec<(Tensor, Tensor, usize)>,
}

impl Drop for Sink<'_> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            debug_assert!(self.sums.is_empty(), "a sink dropped with sums not flushed");
        }
    }
}

impl<'a> Sink<'a> {
    /// One set of gradients, summed over all rows.
    pub(crate) fn new(grads: &'a mut ParamGrads) -> Self {
        Sink {
            first: grads,
            rest: None,
            sums: Vec::new(),
        }
    }

    /// Two sets: `first` summed over the first `texts` texts' rows, `rest` over the others'.
    fn split(first: &'a mut ParamGrads, rest: &'a mut ParamGrads, texts: usize) -> Self {
        Sink {
            first,
            rest: Some((rest, texts)),
            sums: Vec::new(),
        }
    }

    /// A projection's weight and bias gradients from its input rows `x` and output gradient `dy`
    /// (`per_text` rows a text); returns the input's gradient.
    pub(crate) fn project(&mut self, l: &Linear, x: &Tensor, dy: &Tensor, per_text: usize) -> Result<Tensor> {
        self.push(l.weight(), per_text, |n| n(dy)?.t()?.matmul(&n(x)?))?;
        if let Some(bias) = l.bias() {
            self.push_sum(bias, dy, per_text);
        }
        dy.matmul(&l.weight().detach())
    }

    /// A gradient that is the sum of `rows` (`per_text` a text), computed at [`Sink::flush`].
    pub(crate) fn push_sum(&mut self, param: &Tensor, rows: &Tensor, per_text: usize) {
        self.sums.push((param.clone(), rows.clone(), per_text));
    }

    /// Computes the waiting sums ([`Sink::push_sum`]), all in one operation, into the gradients.
    pub(crate) fn flush(&mut self) -> Result<()> {
        if self.sums.is_empty() {
            return Ok(());
        }
        let sums = std::mem::take(&mut self.sums);
        let texts = self.rest.as_ref().map(|(_, texts)| *texts);
        let items: Vec<(&Tensor, Option<usize>)> = sums
            .iter()
            .map(|(_, rows, per_text)| (rows, texts.map(|n| n * per_text)))
            .collect();
        for ((param, _, _), (a, b)) in sums.iter().zip(train_ops::column_sums(&items)?) {
            self.first.push((param.clone(), a));
            if let (Some((rest, _)), Some(b)) = (&mut self.rest, b) {
                rest.push((param.clone(), b));
            }
        }
        Ok(())
    }

    /// A weight's gradient, a sum over rows (`per_text` a text) that `f` computes from its
    /// inputs' rows, which it narrows with the function it is given.
    fn push(
        &mut self,
        param: &Tensor,
        per_text: usize,
        f: impl Fn(&dyn Fn(&Tensor) -> Result<Tensor>) -> Result<Tensor>,
    ) -> Result<()> {
        match &mut self.rest {
            None => self.first.push((param.clone(), f(&|x| Ok(x.clone()))?)),
            Some((rest, texts)) => {
                let cut = *texts * per_text;
                self.first.push((param.clone(), f(&|x| x.narrow(0, 0, cut))?));
                rest.push((param.clone(), f(&|x| x.narrow(0, cut, x.dim(0)? - cut))?));
            }
        }
        Ok(())
    }
}

impl Layer {
    /// Whether this layer can be trained by hand: GELU (erf) with biases everywhere, on tensors
    /// the fused training passes run on.
    fn by_hand(&self, x: &Tensor) -> bool {
        let biased = [
            &self.query,
            &self.key,
            &self.value,
            &self.attn_out,
            &self.intermediate,
            &self.output,
        ]
        .iter()
        .all(|l| l.bias().is_some());
        matches!(self.act, Activation::GeluErf) && biased && train_ops::usable(&[x, self.query.weight()])
    }

    /// The training forward pass outside any graph, keeping what [`Layer::backward`] needs.
    /// `x`: (b, t, h) detached; `mask`: additive (b, 1, 1, t). Dropout as `mode` says.
    fn forward_taped(
        &self,
        x: &Tensor,
        mask: &Tensor,
        mode: Mode,
        cls_only: bool,
    ) -> Result<(Tensor, LayerTape)> {
        let (b, t, h) = x.dims3()?;
        let w = |l: &Linear| l.weight().detach();
        let bias = |l: &Linear| l.bias().expect("biases (by_hand)").detach();
        // A projection, its bias and the head split: two passes.
        let heads = |x: &Tensor, l: &Linear, rows: usize| {
            let y = train_ops::linear(x, &w(l), None)?;
            train_ops::split_heads_bias(&y, &bias(l), b, rows, self.heads)
        };
        let seed = |p: f32| {
            if mode == Mode::Training {
                train_ops::dropout_seed(p)
            } else {
                None
            }
        };
        let tq = if cls_only { 1 } else { t };
        let x2 = x.reshape((b * t, h))?;
        let xq = if cls_only {
            x.narrow(1, 0, 1)?.contiguous()?.reshape((b, h))?
        } else {
            x2.clone()
        };
        let q = heads(&xq, &self.query, tq)?;
        let k = heads(&x2, &self.key, t)?;
        let v = heads(&x2, &self.value, t)?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let p = train_ops::scaled_masked_softmax(&q.matmul(&k.t()?)?, mask, scale)?;
        let seeds = [seed(self.attn_dropout), seed(self.dropout), seed(self.dropout)];
        let pd = train_ops::dropout_with(&p, self.attn_dropout, seeds[0])?;
        let c = train_ops::merge_heads(&pd.matmul(&v)?)?;
        // Each residual branch's bias, dropout, residual and norm in one pass.
        let a = train_ops::linear(&c, &w(&self.attn_out), None)?;
        let (r1, y1) = self
            .attn_norm
            .after_branch(&a, &bias(&self.attn_out), &xq, self.dropout, seeds[1])?;
        let u = train_ops::linear(&y1, &w(&self.intermediate), None)?;
        let g = train_ops::bias_gelu(&u, &bias(&self.intermediate))?;
        let o = train_ops::linear(&g, &w(&self.output), None)?;
        let (r2, y2) = self
            .out_norm
            .after_branch(&o, &bias(&self.output), &y1, self.dropout, seeds[2])?;
        let tape = LayerTape {
            x: x2,
            xq,
            q,
            k,
            v,
            p,
            pd,
            c,
            r1,
            y1,
            u,
            g,
            r2,
            seeds,
            b,
            t,
            tq,
        };
        Ok((y2.reshape((b, tq, h))?, tape))
    }

    /// The backward pass of [`Layer::forward_taped`]: from the output rows' gradient `dy`
    /// (b·tq, h), the input's gradient (b, t, h), and every weight's into `grads`.
    fn backward(&self, tape: &LayerTape, dy: &Tensor, grads: &mut Sink) -> Result<Tensor> {
        let LayerTape { b, t, tq, .. } = *tape;
        let h = tape.x.dim(1)?;
        // A layer norm's input gradient, and that through the residual branch's dropout below
        // it, in one pass; its gain's and bias's gradients into `grads`.
        let norm = |ln: &LayerNorm, x: &Tensor, dy: &Tensor, seed: Option<u64>, grads: &mut Sink| {
            let (dx, dgx, dropped) =
                train_ops::layer_norm_backward_rows_dropout(x, &ln.weight, dy, ln.eps, self.dropout, seed)?;
            grads.push_sum(&ln.weight, &dgx, tq);
            grads.push_sum(&ln.bias, dy, tq);
            Ok::<_, candle_core::Error>((dx, dropped))
        };
        let (dr2, d_out) = norm(&self.out_norm, &tape.r2, dy, tape.seeds[2], grads)?;
        let dg = grads.project(&self.output, &tape.g, &d_out, tq)?;
        let bias1 = self.intermediate.bias().expect("biases (by_hand)");
        let du = train_ops::gelu_backward(&tape.u, &bias1.detach(), &dg)?;
        let dy1 = (dr2 + grads.project(&self.intermediate, &tape.y1, &du, tq)?)?;
        let (dr1, da) = norm(&self.attn_norm, &tape.r1, &dy1, tape.seeds[1], grads)?;
        let dc = grads.project(&self.attn_out, &tape.c, &da, tq)?;
        let dctx = train_ops::split_heads(&dc, b, tq, self.heads)?;
        let dpd = dctx.matmul(&tape.v.t()?)?;
        let dv = tape.pd.t()?.matmul(&dctx)?;
        let dp = train_ops::dropout_with(&dpd, self.attn_dropout, tape.seeds[0])?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let ds = train_ops::softmax_backward(&tape.p, &dp, scale)?;
        let dq = ds.matmul(&tape.k)?;
        let dk = ds.t()?.matmul(&tape.q)?;
        let dxq = (dr1 + grads.project(&self.query, &tape.xq, &train_ops::merge_heads(&dq)?, tq)?)?;
        let dx = (grads.project(&self.key, &tape.x, &train_ops::merge_heads(&dk)?, t)?
            + grads.project(&self.value, &tape.x, &train_ops::merge_heads(&dv)?, t)?)?;
        let dx = dx.reshape((b, t, h))?;
        grads.flush()?;
        if tq == t {
            return dx + dxq.reshape((b, t, h))?;
        }
        // Only [CLS] was queried: its gradient joins the first token's.
        let first = (dx.narrow(1, 0, 1)? + dxq.reshape((b, 1, h))?)?;
        Tensor::cat(&[&first, &dx.narrow(1, 1, t - 1)?], 1)
    }
}

/// What [`Bert::cls_from_taped`] keeps for [`Bert::backward_taped`].
pub struct BertTape {
    layers: Vec<LayerTape>,
    from: usize,
    /// With [`Pooling::Mean`], each token's share of the pooled state, (b, t, 1): 1/count for a
    /// real token, 0 for padding.
    mean_weights: Option<Tensor>,
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

    /// [`Bert::cls_from`] for training, by hand: the layers from `from` run outside any graph,
    /// keeping what [`Bert::backward_taped`] needs, and the heads' input (the [CLS] state, or the
    /// mean of the real tokens' with [`Pooling::Mean`]) comes back detached (make it a leaf, run
    /// the heads and their loss, and hand its gradient to `backward_taped`). About a third of the
    /// operations of the graph's backward pass, which adds a zero tensor and an addition for
    /// every edge. `None` where it cannot run (other activations, tensors the fused training
    /// passes do not run on): use [`Bert::cls_from`].
    pub fn cls_from_taped(
        &self,
        hidden: &Tensor,
        mask: &Tensor,
        from: usize,
        mode: Mode,
    ) -> Result<Option<(Tensor, BertTape)>> {
        let layers = &self.layers[from.min(self.layers.len())..];
        if layers.is_empty() || !layers.iter().all(|l| l.by_hand(hidden)) {
            return Ok(None);
        }
        let add = Self::additive_mask(mask, hidden.dtype())?;
        let mean = self.pooling == Pooling::Mean;
        let mut x = hidden.detach();
        let mut tapes = Vec::with_capacity(layers.len());
        for (i, layer) in layers.iter().enumerate() {
            // [CLS] pooling needs only the first token's row of the last layer.
            let (y, tape) = layer.forward_taped(&x, &add, mode, !mean && i + 1 == layers.len())?;
            tapes.push(tape);
            x = y;
        }
        let (pooled, mean_weights) = if mean {
            // The mean over real tokens as a weighted sum: the same weights carry its gradient.
            let w = Self::mean_weights(mask, x.dtype())?;
            (x.broadcast_mul(&w)?.sum(1)?, Some(w))
        } else {
            (x.squeeze(1)?, None)
        };
        let tape = BertTape {
            layers: tapes,
            from,
            mean_weights,
        };
        Ok(Some((pooled, tape)))
    }

    /// The backward pass of [`Bert::cls_from_taped`] from the [CLS] state's gradient (b, h):
    /// every trainable layer's weight gradients, as (the parameter's tensor, its gradient).
    pub fn backward_taped(&self, tape: &BertTape, dcls: &Tensor) -> Result<ParamGrads> {
        let mut grads = ParamGrads::new();
        self.backward_sink(tape, dcls, Sink::new(&mut grads))?;
        Ok(grads)
    }

    /// [`Bert::backward_taped`] with the weights' gradients in two sets: over the batch's first
    /// `texts` texts and over the rest. One backward pass from the sum of two tasks' [CLS]
    /// gradients, each task's on its own texts (the first `texts`, the rest), gives each task's
    /// own gradients, as two backward passes would.
    pub fn backward_taped_split(
        &self,
        tape: &BertTape,
        dcls: &Tensor,
        texts: usize,
    ) -> Result<(ParamGrads, ParamGrads)> {
        let (mut first, mut rest) = (ParamGrads::new(), ParamGrads::new());
        self.backward_sink(tape, dcls, Sink::split(&mut first, &mut rest, texts))?;
        Ok((first, rest))
    }

    fn backward_sink(&self, tape: &BertTape, dcls: &Tensor, mut grads: Sink) -> Result<()> {
        // Mean pooling hands each token its share of the pooled state's gradient.
        let mut dy = match &tape.mean_weights {
            None => dcls.clone(),
            Some(w) => dcls.unsqueeze(1)?.broadcast_mul(w)?.reshape(((), dcls.dim(1)?))?,
        };
        for (layer, lt) in self.layers[tape.from..].iter().zip(&tape.layers).rev() {
            let dx = layer.backward(lt, &dy, &mut grads)?;
            dy = dx.reshape((lt.b * lt.t, ()))?;
        }
        Ok(())
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
