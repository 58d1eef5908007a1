//! AdamW with decoupled weight decay (no decay on biases and norms, as Hugging Face does),
//! per-parameter learning-rate groups, and a state that checkpoints to safetensors so a killed
//! run resumes exactly. Plus the cosine schedule with linear warmup.

use candle_core::{Result, Tensor, Var};
use std::collections::HashMap;
use std::path::Path;

/// One trainable tensor.
pub struct Param {
    pub name: String,
    pub var: Var,
    /// Which learning-rate group (0 = heads, 1 = encoder).
    pub group: usize,
    pub decay: bool,
    m: Tensor,
    v: Tensor,
    steps: u64,
}

pub struct AdamW {
    pub params: Vec<Param>,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl AdamW {
    pub fn new(vars: Vec<(String, Var, usize)>, weight_decay: f64) -> Result<Self> {
        let params = vars
            .into_iter()
            .map(|(name, var, group)| {
                let decay = var.as_tensor().rank() >= 2 && !name.contains("LayerNorm");
                // Two tensors, not one shared: the CPU step updates them in place.
                let (m, v) = (var.as_tensor().zeros_like()?, var.as_tensor().zeros_like()?);
                Ok(Param {
                    name,
                    var,
                    group,
                    decay,
                    m,
                    v,
                    steps: 0,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(AdamW {
            params,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
        })
    }

    /// Applies `grads[i]` to `params[i]` where present, with `lrs[group]`. f32 parameters on the
    /// CPU are updated in place, three passes over memory and no allocation ([`fused`]); others
    /// (a GPU's) through candle's operations ([`AdamW::step_ops`]), which compute the same.
    pub fn step(&mut self, grads: &[Option<Tensor>], lrs: &[f64]) -> Result<()> {
        let (b1, b2, eps, wd) = (self.beta1, self.beta2, self.eps, self.weight_decay);
        for (p, g) in self.params.iter_mut().zip(grads) {
            let Some(g) = g else { continue };
            let lr = lrs[p.group];
            if lr == 0.0 {
                continue;
            }
            let w = p.var.as_tensor();
            if !(w.device().is_cpu() && w.dtype() == candle_core::DType::F32 && g.dtype() == w.dtype()) {
                Self::step_ops(p, g, lr, b1, b2, eps, wd)?;
                continue;
            }
            p.steps += 1;
            let t = p.steps as i32;
            let g = g.contiguous()?;
            p.m.inplace_op2(
                &g,
                &fused::Moment {
                    beta: b1 as f32,
                    square: false,
                },
            )?;
            p.v.inplace_op2(
                &g,
                &fused::Moment {
                    beta: b2 as f32,
                    square: true,
                },
            )?;
            let update = fused::Update {
                lr: lr as f32,
                bc1: (1.0 - b1.powi(t)) as f32,
                bc2: (1.0 - b2.powi(t)) as f32,
                eps: eps as f32,
                decay: if p.decay { wd as f32 } else { 0.0 },
            };
            w.inplace_op3(&p.m, &p.v, &update)?;
        }
        Ok(())
    }

    /// One parameter's step through candle's operations (any device and dtype).
    fn step_ops(
        p: &mut Param,
        g: &Tensor,
        lr: f64,
        beta1: f64,
        beta2: f64,
        eps: f64,
        weight_decay: f64,
    ) -> Result<()> {
        {
            p.steps += 1;
            let t = p.steps as i32;
            p.m = ((&p.m * beta1)? + (g * (1.0 - beta1))?)?;
            p.v = ((&p.v * beta2)? + (g.sqr()? * (1.0 - beta2))?)?;
            let mhat = (&p.m / (1.0 - beta1.powi(t)))?;
            let vhat = (&p.v / (1.0 - beta2.powi(t)))?;
            let mut update = (mhat / (vhat.sqrt()? + eps)?)?;
            let w = p.var.as_tensor();
            if p.decay && weight_decay > 0.0 {
                update = (update + (w * weight_decay)?)?;
            }
            p.var.set(&(w - (update * lr)?)?)?;
        }
        Ok(())
    }

    /// Saves weights and moments.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut map = HashMap::new();
        for p in &self.params {
            map.insert(format!("param/{}", p.name), p.var.as_tensor().clone());
            map.insert(format!("m/{}", p.name), p.m.clone());
            map.insert(format!("v/{}", p.name), p.v.clone());
            map.insert(
                format!("steps/{}", p.name),
                Tensor::new(&[p.steps as f32], &candle_core::Device::Cpu)?,
            );
        }
        candle_core::safetensors::save(&map, path)
    }

    /// Restores what [`AdamW::save`] wrote.
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let dev = self
            .params
            .first()
            .map(|p| p.var.device().clone())
            .unwrap_or(candle_core::Device::Cpu);
        let map = candle_core::safetensors::load(path, &dev)?;
        let get = |k: String| {
            map.get(&k)
                .cloned()
                .ok_or_else(|| candle_core::Error::Msg(format!("checkpoint lacks {k}")))
        };
        for p in &mut self.params {
            p.var
                .set(&get(format!("param/{}", p.name))?.to_dtype(p.var.dtype())?)?;
            p.m = get(format!("m/{}", p.name))?;
            p.v = get(format!("v/{}", p.name))?;
            p.steps = get(format!("steps/{}", p.name))?
                .to_device(&candle_core::Device::Cpu)?
                .to_vec1::<f32>()?[0] as u64;
        }
        Ok(())
    }
}

/// Linear warmup to 1 over `warmup` steps, then cosine decay to 0 at `total`.
pub fn cosine_with_warmup(step: usize, warmup: usize, total: usize) -> f64 {
    if step < warmup {
        return (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1);
    let progress = ((step - warmup) as f64 / span as f64).min(1.0);
    0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

/// The CPU step's in-place passes over contiguous f32 storage.
mod fused {
    use candle_core::{bail, CpuStorage, InplaceOp2, InplaceOp3, Layout, Result};
    use rayon::prelude::*;

    const CHUNK: usize = 1 << 14;

    fn span(l: &Layout) -> Result<(usize, usize)> {
        match l.contiguous_offsets() {
            Some(o) => Ok(o),
            None => bail!("adamw: not contiguous"),
        }
    }

    fn f32s(s: &CpuStorage) -> Result<&[f32]> {
        match s {
            CpuStorage::F32(v) => Ok(v),
            _ => bail!("adamw: not f32"),
        }
    }

    fn f32s_mut(s: &mut CpuStorage) -> Result<&mut [f32]> {
        match s {
            CpuStorage::F32(v) => Ok(v),
            _ => bail!("adamw: not f32"),
        }
    }

    /// A moment: `x ← β·x + (1−β)·g` (of `g²` when `square`).
    pub struct Moment {
        pub beta: f32,
        pub square: bool,
    }

    impl InplaceOp2 for Moment {
        fn name(&self) -> &'static str {
            "adamw-moment"
        }
        fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<()> {
            let ((a, b), (c, d)) = (span(l1)?, span(l2)?);
            let x = &mut f32s_mut(s1)?[a..b];
            let g = &f32s(s2)?[c..d];
            if x.len() != g.len() {
                bail!("adamw: {} moments for {} gradients", x.len(), g.len());
            }
            let (beta, rest, square) = (self.beta, 1.0 - self.beta, self.square);
            x.par_chunks_mut(CHUNK)
                .zip(g.par_chunks(CHUNK))
                .for_each(|(x, g)| {
                    for (x, &g) in x.iter_mut().zip(g) {
                        *x = *x * beta + if square { g * g } else { g } * rest;
                    }
                });
            Ok(())
        }
    }

    /// The update from the moments: `w ← w − lr·(m̂ / (√v̂ + ε) + decay·w)`.
    pub struct Update {
        pub lr: f32,
        pub bc1: f32,
        pub bc2: f32,
        pub eps: f32,
        pub decay: f32,
    }

    impl InplaceOp3 for Update {
        fn name(&self) -> &'static str {
            "adamw-update"
        }
        fn cpu_fwd(
            &self,
            s1: &mut CpuStorage,
            l1: &Layout,
            s2: &CpuStorage,
            l2: &Layout,
            s3: &CpuStorage,
            l3: &Layout,
        ) -> Result<()> {
            let ((a, b), (c, d), (e, f)) = (span(l1)?, span(l2)?, span(l3)?);
            let w = &mut f32s_mut(s1)?[a..b];
            let (m, v) = (&f32s(s2)?[c..d], &f32s(s3)?[e..f]);
            if w.len() != m.len() || w.len() != v.len() {
                bail!("adamw: {} weights, {} and {} moments", w.len(), m.len(), v.len());
            }
            let u = self;
            w.par_chunks_mut(CHUNK)
                .zip(m.par_chunks(CHUNK).zip(v.par_chunks(CHUNK)))
                .for_each(|(w, (m, v))| {
                    for ((w, &m), &v) in w.iter_mut().zip(m).zip(v) {
                        let step = (m / u.bc1) / ((v / u.bc2).sqrt() + u.eps) + u.decay * *w;
                        *w -= u.lr * step;
                    }
                });
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The in-place CPU step and candle's operations give the same weights and moments.
    #[test]
    fn in_place_step_matches_the_operations() {
        let dev = Device::Cpu;
        let make = || {
            let w = Var::from_tensor(&Tensor::randn(0f32, 1.0, (37, 70_000 / 37), &dev).unwrap()).unwrap();
            let b = Var::from_tensor(&Tensor::randn(0f32, 1.0, 300, &dev).unwrap()).unwrap();
            (w, b)
        };
        let (w1, b1) = make();
        let (w2, b2) = (
            Var::from_tensor(&w1.as_tensor().copy().unwrap()).unwrap(),
            Var::from_tensor(&b1.as_tensor().copy().unwrap()).unwrap(),
        );
        let vars = |w: &Var, b: &Var| {
            vec![
                ("layer.weight".to_string(), w.clone(), 1),
                ("layer.bias".to_string(), b.clone(), 0),
            ]
        };
        let start = w1.as_tensor().copy().unwrap();
        let mut fused = AdamW::new(vars(&w1, &b1), 0.01).unwrap();
        let mut ops = AdamW::new(vars(&w2, &b2), 0.01).unwrap();
        assert!(fused.params[0].decay && !fused.params[1].decay);
        let lrs = [1e-3, 2e-4];
        for _ in 0..3 {
            let grads: Vec<Option<Tensor>> = fused
                .params
                .iter()
                .map(|p| Some(Tensor::randn(0f32, 0.1, p.var.shape(), &dev).unwrap()))
                .collect();
            fused.step(&grads, &lrs).unwrap();
            let (b1_, b2_, eps, wd) = (ops.beta1, ops.beta2, ops.eps, ops.weight_decay);
            for (p, g) in ops.params.iter_mut().zip(&grads) {
                AdamW::step_ops(p, g.as_ref().unwrap(), lrs[p.group], b1_, b2_, eps, wd).unwrap();
            }
        }
        let close = |a: &Tensor, b: &Tensor| {
            let d = (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(d < 1e-6, "differ by {d}");
        };
        for (a, b) in fused.params.iter().zip(&ops.params) {
            close(a.var.as_tensor(), b.var.as_tensor());
            close(&a.m, &b.m);
            close(&a.v, &b.v);
            assert_eq!(a.steps, 3);
        }
        // The weights moved, and the moments are not one shared tensor.
        let moved = (w1.as_tensor() - &start)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert!(moved.to_scalar::<f32>().unwrap() > 1e-4);
        let m = fused.params[0]
            .m
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let v = fused.params[0].v.sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(m > 0.0 && v > 0.0 && (m - v).abs() > 1e-3);
    }

    #[test]
    fn schedule_shape() {
        assert!((cosine_with_warmup(0, 10, 110) - 0.1).abs() < 1e-12);
        assert!((cosine_with_warmup(9, 10, 110) - 1.0).abs() < 1e-12);
        assert!((cosine_with_warmup(60, 10, 110) - 0.5).abs() < 1e-12);
        assert!(cosine_with_warmup(109, 10, 110) < 0.001);
    }

    #[test]
    fn adamw_minimises_a_quadratic_and_checkpoints() {
        let x = Var::new(&[3.0f32, -2.0], &Device::Cpu).unwrap();
        let mut opt = AdamW::new(vec![("x".into(), x.clone(), 0)], 0.0).unwrap();
        for _ in 0..300 {
            let loss = x.as_tensor().sqr().unwrap().sum_all().unwrap();
            let g = loss.backward().unwrap().get(x.as_tensor()).cloned();
            opt.step(&[g], &[0.05]).unwrap();
        }
        let v: Vec<f32> = x.as_tensor().to_vec1().unwrap();
        assert!(v.iter().all(|a| a.abs() < 0.05), "{v:?}");
        let d = tempfile::tempdir().unwrap();
        opt.save(&d.path().join("s.safetensors")).unwrap();
        let y = Var::new(&[0.0f32, 0.0], &Device::Cpu).unwrap();
        let mut opt2 = AdamW::new(vec![("x".into(), y.clone(), 0)], 0.0).unwrap();
        opt2.load(&d.path().join("s.safetensors")).unwrap();
        assert_eq!(y.as_tensor().to_vec1::<f32>().unwrap(), v);
        assert_eq!(opt2.params[0].steps, 300);
    }
}
