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
                let z = var.as_tensor().zeros_like()?;
                Ok(Param {
                    name,
                    var,
                    group,
                    decay,
                    m: z.clone(),
                    v: z,
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

    /// Applies `grads[i]` to `params[i]` where present, with `lrs[group]`.
    pub fn step(&mut self, grads: &[Option<Tensor>], lrs: &[f64]) -> Result<()> {
        for (p, g) in self.params.iter_mut().zip(grads) {
            let Some(g) = g else { continue };
            let lr = lrs[p.group];
            if lr == 0.0 {
                continue;
            }
            p.steps += 1;
            let t = p.steps as i32;
            p.m = ((&p.m * self.beta1)? + (g * (1.0 - self.beta1))?)?;
            p.v = ((&p.v * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?;
            let mhat = (&p.m / (1.0 - self.beta1.powi(t)))?;
            let vhat = (&p.v / (1.0 - self.beta2.powi(t)))?;
            let mut update = (mhat / (vhat.sqrt()? + self.eps)?)?;
            let w = p.var.as_tensor();
            if p.decay && self.weight_decay > 0.0 {
                update = (update + (w * self.weight_decay)?)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

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
