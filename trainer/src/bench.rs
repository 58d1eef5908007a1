//! Training step times for the seed's schedule stages, on random weights of any BERT shape, run
//! through the very step the trainer uses ([`crate::train`]'s `apply_step`): `viralclip bench
//! --train-steps` prints them beside `bench/pytorch_bench.py --train-steps`.

use crate::data::{Label, EMOTIONS};
use crate::error::Result;
use crate::optim::AdamW;
use crate::train::{apply_step, forward_layers, targets, Forwarded, StepRule};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use std::time::Instant;
use viralclip_engine::model::ops::switches;
use viralclip_engine::model::{BertConfig, Mode, MultiTask};

/// Mean time of one step of a stage.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StepTiming {
    /// `heads` (encoder frozen, [CLS] cached), `top{n}+pcgrad` (top n layers from cached hidden
    /// states), `top{n}+pcgrad+frozen-forward` (also running the frozen layers every step, as the
    /// seed's loop does), or `cache` (the frozen layers' forward once per batch of examples).
    pub stage: String,
    pub ms_per_step: f64,
    pub steps: usize,
    /// Tensors candle created per step (each operation makes one; views too): on a GPU, where
    /// each operation is a kernel launch, what bounds a small step.
    pub tensors_per_step: f64,
    /// Storages candle made per step: one per operation that computes, none per view, so about
    /// one kernel launch each on a GPU. Counted only where a counting allocator keeps
    /// [`STORAGES_MADE`] (`cargo run --release -p viralclip-trainer --example ops_per_step`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ops_per_step: Option<f64>,
}

/// New storages candle has made, where a counting allocator keeps the count
/// (`trainer/examples/ops_per_step.rs`); it stays zero otherwise.
pub static STORAGES_MADE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn storages_made() -> usize {
    STORAGES_MADE.load(std::sync::atomic::Ordering::Relaxed)
}

/// How many tensors candle has created so far (its tensor ids count up from 1).
fn tensors_created() -> usize {
    let id = format!("{:?}", Tensor::new(0f32, &Device::Cpu).map(|t| t.id()));
    id.chars()
        .filter(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap_or(0)
}

fn sync(dev: &Device) -> Result<()> {
    dev.synchronize()?;
    Ok(())
}

/// What [`timed`] measures of a stage.
struct Timed {
    ms: f64,
    runs: usize,
    tensors: f64,
    ops: Option<f64>,
}

/// Milliseconds, tensors and storages created per call of `f`, and the number of calls timed.
fn timed(dev: &Device, secs: f64, mut f: impl FnMut() -> Result<()>) -> Result<Timed> {
    f()?; // warm-up
    f()?;
    sync(dev)?;
    let (start, first, stores) = (Instant::now(), tensors_created(), storages_made());
    let mut n = 0;
    while n < 3 || start.elapsed().as_secs_f64() < secs {
        f()?;
        n += 1;
    }
    sync(dev)?;
    let tensors = (tensors_created() - first).saturating_sub(1) as f64 / n as f64;
    let ops = storages_made() - stores;
    Ok(Timed {
        ms: start.elapsed().as_secs_f64() * 1e3 / n as f64,
        runs: n,
        tensors,
        // The count's own probe tensor (tensors_created) makes one storage too.
        ops: (ops > 0).then(|| ops.saturating_sub(1) as f64 / n as f64),
    })
}

/// Times the seed's stages at `batch` × `tokens` (every text that long, as the seed pads) with the
/// top `top` layers unfrozen, spending about `secs` on each.
pub fn step_times(
    config: &BertConfig,
    dev: &Device,
    batch: usize,
    tokens: usize,
    top: usize,
    secs: f64,
) -> Result<Vec<StepTiming>> {
    viralclip_engine::device::Precision::Tf32.configure(dev);
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, dev);
    let model = MultiTask::load(vb, config, EMOTIONS)?;
    let layers = config.num_hidden_layers;
    let from = layers.saturating_sub(top);
    let prefixes: Vec<String> = (from..layers)
        .map(|i| format!("bert.encoder.layer.{i}."))
        .collect();
    let params: Vec<_> = {
        let data = varmap.data().lock().expect("varmap lock");
        let mut v: Vec<_> = data
            .iter()
            .filter_map(|(n, var)| {
                if n.starts_with("popularity_head.") || n.starts_with("emotion_head.") {
                    Some((n.clone(), var.clone(), 0))
                } else if prefixes.iter().any(|p| n.starts_with(p)) {
                    Some((n.clone(), var.clone(), 1))
                } else {
                    None
                }
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    let mut opt = AdamW::new(params, 0.01)?;

    let mut seed = 7u64;
    let ids: Vec<u32> = (0..batch * tokens)
        .map(|_| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 33) as usize % (config.vocab_size - 10) + 5) as u32
        })
        .collect();
    let ids = Tensor::from_vec(ids, (batch, tokens), dev)?;
    let mask = Tensor::ones((batch, tokens), DType::U32, dev)?;
    // A mixed-task batch, as in the seed's multitask data.
    let labels: Vec<Label> = (0..batch)
        .map(|k| {
            if k % 2 == 0 {
                Label::Popularity(k % 4 == 0)
            } else {
                Label::Emotions(vec![k % EMOTIONS, (k * 7) % EMOTIONS])
            }
        })
        .collect();
    let rows: Vec<usize> = (0..batch).collect();
    let t = targets(&labels, &rows, dev)?;
    let pw = Tensor::ones(EMOTIONS, DType::F32, dev)?;
    let lrs = [2e-5, 2e-6];
    // The seed's stages: clipping at 1, the heads' and the layers' learning rates.
    let rule = |pcgrad: bool, frozen: bool| StepRule {
        pw: &pw,
        pcgrad,
        frozen,
        clip_norm: 1.0,
        lrs: &lrs,
    };

    let hidden = model
        .bert
        .hidden_before(&ids, &mask, from, Mode::Inference)?
        .detach();
    let cls = model
        .bert
        .cls_from(&hidden, &mask, from, Mode::Inference)?
        .detach();
    let stage = |name: &str, t: Timed| StepTiming {
        stage: name.to_string(),
        ms_per_step: t.ms,
        steps: t.runs,
        tensors_per_step: t.tensors,
        ops_per_step: t.ops,
    };
    let mut out = vec![stage(
        "cache",
        timed(dev, secs, || {
            let h = model.bert.hidden_before(&ids, &mask, from, Mode::Inference)?;
            h.sum_all()?.to_dtype(DType::F32)?.to_scalar::<f32>()?;
            Ok(())
        })?,
    )];
    // A batch's rows at these positions (all of it for `None`).
    let pick = |x: &Tensor, part: Option<&[usize]>| -> Result<Tensor> {
        Ok(match part {
            None => x.clone(),
            Some(p) => {
                let idx: Vec<u32> = p.iter().map(|&k| k as u32).collect();
                x.index_select(&Tensor::new(idx.as_slice(), dev)?, 0)?
            }
        })
    };
    out.push(stage(
        "heads",
        timed(dev, secs, || {
            let mut f = |part: Option<&[usize]>| pick(&cls, part).map(Forwarded::from);
            apply_step(&model, &mut opt, &mut f, &t, rule(false, true))?;
            Ok(())
        })?,
    ));
    // A top-layers PCGrad step from these hidden states (the cache, or this step's own forward
    // pass through the frozen layers).
    let top_step = |opt: &mut AdamW, hidden: &Tensor| -> Result<()> {
        let mut f = |part: Option<&[usize]>| -> Result<Forwarded> {
            let (h, m) = (pick(hidden, part)?, pick(&mask, part)?);
            forward_layers(&model, &h, &m, from, Mode::Training)
        };
        apply_step(&model, opt, &mut f, &t, rule(true, false))?;
        Ok(())
    };
    out.push(stage(
        &format!("top{top}+pcgrad"),
        timed(dev, secs, || top_step(&mut opt, &hidden))?,
    ));
    // The step as a GPU runs it, on this device: both tasks' rows in one forward pass and one
    // backward pass (by hand), each weight's gradient summed over each task's rows.
    out.push(stage(
        &format!("top{top}+pcgrad/joint"),
        crate::train::with_tasks_split(false, || timed(dev, secs, || top_step(&mut opt, &hidden)))?,
    ));
    // The same step through candle's operations alone (no fused training operations, no fused
    // optimiser step, no training by hand): the "before" of all three, in the same run.
    out.push(stage(
        &format!("top{top}+pcgrad/candle-ops"),
        switches::without_fused(|| timed(dev, secs, || top_step(&mut opt, &hidden)))?,
    ));
    out.push(stage(
        &format!("top{top}+pcgrad+frozen-forward"),
        timed(dev, secs, || {
            let h = model
                .bert
                .hidden_before(&ids, &mask, from, Mode::Inference)?
                .detach();
            top_step(&mut opt, &h)
        })?,
    ));
    Ok(out)
}

/// Padded lengths of the batches the trainer cuts from texts of these token lengths: sorted by
/// length, `batch` at a time, each padded to its longest (the trainer's buckets, without its
/// jitter).
pub fn batch_lengths(lens: &[usize], batch: usize) -> Vec<usize> {
    let mut sorted = lens.to_vec();
    sorted.sort_unstable();
    sorted
        .chunks(batch.max(1))
        .map(|c| c.last().copied().unwrap_or(0))
        .collect()
}

/// A step time at `len` tokens from times measured at a few lengths (`points`, any order):
/// straight lines between them, the nearest one outside them.
pub fn time_at(points: &[(usize, f64)], len: usize) -> f64 {
    let mut p = points.to_vec();
    p.sort_by_key(|&(l, _)| l);
    match p.iter().position(|&(l, _)| l >= len) {
        None => p.last().map_or(0.0, |&(_, t)| t),
        Some(0) => p[0].1,
        Some(k) => {
            let ((l0, t0), (l1, t1)) = (p[k - 1], p[k]);
            t0 + (t1 - t0) * (len - l0) as f64 / (l1 - l0) as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_pad_to_their_longest_and_times_interpolate() {
        let lens = [5, 40, 7, 128, 9, 33, 12, 8];
        assert_eq!(batch_lengths(&lens, 3), [8, 33, 128]);
        assert_eq!(batch_lengths(&lens, 16), [128]);
        let pts = [(64, 40.0), (16, 10.0), (32, 20.0)];
        assert_eq!(time_at(&pts, 16), 10.0);
        assert_eq!(time_at(&pts, 24), 15.0);
        assert_eq!(time_at(&pts, 48), 30.0);
        assert_eq!(time_at(&pts, 8), 10.0, "shorter than measured: the shortest");
        assert_eq!(time_at(&pts, 128), 40.0, "longer: the longest");
    }

    #[test]
    fn step_times_run_on_a_tiny_model() {
        let c = crate::tiny_bert(50);
        let t = step_times(&c, &Device::Cpu, 4, 8, 2, 0.0).unwrap();
        let stages: Vec<&str> = t.iter().map(|s| s.stage.as_str()).collect();
        assert_eq!(
            stages,
            [
                "cache",
                "heads",
                "top2+pcgrad",
                "top2+pcgrad/joint",
                "top2+pcgrad/candle-ops",
                "top2+pcgrad+frozen-forward"
            ]
        );
        assert!(t.iter().all(|s| s.ms_per_step > 0.0 && s.steps >= 3));
        // Tensors made per step (not asserted: tests running beside this one make tensors too,
        // and candle counts them all; `viralclip bench --train-steps` runs alone).
        let made = |stage: &str| t.iter().find(|s| s.stage == stage).unwrap().tensors_per_step;
        let (fused, ops) = (made("top2+pcgrad"), made("top2+pcgrad/candle-ops"));
        println!("tensors per top-2 step: fused {fused}, candle's operations {ops}");
        assert!(fused > 0.0 && ops > 0.0);
    }
}
