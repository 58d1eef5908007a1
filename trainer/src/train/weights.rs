//! The weights a run trains and keeps: the model built with its trainable tensors as Vars
//! ([`trainable`]; fresh heads or `--init`'s), the kept epoch's snapshot ([`snapshot`]) and the
//! manifest the artifact ships with ([`manifest_for`]).

use super::config::TrainConfig;
use crate::data::{SourceStats, EMOTIONS};
use crate::error::{Error, Result};
use crate::optim::AdamW;
use candle_core::{DType, Device, Tensor, Var};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use viralclip_engine::model::{BaseEncoder, EncoderFiles, Manifest, MultiTask, Pooling, WeightStore};

/// Collects trainable tensors as Vars while the model loads: heads and the named encoder layers.
struct TrainableStore {
    inner: WeightStore,
    init: HashMap<String, Tensor>,
    trainable: Box<dyn Fn(&str) -> bool + Send + Sync>,
    vars: Arc<Mutex<Vec<(String, Var)>>>,
}

impl candle_nn::var_builder::SimpleBackend for TrainableStore {
    fn get(
        &self,
        s: candle_core::Shape,
        name: &str,
        h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = match self.init.get(name) {
            Some(t) => t.to_device(dev)?.to_dtype(dtype)?,
            None => self.inner.get(s.clone(), name, h, dtype, dev)?,
        };
        if (self.trainable)(name) {
            let v = Var::from_tensor(&t.to_dtype(DType::F32)?)?;
            self.vars
                .lock()
                .expect("lock")
                .push((name.to_string(), v.clone()));
            return Ok(v.as_tensor().clone());
        }
        Ok(t)
    }
    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.inner.get_unchecked(name, dtype, dev)
    }
    fn contains_tensor(&self, name: &str) -> bool {
        self.init.contains_key(name) || self.inner.contains_tensor(name)
    }
}

/// Whether `name` is one of the heads' tensors.
pub(super) fn is_head(name: &str) -> bool {
    name.starts_with("popularity_head.") || name.starts_with("emotion_head.")
}

/// The model with the heads and the encoder layers `from..` as Vars (fresh heads from the run's
/// seed, or `--init`'s tensors), the frozen layers prepared for the fused scoring path, the
/// optimiser over the Vars (group 0: heads, 1: layers), and the encoder tensors `--init` brought.
pub(super) fn trainable(
    cfg: &TrainConfig,
    enc: &EncoderFiles,
    from: usize,
    device: &Device,
) -> Result<(MultiTask, AdamW, HashSet<String>)> {
    let layers = enc.config.num_hidden_layers;
    let vars = Arc::new(Mutex::new(Vec::new()));
    let trainable_layers: Vec<String> = (from..layers)
        .map(|i| format!("bert.encoder.layer.{i}."))
        .collect();
    let init: HashMap<String, Tensor> = match &cfg.init {
        None => viralclip_engine::model::init_heads(enc.config.hidden_size, EMOTIONS, cfg.seed)?,
        Some(dir) => init_from(dir, &cfg.base_repo, from, cfg.pooling)?,
    };
    // Encoder tensors --init brought: the artifact keeps them even after a heads-only epoch.
    let from_init: HashSet<String> = init.keys().filter(|k| !is_head(k)).cloned().collect();
    let store = TrainableStore {
        inner: WeightStore::open(None, Some(&enc.dir.join("model.safetensors")), DType::F32)?,
        init,
        trainable: Box::new(move |n: &str| is_head(n) || trainable_layers.iter().any(|p| n.starts_with(p))),
        vars: vars.clone(),
    };
    let vb = candle_nn::VarBuilder::from_backend(Box::new(store), DType::F32, device.clone());
    let mut model = MultiTask::load(vb, &enc.config, EMOTIONS)?;
    model.bert.set_pooling(cfg.pooling);
    // The frozen layers never change: the cache pass over them takes the fused scoring path.
    model.bert.prepare_inference_below(from)?;
    let named: Vec<(String, Var)> = std::mem::take(&mut *vars.lock().expect("lock"));
    let params: Vec<(String, Var, usize)> = named
        .into_iter()
        .map(|(n, v)| {
            let g = if is_head(&n) { 0 } else { 1 };
            (n, v, g)
        })
        .collect();
    let opt = AdamW::new(params, cfg.weight_decay)?;
    Ok((model, opt, from_init))
}

/// A copy of the tensors the artifact keeps after this epoch: the heads, the trained layers
/// unless the epoch was `frozen` (heads only, and not the `last`), and what `--init` brought
/// (`from_init`). With `f16_layers`, encoder matrices in fp16 (biases, norms and heads stay fp32).
pub(super) fn snapshot(
    cfg: &TrainConfig,
    opt: &AdamW,
    frozen: bool,
    last: bool,
    from_init: &HashSet<String>,
) -> Result<HashMap<String, Tensor>> {
    Ok(opt
        .params
        .iter()
        .filter(|p| is_head(&p.name) || !frozen || last || from_init.contains(&p.name))
        .map(|p| {
            let t = p.var.as_tensor();
            let t = if cfg.f16_layers && p.name.starts_with("bert.") && t.rank() >= 2 {
                t.to_dtype(DType::F16)?
            } else {
                t.copy()?
            };
            Ok((p.name.clone(), t))
        })
        .collect::<candle_core::Result<HashMap<_, _>>>()?)
}

/// The tensors a run starts from with `--init`: the model's heads and fine-tuned layers. Layers it
/// fine-tuned below `from` (the lowest layer this run trains) would be lost from the new artifact,
/// so that is refused.
fn init_from(dir: &Path, base_repo: &str, from: usize, pooling: Pooling) -> Result<HashMap<String, Tensor>> {
    let manifest = Manifest::read(dir)?;
    if manifest.pooling != pooling {
        return Err(Error::Config(format!(
            "--init {}: its heads read {:?} pooling, this run {pooling:?} (--pooling)",
            dir.display(),
            manifest.pooling
        )));
    }
    if manifest.labels.len() != EMOTIONS {
        return Err(Error::Config(format!(
            "--init {}: it has {} emotion labels, the trainer writes {EMOTIONS}",
            dir.display(),
            manifest.labels.len()
        )));
    }
    if manifest.base_encoder.repo != base_repo {
        tracing::warn!(init = %manifest.base_encoder.repo, base = base_repo, "--init model was trained over another base encoder");
    }
    if let Some(&low) = manifest.fine_tuned_layers.iter().min() {
        if low < from {
            return Err(Error::Config(format!(
                "--init {}: it fine-tuned encoder layers from {low} up; train at least those (--unfreeze-layers and --unfrozen-epochs > 0 so that layer {low} is trained)",
                dir.display()
            )));
        }
    }
    let path = dir.join(&manifest.weights);
    let tensors =
        candle_core::safetensors::load(&path, &Device::Cpu).map_err(|e| Error::data(&path, e.to_string()))?;
    if !tensors.keys().any(|k| is_head(k)) {
        return Err(Error::data(&path, "no popularity_head/emotion_head tensors"));
    }
    Ok(tensors)
}

/// The manifest of the artifact this run writes.
pub(super) fn manifest_for(
    cfg: &TrainConfig,
    enc: &EncoderFiles,
    unfreeze: usize,
    has_layers: bool,
    thr: &[f32],
    sources: &[SourceStats],
) -> Manifest {
    let mut m = Manifest::new(
        &format!("viralclip multitask on {}", cfg.base_repo),
        BaseEncoder {
            repo: cfg.base_repo.clone(),
            revision: None,
            path: std::path::absolute(&enc.dir).ok(),
        },
    );
    m.text_prefix = Manifest::text_prefix_for(&cfg.base_repo);
    m.max_length = cfg.max_length;
    m.pooling = cfg.pooling;
    m.thresholds.emotions = thr.to_vec();
    let layers = enc.config.num_hidden_layers;
    m.fine_tuned_layers = if has_layers {
        (layers - unfreeze..layers).collect()
    } else {
        Vec::new()
    };
    let names: Vec<String> = sources
        .iter()
        .map(|s| {
            s.path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    m.notes = format!("trained by viralclip-trainer on {}", names.join(", "));
    m
}
