//! One optimiser step over all trainable tensors at once: PCGrad's three dot products, the merged
//! gradients' global norm (for clipping) and AdamW's update, in three passes over the parameters
//! whatever their number. On CUDA that is three kernel launches in all, where candle's operations
//! take about fifteen launches per tensor (the projection, the norm, the clip and the update, each
//! one tensor at a time): the trainer's PCGrad step on a GPU is bound by launches, not arithmetic.
//!
//! The merged gradient is never stored: each pass recomputes it from the two tasks' gradients,
//! `α·a + β·b`, with `α = 1 − (a·b)/|a|²` and `β = 1 − (a·b)/|b|²` when the two conflict
//! (`a·b < 0`), which is `(a − (a·b/|b|²)·b) + (b − (a·b/|a|²)·a)`, PCGrad's sum of projections;
//! `α = β = 1` otherwise. The CUDA kernels (`kernels/fused.cu`, `step_*`) compute what
//! [`fused_step`]'s CPU passes here compute, in the same order.

use super::adam::AdamUpdate;
use candle_core::{CpuStorage, DType, InplaceOp1, Layout, Result, Storage, Tensor};
use rayon::prelude::*;
use std::cell::RefCell;

/// Elements handed to one CPU task, and one CUDA block's share of a tensor.
pub const CHUNK: usize = 1 << 14;

/// One trainable tensor in a [`fused_step`].
pub struct StepParam<'a> {
    /// The f32 weights and AdamW's two moments, updated in place.
    pub w: &'a Tensor,
    pub m: &'a Tensor,
    pub v: &'a Tensor,
    /// Its gradients: the first task's and the second's for a shared parameter under PCGrad, one
    /// of them otherwise. A missing one counts as zero.
    pub a: Option<&'a Tensor>,
    pub b: Option<&'a Tensor>,
    /// Whether PCGrad's projection applies (a shared encoder weight; heads keep their own task's).
    pub shared: bool,
    /// This tensor's learning rate, bias corrections, epsilon and weight decay.
    pub update: AdamUpdate,
}

/// What is the same for every tensor of the step.
#[derive(Debug, Clone, Copy)]
pub struct StepConfig {
    /// Project conflicting shared gradients (else `α = β = 1`).
    pub pcgrad: bool,
    /// Global-norm clipping: gradients are scaled by `clip / (norm + 1e-6)` when the norm exceeds it.
    pub clip_norm: f64,
    pub beta1: f32,
    pub beta2: f32,
}

/// The reductions of a step: PCGrad's dot products over the shared tensors and the norm of the
/// merged gradients over all of them, before clipping.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    /// `a·b`, `|a|²`, `|b|²` over the shared tensors (zero without PCGrad).
    pub dot: f64,
    pub n1: f64,
    pub n2: f64,
    /// The global norm of the gradients the update used, before clipping.
    pub norm: f64,
}

impl StepStats {
    /// Whether the two tasks' gradients conflicted (and were projected).
    pub fn conflict(&self) -> bool {
        self.dot < 0.0 && self.n1 > 0.0 && self.n2 > 0.0
    }

    /// Cosine similarity of the two tasks' gradients (0 when either is zero).
    pub fn cosine(&self) -> f64 {
        if self.n1 > 0.0 && self.n2 > 0.0 {
            self.dot / (self.n1.sqrt() * self.n2.sqrt())
        } else {
            0.0
        }
    }

    /// `(α, β)` for a shared tensor.
    fn coefficients(dot: f64, n1: f64, n2: f64, pcgrad: bool) -> (f32, f32) {
        if pcgrad && dot < 0.0 && n1 > 0.0 && n2 > 0.0 {
            ((1.0 - dot / n1) as f32, (1.0 - dot / n2) as f32)
        } else {
            (1.0, 1.0)
        }
    }

    /// The factor clipping applies to every gradient.
    fn clip_scale(norm2: f64, clip: f64) -> f32 {
        let norm = norm2.sqrt();
        if norm > clip {
            (clip / (norm + 1e-6)) as f32
        } else {
            1.0
        }
    }
}

/// Whether [`fused_step`] runs on these parameters: contiguous f32 tensors, all on the CPU, or all
/// on CUDA unless `VIRALCLIP_FUSED_TRAIN=0` ([`switches::fused_train_cuda`]), unless
/// [`switches::without_fused`] switched it off on this thread.
pub fn supported(params: &[StepParam]) -> bool {
    let ts: Vec<&Tensor> = params
        .iter()
        .flat_map(|p| [Some(p.w), Some(p.m), Some(p.v), p.a, p.b])
        .flatten()
        .collect();
    ts.iter().all(|t| t.is_contiguous()) && super::ops::switches::fused_training(&ts)
}

/// Applies one step to every parameter (see the module's doc) and returns its reductions. The
/// caller leaves out parameters without a gradient.
pub fn fused_step(params: &[StepParam], cfg: StepConfig) -> Result<StepStats> {
    if params.is_empty() {
        return Ok(StepStats {
            dot: 0.0,
            n1: 0.0,
            n2: 0.0,
            norm: 0.0,
        });
    }
    if params[0].w.device().is_cuda() {
        #[cfg(feature = "cuda")]
        return cuda::fused_step(params, cfg);
    }
    cpu_step(params, cfg)
}

/// A contiguous f32 tensor's elements on the CPU, for the length of `f`.
fn read<R>(t: Option<&Tensor>, f: impl FnOnce(Option<&[f32]>) -> Result<R>) -> Result<R> {
    let Some(t) = t else { return f(None) };
    let (s, l) = t.storage_and_layout();
    let Storage::Cpu(CpuStorage::F32(v)) = &*s else {
        candle_core::bail!("fused step: expected f32 tensors on the CPU")
    };
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("fused step: expected contiguous tensors")
    };
    f(Some(&v[a..b]))
}

/// [`read`] of both of a parameter's gradients.
fn read_both<R>(
    a: Option<&Tensor>,
    b: Option<&Tensor>,
    f: impl FnOnce(Option<&[f32]>, Option<&[f32]>) -> Result<R>,
) -> Result<R> {
    read(a, |a| read(b, |b| f(a, b)))
}

/// Runs `f` on a contiguous f32 CPU tensor's elements, mutably (candle's in-place op interface).
fn write(t: &Tensor, f: impl FnOnce(&mut [f32]) -> Result<()>) -> Result<()> {
    type Body<'f> = Box<dyn FnOnce(&mut [f32]) -> Result<()> + 'f>;
    struct Op<'f>(RefCell<Option<Body<'f>>>);
    impl InplaceOp1 for Op<'_> {
        fn name(&self) -> &'static str {
            "fused-step"
        }
        fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> Result<()> {
            let CpuStorage::F32(v) = s else {
                candle_core::bail!("fused step: expected f32 weights")
            };
            let Some((a, b)) = l.contiguous_offsets() else {
                candle_core::bail!("fused step: expected contiguous weights")
            };
            let f = self.0.borrow_mut().take().expect("called once");
            f(&mut v[a..b])
        }
    }
    t.inplace_op1(&Op(RefCell::new(Some(Box::new(f)))))
}

/// The gradient over `range`: `α·a + β·b`, a missing one zero, into `out` (one loop per case,
/// so each vectorises).
fn merged(
    a: Option<&[f32]>,
    b: Option<&[f32]>,
    range: std::ops::Range<usize>,
    alpha: f32,
    beta: f32,
    out: &mut [f32],
) {
    match (a, b) {
        (Some(a), Some(b)) => {
            for ((o, &x), &y) in out.iter_mut().zip(&a[range.clone()]).zip(&b[range]) {
                *o = alpha * x + beta * y;
            }
        }
        (Some(a), None) => out.iter_mut().zip(&a[range]).for_each(|(o, &x)| *o = alpha * x),
        (None, Some(b)) => out.iter_mut().zip(&b[range]).for_each(|(o, &y)| *o = beta * y),
        (None, None) => out.fill(0.0),
    }
}

fn check_len(p: &StepParam) -> Result<usize> {
    let n = p.w.elem_count();
    for t in [Some(p.m), Some(p.v), p.a, p.b].into_iter().flatten() {
        if t.elem_count() != n || t.dtype() != DType::F32 {
            candle_core::bail!("fused step: a tensor of {} f32 elements was expected", n)
        }
    }
    Ok(n)
}

/// The sums of `f` over the chunks of `0..n` (in parallel when there is more than one), each
/// chunk's partial sums in f32 and their total in f64, as the CUDA blocks add theirs; the partial
/// sums are added in chunk order, so the result does not depend on how threads shared the work.
fn over_chunks<const K: usize>(n: usize, f: impl Fn(std::ops::Range<usize>) -> [f64; K] + Sync) -> [f64; K] {
    let chunk = |c: usize| f(c * CHUNK..((c + 1) * CHUNK).min(n));
    let add = |mut p: [f64; K], q: [f64; K]| {
        p.iter_mut().zip(q).for_each(|(x, y)| *x += y);
        p
    };
    match n.div_ceil(CHUNK) {
        0 => [0.0; K],
        1 => chunk(0),
        c => (0..c)
            .into_par_iter()
            .map(chunk)
            .collect::<Vec<_>>()
            .into_iter()
            .fold([0.0; K], add),
    }
}

/// A chunk's index, and its weights and moments.
type Chunk3<'a> = (usize, ((&'a mut [f32], &'a mut [f32]), &'a mut [f32]));

fn cpu_step(params: &[StepParam], cfg: StepConfig) -> Result<StepStats> {
    let lens = params.iter().map(check_len).collect::<Result<Vec<_>>>()?;
    // Pass 1: the dot products over the shared tensors.
    let (mut dot, mut n1, mut n2) = (0f64, 0f64, 0f64);
    if cfg.pcgrad {
        for (p, &n) in params.iter().zip(&lens).filter(|(p, _)| p.shared) {
            let [d, x, y] = read_both(p.a, p.b, |a, b| {
                Ok(over_chunks(n, |range| {
                    let (mut u, mut w) = ([0f32; CHUNK], [0f32; CHUNK]);
                    let (u, w) = (&mut u[..range.len()], &mut w[..range.len()]);
                    merged(a, None, range.clone(), 1.0, 0.0, u);
                    merged(None, b, range, 0.0, 1.0, w);
                    let (mut d, mut x, mut y) = (0f32, 0f32, 0f32);
                    for (&u, &w) in u.iter().zip(w.iter()) {
                        d += u * w;
                        x += u * u;
                        y += w * w;
                    }
                    [d as f64, x as f64, y as f64]
                }))
            })?;
            (dot, n1, n2) = (dot + d, n1 + x, n2 + y);
        }
    }
    let coef = |p: &StepParam| {
        if p.shared {
            StepStats::coefficients(dot, n1, n2, cfg.pcgrad)
        } else {
            (1.0, 1.0)
        }
    };
    // Pass 2: the merged gradients' squared norm.
    let mut norm2 = 0f64;
    for (p, &n) in params.iter().zip(&lens) {
        let (alpha, beta) = coef(p);
        norm2 += read_both(p.a, p.b, |a, b| {
            Ok(over_chunks(n, |range| {
                let mut g = [0f32; CHUNK];
                let g = &mut g[..range.len()];
                merged(a, b, range, alpha, beta, g);
                [g.iter().map(|g| g * g).sum::<f32>() as f64]
            })[0])
        })?;
    }
    // Pass 3: AdamW on the clipped merged gradients.
    let scale = StepStats::clip_scale(norm2, cfg.clip_norm);
    let (b1, b2) = (cfg.beta1, cfg.beta2);
    for p in params {
        let (alpha, beta) = coef(p);
        let (alpha, beta, u) = (alpha * scale, beta * scale, p.update);
        read_both(p.a, p.b, |a, b| {
            write(p.w, |w| {
                write(p.m, |m| {
                    write(p.v, |v| {
                        let update = |(c, ((w, m), v)): Chunk3| {
                            let mut g = [0f32; CHUNK];
                            let g = &mut g[..w.len()];
                            merged(a, b, c * CHUNK..c * CHUNK + w.len(), alpha, beta, g);
                            for k in 0..w.len() {
                                let g = g[k];
                                m[k] = m[k] * b1 + g * (1.0 - b1);
                                v[k] = v[k] * b2 + g * g * (1.0 - b2);
                                let step = (m[k] / u.bc1) / ((v[k] / u.bc2).sqrt() + u.eps) + u.decay * w[k];
                                w[k] -= u.lr * step;
                            }
                        };
                        if w.len() <= CHUNK {
                            update((0, ((w, m), v)));
                        } else {
                            w.par_chunks_mut(CHUNK)
                                .zip(m.par_chunks_mut(CHUNK))
                                .zip(v.par_chunks_mut(CHUNK))
                                .enumerate()
                                .for_each(update);
                        }
                        Ok(())
                    })
                })
            })
        })?;
    }
    Ok(StepStats {
        dot,
        n1,
        n2,
        norm: norm2.sqrt(),
    })
}

#[cfg(feature = "cuda")]
mod cuda {
    //! Launchers for `step_dots`, `step_norm` and `step_adamw` in `kernels/fused.cu`: a table of
    //! the tensors (device pointers and per-tensor AdamW settings) and a table of chunks (tensor,
    //! first element), one block per chunk, uploaded once per step.
    use super::{StepConfig, StepParam, StepStats, CHUNK};
    use crate::model::ops::cuda::{address, function, pair};
    use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::WrapErr;
    use candle_core::{Result, Tensor};

    pub fn fused_step(params: &[StepParam], cfg: StepConfig) -> Result<StepStats> {
        // `struct StepParam` in fused.cu: five pointers, then n, shared, lr, bc1, bc2, eps, decay
        // (u32/f32 pairs packed little-endian into u64s): 9 × 8 bytes.
        let mut table = Vec::with_capacity(params.len() * 9);
        let mut chunks = Vec::new();
        let mut device = None;
        for (k, p) in params.iter().enumerate() {
            let n = super::check_len(p)?;
            let (dev, w) = address(p.w, "fused step")?;
            let opt = |t: Option<&Tensor>| t.map_or(Ok(0), |t| address(t, "fused step").map(|(_, a)| a));
            table.extend([
                w,
                address(p.m, "fused step")?.1,
                address(p.v, "fused step")?.1,
                opt(p.a)?,
                opt(p.b)?,
            ]);
            let u = p.update;
            table.extend([
                pair(n as u32, p.shared as u32),
                pair(u.lr.to_bits(), u.bc1.to_bits()),
                pair(u.bc2.to_bits(), u.eps.to_bits()),
                pair(u.decay.to_bits(), 0),
            ]);
            for c in 0..n.div_ceil(CHUNK) {
                chunks.extend([k as u32, (c * CHUNK) as u32]);
            }
            device.get_or_insert(dev);
        }
        let dev = device.expect("at least one parameter");
        let stream = dev.cuda_stream();
        let table = stream.clone_htod(&table).w()?;
        let chunk_table = stream.clone_htod(&chunks).w()?;
        let mut out = stream.alloc_zeros::<f64>(4).w()?;
        let grid = LaunchConfig {
            grid_dim: ((chunks.len() / 2) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let func = |name: &str| function(&dev, name);
        let pcgrad = cfg.pcgrad as u32;
        if cfg.pcgrad {
            let f = func("step_dots")?;
            let mut args = stream.launch_builder(&f);
            args.arg(&table).arg(&chunk_table).arg(&mut out);
            // SAFETY: the argument list matches the kernel's signature; the table holds live
            // tensors' addresses (they outlive the launch, and candle frees in stream order).
            unsafe { args.launch(grid) }.w()?;
        }
        let f = func("step_norm")?;
        let mut args = stream.launch_builder(&f);
        args.arg(&table).arg(&chunk_table).arg(&mut out).arg(&pcgrad);
        // SAFETY: as above.
        unsafe { args.launch(grid) }.w()?;
        let f = func("step_adamw")?;
        let clip = cfg.clip_norm;
        let mut args = stream.launch_builder(&f);
        args.arg(&table)
            .arg(&chunk_table)
            .arg(&out)
            .arg(&pcgrad)
            .arg(&clip)
            .arg(&cfg.beta1)
            .arg(&cfg.beta2);
        // SAFETY: as above.
        unsafe { args.launch(grid) }.w()?;
        let r = stream.clone_dtoh(&out).w()?;
        Ok(StepStats {
            dot: r[0],
            n1: r[1],
            n2: r[2],
            norm: r[3].sqrt(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// PCGrad's projection, clipping and AdamW through candle's operations, one tensor at a time:
    /// what the trainer did before the fused step.
    #[allow(clippy::type_complexity)]
    fn reference(
        ws: &[Tensor],
        grads: &[(Option<Tensor>, Option<Tensor>, bool)],
        cfg: StepConfig,
        u: AdamUpdate,
    ) -> (Vec<Tensor>, Vec<Tensor>, Vec<Tensor>, StepStats) {
        let zero = |t: &Option<Tensor>, w: &Tensor| t.clone().unwrap_or_else(|| w.zeros_like().unwrap());
        let sum = |f: &dyn Fn(&Tensor, &Tensor) -> Tensor| -> f64 {
            grads
                .iter()
                .zip(ws)
                .filter(|((_, _, s), _)| *s)
                .map(|((a, b, _), w)| {
                    f(&zero(a, w), &zero(b, w))
                        .sum_all()
                        .unwrap()
                        .to_dtype(DType::F64)
                        .unwrap()
                        .to_scalar::<f64>()
                        .unwrap()
                })
                .sum()
        };
        let (dot, n1, n2) = if cfg.pcgrad {
            (
                sum(&|a, b| (a * b).unwrap()),
                sum(&|a, _| a.sqr().unwrap()),
                sum(&|_, b| b.sqr().unwrap()),
            )
        } else {
            (0.0, 0.0, 0.0)
        };
        let conflict = cfg.pcgrad && dot < 0.0 && n1 > 0.0 && n2 > 0.0;
        let merged: Vec<Tensor> = grads
            .iter()
            .zip(ws)
            .map(|((a, b, shared), w)| {
                let (a, b) = (zero(a, w), zero(b, w));
                if *shared && conflict {
                    let p1 = (&a - (&b * (dot / n2)).unwrap()).unwrap();
                    let p2 = (&b - (&a * (dot / n1)).unwrap()).unwrap();
                    (p1 + p2).unwrap()
                } else {
                    (a + b).unwrap()
                }
            })
            .collect();
        let norm = merged
            .iter()
            .map(|g| g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() as f64)
            .sum::<f64>()
            .sqrt();
        let s = if norm > cfg.clip_norm {
            cfg.clip_norm / (norm + 1e-6)
        } else {
            1.0
        };
        let (b1, b2) = (cfg.beta1 as f64, cfg.beta2 as f64);
        let mut out = (Vec::new(), Vec::new(), Vec::new());
        for (w, g) in ws.iter().zip(&merged) {
            let g = (g * s).unwrap();
            let m = (g.zeros_like().unwrap() * b1 + (&g * (1.0 - b1)).unwrap()).unwrap();
            let v = (g.zeros_like().unwrap() * b2 + (g.sqr().unwrap() * (1.0 - b2)).unwrap()).unwrap();
            let step = ((&m / u.bc1 as f64).unwrap()
                / ((&v / u.bc2 as f64).unwrap().sqrt().unwrap() + u.eps as f64).unwrap())
            .unwrap();
            let step = (step + (w * u.decay as f64).unwrap()).unwrap();
            out.0.push((w - (step * u.lr as f64).unwrap()).unwrap());
            out.1.push(m);
            out.2.push(v);
        }
        let stats = StepStats { dot, n1, n2, norm };
        (out.0, out.1, out.2, stats)
    }

    use crate::model::ops::testing::max_diff;

    /// The fused passes give what candle's operations give: projected (conflicting tasks) and
    /// summed (agreeing ones), clipped and not, with a tensor longer than one chunk, a head with
    /// one task's gradient, and a shared tensor that only one task reached.
    #[test]
    fn fused_step_matches_the_operations() {
        let dev = Device::Cpu;
        let shapes: [&[usize]; 4] = [&[3, CHUNK / 2 + 37], &[300], &[7, 11], &[28]];
        for (agree, clip) in [(false, 1e9f64), (false, 0.5), (true, 1e9), (true, 0.5)] {
            // Seeded numbers (candle's CPU random numbers cannot be seeded): the same test every run.
            let state = std::cell::Cell::new(0x9E37_79B9_7F4A_7C15u64 ^ (agree as u64) ^ clip.to_bits());
            let normalish = |dims: &[usize], scale: f32| {
                let n: usize = dims.iter().product();
                let v: Vec<f32> = (0..n)
                    .map(|_| {
                        // The sum of four uniforms, centred: close enough to a normal here.
                        (0..4)
                            .map(|_| {
                                let mut x = state.get();
                                x ^= x << 13;
                                x ^= x >> 7;
                                x ^= x << 17;
                                state.set(x);
                                (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
                            })
                            .sum::<f32>()
                            * scale
                            * 1.7
                    })
                    .collect();
                Tensor::from_vec(v, dims, &dev).unwrap()
            };
            let ws: Vec<Tensor> = shapes.iter().map(|s| normalish(s, 1.0)).collect();
            let g = |w: &Tensor| normalish(w.dims(), 0.1);
            let grads: Vec<(Option<Tensor>, Option<Tensor>, bool)> = ws
                .iter()
                .enumerate()
                .map(|(k, w)| {
                    let a = g(w);
                    // Agreeing tasks: b close to a; conflicting: b close to −a.
                    let b = ((&a * if agree { 0.8 } else { -0.8 }).unwrap() + (g(w) * 0.3).unwrap()).unwrap();
                    match k {
                        0 | 1 => (Some(a), Some(b), true),
                        2 => (None, Some(b), true),
                        _ => (Some(a), None, false),
                    }
                })
                .collect();
            let cfg = StepConfig {
                pcgrad: true,
                clip_norm: clip,
                beta1: 0.9,
                beta2: 0.999,
            };
            let u = AdamUpdate {
                lr: 1e-2,
                bc1: 0.1,
                bc2: 0.001,
                // Large enough that g / (|g| + eps) is smooth: the two ways of merging round
                // differently, which a tiny gradient would magnify.
                eps: 1e-3,
                decay: 0.01,
            };
            let (ew, em, ev, es) = reference(&ws, &grads, cfg, u);
            let w: Vec<Tensor> = ws.iter().map(|w| w.copy().unwrap()).collect();
            let m: Vec<Tensor> = ws.iter().map(|w| w.zeros_like().unwrap()).collect();
            let v: Vec<Tensor> = ws.iter().map(|w| w.zeros_like().unwrap()).collect();
            let params: Vec<StepParam> = (0..ws.len())
                .map(|k| StepParam {
                    w: &w[k],
                    m: &m[k],
                    v: &v[k],
                    a: grads[k].0.as_ref(),
                    b: grads[k].1.as_ref(),
                    shared: grads[k].2,
                    update: u,
                })
                .collect();
            assert!(supported(&params));
            let s = fused_step(&params, cfg).unwrap();
            assert_eq!(s.conflict(), !agree, "{s:?}");
            assert!((s.dot - es.dot).abs() < 1e-4 * es.n1, "{s:?} vs {es:?}");
            assert!((s.norm - es.norm).abs() < 1e-4 * es.norm, "{s:?} vs {es:?}");
            for k in 0..ws.len() {
                for (x, y, what) in [(&w[k], &ew[k], "w"), (&m[k], &em[k], "m"), (&v[k], &ev[k], "v")] {
                    let d = max_diff(x, y);
                    assert!(d < 1e-5, "agree {agree} clip {clip} tensor {k} {what}: {d}");
                }
                assert!(max_diff(&w[k], &ws[k]) > 1e-4, "tensor {k} moved");
            }
        }
    }
}
