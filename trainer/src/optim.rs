//! AdamW with decoupled weight decay (no decay on biases and norms, as Hugging Face does),
//! per-parameter learning-rate groups, and a state that checkpoints to safetensors so a killed
//! run resumes exactly. Plus the cosine schedule with linear warmup.

use candle_core::{Device, Result, Tensor, Var};
use std::collections::HashMap;
use std::path::Path;
use viralclip_engine::model::adam::{self, AdamUpdate};
use viralclip_engine::model::step::{self, StepConfig, StepParam, StepStats};

/// One trainable tensor.
pub struct Param {
    pub name: String,
    pub var: Var,
    /// Which learning-rate group (0 = heads, 1 = encoder).
    pub group: usize,
    pub decay: bool,
    m: Tensor,
    v: Tensor,
    pub(crate) steps: u64,
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
    /// CPU (and on CUDA unless `VIRALCLIP_FUSED_CUDA=0`) are updated in place: three passes over
    /// memory and no allocation (`engine::model::adam`); others through candle's
    /// operations ([`AdamW::step_ops`]), which compute the same.
    pub fn step(&mut self, grads: &[Option<Tensor>], lrs: &[f64]) -> Result<()> {
        let hyper = (self.beta1, self.beta2, self.eps, self.weight_decay);
        let (b1, b2, eps, wd) = hyper;
        for (p, g) in self.params.iter_mut().zip(grads) {
            let Some(g) = g else { continue };
            let lr = lrs[p.group];
            if lr == 0.0 {
                continue;
            }
            p.steps += 1;
            let t = p.steps as i32;
            let w = p.var.as_tensor();
            let g = g.contiguous()?;
            if !adam::adam_in_place(&[w, &g, &p.m, &p.v]) {
                Self::step_ops(p, &g, lr, t, hyper)?;
                continue;
            }
            adam::adam_moment(&p.m, &g, b1 as f32, false)?;
            adam::adam_moment(&p.v, &g, b2 as f32, true)?;
            let update = AdamUpdate {
                lr: lr as f32,
                bc1: (1.0 - b1.powi(t)) as f32,
                bc2: (1.0 - b2.powi(t)) as f32,
                eps: eps as f32,
                decay: if p.decay { wd as f32 } else { 0.0 },
            };
            adam::adam_update(w, &p.m, &p.v, update)?;
        }
        Ok(())
    }

    /// One step of every parameter in three fused passes (`engine::model::step`): with `pcgrad`,
    /// the shared (encoder, group 1) parameters' two task gradients `grads[i] = (a, b)` are
    /// merged by PCGrad's projection; a head's gradient is whichever of the two it has. Then
    /// global-norm clipping at `clip_norm` and AdamW. Parameters with no gradient (or a zero rate)
    /// are left alone, as [`AdamW::step`] leaves them. `None` when the fused passes cannot run on
    /// these tensors (not f32, or `VIRALCLIP_FUSED_CUDA=0`): nothing was changed, and the caller
    /// takes candle's operations ([`crate::pcgrad::combine`], [`AdamW::step`]).
    pub fn step_fused(
        &mut self,
        grads: &[(Option<Tensor>, Option<Tensor>)],
        pcgrad: bool,
        clip_norm: f64,
        lrs: &[f64],
    ) -> Result<Option<StepStats>> {
        let grads = grads
            .iter()
            .map(|(a, b)| {
                Ok((
                    a.as_ref().map(Tensor::contiguous).transpose()?,
                    b.as_ref().map(Tensor::contiguous).transpose()?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let live: Vec<usize> = (0..self.params.len())
            .filter(|&k| {
                let (a, b) = &grads[k];
                (a.is_some() || b.is_some()) && lrs[self.params[k].group] != 0.0
            })
            .collect();
        let (b1, b2, eps, wd) = (self.beta1, self.beta2, self.eps, self.weight_decay);
        let make = |k: usize, steps: u64| {
            let p = &self.params[k];
            let t = steps as i32;
            StepParam {
                w: p.var.as_tensor(),
                m: &p.m,
                v: &p.v,
                a: grads[k].0.as_ref(),
                b: grads[k].1.as_ref(),
                shared: p.group == 1,
                update: AdamUpdate {
                    lr: lrs[p.group] as f32,
                    bc1: (1.0 - b1.powi(t)) as f32,
                    bc2: (1.0 - b2.powi(t)) as f32,
                    eps: eps as f32,
                    decay: if p.decay { wd as f32 } else { 0.0 },
                },
            }
        };
        let params: Vec<StepParam> = live.iter().map(|&k| make(k, self.params[k].steps + 1)).collect();
        if !step::supported(&params) {
            return Ok(None);
        }
        let cfg = StepConfig {
            pcgrad,
            clip_norm,
            beta1: b1 as f32,
            beta2: b2 as f32,
        };
        let stats = step::fused_step(&params, cfg)?;
        drop(params);
        for k in live {
            self.params[k].steps += 1;
        }
        Ok(Some(stats))
    }

    /// Step `t` of one parameter through candle's operations (any device and dtype); `hyper`:
    /// (beta1, beta2, eps, weight decay).
    fn step_ops(p: &mut Param, g: &Tensor, lr: f64, t: i32, hyper: (f64, f64, f64, f64)) -> Result<()> {
        let (beta1, beta2, eps, weight_decay) = hyper;
        p.m = ((&p.m * beta1)? + (g * (1.0 - beta1))?)?;
        p.v = ((&p.v * beta2)? + (g.sqr()? * (1.0 - beta2))?)?;
        let mhat = (&p.m / (1.0 - beta1.powi(t)))?;
        let vhat = (&p.v / (1.0 - beta2.powi(t)))?;
        let mut update = (mhat / (vhat.sqrt()? + eps)?)?;
        let w = p.var.as_tensor();
        if p.decay && weight_decay > 0.0 {
            update = (update + (w * weight_decay)?)?;
        }
        p.var.set(&(w - (update * lr)?)?)
    }

    /// Steps two copies of the same random parameters on `dev` three times, one with [`AdamW::step`]
    /// and one with candle's operations, and returns the largest difference in weights and
    /// moments, and whether `step` ran in place there (a check for the in-place passes, run by
    /// the tests on the CPU and by `viralclip bench --train-steps` on a GPU).
    pub fn check_in_place(dev: &Device) -> Result<(f32, bool)> {
        let rand = |shape: &[usize]| Tensor::randn(0f32, 1.0, shape, dev);
        let (w, b) = (rand(&[37, 70_000 / 37])?, rand(&[300])?);
        let vars = |w: &Tensor, b: &Tensor| -> Result<Vec<(String, Var, usize)>> {
            Ok(vec![
                ("layer.weight".to_string(), Var::from_tensor(&w.copy()?)?, 1),
                ("layer.bias".to_string(), Var::from_tensor(&b.copy()?)?, 0),
            ])
        };
        let mut fused = AdamW::new(vars(&w, &b)?, 0.01)?;
        let mut ops = AdamW::new(vars(&w, &b)?, 0.01)?;
        let lrs = [1e-3, 2e-4];
        let in_place = adam::adam_in_place(&[fused.params[0].var.as_tensor()]);
        for _ in 0..3 {
            let grads = fused
                .params
                .iter()
                .map(|p| Ok(Some((rand(p.var.dims())? * 0.1)?)))
                .collect::<Result<Vec<_>>>()?;
            fused.step(&grads, &lrs)?;
            let hyper = (ops.beta1, ops.beta2, ops.eps, ops.weight_decay);
            for (p, g) in ops.params.iter_mut().zip(&grads) {
                p.steps += 1;
                let g = g.as_ref().expect("every gradient");
                Self::step_ops(p, g, lrs[p.group], p.steps as i32, hyper)?;
            }
        }
        let mut worst = 0f32;
        for (a, b) in fused.params.iter().zip(&ops.params) {
            for (x, y) in [(a.var.as_tensor(), b.var.as_tensor()), (&a.m, &b.m), (&a.v, &b.v)] {
                worst = worst.max((x - y)?.abs()?.max_all()?.to_scalar::<f32>()?);
            }
        }
        Ok((worst, in_place))
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The in-place CPU step and candle's operations give the same weights and moments, and the
    /// moments are two tensors (updated in place, they must not share storage).
    #[test]
    fn in_place_step_matches_the_operations() {
        let (diff, in_place) = AdamW::check_in_place(&Device::Cpu).unwrap();
        assert!(in_place, "f32 on the CPU is updated in place");
        assert!(diff < 1e-6, "in place vs operations: {diff}");
        let x = Var::new(&[3.0f32, -2.0], &Device::Cpu).unwrap();
        let mut opt = AdamW::new(vec![("x".into(), x, 0)], 0.0).unwrap();
        let g = Tensor::new(&[1.0f32, -1.0], &Device::Cpu).unwrap();
        opt.step(&[Some(g)], &[0.1]).unwrap();
        let p = &opt.params[0];
        let (m, v) = (p.m.to_vec1::<f32>().unwrap(), p.v.to_vec1::<f32>().unwrap());
        assert!((m[0] - 0.1).abs() < 1e-6 && (m[1] + 0.1).abs() < 1e-6, "{m:?}");
        assert!(
            (v[0] - 0.001).abs() < 1e-7 && (v[1] - 0.001).abs() < 1e-7,
            "{v:?}"
        );
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
