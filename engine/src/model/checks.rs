//! Every device check `viralclip bench` prints before it times anything, so that a GPU run's
//! times come with proof that what they time computes the right thing there. The training path
//! against candle's operations on a small random model (`train_ops_check`, `by_hand_check`: the
//! right gradients), and the scoring path's opt-in and default CUDA passes against candle's
//! operations in f32 (`attention_check`, `packed_attention_check`, `gemm_gelu_check`). The tests
//! run the same checks on the CPU.
//!
//! Each returns a [`Check`]: the largest difference relative to each gradient's largest value (or
//! to a thousandth of the model's largest gradient, where that is larger: the keys' bias has a
//! true gradient of zero, softmax ignoring a shift common to all keys, and every path gives
//! rounding noise there), and the parameter where it was, so that a failure on a lent GPU names
//! the pass to look at.

use super::bert::Pooling;
use super::ops::attention::{attention, attention_fits, packed_attention, packed_attention_fits};
use super::ops::dropout::seed_dropout;
use super::ops::ffn::{gemm_bias, gemm_gelu, gemm_gelu_fits};
use super::ops::switches::{fused_training as usable, without_fused};
use super::{BertConfig, Mode, MultiTask, ParamGrads};
use candle_core::{DType, Device, Result, Tensor, TensorId};
use std::collections::HashMap;

/// What a check found.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    /// The largest relative difference (see the module's notes).
    pub max_diff: f32,
    /// Where: the case and the parameter's name.
    pub worst: String,
    /// Whether the fused training passes ran (always on the CPU; on CUDA unless
    /// `VIRALCLIP_FUSED_TRAIN=0`). A check whose passes did not run compared nothing.
    pub fused: bool,
}

/// A random model (2 layers, hidden 64, 4 heads, 28 emotions) with seeded weights, none zero (a
/// zero bias would hide mistakes; candle's CPU random numbers cannot be seeded), and three padded
/// texts of 5, 7 and 3 tokens: the same numbers every run on the CPU.
struct Small {
    model: MultiTask,
    /// Every parameter, by name, sorted.
    vars: Vec<(String, candle_core::Var)>,
    ids: Tensor,
    mask: Tensor,
}

/// A xorshift generator: uniform values in [-0.3, 0.3) around `centre`.
fn values(state: &mut u64, n: usize, centre: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *state ^= *state << 13;
            *state ^= *state >> 7;
            *state ^= *state << 17;
            centre + ((*state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.6
        })
        .collect()
}

/// The emotion head's classes.
const LABELS: usize = 28;

fn small_model(dev: &Device) -> Result<Small> {
    let config: BertConfig = serde_json::from_value(serde_json::json!({
        "vocab_size": 100, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 128, "max_position_embeddings": 32, "hidden_act": "gelu"
    }))
    .map_err(candle_core::Error::msg)?;
    let varmap = candle_nn::VarMap::new();
    let model = MultiTask::load(
        candle_nn::VarBuilder::from_varmap(&varmap, DType::F32, dev),
        &config,
        LABELS,
    )?;
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let data = varmap.data().lock().expect("varmap lock");
    let mut vars: Vec<_> = data.iter().map(|(n, v)| (n.clone(), v.clone())).collect();
    drop(data);
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, var) in &vars {
        let centre = if name.ends_with("LayerNorm.weight") {
            1.0
        } else {
            0.0
        };
        let v = values(&mut state, var.elem_count(), centre);
        var.set(&Tensor::from_vec(v, var.shape(), dev)?)?;
    }
    let ids: Vec<u32> = (0..21).map(|i| (i * 37 % 97 + 2) as u32).collect();
    let ids = Tensor::from_vec(ids, (3, 7), dev)?;
    let mask: Vec<u32> = [5u32, 7, 3]
        .iter()
        .flat_map(|&l| (0..7).map(move |k| (k < l) as u32))
        .collect();
    let mask = Tensor::from_vec(mask, (3, 7), dev)?;
    Ok(Small {
        model,
        vars,
        ids,
        mask,
    })
}

fn max_abs(t: &Tensor) -> Result<f32> {
    t.abs()?.max_all()?.to_scalar::<f32>()
}

/// The worst of `(name, wanted, got)` gradients, relative as the module's notes say, as
/// `(difference, "case: name")`.
fn worst_of(case: &str, grads: &[(&str, &Tensor, &Tensor)]) -> Result<(f32, String)> {
    let mut tops = Vec::with_capacity(grads.len());
    for (_, want, _) in grads {
        tops.push(max_abs(want)?);
    }
    let floor = tops.iter().copied().fold(0f32, f32::max) * 1e-3;
    let mut worst = (0f32, String::new());
    for ((name, want, got), top) in grads.iter().zip(tops) {
        if want.dims() != got.dims() {
            candle_core::bail!(
                "{case}: {name}: a gradient of {:?}, expected {:?}",
                got.dims(),
                want.dims()
            )
        }
        let d = max_abs(&(*got - *want)?)? / top.max(floor);
        // A NaN is the worst there is.
        if d.is_nan() || d > worst.0 || worst.1.is_empty() {
            worst = (d, format!("{case}: {name}"));
            if d.is_nan() {
                break;
            }
        }
    }
    Ok(worst)
}

/// The larger of two findings, a NaN winning.
fn worse(a: (f32, String), b: (f32, String)) -> (f32, String) {
    if a.0.is_nan() || (!b.0.is_nan() && a.0 >= b.0) {
        a
    } else {
        b
    }
}

/// Gradients of every parameter through the fused operations in candle's graph, against
/// candle's operations alone (`without_fused`), for a loss over both heads:
/// `train_ops_check`.
pub fn training_ops(dev: &Device) -> Result<Check> {
    let Small {
        model,
        vars,
        ids,
        mask,
    } = small_model(dev)?;
    let loss = || -> Result<Tensor> {
        let out = model.forward(&ids, &mask, Mode::Autograd)?;
        out.popularity.sum_all()? + out.emotions.sqr()?.sum_all()?
    };
    let fused = loss()?.backward()?;
    let ops = without_fused(|| loss()?.backward())?;
    let mut grads = Vec::with_capacity(vars.len());
    for (name, v) in &vars {
        let (Some(got), Some(want)) = (fused.get(v.as_tensor()), ops.get(v.as_tensor())) else {
            candle_core::bail!("train_ops_check: {name} has no gradient on one of the paths")
        };
        grads.push((name.as_str(), want, got));
    }
    let (max_diff, worst) = worst_of("graph", &grads)?;
    Ok(Check {
        max_diff,
        worst,
        fused: usable(&[&ids.to_dtype(DType::F32)?]),
    })
}

/// Training by hand, as the trainer runs it on this device: the layers' taped forward and
/// backward passes (`Bert::cls_from_taped`, `backward_taped`, and `backward_taped_split`, a GPU's
/// one backward pass for both of PCGrad's tasks) and the heads' (`heads_taped` and their backward
/// passes), against candle's graph, for every trainable parameter (the layers and both heads),
/// with [CLS] and mean pooling: `by_hand_check`.
///
/// Without dropout the graph runs candle's operations alone; with dropout, the fused operations
/// in the graph (candle's own dropout draws other masks), which [`training_ops`] holds to
/// candle's operations. The split is held to two backward passes by hand, one per task: its
/// parts' gradients are each task's.
pub fn training_by_hand(dev: &Device) -> Result<Check> {
    let Small {
        mut model,
        vars,
        ids,
        mask,
    } = small_model(dev)?;
    let not_run = Check {
        max_diff: 0.0,
        worst: "training by hand does not run on this device".into(),
        fused: false,
    };
    let hidden = model
        .bert
        .hidden_before(&ids, &mask, 0, Mode::Inference)?
        .detach();
    let trained: Vec<&(String, candle_core::Var)> = vars
        .iter()
        .filter(|(n, _)| !n.starts_with("bert.embeddings"))
        .collect();
    let names: HashMap<TensorId, &str> = trained
        .iter()
        .map(|(n, v)| (v.as_tensor().id(), n.as_str()))
        .collect();
    // The loss: a random linear function of both heads' logits, whose gradients are these.
    let (b, labels) = (ids.dim(0)?, LABELS);
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let wp = Tensor::from_vec(values(&mut state, b, 0.0), b, dev)?;
    let we = Tensor::from_vec(values(&mut state, b * labels, 0.0), (b, labels), dev)?;
    // PCGrad's split: the popularity task on the first text, the emotion task on the rest.
    let k = 1;
    let rows = |from: usize, to: usize| -> Result<Tensor> {
        let m: Vec<f32> = (0..b).map(|r| f32::from(r >= from && r < to)).collect();
        Tensor::from_vec(m, (b, 1), dev)
    };
    let by_name = |grads: ParamGrads, case: &str| -> Result<HashMap<&str, Tensor>> {
        let mut out = HashMap::new();
        for (p, g) in grads {
            let Some(&name) = names.get(&p.id()) else {
                candle_core::bail!(
                    "{case}: a gradient by hand for a tensor that is not a trainable parameter"
                )
            };
            if out.insert(name, g).is_some() {
                candle_core::bail!("{case}: two gradients by hand for {name}")
            }
        }
        Ok(out)
    };
    let mut worst = (0f32, String::new());
    for pooling in [Pooling::Cls, Pooling::Mean] {
        model.bert.set_pooling(pooling);
        for mode in [Mode::Autograd, Mode::Training] {
            let case = format!("{pooling:?} pooling, {mode:?}");
            // By hand first: where it does not run, there is nothing to compare.
            let seed = 0x5EED;
            seed_dropout(seed);
            let Some((cls, tape)) = model.bert.cls_from_taped(&hidden, &mask, 0, mode)? else {
                return Ok(not_run);
            };
            if !model.heads_by_hand(&cls) {
                return Ok(not_run);
            }
            let heads = model.heads_taped(&cls, mode, true, true)?;
            let (Some((_, tp)), Some((_, te))) = (heads.popularity, heads.emotions) else {
                candle_core::bail!("{case}: a head did not run by hand")
            };
            let (cp, gp) = model.popularity_backward(&tp, &wp.unsqueeze(1)?)?;
            let (ce, ge) = model.emotion_backward(&te, &we)?;
            let mut got = by_name(gp.into_iter().chain(ge).collect(), &case)?;
            got.extend(by_name(model.bert.backward_taped(&tape, &(&cp + &ce)?)?, &case)?);
            let graph = || -> Result<candle_core::backprop::GradStore> {
                seed_dropout(seed);
                let cls = model.bert.cls_from(&hidden, &mask, 0, mode)?;
                let out = model.heads(&cls, mode)?;
                ((&out.popularity * &wp)?.sum_all()? + (&out.emotions * &we)?.sum_all()?)?.backward()
            };
            let graph = match mode {
                Mode::Training => graph()?,
                _ => without_fused(graph)?,
            };
            let mut pairs = Vec::with_capacity(trained.len());
            for (name, v) in &trained {
                let (Some(want), Some(g)) = (graph.get(v.as_tensor()), got.get(name.as_str())) else {
                    candle_core::bail!("{case}: {name} has no gradient by hand or through the graph")
                };
                pairs.push((name.as_str(), want, g));
            }
            worst = worse(worst, worst_of(&case, &pairs)?);
            // One backward pass for both tasks, each on its own texts, split by rows: each part
            // is what that task's own backward pass gives.
            let dp = cp.broadcast_mul(&rows(0, k)?)?;
            let de = ce.broadcast_mul(&rows(k, b)?)?;
            let (first, rest) = model.bert.backward_taped_split(&tape, &(&dp + &de)?, k)?;
            for (part, alone, what) in [(first, &dp, "first task"), (rest, &de, "second task")] {
                let part = by_name(part, &case)?;
                let alone = by_name(model.bert.backward_taped(&tape, alone)?, &case)?;
                if part.len() != alone.len() {
                    candle_core::bail!(
                        "{case}, split, {what}: {} gradients, {} alone",
                        part.len(),
                        alone.len()
                    )
                }
                let mut pairs = Vec::with_capacity(alone.len());
                for (name, want) in &alone {
                    let Some(g) = part.get(name) else {
                        candle_core::bail!("{case}, split, {what}: no gradient for {name}")
                    };
                    pairs.push((*name, want, g));
                }
                pairs.sort_by_key(|p| p.0);
                worst = worse(worst, worst_of(&format!("{case}, split, {what}"), &pairs)?);
            }
        }
    }
    Ok(Check {
        max_diff: worst.0,
        worst: worst.1,
        fused: true,
    })
}

// ---------------------------------------------------------------- the scoring passes

/// [`attention`] against candle's own operations in f32 on `dev`, over texts of 1 to 256 tokens
/// with padding, both head sizes, and [CLS]-only queries: the largest difference relative to the
/// largest context value, and whether the fused op ran (on CUDA where [`attention_fits`], in
/// `dtype`; on the CPU its f32 version; else `false` and 0). The reference gets the same inputs
/// rounded to `dtype`, so what is left is the kernel's own rounding (bf16 about 1e-2, f16 2e-3).
pub fn check_attention(dev: &candle_core::Device, dtype: DType) -> Result<(f32, bool)> {
    let dtype = if dev.is_cpu() { DType::F32 } else { dtype };
    let mut uniform = seeded_uniform(0x9E37_79B9_7F4A_7C15);
    let mut worst = 0f32;
    // (texts, tokens, heads, head size, queries)
    for (b, t, heads, d, tq) in [
        (3, 1, 2, 32, 1),
        (2, 7, 4, 64, 7),
        (2, 33, 3, 32, 33),
        (2, 33, 3, 32, 1),
        (1, 128, 2, 64, 128),
        (5, 70, 12, 64, 70),
        (2, 200, 2, 64, 200),
        (1, 256, 1, 32, 256),
    ] {
        let h = heads * d;
        // Spread like N(0, sd²) (a uniform of the same variance).
        let mut normal = |n: usize, sd: f32| -> Result<Tensor> {
            let v: Vec<f32> = (0..n).map(|_| uniform() * 3.46 * sd).collect();
            Tensor::from_vec(v, n, dev)?.to_dtype(dtype)
        };
        let qkv = normal(b * t * 3 * h, 1.0)?.reshape((b * t, 3 * h))?;
        let bias = normal(3 * h, 0.5)?;
        let mask = padded_check_mask(b, t, dev, dtype)?;
        let fused = if dev.is_cpu() || attention_fits(&qkv, t, d) {
            attention(&qkv, &bias, &mask, b, t, tq, heads, d)?.to_dtype(DType::F32)?
        } else {
            return Ok((0.0, false));
        };
        let f = |x: &Tensor| x.to_dtype(DType::F32);
        let want = split_attention(&f(&qkv)?.broadcast_add(&f(&bias)?)?, &mask, b, t, tq, heads, d)?;
        worst = worst.max(relative_diff(&fused, &want)?);
    }
    Ok((worst, true))
}

/// [`packed_attention`] (after [`gemm_bias`]) against the split path's arithmetic in f32 on `dev`
/// (bias added, heads split, scores, mask, softmax, context, heads merged), over texts of 1 to 200
/// tokens with padding, both head sizes and [CLS]-only queries: the largest difference relative to
/// the largest context value, and whether it ran (on CUDA where [`packed_attention_fits`] in
/// `dtype`; else `false` and 0). Inputs are rounded to `dtype` for both; what is left is the
/// rounding of the projection and of the probabilities (bf16 about 1e-2).
pub fn check_packed_attention(dev: &candle_core::Device, dtype: DType) -> Result<(f32, bool)> {
    let mut uniform = seeded_uniform(0x2545_F491_4F6C_DD1D);
    let mut worst = 0f32;
    // (texts, tokens, heads, head size, queries, input features)
    for (b, t, heads, d, tq, k) in [
        (3, 1, 2, 32, 1, 48),
        (2, 7, 4, 64, 7, 64),
        (2, 33, 3, 32, 33, 96),
        (2, 33, 3, 32, 1, 96),
        (5, 70, 12, 64, 70, 128),
        (2, 200, 2, 64, 200, 64),
    ] {
        let h = heads * d;
        let mut normal = |n: usize, sd: f32| -> Result<Tensor> {
            let v: Vec<f32> = (0..n).map(|_| uniform() * 3.46 * sd).collect();
            Tensor::from_vec(v, n, dev)?.to_dtype(dtype)
        };
        let x = normal(b * t * k, 1.0)?.reshape((b * t, k))?;
        // The query's rows scaled by 1/√d, as the scoring weights are (scores of unit spread).
        let scale = Tensor::cat(
            &[
                Tensor::full(1.0 / (d as f32).sqrt(), (h, 1), dev)?,
                Tensor::ones((2 * h, 1), DType::F32, dev)?,
            ],
            0,
        )?;
        let w = normal(3 * h * k, 1.0 / (k as f32).sqrt())?
            .reshape((3 * h, k))?
            .to_dtype(DType::F32)?
            .broadcast_mul(&scale)?
            .to_dtype(dtype)?;
        let bias = normal(3 * h, 0.5)?
            .to_dtype(DType::F32)?
            .mul(&scale.flatten_all()?)?
            .to_dtype(dtype)?;
        let mask = padded_check_mask(b, t, dev, dtype)?;
        if !packed_attention_fits(&x) {
            return Ok((0.0, false));
        }
        let qkv = gemm_bias(&x, &w, &bias)?;
        let got = packed_attention(&qkv, &mask, b, t, tq, heads, d)?.to_dtype(DType::F32)?;
        let f = |x: &Tensor| x.to_dtype(DType::F32);
        let projection = f(&x)?.matmul(&f(&w)?.t()?)?.broadcast_add(&f(&bias)?)?;
        let want = split_attention(&projection, &mask, b, t, tq, heads, d)?;
        worst = worst.max(relative_diff(&got, &want)?);
    }
    Ok((worst, true))
}

/// [`gemm_gelu`] against `gelu_erf(x · wᵀ + b)` in f32 on `dev`, in `dtype` (inputs rounded to it
/// for both): the largest difference relative to the largest output, and whether it ran (false
/// and 0 where it does not fit).
pub fn check_gemm_gelu(dev: &candle_core::Device, dtype: DType) -> Result<(f32, bool)> {
    let mut worst = 0f32;
    for (m, k, n) in [(37, 64, 96), (130, 384, 1536), (4096, 768, 3072)] {
        let r = |shape: (usize, usize), scale: f64| -> Result<Tensor> {
            let v: Vec<f32> = (0..shape.0 * shape.1)
                .map(|i| (((i * 7919 + shape.1 * 31) % 1000) as f32 / 1000.0 - 0.5) * scale as f32)
                .collect();
            Tensor::from_vec(v, shape, dev)?.to_dtype(dtype)
        };
        let (x, w) = (r((m, k), 2.0)?, r((n, k), 4.0 / (k as f64).sqrt())?);
        let b = r((1, n), 1.0)?.reshape(n)?;
        if !gemm_gelu_fits(&x) {
            return Ok((0.0, false));
        }
        let got = gemm_gelu(&x, &w, &b)?.to_dtype(DType::F32)?;
        let f = |t: &Tensor| t.to_dtype(DType::F32);
        let want = f(&x)?.matmul(&f(&w)?.t()?)?.broadcast_add(&f(&b)?)?.gelu_erf()?;
        worst = worst.max(relative_diff(&got, &want)?);
    }
    Ok((worst, true))
}

/// Seeded numbers (xorshift64), uniform in [-0.5, 0.5): the checks' inputs, the same every run.
fn seeded_uniform(seed: u64) -> impl FnMut() -> f32 {
    let mut state = seed;
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    }
}

/// The checks' additive mask (b, t) in `dtype`: text i keeps its first t - i·t/(b+1) tokens (at
/// least one), the rest are -1e4.
fn padded_check_mask(b: usize, t: usize, dev: &candle_core::Device, dtype: DType) -> Result<Tensor> {
    let mut m = vec![0f32; b * t];
    for bi in 0..b {
        let keep = (t - bi * t / (b + 1)).max(1);
        m[bi * t + keep..(bi + 1) * t].fill(-1e4);
    }
    Tensor::from_vec(m, (b, t), dev)?.to_dtype(dtype)
}

/// The checks' reference: attention by candle's operations in f32 from the packed projection
/// `qkv` (b·t, 3·heads·d, f32, its bias added) under `mask` (b, t): heads split, scores, mask,
/// softmax, context of the first `tq` queries, heads merged to (b·tq, heads·d).
fn split_attention(
    qkv: &Tensor,
    mask: &Tensor,
    b: usize,
    t: usize,
    tq: usize,
    heads: usize,
    d: usize,
) -> Result<Tensor> {
    let split = qkv
        .reshape((b, t, 3, heads, d))?
        .permute((2, 0, 3, 1, 4))?
        .contiguous()?;
    let (q, k, v) = (
        split.get(0)?.narrow(2, 0, tq)?.contiguous()?,
        split.get(1)?,
        split.get(2)?,
    );
    let scores = q
        .matmul(&k.t()?)?
        .broadcast_add(&mask.to_dtype(DType::F32)?.reshape((b, 1, 1, t))?)?;
    candle_nn::ops::softmax_last_dim(&scores)?
        .matmul(&v)?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((b * tq, heads * d))
}

/// The largest difference of `got` from `want`, relative to `want`'s largest magnitude (the
/// experimental passes' checks).
fn relative_diff(got: &Tensor, want: &Tensor) -> Result<f32> {
    let diff = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
    Ok(diff / want.abs()?.max_all()?.to_scalar::<f32>()?.max(1e-6))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Training by hand passes its device check on the CPU (`training_ops` has its own test in
    /// `tests/model.rs`): the layers and heads by hand, the split backward pass, both poolings,
    /// with dropout and without; and the check names where its largest difference was.
    #[test]
    fn training_by_hand_passes_its_device_check_on_the_cpu() {
        let check = training_by_hand(&Device::Cpu).unwrap();
        println!("by_hand_check: {check:?}");
        assert!(check.fused, "the CPU trains by hand");
        assert!(check.max_diff < 1e-3, "{check:?}");
        assert!(check.worst.contains("pooling"), "{check:?}");
    }

    /// The comparison measures each gradient against its own scale (or the floor), names the
    /// worst, and keeps a NaN (an unwritten value on a GPU) as the worst of all.
    #[test]
    fn the_comparison_names_the_worst_and_keeps_a_nan() {
        let worst = worst_of(
            "case",
            &[
                (
                    "a",
                    &Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap(),
                    &Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap(),
                ),
                (
                    "b",
                    &Tensor::new(&[4f32, -8.0], &Device::Cpu).unwrap(),
                    &Tensor::new(&[4f32, -7.0], &Device::Cpu).unwrap(),
                ),
                (
                    "c",
                    &Tensor::new(&[0f32, 0.0], &Device::Cpu).unwrap(),
                    &Tensor::new(&[0f32, 1e-6], &Device::Cpu).unwrap(),
                ),
            ],
        )
        .unwrap();
        assert_eq!(worst, (0.125, "case: b".to_string()));
        let nan = worst_of(
            "case",
            &[
                (
                    "a",
                    &Tensor::new(&[1f32], &Device::Cpu).unwrap(),
                    &Tensor::new(&[f32::NAN], &Device::Cpu).unwrap(),
                ),
                (
                    "b",
                    &Tensor::new(&[1f32], &Device::Cpu).unwrap(),
                    &Tensor::new(&[3f32], &Device::Cpu).unwrap(),
                ),
            ],
        )
        .unwrap();
        assert!(nan.0.is_nan() && nan.1 == "case: a", "{nan:?}");
        assert!(worse((1.0, "x".into()), (f32::NAN, "y".into())).0.is_nan());
    }
}
