//! Model artifacts: a directory with `model.json` (the [`Manifest`]) and a small safetensors file
//! holding the heads and whatever encoder tensors were fine-tuned. Everything else comes from the
//! base encoder (config.json, tokenizer.json, model.safetensors), found on disk or fetched from the
//! Hugging Face hub. A local path always wins over the hub.

use super::bert::BertConfig;
use super::heads::MultiTask;
use crate::error::{Error, Result};
use crate::score::{ScoreWeights, GOEMOTIONS_LABELS};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The manifest's file name inside an artifact directory.
pub const MANIFEST_FILE: &str = "model.json";
/// The format tag written into every manifest.
pub const FORMAT: &str = "viralclip-model/1";

/// Where the base encoder comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaseEncoder {
    /// Hugging Face repository, e.g. `intfloat/multilingual-e5-small`.
    pub repo: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// A local directory (absolute, or relative to the artifact); used when it exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
}

/// Decision thresholds, tuned on validation data by the trainer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    pub popularity: f32,
    pub emotions: Vec<f32>,
}

/// Everything needed to rebuild and use a trained model, besides tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub name: String,
    pub base_encoder: BaseEncoder,
    /// Safetensors file (in the artifact directory) with `popularity_head.*`, `emotion_head.*` and
    /// any `bert.*` tensors that override the base encoder's.
    pub weights: String,
    pub labels: Vec<String>,
    /// Tokens per text at most ([CLS] and [SEP] included).
    pub max_length: usize,
    /// Prepended to every text before tokenising (e5 models were trained with `query: `).
    #[serde(default)]
    pub text_prefix: String,
    pub thresholds: Thresholds,
    pub score_weights: ScoreWeights,
    /// Encoder layers whose weights live in `weights` rather than in the base encoder.
    #[serde(default)]
    pub fine_tuned_layers: Vec<usize>,
    /// What the heads read: `cls` (the seed's, and the default) or `mean`.
    #[serde(default)]
    pub pooling: crate::model::Pooling,
    /// Where the training data came from, and anything a user should know about it.
    #[serde(default)]
    pub notes: String,
    /// Validation metrics written by the trainer.
    #[serde(default)]
    pub metrics: serde_json::Value,
}

impl Manifest {
    /// A manifest with the seed's defaults for a model on `base`.
    pub fn new(name: &str, base: BaseEncoder) -> Self {
        Manifest {
            format: FORMAT.into(),
            name: name.into(),
            base_encoder: base,
            weights: "weights.safetensors".into(),
            labels: GOEMOTIONS_LABELS.iter().map(|s| s.to_string()).collect(),
            max_length: 128,
            text_prefix: String::new(),
            thresholds: Thresholds {
                popularity: 0.5,
                emotions: vec![0.5; GOEMOTIONS_LABELS.len()],
            },
            score_weights: ScoreWeights::default(),
            fine_tuned_layers: Vec::new(),
            pooling: Default::default(),
            notes: String::new(),
            metrics: serde_json::Value::Null,
        }
    }

    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(MANIFEST_FILE);
        if !dir.exists() {
            return Err(Error::Model(format!(
                "{}: no such model directory",
                dir.display()
            )));
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|e| Error::Model(format!("{}: cannot read the model manifest: {e}", path.display())))?;
        let m: Manifest =
            serde_json::from_str(&text).map_err(|e| Error::Model(format!("{}: {e}", path.display())))?;
        if m.format != FORMAT {
            return Err(Error::Model(format!(
                "{}: format {:?}, this build reads {FORMAT:?}",
                path.display(),
                m.format
            )));
        }
        if m.thresholds.emotions.len() != m.labels.len() {
            return Err(Error::Model(format!(
                "{}: {} labels but {} emotion thresholds",
                path.display(),
                m.labels.len(),
                m.thresholds.emotions.len()
            )));
        }
        Ok(m)
    }

    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let text = serde_json::to_string_pretty(self).expect("manifest serialises");
        let path = dir.join(MANIFEST_FILE);
        std::fs::write(&path, text + "\n").map_err(|e| Error::io(path, e))
    }

    /// The text prefix an encoder was trained with: e5 models expect `query: `.
    pub fn text_prefix_for(repo: &str) -> String {
        if repo.contains("e5") {
            "query: ".into()
        } else {
            String::new()
        }
    }

    /// Index of the `neutral` label, which never boosts virality.
    pub fn neutral(&self) -> Option<usize> {
        self.labels.iter().position(|l| l == "neutral")
    }
}

/// A base encoder on disk: config.json, tokenizer.json, model.safetensors.
#[derive(Debug, Clone)]
pub struct EncoderFiles {
    pub dir: PathBuf,
    pub config: BertConfig,
}

impl EncoderFiles {
    /// Reads an encoder directory, with a clear error for each missing piece.
    pub fn open(dir: &Path) -> Result<Self> {
        for f in ["config.json", "tokenizer.json", "model.safetensors"] {
            if !dir.join(f).is_file() {
                return Err(Error::Model(format!(
                    "{}: missing {f} (an encoder directory holds config.json, tokenizer.json and model.safetensors)",
                    dir.display()
                )));
            }
        }
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let config: BertConfig =
            serde_json::from_str(&text).map_err(|e| Error::Model(format!("{}: {e}", path.display())))?;
        config
            .validate()
            .map_err(|e| Error::Model(format!("{}: {e}", path.display())))?;
        Ok(EncoderFiles {
            dir: dir.to_path_buf(),
            config,
        })
    }

    /// Finds the encoder: `explicit` first, then the manifest's local path, then the hub.
    pub fn locate(explicit: Option<&Path>, artifact_dir: &Path, base: &BaseEncoder) -> Result<Self> {
        if let Some(dir) = explicit {
            return Self::open(dir);
        }
        if let Some(p) = &base.path {
            let dir = if p.is_absolute() {
                p.clone()
            } else {
                artifact_dir.join(p)
            };
            if dir.is_dir() {
                return Self::open(&dir);
            }
        }
        Self::from_hub(base)
    }

    #[cfg(feature = "hub")]
    fn from_hub(base: &BaseEncoder) -> Result<Self> {
        use hf_hub::{api::sync::ApiBuilder, Repo, RepoType};
        let api = ApiBuilder::from_env()
            .with_progress(false)
            .build()
            .map_err(|e| Error::Model(format!("Hugging Face hub: {e}")))?;
        let repo = Repo::with_revision(
            base.repo.clone(),
            RepoType::Model,
            base.revision.clone().unwrap_or_else(|| "main".into()),
        );
        let api = api.repo(repo);
        let mut dir = None;
        for f in ["config.json", "tokenizer.json", "model.safetensors"] {
            let p = api.get(f).map_err(|e| {
                Error::Model(format!(
                    "cannot fetch {f} of {} from the Hugging Face hub ({e}); download it and pass its directory with --encoder",
                    base.repo
                ))
            })?;
            dir = p.parent().map(Path::to_path_buf);
        }
        Self::open(&dir.expect("three files fetched"))
    }

    #[cfg(not(feature = "hub"))]
    fn from_hub(base: &BaseEncoder) -> Result<Self> {
        Err(Error::Model(format!(
            "base encoder {} not found locally and this build cannot reach the hub: pass --encoder DIR",
            base.repo
        )))
    }

    /// Loads the tokenizer, truncating at `max_length` and never padding (batches pad themselves).
    pub fn tokenizer(&self, max_length: usize) -> Result<tokenizers::Tokenizer> {
        let path = self.dir.join("tokenizer.json");
        let mut tok = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
        tok.with_truncation(Some(tokenizers::TruncationParams {
            max_length,
            ..Default::default()
        }))
        .map_err(|e| Error::Tokenizer(e.to_string()))?;
        tok.with_padding(None);
        Ok(tok)
    }
}

/// Tensors for the multitask model, looked up in an overlay (the artifact's weights) and then in
/// the base encoder, whose names may or may not carry a `bert.` prefix.
pub struct WeightStore {
    overlay: Option<MmapedSafetensors>,
    base: Option<MmapedSafetensors>,
    base_prefix: &'static str,
    dtype: DType,
}

impl WeightStore {
    /// `overlay`: the artifact's weights; `base`: the encoder's model.safetensors.
    pub fn open(overlay: Option<&Path>, base: Option<&Path>, dtype: DType) -> Result<Self> {
        let mmap = |p: &Path| -> Result<MmapedSafetensors> {
            // SAFETY: the files are opened read-only and not modified while mapped.
            unsafe { MmapedSafetensors::new(p) }.map_err(|e| Error::Model(format!("{}: {e}", p.display())))
        };
        let overlay = overlay.map(mmap).transpose()?;
        let base = base.map(mmap).transpose()?;
        let base_prefix = match &base {
            Some(b) if b.get("bert.embeddings.word_embeddings.weight").is_ok() => "bert.",
            _ => "",
        };
        Ok(WeightStore {
            overlay,
            base,
            base_prefix,
            dtype,
        })
    }

    fn find(&self, name: &str) -> Option<(&MmapedSafetensors, String)> {
        if let Some(o) = &self.overlay {
            if o.get(name).is_ok() {
                return Some((o, name.to_string()));
            }
        }
        let rest = name.strip_prefix("bert.")?;
        let b = self.base.as_ref()?;
        let base_name = format!("{}{rest}", self.base_prefix);
        b.get(&base_name).is_ok().then_some((b, base_name))
    }

    /// A var builder over this store on `device`.
    pub fn var_builder(self, device: &Device) -> VarBuilder<'static> {
        let dtype = self.dtype;
        VarBuilder::from_backend(Box::new(self), dtype, device.clone())
    }
}

impl candle_nn::var_builder::SimpleBackend for WeightStore {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.get_unchecked(name, dtype, dev)?;
        if t.shape() != &s {
            candle_core::bail!(
                "tensor {name}: shape {:?} in the weights, the model needs {s:?}",
                t.shape()
            )
        }
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        match self.find(name) {
            Some((st, n)) => st.load(&n, dev)?.to_dtype(dtype),
            None => candle_core::bail!("tensor {name} is in neither the model weights nor the base encoder"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.find(name).is_some()
    }
}

/// A model ready to run: weights on a device, tokenizer, manifest.
pub struct LoadedModel {
    pub model: MultiTask,
    pub tokenizer: tokenizers::Tokenizer,
    pub manifest: Manifest,
    pub encoder: EncoderFiles,
    pub device: Device,
    pub dtype: DType,
}

/// Loads the artifact in `dir`, with the base encoder from `encoder_dir` when given.
pub fn load(dir: &Path, encoder_dir: Option<&Path>, device: &Device, dtype: DType) -> Result<LoadedModel> {
    let manifest = Manifest::read(dir)?;
    let encoder = EncoderFiles::locate(encoder_dir, dir, &manifest.base_encoder)?;
    let weights = dir.join(&manifest.weights);
    if !weights.is_file() {
        return Err(Error::Model(format!(
            "{}: missing (named in {MANIFEST_FILE})",
            weights.display()
        )));
    }
    let store = WeightStore::open(
        Some(&weights),
        Some(&encoder.dir.join("model.safetensors")),
        dtype,
    )?;
    let vb = store.var_builder(device);
    let model = MultiTask::load(vb, &encoder.config, manifest.labels.len())
        .and_then(|mut m| {
            m.bert.set_pooling(manifest.pooling);
            m.prepare_inference().map(|_| m)
        })
        .map_err(|e| Error::Model(format!("{}: {e}", dir.display())))?;
    let tokenizer = encoder.tokenizer(manifest.max_length)?;
    Ok(LoadedModel {
        model,
        tokenizer,
        manifest,
        encoder,
        device: device.clone(),
        dtype,
    })
}

/// Writes `tensors` as the artifact's weights and `manifest` beside them: fp16 tensors stay fp16
/// (the trainer stores fine-tuned encoder matrices so, at half the size; loading converts to the
/// model's dtype), everything else is stored in fp32.
pub fn save(dir: &Path, manifest: &Manifest, tensors: &HashMap<String, Tensor>) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let path = dir.join(&manifest.weights);
    let cpu: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, v)| {
            let dtype = if v.dtype() == DType::F16 {
                DType::F16
            } else {
                DType::F32
            };
            Ok((k.clone(), v.to_device(&Device::Cpu)?.to_dtype(dtype)?))
        })
        .collect::<candle_core::Result<_>>()?;
    candle_core::safetensors::save(&cpu, &path)
        .map_err(|e| Error::Model(format!("{}: {e}", path.display())))?;
    manifest.write(dir)
}

/// Averages the weights of models fine-tuned from one base ("model soup", or checkpoint averaging
/// along one run): every tensor is the element-wise mean of the models' (computed in f32, stored in
/// the first model's dtype for it), and so are the per-class emotion thresholds. The models must
/// agree on the base encoder, labels, pooling, fine-tuned layers and tensor names and shapes, else
/// nothing is written. The manifest is the first model's, with its name, notes and metrics saying
/// what was averaged (metrics are cleared: measure the result with `viralclip model eval`).
pub fn average(models: &[&Path], out: &Path) -> Result<Manifest> {
    let [first, rest @ ..] = models else {
        return Err(Error::Model("average: no models given".into()));
    };
    if rest.is_empty() {
        return Err(Error::Model("average: give at least two models".into()));
    }
    let read = |dir: &Path| -> Result<(Manifest, HashMap<String, Tensor>)> {
        let m = Manifest::read(dir)?;
        let path = dir.join(&m.weights);
        if !path.is_file() {
            return Err(Error::NotFound(path));
        }
        let t = candle_core::safetensors::load(&path, &Device::Cpu)
            .map_err(|e| Error::Model(format!("{}: {e}", path.display())))?;
        Ok((m, t))
    };
    let (mut manifest, base) = read(first)?;
    let mut sums: HashMap<String, Tensor> = base
        .iter()
        .map(|(k, v)| Ok((k.clone(), v.to_dtype(DType::F32)?)))
        .collect::<candle_core::Result<_>>()?;
    let mut thresholds = manifest.thresholds.emotions.clone();
    for dir in rest {
        let (m, t) = read(dir)?;
        let differs = |what: &str| {
            Error::Model(format!(
                "average: {} and {} differ in {what}",
                first.display(),
                dir.display()
            ))
        };
        if m.base_encoder.repo != manifest.base_encoder.repo {
            return Err(differs("base encoder"));
        }
        if m.labels != manifest.labels || m.thresholds.emotions.len() != thresholds.len() {
            return Err(differs("labels"));
        }
        if m.pooling != manifest.pooling {
            return Err(differs("pooling"));
        }
        if m.fine_tuned_layers != manifest.fine_tuned_layers {
            return Err(differs("fine-tuned layers"));
        }
        if t.len() != sums.len() {
            return Err(differs("tensors"));
        }
        for (k, sum) in sums.iter_mut() {
            let v = t
                .get(k)
                .ok_or_else(|| differs(&format!("tensors ({k} missing)")))?;
            if v.dims() != sum.dims() {
                return Err(differs(&format!("the shape of {k}")));
            }
            *sum = (&*sum + v.to_dtype(DType::F32)?)?;
        }
        for (a, b) in thresholds.iter_mut().zip(&m.thresholds.emotions) {
            *a += b;
        }
    }
    let n = models.len() as f64;
    let mean: HashMap<String, Tensor> = sums
        .into_iter()
        .map(|(k, v)| {
            let v = (v / n)?.to_dtype(base[&k].dtype())?;
            Ok((k, v))
        })
        .collect::<candle_core::Result<_>>()?;
    manifest.thresholds.emotions = thresholds.iter().map(|t| t / n as f32).collect();
    let names: Vec<String> = models.iter().map(|m| m.display().to_string()).collect();
    manifest.name = format!("average of {} models: {}", models.len(), manifest.name);
    manifest.notes = format!(
        "Weights and emotion thresholds averaged over {} ({}). {}",
        models.len(),
        names.join(", "),
        manifest.notes
    );
    manifest.metrics = serde_json::Value::Null;
    save(out, &manifest, &mean)?;
    Ok(manifest)
}

/// Imports the original project's PyTorch checkpoint (`multitask_best.pth`: a dict whose
/// `model_state_dict` holds `bert.*`, `popularity_head.*`, `emotion_head.*`) as an artifact in
/// `out`. `base` names the encoder whose tokenizer and config it was trained with.
pub fn import_pth(pth: &Path, base: BaseEncoder, out: &Path) -> Result<Manifest> {
    if !pth.is_file() {
        return Err(Error::NotFound(pth.to_path_buf()));
    }
    let read = |key| candle_core::pickle::read_all_with_key(pth, key);
    let tensors = match read(Some("model_state_dict")) {
        Ok(t) if !t.is_empty() => t,
        _ => read(None)
            .map_err(|e| Error::Model(format!("{}: not a PyTorch checkpoint: {e}", pth.display())))?,
    };
    let tensors: HashMap<String, Tensor> = tensors
        .into_iter()
        .map(|(k, v)| (k.strip_prefix("module.").map(str::to_string).unwrap_or(k), v))
        .filter(|(k, _)| !k.starts_with("bert.pooler.") && !k.ends_with("position_ids"))
        .collect();
    let emo = tensors.get("emotion_head.3.weight").ok_or_else(|| {
        Error::Model(format!(
            "{}: no emotion_head.3.weight: not a ViralBERT multitask checkpoint",
            pth.display()
        ))
    })?;
    if !tensors.contains_key("popularity_head.6.weight") {
        return Err(Error::Model(format!(
            "{}: no popularity_head.6.weight",
            pth.display()
        )));
    }
    let labels = emo.dim(0)?;
    let mut manifest = Manifest::new(
        &format!(
            "imported from {}",
            pth.file_name().unwrap_or_default().to_string_lossy()
        ),
        base,
    );
    if labels != manifest.labels.len() {
        manifest.labels = (0..labels).map(|i| format!("label_{i}")).collect();
        manifest.thresholds.emotions = vec![0.5; labels];
    }
    let layers: std::collections::BTreeSet<usize> = tensors
        .keys()
        .filter_map(|k| {
            k.strip_prefix("bert.encoder.layer.")?
                .split('.')
                .next()?
                .parse()
                .ok()
        })
        .collect();
    manifest.fine_tuned_layers = layers.into_iter().collect();
    manifest.notes =
        "imported from a ViralBERT v2 PyTorch checkpoint; every encoder tensor is in the weights file".into();
    save(out, &manifest, &tensors)?;
    Ok(manifest)
}

/// Creates an artifact with freshly initialised heads over the encoder in `encoder_dir`: the
/// starting point for training, and a model for testing the pipeline (its scores mean nothing).
pub fn init(encoder_dir: &Path, repo: &str, out: &Path, seed: u64) -> Result<Manifest> {
    let enc = EncoderFiles::open(encoder_dir)?;
    let mut manifest = Manifest::new(
        &format!("untrained heads on {repo}"),
        BaseEncoder {
            repo: repo.into(),
            revision: None,
            path: Some(std::path::absolute(encoder_dir).map_err(|e| Error::io(encoder_dir, e))?),
        },
    );
    manifest.text_prefix = Manifest::text_prefix_for(repo);
    manifest.notes = "untrained: heads are randomly initialised; scores are not meaningful".into();
    let tensors = super::heads::init_heads(enc.config.hidden_size, manifest.labels.len(), seed)?;
    save(out, &manifest, &tensors)?;
    Ok(manifest)
}
