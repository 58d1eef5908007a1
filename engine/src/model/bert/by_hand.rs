//! Training by hand: a layer's forward pass outside candle's graph that keeps what its backward
//! pass needs ([`LayerTape`]), the backward pass itself, and where the weights' gradients go
//! ([`Sink`]: one set, or two tasks' sets from one pass). About a third of the operations of the
//! graph's backward pass, which adds a zero tensor and an addition for every edge.

use super::{Activation, Bert, Layer, LayerNorm, Mode, Pooling};
use crate::model::ops::{dropout, ffn, layout, norm, projection, softmax, switches};
use candle_core::{Result, Tensor};
use candle_nn::Linear;

/// What [`Bert::cls_from_taped`] keeps for [`Bert::backward_taped`].
pub struct BertTape {
    layers: Vec<LayerTape>,
    from: usize,
    /// With [`Pooling::Mean`], each token's share of the pooled state, (b, t, 1): 1/count for a
    /// real token, 0 for padding.
    mean_weights: Option<Tensor>,
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
/// them all in one [`projection::column_sums`]: one launch a layer on CUDA instead of one a
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
        for ((param, _, _), (a, b)) in sums.iter().zip(projection::column_sums(&items)?) {
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
        matches!(self.act, Activation::GeluErf)
            && biased
            && switches::fused_training(&[x, self.query.weight()])
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
            let y = projection::linear(x, &w(l), None)?;
            layout::split_heads_bias(&y, &bias(l), b, rows, self.heads)
        };
        let seed = |p: f32| {
            if mode == Mode::Training {
                dropout::dropout_seed(p)
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
        let p = softmax::scaled_masked_softmax(&q.matmul(&k.t()?)?, mask, scale)?;
        let seeds = [seed(self.attn_dropout), seed(self.dropout), seed(self.dropout)];
        let pd = dropout::dropout_with(&p, self.attn_dropout, seeds[0])?;
        let c = layout::merge_heads_train(&pd.matmul(&v)?)?;
        // Each residual branch's bias, dropout, residual and norm in one pass.
        let a = projection::linear(&c, &w(&self.attn_out), None)?;
        let (r1, y1) = self
            .attn_norm
            .after_branch(&a, &bias(&self.attn_out), &xq, self.dropout, seeds[1])?;
        let u = projection::linear(&y1, &w(&self.intermediate), None)?;
        let g = ffn::bias_gelu_train(&u, &bias(&self.intermediate))?;
        let o = projection::linear(&g, &w(&self.output), None)?;
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
                norm::layer_norm_backward_rows_dropout(x, &ln.weight, dy, ln.eps, self.dropout, seed)?;
            grads.push_sum(&ln.weight, &dgx, tq);
            grads.push_sum(&ln.bias, dy, tq);
            Ok::<_, candle_core::Error>((dx, dropped))
        };
        let (dr2, d_out) = norm(&self.out_norm, &tape.r2, dy, tape.seeds[2], grads)?;
        let dg = grads.project(&self.output, &tape.g, &d_out, tq)?;
        let bias1 = self.intermediate.bias().expect("biases (by_hand)");
        let du = ffn::gelu_backward(&tape.u, &bias1.detach(), &dg)?;
        let dy1 = (dr2 + grads.project(&self.intermediate, &tape.y1, &du, tq)?)?;
        let (dr1, da) = norm(&self.attn_norm, &tape.r1, &dy1, tape.seeds[1], grads)?;
        let dc = grads.project(&self.attn_out, &tape.c, &da, tq)?;
        let dctx = layout::split_heads(&dc, b, tq, self.heads)?;
        let dpd = dctx.matmul(&tape.v.t()?)?;
        let dv = tape.pd.t()?.matmul(&dctx)?;
        let dp = dropout::dropout_with(&dpd, self.attn_dropout, tape.seeds[0])?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let ds = softmax::softmax_backward(&tape.p, &dp, scale)?;
        let dq = ds.matmul(&tape.k)?;
        let dk = ds.t()?.matmul(&tape.q)?;
        let dxq = (dr1 + grads.project(&self.query, &tape.xq, &layout::merge_heads_train(&dq)?, tq)?)?;
        let dx = (grads.project(&self.key, &tape.x, &layout::merge_heads_train(&dk)?, t)?
            + grads.project(&self.value, &tape.x, &layout::merge_heads_train(&dv)?, t)?)?;
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

impl Bert {
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
}
