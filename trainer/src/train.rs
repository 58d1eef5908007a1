//! The training loop: load and split data, tokenise once, cache what the frozen encoder layers
//! compute, train the heads (stage 1) and then the top layers too (stage 2) with PCGrad, measure
//! every epoch, keep the best, checkpoint for resuming, and write the artifact the engine loads.

use crate::data::{self, Example, Label, Source, SourceStats, EMOTIONS};
use crate::error::{Error, Result};
use crate::metrics::{self, BinaryMetrics, MultiLabelMetrics};
use crate::optim::{cosine_with_warmup, AdamW};
use crate::pcgrad;
use candle_core::{DType, Device, Tensor, Var};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use viralclip_engine::model::train_ops::{self, bce_with_logits};
use viralclip_engine::model::{
    artifact, BaseEncoder, BertTape, EncoderFiles, HeadTape, Manifest, Mode, MultiTask, ParamGrads, Pooling,
    WeightStore,
};
use viralclip_engine::scorer::{pad_batch, plan_batches, BatchLimits};

/// Everything a run needs; defaults are the seed's recipe.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainConfig {
    pub encoder_dir: PathBuf,
    pub base_repo: String,
    pub out: PathBuf,
    pub data: Vec<Source>,
    /// Held-out sources measured once, on the saved model.
    pub test: Vec<Source>,
    pub val_fraction: f64,
    pub seed: u64,
    pub batch_size: usize,
    pub max_length: usize,
    /// Learning rate of the encoder layers before `unfrozen_lr_mult` (the seed: 2e-5).
    pub lr: f64,
    /// Learning rate of the heads (default: `lr`).
    pub head_lr: Option<f64>,
    /// Encoder layers train at `lr × unfrozen_lr_mult` (the seed: 10× lower).
    pub unfrozen_lr_mult: f64,
    pub weight_decay: f64,
    pub warmup_steps: usize,
    pub frozen_epochs: usize,
    pub unfrozen_epochs: usize,
    pub unfreeze_layers: usize,
    pub pcgrad: bool,
    pub clip_norm: f64,
    /// Stop after this many epochs without a better validation loss.
    pub patience: usize,
    /// Use at most this many training examples (a quick run).
    pub max_train: Option<usize>,
    pub resume: bool,
    /// Store fine-tuned encoder matrices in fp16 (half the artifact). The per-epoch metrics are
    /// then those of the fp32 weights; `val_reloaded` measures the artifact as stored.
    #[serde(default)]
    pub f16_layers: bool,
    /// Start from this model's heads and fine-tuned layers instead of fresh heads over the base
    /// encoder (continue training a shipped model on new or more data).
    #[serde(default)]
    pub init: Option<PathBuf>,
    /// What picks the best epoch and drives early stopping.
    #[serde(default)]
    pub select_by: SelectBy,
    /// Weight of the translation alignment: in the epochs that train layers, each row with a
    /// `pair` (the text it was translated from, as ru_go_emotions keeps it) pulls its vector
    /// (what the heads read) toward the current model's vector of that original, so what the
    /// emotion head learned from the original language carries over. The loss (relative squared
    /// distance) joins the emotion task's. 0: off.
    #[serde(default)]
    pub align: f64,
    /// What the heads read off the encoder: [CLS] (the seed's) or the token mean (how e5 was
    /// trained). Stored in the manifest; `--init` must match its model's.
    #[serde(default)]
    pub pooling: Pooling,
}

/// The validation number that picks the kept epoch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SelectBy {
    /// Summed validation loss of both tasks (the seed's choice).
    #[default]
    Loss,
    /// Emotion macro-F1 with tuned thresholds (ties and no emotion rows: the loss).
    MacroF1,
}

impl std::str::FromStr for SelectBy {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "loss" => Ok(SelectBy::Loss),
            "macro-f1" => Ok(SelectBy::MacroF1),
            _ => Err(format!("{s:?}: expected loss or macro-f1")),
        }
    }
}

impl SelectBy {
    /// Lower is better.
    pub fn key(self, ev: &Evaluation) -> f64 {
        match (self, &ev.emotions_tuned) {
            (SelectBy::MacroF1, Some(m)) => -m.macro_f1 + 1e-6 * ev.loss(),
            _ => ev.loss(),
        }
    }
}

impl TrainConfig {
    pub fn new(encoder_dir: PathBuf, out: PathBuf, data: Vec<Source>) -> Self {
        TrainConfig {
            encoder_dir,
            base_repo: "intfloat/multilingual-e5-small".into(),
            out,
            data,
            test: Vec::new(),
            val_fraction: 0.1,
            seed: 42,
            batch_size: 16,
            max_length: 128,
            lr: 2e-5,
            head_lr: None,
            unfrozen_lr_mult: 0.1,
            weight_decay: 0.01,
            warmup_steps: 500,
            frozen_epochs: 2,
            unfrozen_epochs: 3,
            unfreeze_layers: 2,
            pcgrad: true,
            clip_norm: 1.0,
            patience: 2,
            max_train: None,
            resume: false,
            f16_layers: false,
            init: None,
            select_by: SelectBy::Loss,
            align: 0.0,
            pooling: Pooling::Cls,
        }
    }
}

/// Progress, for a bar or a chat message.
#[derive(Debug, Clone)]
pub enum Event {
    Loaded {
        train: usize,
        val: usize,
        test: usize,
    },
    Caching {
        done: usize,
        total: usize,
    },
    Step {
        epoch: usize,
        step: usize,
        steps: usize,
        loss: f64,
        examples_per_s: f64,
    },
    Epoch(Box<EpochReport>),
}

impl std::fmt::Display for Event {
    /// One line of progress, for a log or a chat message.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::Loaded { train, val, test } => {
                write!(f, "data: {train} train, {val} validation, {test} test")
            }
            Event::Caching { done, total } => write!(f, "caching frozen layers {done}/{total}"),
            Event::Step {
                epoch,
                step,
                steps,
                loss,
                examples_per_s,
            } => write!(
                f,
                "epoch {} step {step}/{steps}, loss {loss:.4}, {examples_per_s:.0} ex/s",
                epoch + 1
            ),
            Event::Epoch(r) => write!(
                f,
                "epoch {} done: val loss {:.4}, emotion macro-F1 {}",
                r.epoch + 1,
                r.val.loss(),
                r.val
                    .emotions_tuned
                    .as_ref()
                    .map_or("-".into(), |m| format!("{:.3}", m.macro_f1))
            ),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Evaluation {
    pub popularity_loss: Option<f64>,
    pub emotion_loss: Option<f64>,
    pub popularity: Option<BinaryMetrics>,
    pub emotions_at_half: Option<MultiLabelMetrics>,
    pub emotions_tuned: Option<MultiLabelMetrics>,
}

impl Evaluation {
    /// The number early stopping and model choice watch.
    pub fn loss(&self) -> f64 {
        self.popularity_loss.unwrap_or(0.0) + self.emotion_loss.unwrap_or(0.0)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochReport {
    pub epoch: usize,
    pub stage: String,
    pub train_loss: f64,
    pub val: Evaluation,
    pub thresholds: Vec<f32>,
    /// Fraction of PCGrad steps whose task gradients conflicted.
    pub conflicts: Option<f64>,
    /// Mean translation alignment loss (before its weight), when `align` was on.
    #[serde(default)]
    pub align_loss: Option<f64>,
    pub secs: f64,
    pub examples_per_s: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainReport {
    pub config: TrainConfig,
    pub sources: Vec<SourceStats>,
    pub test_sources: Vec<SourceStats>,
    pub train_examples: usize,
    pub val_examples: usize,
    pub pos_weight: Vec<f32>,
    pub epochs: Vec<EpochReport>,
    pub best_epoch: usize,
    /// The saved model, loaded back by the engine, on the validation split.
    pub val_reloaded: Evaluation,
    /// The saved model on the held-out test sources.
    pub test: Option<Evaluation>,
    pub cache_secs: f64,
    pub wall_secs: f64,
    pub labels: Vec<String>,
}

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

fn is_head(name: &str) -> bool {
    name.starts_with("popularity_head.") || name.starts_with("emotion_head.")
}

/// Stratified split: each label stratum keeps `frac` of its distinct texts for validation.
/// Copies of one text (a source given twice to weigh it up, duplicates inside the data) stay on one
/// side, so validation never measures a row that was trained on; validation keeps one copy.
pub fn split(examples: Vec<Example>, frac: f64, seed: u64) -> (Vec<Example>, Vec<Example>) {
    let label_key = |l: &Label| match l {
        Label::Popularity(b) => format!("p{b}"),
        Label::Emotions(l) => format!("e{}", l.iter().min().copied().unwrap_or(0)),
    };
    // Groups of identical (text, label) rows, in first-seen order.
    let mut index: HashMap<(String, String), usize> = HashMap::new();
    let mut groups: Vec<Vec<Example>> = Vec::new();
    for e in examples {
        let key = (e.text.clone(), format!("{:?}", e.label));
        match index.get(&key) {
            Some(&g) => groups[g].push(e),
            None => {
                index.insert(key, groups.len());
                groups.push(vec![e]);
            }
        }
    }
    let mut strata: std::collections::BTreeMap<String, Vec<Vec<Example>>> = Default::default();
    for g in groups {
        strata.entry(label_key(&g[0].label)).or_default().push(g);
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (_, mut rows) in strata {
        rows.shuffle(&mut rng);
        let k = ((rows.len() as f64) * frac).round() as usize;
        // Every stratum of two texts or more gives validation at least one, unless none is asked.
        let k = if frac > 0.0 && rows.len() >= 2 {
            k.max(1).min(rows.len() - 1)
        } else {
            0
        };
        val.extend(rows.drain(..k).filter_map(|g| g.into_iter().next()));
        train.extend(rows.into_iter().flatten());
    }
    train.shuffle(&mut rng);
    (train, val)
}

/// pos_weight = total / (classes · count), clipped to [0.1, 10] (the seed's formula).
pub fn pos_weights(examples: &[Example]) -> Vec<f32> {
    let mut counts = [0usize; EMOTIONS];
    let mut total = 0usize;
    for e in examples {
        if let Label::Emotions(l) = &e.label {
            total += 1;
            for &c in l {
                counts[c] += 1;
            }
        }
    }
    counts
        .iter()
        .map(|&c| {
            if c == 0 {
                10.0
            } else {
                (total as f32 / (EMOTIONS as f32 * c as f32)).clamp(0.1, 10.0)
            }
        })
        .collect()
}

struct Tokenized {
    ids: Vec<Vec<u32>>,
    labels: Vec<Label>,
}

fn tokenize(tok: &tokenizers::Tokenizer, prefix: &str, ex: &[Example]) -> Result<Tokenized> {
    let texts: Vec<String> = ex.iter().map(|e| e.text.clone()).collect();
    Ok(Tokenized {
        ids: viralclip_engine::scorer::tokenize(tok, prefix, &texts)?,
        labels: ex.iter().map(|e| e.label.clone()).collect(),
    })
}

/// Per-example tensors computed once by the frozen part of the encoder.
struct Cache {
    /// Hidden states entering layer `from`, (len, hidden) each; empty when `from` = all layers.
    hidden: Vec<Tensor>,
    /// [CLS] from the frozen encoder, (hidden) each.
    cls: Vec<Tensor>,
    lens: Vec<usize>,
}

fn build_cache(
    model: &MultiTask,
    tok: &Tokenized,
    from: usize,
    pad: u32,
    dev: &Device,
    progress: &mut dyn FnMut(usize, usize),
    cancel: &AtomicBool,
) -> Result<Cache> {
    let lens: Vec<usize> = tok.ids.iter().map(Vec::len).collect();
    let n = lens.len();
    let limits = BatchLimits {
        max_batch: 64,
        max_tokens: 64 * 48,
    };
    let keep_hidden = from < model.bert.num_layers();
    let mut hidden: Vec<Option<Tensor>> = vec![None; if keep_hidden { n } else { 0 }];
    let mut cls: Vec<Option<Tensor>> = vec![None; n];
    let mut done = 0;
    for batch in plan_batches(&lens, limits) {
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        let rows: Vec<&Vec<u32>> = batch.iter().map(|&i| &tok.ids[i]).collect();
        let (ids, mask) = pad_batch(&rows, pad, dev)?;
        let h = model.bert.hidden_before(&ids, &mask, from, Mode::Inference)?;
        let c = model.bert.cls_from(&h, &mask, from, Mode::Inference)?;
        for (k, &i) in batch.iter().enumerate() {
            if keep_hidden {
                hidden[i] = Some(h.get(k)?.narrow(0, 0, lens[i])?.contiguous()?);
            }
            cls[i] = Some(c.get(k)?.contiguous()?);
        }
        done += batch.len();
        progress(done, n);
    }
    Ok(Cache {
        hidden: hidden.into_iter().map(|t| t.expect("cached")).collect(),
        cls: cls.into_iter().map(|t| t.expect("cached")).collect(),
        lens,
    })
}

fn batch_hidden(cache: &Cache, rows: &[usize], dev: &Device) -> Result<(Tensor, Tensor)> {
    let t = rows.iter().map(|&i| cache.lens[i]).max().unwrap_or(1);
    let mut hs = Vec::with_capacity(rows.len());
    let mut mask = Vec::with_capacity(rows.len() * t);
    for &i in rows {
        let h = &cache.hidden[i];
        let len = cache.lens[i];
        let padded = if len < t {
            let z = Tensor::zeros((t - len, h.dim(1)?), h.dtype(), dev)?;
            Tensor::cat(&[h, &z], 0)?
        } else {
            h.clone()
        };
        hs.push(padded);
        mask.extend(std::iter::repeat_n(1u32, len));
        mask.extend(std::iter::repeat_n(0u32, t - len));
    }
    Ok((
        Tensor::stack(&hs, 0)?,
        Tensor::from_vec(mask, (rows.len(), t), dev)?,
    ))
}

/// Task targets of a batch: indices and tensors for each task present.
pub(crate) struct Targets {
    pop_idx: Option<(Tensor, Tensor)>,
    emo_idx: Option<(Tensor, Tensor)>,
    /// The batch's rows (positions in it) of each task.
    pop_rows: Vec<usize>,
    emo_rows: Vec<usize>,
    /// Translated rows and the [CLS] of their originals (`TrainConfig::align`).
    pub(crate) align: Option<Align>,
}

/// Rows of a batch (positions in it) and the [CLS] each should move toward, for the alignment
/// loss `weight · Σ‖cls − target‖² / Σ‖target‖²`.
#[derive(Clone)]
pub(crate) struct Align {
    rows: Vec<usize>,
    target: Tensor,
    weight: f64,
}

impl Align {
    pub(crate) fn new(rows: Vec<usize>, target: Tensor, weight: f64) -> Self {
        Align { rows, target, weight }
    }

    /// The translated rows' positions, as an index tensor on `dev`.
    fn positions(&self, dev: &Device) -> Result<Tensor> {
        let pos: Vec<u32> = self.rows.iter().map(|&r| r as u32).collect();
        Ok(Tensor::from_vec(pos, self.rows.len(), dev)?)
    }

    /// The unweighted loss of these [CLS] states (all the batch's rows, in order).
    fn loss(&self, cls: &Tensor) -> Result<Tensor> {
        let student = cls
            .to_dtype(DType::F32)?
            .index_select(&self.positions(cls.device())?, 0)?;
        let target = self.target.to_dtype(DType::F32)?;
        let num = (student - &target)?.sqr()?.sum_all()?;
        let den = (target.sqr()?.sum_all()? + 1e-12)?;
        Ok((num / den)?)
    }

    /// [`Align::loss`] outside candle's graph (`cls` f32, as training by hand has it), with the
    /// gradient of the weighted loss with respect to `cls`: `2·weight·(s − t)/Σ‖t‖²` on the
    /// translated rows, zero elsewhere (the targets are constants).
    fn loss_and_grad(&self, cls: &Tensor) -> Result<(Tensor, Tensor)> {
        let pos = self.positions(cls.device())?;
        let target = self.target.to_dtype(DType::F32)?;
        let diff = (cls.index_select(&pos, 0)? - &target)?;
        let den = (target.sqr()?.sum_all()? + 1e-12)?;
        let loss = diff.sqr()?.sum_all()?.div(&den)?;
        let d = diff.broadcast_mul(&(den.recip()? * (2.0 * self.weight))?)?;
        Ok((loss, cls.zeros_like()?.index_add(&pos, &d, 0)?))
    }
}

impl Targets {
    /// Each task's targets for a batch of that task's rows alone (in the same order), as
    /// `apply_step` runs them with PCGrad.
    fn each_alone(&self) -> Result<(Targets, Targets)> {
        let alone = |idx: &Option<(Tensor, Tensor)>| -> Result<Option<(Tensor, Tensor)>> {
            idx.as_ref()
                .map(|(i, y)| Ok((Tensor::arange(0u32, i.dim(0)? as u32, i.device())?, y.clone())))
                .transpose()
        };
        let only = |pop_idx, emo_idx, align| Targets {
            pop_idx,
            emo_idx,
            pop_rows: Vec::new(),
            emo_rows: Vec::new(),
            align,
        };
        // Translated rows are emotion rows: their positions among those.
        let align = self.align_from(0);
        Ok((
            only(alone(&self.pop_idx)?, None, None),
            only(None, alone(&self.emo_idx)?, align),
        ))
    }

    /// The alignment rows for a batch whose emotion rows, in the same order, start at row
    /// `first` (translated rows are emotion rows).
    fn align_from(&self, first: usize) -> Option<Align> {
        self.align.as_ref().map(|a| Align {
            rows: a
                .rows
                .iter()
                .map(|r| first + self.emo_rows.iter().position(|e| e == r).expect("an emotion row"))
                .collect(),
            target: a.target.clone(),
            weight: a.weight,
        })
    }

    /// For a batch with both tasks: its rows in task order (the popularity task's, then the
    /// emotion task's) and these targets for the batch in that order.
    fn by_task(&self) -> Result<(Vec<usize>, Targets)> {
        let order: Vec<usize> = self.pop_rows.iter().chain(&self.emo_rows).copied().collect();
        let (np, n) = (self.pop_rows.len(), order.len());
        let (Some((pi, py)), Some((_, ey))) = (&self.pop_idx, &self.emo_idx) else {
            return Err(Error::Config("by_task: a batch without both tasks".into()));
        };
        let range = |a: usize, b: usize| Tensor::arange(a as u32, b as u32, pi.device());
        // Translated rows are emotion rows: after the popularity rows, in the same order.
        let align = self.align_from(np);
        let t = Targets {
            pop_idx: Some((range(0, np)?, py.clone())),
            emo_idx: Some((range(np, n)?, ey.clone())),
            pop_rows: (0..np).collect(),
            emo_rows: (np..n).collect(),
            align,
        };
        Ok((order, t))
    }
}

pub(crate) fn targets(labels: &[Label], rows: &[usize], dev: &Device) -> Result<Targets> {
    let (mut pi, mut py, mut ei, mut ey) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (k, &i) in rows.iter().enumerate() {
        match &labels[i] {
            Label::Popularity(b) => {
                pi.push(k as u32);
                py.push(if *b { 1f32 } else { 0f32 });
            }
            Label::Emotions(l) => {
                ei.push(k as u32);
                let mut v = [0f32; EMOTIONS];
                for &c in l {
                    v[c] = 1.0;
                }
                ey.extend_from_slice(&v);
            }
        }
    }
    let pop_rows: Vec<usize> = pi.iter().map(|&k| k as usize).collect();
    let emo_rows: Vec<usize> = ei.iter().map(|&k| k as usize).collect();
    let pop_idx = if pi.is_empty() {
        None
    } else {
        let n = pi.len();
        Some((Tensor::from_vec(pi, n, dev)?, Tensor::from_vec(py, n, dev)?))
    };
    let emo_idx = if ei.is_empty() {
        None
    } else {
        let n = ei.len();
        Some((
            Tensor::from_vec(ei, n, dev)?,
            Tensor::from_vec(ey, (n, EMOTIONS), dev)?,
        ))
    };
    Ok(Targets {
        pop_idx,
        emo_idx,
        pop_rows,
        emo_rows,
        align: None,
    })
}

fn task_losses(
    logits: &viralclip_engine::model::Logits,
    t: &Targets,
    pw: &Tensor,
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let pop = match &t.pop_idx {
        Some((i, y)) => Some(bce_with_logits(
            &logits.popularity.to_dtype(DType::F32)?.index_select(i, 0)?,
            y,
            None,
        )?),
        None => None,
    };
    let emo = match &t.emo_idx {
        Some((i, y)) => Some(bce_with_logits(
            &logits.emotions.to_dtype(DType::F32)?.index_select(i, 0)?,
            y,
            Some(pw),
        )?),
        None => None,
    };
    Ok((pop, emo))
}

/// Computes the [CLS] states of the batch's rows at these positions, or of the whole batch for
/// `None`: through candle's graph (with `Mode::Training`, so it reaches the unfrozen layers), or
/// by hand ([`forward_layers`]).
pub(crate) type Forward<'a> = dyn FnMut(Option<&[usize]>) -> Result<Forwarded> + 'a;

/// What a [`Forward`] computed: the [CLS] states, and when the trainable layers ran by hand
/// (`Bert::cls_from_taped`), their tape, `cls` then being a leaf whose gradient the tape's
/// backward pass starts from.
pub(crate) struct Forwarded {
    pub cls: Tensor,
    pub tape: Option<BertTape>,
}

impl From<Tensor> for Forwarded {
    /// States with nothing trainable below them, or with the graph reaching it.
    fn from(cls: Tensor) -> Self {
        Forwarded { cls, tape: None }
    }
}

/// The trainable layers `from..` on hidden states `h` (mask `m`): by hand where they can run so
/// (`Bert::cls_from_taped`: the same kernels, a third of the graph's operations), through
/// candle's graph otherwise.
pub(crate) fn forward_layers(
    model: &MultiTask,
    h: &Tensor,
    m: &Tensor,
    from: usize,
    mode: Mode,
) -> Result<Forwarded> {
    Ok(match model.bert.cls_from_taped(h, m, from, mode)? {
        Some((cls, tape)) => Forwarded {
            cls: Var::from_tensor(&cls)?.as_tensor().clone(),
            tape: Some(tape),
        },
        None => model.bert.cls_from(h, m, from, mode)?.into(),
    })
}

/// The trainable layers' gradients of one backward pass `gs` (which reached `f.cls`): through
/// `f`'s tape when it has one, else what the graph gave them.
fn layer_grads(
    model: &MultiTask,
    f: &Forwarded,
    gs: &candle_core::backprop::GradStore,
) -> Result<Option<GradsById>> {
    let Some(tape) = &f.tape else { return Ok(None) };
    let Some(dcls) = gs.get(&f.cls) else {
        return Ok(Some(HashMap::new()));
    };
    Ok(Some(by_id(model.bert.backward_taped(tape, dcls)?)))
}

/// Gradients of a backward pass by hand, by their parameter's tensor id.
type GradsById = HashMap<candle_core::TensorId, Tensor>;

fn by_id(grads: ParamGrads) -> GradsById {
    grads.into_iter().map(|(p, g)| (p.id(), g)).collect()
}

/// What the steps of a stage share: the emotion classes' weights (`pw`), whether PCGrad projects
/// the two tasks' gradients, whether the encoder's layers are frozen (heads only), the global
/// clipping norm, and each parameter group's learning rate.
#[derive(Clone, Copy)]
pub(crate) struct StepRule<'a> {
    pub pw: &'a Tensor,
    pub pcgrad: bool,
    pub frozen: bool,
    pub clip_norm: f64,
    pub lrs: &'a [f64],
}

/// One optimisation step of a batch: task losses, per-task gradients combined by PCGrad when
/// `pcgrad` (heads keep their own task's gradient), global-norm clipping, AdamW. With PCGrad on
/// the CPU each task's rows go through the encoder as a batch of their own, so each task's
/// backward pass covers only its rows (a row only ever trains its own task): one backward's worth
/// of work instead of two over the whole batch. The alignment loss of translated rows (`t.align`) joins
/// the emotion task's. `None` when the batch has no targets.
pub(crate) fn apply_step(
    model: &MultiTask,
    opt: &mut AdamW,
    forward: &mut Forward<'_>,
    t: &Targets,
    rule: StepRule,
) -> Result<Option<StepOutcome>> {
    let StepRule {
        pw, pcgrad, frozen, ..
    } = rule;
    // The alignment loss of these targets' translated rows, with its weight.
    let align = |t: &Targets, cls: &Tensor| {
        t.align
            .as_ref()
            .map(|a| Ok::<_, Error>((a.loss(cls)?, a.weight)))
            .transpose()
    };
    // Each task's rows as a batch of their own on the CPU, where the arithmetic is the cost (each
    // backward pass then covers only its task's rows); one forward pass for both on a GPU, where
    // launching operations one by one is the cost and two forwards launch twice as many.
    let both = pcgrad && !t.pop_rows.is_empty() && !t.emo_rows.is_empty();
    let split = both && split_tasks(pw.device());
    // The forward passes: the popularity task's and the emotion task's (the same one unless
    // split). One pass for both tasks takes the rows in task order, so that each task's texts
    // are a block of rows (a backward pass by hand then serves both tasks: `step_by_hand`).
    let ordered;
    let (t, rows) = if both && !split {
        ordered = t.by_task()?;
        (&ordered.1, Some(ordered.0.as_slice()))
    } else {
        (t, split.then_some(t.pop_rows.as_slice()))
    };
    let fp = forward(rows)?;
    // The heads and losses (the alignment loss among them) by hand where the layers below ran so
    // (or are frozen) and the fused passes run.
    if (frozen || fp.tape.is_some()) && model.heads_by_hand(&fp.cls) {
        return step_by_hand(model, opt, forward, fp, t, split, rule);
    }
    let fe;
    let (lp, le, al) = if split {
        let (tp, te) = t.each_alone()?;
        let lp = model.heads(&fp.cls, Mode::Training)?;
        fe = Some(forward(Some(&t.emo_rows))?);
        let ce = &fe.as_ref().expect("set").cls;
        let le = model.heads(ce, Mode::Training)?;
        let al = align(&te, ce)?;
        (task_losses(&lp, &tp, pw)?.0, task_losses(&le, &te, pw)?.1, al)
    } else {
        fe = None;
        let logits = model.heads(&fp.cls, Mode::Training)?;
        let al = align(t, &fp.cls)?;
        let (lp, le) = task_losses(&logits, t, pw)?;
        (lp, le, al)
    };
    let fe = fe.as_ref().unwrap_or(&fp);
    // The alignment term belongs to the emotion task (translated rows are emotion rows).
    let align_term = al.as_ref().map(|(l, _)| l.clone());
    let le = match (le, al) {
        (Some(le), Some((l, w))) => Some((le + (l * w)?)?),
        (le, _) => le,
    };
    // Each parameter's gradient(s): with PCGrad, the shared ones' two tasks' (a, b) and each
    // head's own task's; else the one backward's.
    let n = opt.params.len();
    let mut grads: Vec<(Option<Tensor>, Option<Tensor>)> = vec![(None, None); n];
    let projected = matches!((&lp, &le), (Some(_), Some(_)) if pcgrad);
    // The losses whose values the step reports (read once, after the update is queued).
    let mut losses = Vec::new();
    if projected {
        let (lp, le) = (lp.expect("both"), le.expect("both"));
        let (gp, ge) = (lp.backward()?, le.backward()?);
        let (hp, he) = (layer_grads(model, &fp, &gp)?, layer_grads(model, fe, &ge)?);
        let layer =
            |by_hand: &Option<GradsById>, gs: &candle_core::backprop::GradStore, v: &Tensor| match by_hand {
                Some(h) => h.get(&v.id()).cloned(),
                None => gs.get(v).cloned(),
            };
        for (k, p) in opt.params.iter().enumerate() {
            let v = p.var.as_tensor();
            grads[k] = if p.group == 1 {
                (layer(&hp, &gp, v), layer(&he, &ge, v))
            } else if p.name.starts_with("popularity_head.") {
                (gp.get(v).cloned(), None)
            } else if p.name.starts_with("emotion_head.") {
                (None, ge.get(v).cloned())
            } else {
                (None, None)
            };
        }
        losses.extend([lp, le]);
    } else {
        let total = match (lp, le) {
            (Some(a), Some(b)) => (a + b)?,
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => return Ok(None),
        };
        let gs = total.backward()?;
        let by_hand = layer_grads(model, &fp, &gs)?;
        for (k, p) in opt.params.iter().enumerate() {
            if !(frozen && p.group == 1) {
                let v = p.var.as_tensor();
                grads[k].0 = match (&by_hand, p.group) {
                    (Some(h), 1) => h.get(&v.id()).cloned(),
                    _ => gs.get(v).cloned(),
                };
            }
        }
        losses.push(total);
    }
    losses.extend(align_term);
    finish_step(opt, grads, projected, rule, losses)
}

/// The update from each parameter's gradient(s) (`projected`: two tasks' under PCGrad) and the
/// step's report from its losses (the tasks' — one, or two when projected — then the alignment
/// loss, if any): read once, after the update is queued.
fn finish_step(
    opt: &mut AdamW,
    grads: Vec<(Option<Tensor>, Option<Tensor>)>,
    projected: bool,
    rule: StepRule,
    losses: Vec<Tensor>,
) -> Result<Option<StepOutcome>> {
    let StepRule { clip_norm, lrs, .. } = rule;
    let surgery = match opt.step_fused(&grads, projected, clip_norm, lrs)? {
        Some(stats) => projected.then(|| pcgrad::Surgery {
            cosine: stats.cosine(),
            conflict: stats.conflict(),
        }),
        None => step_with_ops(opt, grads, projected, clip_norm, lrs)?,
    };
    let values = Tensor::stack(&losses, 0)?.to_vec1::<f32>()?;
    let tasks = if projected { 2 } else { 1 };
    Ok(Some(StepOutcome {
        loss: values[..tasks].iter().map(|&v| v as f64).sum(),
        align_loss: values.get(tasks).map(|&v| v as f64),
        surgery,
    }))
}

/// A task's loss (the mean BCE) and its logits' gradient, outside candle's graph: `x` the whole
/// batch's logits, (b,) or (b, labels); `idx` and `y` the task's rows and targets.
fn loss_by_hand(x: &Tensor, (idx, y): &(Tensor, Tensor), pw: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
    // Rows are listed in order, so a task with all of them has them as they are.
    let all = idx.dim(0)? == x.dim(0)?;
    let sel = if all { x.clone() } else { x.index_select(idx, 0)? };
    let loss = bce_with_logits(&sel, y, pw)?;
    let dsel = train_ops::bce_with_logits_grad(&sel, y, pw)?;
    let dx = if all {
        dsel
    } else {
        x.zeros_like()?.index_add(idx, &dsel, 0)?
    };
    Ok((loss, dx))
}

/// [`apply_step`] with the heads and losses by hand ([`MultiTask::heads_taped`], their backward
/// passes from the losses' gradients), and the layers by hand from the [CLS] gradients they give
/// (`fp`'s tape; with `split`, the emotion task's own forward pass's): no graph at all. `fp` is
/// the first forward pass (the popularity task's rows with `split`, else the batch).
fn step_by_hand(
    model: &MultiTask,
    opt: &mut AdamW,
    forward: &mut Forward<'_>,
    fp: Forwarded,
    t: &Targets,
    split: bool,
    rule: StepRule,
) -> Result<Option<StepOutcome>> {
    let StepRule {
        pw, pcgrad, frozen, ..
    } = rule;
    // Each task's loss by hand and its backward pass through its head: ([CLS] gradient, head
    // gradients, loss).
    type Task = (Tensor, GradsById, Tensor);
    let pop_task = |((x, tape), target): ((Tensor, HeadTape), &(Tensor, Tensor))| -> Result<Task> {
        let (l, d) = loss_by_hand(&x.squeeze(1)?, target, None)?;
        let (c, g) = model.popularity_backward(&tape, &d.unsqueeze(1)?)?;
        Ok((c, by_id(g), l))
    };
    let emo_task = |((x, tape), target): ((Tensor, HeadTape), &(Tensor, Tensor))| -> Result<Task> {
        let (l, d) = loss_by_hand(&x, target, Some(pw))?;
        let (c, g) = model.emotion_backward(&tape, &d)?;
        Ok((c, by_id(g), l))
    };
    let (pop, mut emo, fe, align) = if split {
        let (tp, te) = t.each_alone()?;
        let hp = model.heads_taped(&fp.cls, Mode::Training, true, false)?;
        let fe = forward(Some(&t.emo_rows))?;
        let he = model.heads_taped(&fe.cls, Mode::Training, false, true)?;
        if !frozen && fe.tape.is_none() {
            // Both forward passes run under the same conditions; this would lose the gradient.
            return Err(Error::Config(
                "the emotion rows' forward pass ran through the graph, the popularity rows' by hand".into(),
            ));
        }
        let pop = hp.popularity.zip(tp.pop_idx.as_ref()).map(pop_task).transpose()?;
        let emo = he.emotions.zip(te.emo_idx.as_ref()).map(emo_task).transpose()?;
        (pop, emo, Some(fe), te.align)
    } else {
        let h = model.heads_taped(&fp.cls, Mode::Training, t.pop_idx.is_some(), t.emo_idx.is_some())?;
        let pop = h.popularity.zip(t.pop_idx.as_ref()).map(pop_task).transpose()?;
        let emo = h.emotions.zip(t.emo_idx.as_ref()).map(emo_task).transpose()?;
        (pop, emo, None, t.align.clone())
    };
    let fe = fe.as_ref().unwrap_or(&fp);
    // The alignment term belongs to the emotion task (translated rows are emotion rows): its
    // weighted loss joins that task's, its gradient that task's [CLS] gradient; the unweighted
    // loss is reported after the tasks'.
    let mut align_term = None;
    if let Some(a) = align {
        let (l, d) = a.loss_and_grad(&fe.cls)?;
        emo = emo
            .map(|(c, g, le)| Ok::<_, Error>(((c + d)?, g, (le + (&l * a.weight)?)?)))
            .transpose()?;
        align_term = Some(l);
    }
    // The layers' gradients from a [CLS] gradient through a forward pass's tape (none frozen).
    let layers = |f: &Forwarded, dcls: &Tensor| -> Result<GradsById> {
        Ok(match (&f.tape, frozen) {
            (Some(tape), false) => by_id(model.bert.backward_taped(tape, dcls)?),
            _ => HashMap::new(),
        })
    };
    let no_grads = HashMap::new();
    let pop_heads = pop.as_ref().map_or(&no_grads, |p| &p.1);
    let emo_heads = emo.as_ref().map_or(&no_grads, |e| &e.1);
    let mut grads: Vec<(Option<Tensor>, Option<Tensor>)> = vec![(None, None); opt.params.len()];
    let (projected, mut losses) = match (&pop, &emo) {
        (Some((cp, _, lp)), Some((ce, _, le))) if pcgrad => {
            let (hp, he) = match (&fp.tape, split || frozen) {
                // One forward pass over the rows in task order (`apply_step`): one backward pass
                // from both tasks' gradients, each weight's gradient summed over each task's rows.
                (Some(tape), false) => {
                    let (a, b) = model
                        .bert
                        .backward_taped_split(tape, &(cp + ce)?, t.pop_rows.len())?;
                    (by_id(a), by_id(b))
                }
                _ => (layers(&fp, cp)?, layers(fe, ce)?),
            };
            for (k, p) in opt.params.iter().enumerate() {
                let id = p.var.as_tensor().id();
                let (a, b) = if p.group == 1 {
                    (&hp, &he)
                } else {
                    (pop_heads, emo_heads)
                };
                grads[k] = (a.get(&id).cloned(), b.get(&id).cloned());
            }
            (true, vec![lp.clone(), le.clone()])
        }
        _ => {
            let (dcls, total) = match (&pop, &emo) {
                (Some((cp, _, lp)), Some((ce, _, le))) => ((cp + ce)?, (lp + le)?),
                (Some((c, _, l)), None) | (None, Some((c, _, l))) => (c.clone(), l.clone()),
                (None, None) => return Ok(None),
            };
            let h = layers(&fp, &dcls)?;
            for (k, p) in opt.params.iter().enumerate() {
                let id = p.var.as_tensor().id();
                grads[k].0 = if p.group == 1 {
                    h.get(&id).cloned()
                } else {
                    pop_heads.get(&id).or(emo_heads.get(&id)).cloned()
                };
            }
            (false, vec![total])
        }
    };
    losses.extend(align_term);
    finish_step(opt, grads, projected, rule, losses)
}

/// Whether [`apply_step`] runs each task's rows as their own batch under PCGrad: on the CPU.
fn split_tasks(dev: &Device) -> bool {
    SPLIT.with(|s| s.get()).unwrap_or(dev.is_cpu())
}

thread_local! {
    /// Overrides [`split_tasks`] on this thread (tests; the bench's stage that runs the GPU's
    /// way on any device).
    static SPLIT: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` with [`apply_step`] splitting the tasks' rows into two batches (`true`, the CPU's
/// way) or not (a GPU's way) whatever the device.
pub(crate) fn with_tasks_split<R>(split: bool, f: impl FnOnce() -> R) -> R {
    let was = SPLIT.with(|s| s.replace(Some(split)));
    let r = f();
    SPLIT.with(|s| s.set(was));
    r
}

/// [`apply_step`]'s update through candle's operations, one tensor at a time, where the fused
/// passes cannot run (`AdamW::step_fused`): PCGrad's projection when `projected`, global-norm
/// clipping, AdamW.
fn step_with_ops(
    opt: &mut AdamW,
    pairs: Vec<(Option<Tensor>, Option<Tensor>)>,
    projected: bool,
    clip_norm: f64,
    lrs: &[f64],
) -> Result<Option<pcgrad::Surgery>> {
    let mut surgery = None;
    let mut grads: Vec<Option<Tensor>> = Vec::with_capacity(pairs.len());
    let shared: Vec<usize> = (0..opt.params.len())
        .filter(|&k| projected && opt.params[k].group == 1)
        .collect();
    if !shared.is_empty() {
        let zero_or = |g: &Option<Tensor>, k: usize| {
            g.clone()
                .map_or_else(|| opt.params[k].var.as_tensor().zeros_like(), Ok)
        };
        let g1 = shared
            .iter()
            .map(|&k| zero_or(&pairs[k].0, k))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let g2 = shared
            .iter()
            .map(|&k| zero_or(&pairs[k].1, k))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let (merged, s) = pcgrad::combine(&g1, &g2)?;
        surgery = Some(s);
        let mut merged = merged.into_iter();
        for (k, (a, b)) in pairs.into_iter().enumerate() {
            let g = if shared.contains(&k) { merged.next() } else { None };
            // A tensor neither task reached sits the step out, as the fused passes leave it.
            grads.push(if a.is_none() && b.is_none() {
                None
            } else {
                g.or(a).or(b)
            });
        }
    } else {
        grads.extend(pairs.into_iter().map(|(a, b)| a.or(b)));
    }
    // Clip the global norm: one device reduction and one number to the host.
    let sums = grads
        .iter()
        .flatten()
        .map(|g| g.sqr()?.sum_all())
        .collect::<candle_core::Result<Vec<_>>>()?;
    let norm = if sums.is_empty() {
        0.0
    } else {
        Tensor::stack(&sums, 0)?
            .sum_all()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?
            .sqrt()
    };
    if norm > clip_norm {
        let s = clip_norm / (norm + 1e-6);
        for g in grads.iter_mut().flatten() {
            *g = (&*g * s)?;
        }
    }
    opt.step(&grads, lrs)?;
    Ok(surgery)
}

/// Runs four steps of the same small model (shared encoder tensors, a norm, a bias, both heads)
/// on `dev` twice, once through the fused passes (`AdamW::step_fused`) and once through candle's
/// operations ([`step_with_ops`]), with the tasks conflicting and agreeing, clipped and not, and a
/// bias that sits one step out; returns the largest difference in weights and whether the fused
/// passes ran. The tests run it on the CPU, `viralclip bench --train-steps` on its device.
pub fn check_fused_step(dev: &Device) -> Result<(f32, bool)> {
    let shapes: [(&str, &[usize], usize); 5] = [
        ("bert.encoder.layer.1.output.dense.weight", &[24, 40_000 / 24], 1),
        ("bert.encoder.layer.1.output.LayerNorm.weight", &[24], 1),
        ("bert.encoder.layer.1.output.dense.bias", &[24], 1),
        ("popularity_head.0.weight", &[8, 24], 0),
        ("emotion_head.0.weight", &[8, 24], 0),
    ];
    let init = shapes
        .iter()
        .map(|(_, s, _)| Tensor::randn(0f32, 1.0, *s, dev))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let opt = || -> Result<AdamW> {
        let vars = shapes
            .iter()
            .zip(&init)
            .map(|((n, _, g), t)| Ok((n.to_string(), Var::from_tensor(&t.copy()?)?, *g)))
            .collect::<Result<Vec<_>>>()?;
        Ok(AdamW::new(vars, 0.01)?)
    };
    let (mut fused, mut ops) = (opt()?, opt()?);
    // An epsilon well above rounding: with Adam's own (1e-8), a gradient element within rounding
    // of zero moves its weight by up to ±lr depending on which way it rounded on each path.
    (fused.eps, ops.eps) = (1e-3, 1e-3);
    let lrs = [1e-2, 3e-3];
    let mut ran = true;
    let mut worst = 0f32;
    for (step, (sign, clip)) in [(-0.7, 1e9), (0.7, 1e9), (-0.7, 0.3), (0.5, 0.3)]
        .into_iter()
        .enumerate()
    {
        let mut pairs: Vec<(Option<Tensor>, Option<Tensor>)> = Vec::new();
        for (k, (name, s, group)) in shapes.iter().enumerate() {
            let a = Tensor::randn(0f32, 0.1, *s, dev)?;
            let b = ((&a * sign)? + Tensor::randn(0f32, 0.05, *s, dev)?)?;
            pairs.push(match (group, name.starts_with("popularity")) {
                // The bias sits out step 1, so its bias corrections lag the others'.
                _ if k == 2 && step == 1 => (None, None),
                (1, _) => (Some(a), Some(b)),
                (_, true) => (Some(a), None),
                _ => (None, Some(b)),
            });
        }
        let stats = fused.step_fused(&pairs, true, clip, &lrs)?;
        if stats.is_none() {
            ran = false;
            step_with_ops(&mut fused, pairs.clone(), true, clip, &lrs)?;
        }
        let surgery = step_with_ops(&mut ops, pairs, true, clip, &lrs)?;
        if let (Some(s), Some(o)) = (stats, surgery) {
            if s.conflict() != o.conflict || (s.cosine() - o.cosine).abs() > 1e-4 {
                return Err(Error::Check(format!(
                    "fused step {step}: cosine {} (conflict {}) against {} ({})",
                    s.cosine(),
                    s.conflict(),
                    o.cosine,
                    o.conflict
                )));
            }
        }
        for (f, o) in fused.params.iter().zip(&ops.params) {
            let d = (f.var.as_tensor() - o.var.as_tensor())?.abs()?.max_all()?;
            worst = worst.max(d.to_scalar::<f32>()?);
            if f.steps != o.steps {
                return Err(Error::Check(format!(
                    "fused step {step}: {} step counts differ",
                    f.name
                )));
            }
        }
    }
    if fused.params[2].steps != 3 {
        return Err(Error::Check(
            "fused step: the bias that sat a step out was counted".into(),
        ));
    }
    Ok((worst, ran))
}

/// What one step did.
pub(crate) struct StepOutcome {
    /// The batch's loss (both tasks, the alignment term included).
    pub loss: f64,
    /// The unweighted alignment loss, when the batch had translated rows.
    pub align_loss: Option<f64>,
    /// What PCGrad did, when it ran.
    pub surgery: Option<pcgrad::Surgery>,
}

/// Measures a saved model on labelled data through the engine, e.g. a model trained elsewhere on
/// held-out rows: `viralclip model eval`. With `tune`, the per-class emotion thresholds are tuned
/// on this data (and returned) instead of read from the manifest.
pub fn evaluate_model(
    model_dir: &Path,
    encoder_dir: Option<&Path>,
    sources: &[Source],
    device: &Device,
    tune: bool,
) -> Result<(Evaluation, Vec<SourceStats>, Vec<f32>)> {
    let mut ex = Vec::new();
    let mut stats = Vec::new();
    for s in sources {
        let (e, st) = data::load(s)?;
        ex.extend(e);
        stats.push(st);
    }
    let loaded = artifact::load(model_dir, encoder_dir, device, DType::F32)?;
    let thresholds = loaded.manifest.thresholds.emotions.clone();
    let prefix = loaded.manifest.text_prefix.clone();
    let tok = tokenize(&loaded.tokenizer, &prefix, &ex)?;
    let scorer = viralclip_engine::scorer::BertScorer::new(loaded);
    let s = scorer.score_ids(&tok.ids, &mut |_, _| {})?;
    let pw = vec![1.0; EMOTIONS];
    let (ev, thr) = evaluate(
        &tok.labels,
        &s.iter().map(|s| s.popularity).collect::<Vec<_>>(),
        &s.iter().map(|s| s.emotions.clone()).collect::<Vec<_>>(),
        &pw,
        (!tune).then_some(thresholds.as_slice()),
    );
    Ok((ev, stats, thr))
}

/// Probabilities for a set of examples through the cache: popularity per row, emotions per row.
fn predict(
    model: &MultiTask,
    cache: &Cache,
    from: usize,
    use_cls: bool,
    dev: &Device,
) -> Result<(Vec<f32>, Vec<Vec<f32>>)> {
    let n = cache.lens.len();
    let limits = BatchLimits {
        max_batch: 64,
        max_tokens: 64 * 64,
    };
    let mut pop = vec![0f32; n];
    let mut emo = vec![Vec::new(); n];
    for rows in plan_batches(&cache.lens, limits) {
        let cls = if use_cls {
            Tensor::stack(&rows.iter().map(|&i| cache.cls[i].clone()).collect::<Vec<_>>(), 0)?
        } else {
            let (h, m) = batch_hidden(cache, &rows, dev)?;
            model.bert.cls_from(&h, &m, from, Mode::Inference)?
        };
        let l = model.heads(&cls, Mode::Inference)?;
        let p = candle_nn::ops::sigmoid(&l.popularity.to_dtype(DType::F32)?)?.to_vec1::<f32>()?;
        let e = candle_nn::ops::sigmoid(&l.emotions.to_dtype(DType::F32)?)?.to_vec2::<f32>()?;
        for ((&i, p), e) in rows.iter().zip(p).zip(e) {
            pop[i] = p;
            emo[i] = e;
        }
    }
    Ok((pop, emo))
}

fn logit(p: f32) -> f32 {
    let p = p.clamp(1e-7, 1.0 - 1e-7);
    (p / (1.0 - p)).ln()
}

/// Losses and metrics from probabilities; `thresholds` None = tune them here.
pub fn evaluate(
    labels: &[Label],
    pop: &[f32],
    emo: &[Vec<f32>],
    pw: &[f32],
    thresholds: Option<&[f32]>,
) -> (Evaluation, Vec<f32>) {
    let (mut pp, mut pl, mut ep, mut el) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (i, l) in labels.iter().enumerate() {
        match l {
            Label::Popularity(b) => {
                pp.push(pop[i]);
                pl.push(*b);
            }
            Label::Emotions(c) => {
                ep.push(emo[i].clone());
                let mut v = vec![false; EMOTIONS];
                for &k in c {
                    v[k] = true;
                }
                el.push(v);
            }
        }
    }
    let bce = |p: f32, y: bool, w: f32| -> f64 {
        let x = logit(p) as f64;
        let sp = (-x).max(0.0) + (1.0 + (-x.abs()).exp()).ln();
        let y = y as u8 as f64;
        (1.0 - y) * x + (1.0 + (w as f64 - 1.0) * y) * sp
    };
    let mut ev = Evaluation::default();
    if !pp.is_empty() {
        ev.popularity_loss =
            Some(pp.iter().zip(&pl).map(|(p, y)| bce(*p, *y, 1.0)).sum::<f64>() / pp.len() as f64);
        ev.popularity = Some(metrics::binary(&pp, &pl, 0.5));
    }
    let mut thr = thresholds
        .map(<[f32]>::to_vec)
        .unwrap_or_else(|| vec![0.5; EMOTIONS]);
    if !ep.is_empty() {
        let mut s = 0.0;
        for (p, y) in ep.iter().zip(&el) {
            for c in 0..EMOTIONS {
                s += bce(p[c], y[c], pw[c]);
            }
        }
        ev.emotion_loss = Some(s / (ep.len() * EMOTIONS) as f64);
        ev.emotions_at_half = Some(metrics::multilabel(&ep, &el, &[0.5; EMOTIONS]));
        if thresholds.is_none() {
            thr = metrics::tune_thresholds(&ep, &el, EMOTIONS);
        }
        ev.emotions_tuned = Some(metrics::multilabel(&ep, &el, &thr));
    }
    (ev, thr)
}

#[derive(Serialize, Deserialize)]
struct ResumeState {
    next_epoch: usize,
    step: usize,
    best_epoch: usize,
    /// The best [`SelectBy::key`] so far (lower is better).
    #[serde(alias = "best_loss")]
    best_key: f64,
    epochs: Vec<EpochReport>,
}

/// Trains a model as `cfg` says; writes the artifact, `train-report.json` and checkpoints in
/// `cfg.out`.
pub fn train(
    cfg: &TrainConfig,
    device: &Device,
    on_event: &mut dyn FnMut(Event),
    cancel: &AtomicBool,
) -> Result<TrainReport> {
    let t_all = Instant::now();
    // fp32 master weights and optimizer state; on a GPU the matrix products run in TF32.
    viralclip_engine::device::Precision::Tf32.configure(device);
    if cfg.batch_size == 0 || cfg.frozen_epochs + cfg.unfrozen_epochs == 0 {
        return Err(Error::Config("batch size and epochs must be positive".into()));
    }
    if cfg.align < 0.0 || !cfg.align.is_finite() {
        return Err(Error::Config("--align must be a weight >= 0".into()));
    }
    if !(0.0..0.9).contains(&cfg.val_fraction) {
        return Err(Error::Config("--val-fraction must be in [0, 0.9)".into()));
    }
    let enc = EncoderFiles::open(&cfg.encoder_dir)?;
    let layers = enc.config.num_hidden_layers;
    let unfreeze = if cfg.unfrozen_epochs > 0 {
        cfg.unfreeze_layers.min(layers)
    } else {
        0
    };
    let from = layers - unfreeze;

    // Data.
    let mut all = Vec::new();
    let mut sources = Vec::new();
    for s in &cfg.data {
        let (ex, st) = data::load(s)?;
        tracing::info!(path = %s.path.display(), rows = ex.len(), skipped = st.skipped, "loaded");
        all.extend(ex);
        sources.push(st);
    }
    let mut test = Vec::new();
    let mut test_sources = Vec::new();
    for s in &cfg.test {
        let (ex, st) = data::load(s)?;
        test.extend(ex);
        test_sources.push(st);
    }
    let (mut train_ex, val_ex) = split(all, cfg.val_fraction, cfg.seed);
    // Dropout masks from the run's seed too (heads are initialised from it, batches shuffled by
    // it): the same run twice on the CPU trains the same weights.
    viralclip_engine::model::train_ops::seed_dropout(cfg.seed);
    if let Some(m) = cfg.max_train {
        train_ex.truncate(m);
    }
    if train_ex.is_empty() {
        return Err(Error::Config("no training examples".into()));
    }
    on_event(Event::Loaded {
        train: train_ex.len(),
        val: val_ex.len(),
        test: test.len(),
    });
    let pw_vec = pos_weights(&train_ex);
    let pw = Tensor::new(pw_vec.as_slice(), device)?;

    // Tokenise once.
    let prefix = Manifest::text_prefix_for(&cfg.base_repo);
    let tokenizer = enc.tokenizer(cfg.max_length)?;
    let pad = tokenizer
        .get_padding()
        .map(|p| p.pad_id)
        .unwrap_or(enc.config.pad_token_id as u32);
    let tok_train = tokenize(&tokenizer, &prefix, &train_ex)?;
    let tok_val = tokenize(&tokenizer, &prefix, &val_ex)?;
    // The originals of translated emotion rows, each distinct text once (a source given 4× has
    // four copies of each row).
    let align_on = cfg.align > 0.0 && unfreeze > 0;
    let mut pair_of: Vec<Option<usize>> = vec![None; train_ex.len()];
    let mut pairs: Vec<Example> = Vec::new();
    if align_on {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, e) in train_ex.iter().enumerate() {
            if let (Some(p), Label::Emotions(_)) = (&e.pair, &e.label) {
                let k = *seen.entry(p.as_str()).or_insert_with(|| {
                    pairs.push(Example {
                        text: p.clone(),
                        label: e.label.clone(),
                        pair: None,
                    });
                    pairs.len() - 1
                });
                pair_of[i] = Some(k);
            }
        }
        if pairs.is_empty() {
            tracing::warn!("--align: no training row has the text it was translated from (ru_go_emotions' `text` column beside `ru_text`); nothing to align");
        }
        tracing::info!(
            rows = pair_of.iter().flatten().count(),
            originals = pairs.len(),
            "alignment pairs"
        );
    }
    let tok_pair = tokenize(&tokenizer, &prefix, &pairs)?;

    // The model: heads and the top `unfreeze` layers are Vars.
    let vars = Arc::new(Mutex::new(Vec::new()));
    let trainable_layers: Vec<String> = (from..layers)
        .map(|i| format!("bert.encoder.layer.{i}."))
        .collect();
    let init: HashMap<String, Tensor> = match &cfg.init {
        None => viralclip_engine::model::init_heads(enc.config.hidden_size, EMOTIONS, cfg.seed)?,
        Some(dir) => init_from(dir, &cfg.base_repo, from, cfg.pooling)?,
    };
    // Encoder tensors --init brought: the artifact keeps them even after a heads-only epoch.
    let from_init: std::collections::HashSet<String> = init.keys().filter(|k| !is_head(k)).cloned().collect();
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
    let mut opt = AdamW::new(params, cfg.weight_decay)?;

    // Cache the frozen part.
    let t_cache = Instant::now();
    let sets = [&tok_train, &tok_val, &tok_pair];
    let total: usize = sets.iter().map(|t| t.ids.len()).sum();
    let mut caches = Vec::with_capacity(sets.len());
    for tok in sets {
        let before: usize = caches.iter().map(|c: &Cache| c.lens.len()).sum();
        caches.push(build_cache(
            &model,
            tok,
            from,
            pad,
            device,
            &mut |d, _| {
                on_event(Event::Caching {
                    done: before + d,
                    total,
                })
            },
            cancel,
        )?);
    }
    let Ok([cache_train, cache_val, cache_pair]) = <[Cache; 3]>::try_from(caches) else {
        unreachable!("one cache per set")
    };
    let cache_secs = t_cache.elapsed().as_secs_f64();

    // Schedule.
    let epochs = cfg.frozen_epochs + cfg.unfrozen_epochs;
    let steps_per_epoch = tok_train.ids.len().div_ceil(cfg.batch_size);
    let total_steps = steps_per_epoch * epochs;
    let head_lr = cfg.head_lr.unwrap_or(cfg.lr);
    std::fs::create_dir_all(&cfg.out).map_err(|e| Error::io(&cfg.out, e))?;
    let ckpt_dir = cfg.out.join("checkpoint");
    let mut state = ResumeState {
        next_epoch: 0,
        step: 0,
        best_epoch: 0,
        best_key: f64::INFINITY,
        epochs: Vec::new(),
    };
    if cfg.resume && ckpt_dir.join("state.json").is_file() {
        let text =
            std::fs::read_to_string(ckpt_dir.join("state.json")).map_err(|e| Error::io(&ckpt_dir, e))?;
        state = serde_json::from_str(&text).map_err(|e| Error::data(&ckpt_dir, e.to_string()))?;
        opt.load(&ckpt_dir.join("optimizer.safetensors"))?;
        tracing::info!(epoch = state.next_epoch, "resumed");
    }
    let mut best_params: Option<HashMap<String, Tensor>> =
        if state.next_epoch > 0 && cfg.out.join("weights.safetensors").is_file() {
            Some(candle_core::safetensors::load(
                cfg.out.join("weights.safetensors"),
                device,
            )?)
        } else {
            None
        };
    let mut best_thresholds: Vec<f32> = state
        .epochs
        .iter()
        .find(|e| e.epoch == state.best_epoch)
        .map(|e| e.thresholds.clone())
        .unwrap_or_else(|| vec![0.5; EMOTIONS]);
    let mut stale = state
        .epochs
        .iter()
        .rev()
        .take_while(|e| e.epoch != state.best_epoch)
        .count();

    for epoch in state.next_epoch..epochs {
        let frozen = epoch < cfg.frozen_epochs;
        let t_epoch = Instant::now();
        let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed ^ (epoch as u64 + 1).wrapping_mul(0x9E37));
        // Length-bucketed batches: sort by length with jitter, cut, shuffle the batch order.
        let mut order: Vec<usize> = (0..tok_train.ids.len()).collect();
        order.shuffle(&mut rng);
        order.sort_by_key(|&i| cache_train.lens[i] / 4);
        let mut batches: Vec<Vec<usize>> = order.chunks(cfg.batch_size).map(<[usize]>::to_vec).collect();
        batches.shuffle(&mut rng);
        let (mut loss_sum, mut conflicts, mut pc_steps) = (0.0, 0usize, 0usize);
        let (mut align_sum, mut align_steps) = (0.0, 0usize);
        for (bi, rows) in batches.iter().enumerate() {
            if cancel.load(Ordering::Relaxed) {
                return Err(Error::Cancelled);
            }
            let f = cosine_with_warmup(state.step, cfg.warmup_steps, total_steps);
            let lrs = [
                head_lr * f,
                if frozen {
                    0.0
                } else {
                    cfg.lr * cfg.unfrozen_lr_mult * f
                },
            ];
            let mut forward = |part: Option<&[usize]>| -> Result<Forwarded> {
                let picked: Vec<usize> = match part {
                    Some(p) => p.iter().map(|&k| rows[k]).collect(),
                    None => rows.clone(),
                };
                Ok(if frozen {
                    Forwarded::from(Tensor::stack(
                        &picked
                            .iter()
                            .map(|&i| cache_train.cls[i].clone())
                            .collect::<Vec<_>>(),
                        0,
                    )?)
                } else {
                    let (h, m) = batch_hidden(&cache_train, &picked, device)?;
                    forward_layers(&model, &h, &m, from, Mode::Training)?
                })
            };
            let mut t = targets(&tok_train.labels, rows, device)?;
            if align_on && !frozen {
                // Targets from the model as it is now, without dropout and without a graph.
                let (pos, originals): (Vec<usize>, Vec<usize>) = rows
                    .iter()
                    .enumerate()
                    .filter_map(|(k, &i)| pair_of[i].map(|p| (k, p)))
                    .unzip();
                if !pos.is_empty() {
                    let (h, m) = batch_hidden(&cache_pair, &originals, device)?;
                    let target = model.bert.cls_from(&h, &m, from, Mode::Inference)?.detach();
                    t.align = Some(Align::new(pos, target, cfg.align));
                }
            }
            let Some(StepOutcome {
                loss: batch_loss,
                align_loss,
                surgery,
            }) = apply_step(
                &model,
                &mut opt,
                &mut forward,
                &t,
                StepRule {
                    pw: &pw,
                    pcgrad: cfg.pcgrad && !frozen,
                    frozen,
                    clip_norm: cfg.clip_norm,
                    lrs: &lrs,
                },
            )?
            else {
                continue;
            };
            if let Some(a) = align_loss {
                align_sum += a;
                align_steps += 1;
            }
            if let Some(s) = surgery {
                pc_steps += 1;
                conflicts += s.conflict as usize;
            }
            state.step += 1;
            loss_sum += batch_loss;
            if bi % 20 == 0 || bi + 1 == batches.len() {
                let done = ((bi + 1) * cfg.batch_size).min(tok_train.ids.len());
                on_event(Event::Step {
                    epoch,
                    step: bi + 1,
                    steps: batches.len(),
                    loss: loss_sum / (bi + 1) as f64,
                    examples_per_s: done as f64 / t_epoch.elapsed().as_secs_f64(),
                });
            }
        }
        let train_secs = t_epoch.elapsed().as_secs_f64();
        // Validate.
        let (vp, ve) = predict(&model, &cache_val, from, frozen, device)?;
        let (val, thresholds) = evaluate(&tok_val.labels, &vp, &ve, &pw_vec, None);
        let report = EpochReport {
            epoch,
            stage: if frozen {
                "heads".into()
            } else {
                format!("heads + top {unfreeze} layers")
            },
            train_loss: loss_sum / batches.len().max(1) as f64,
            thresholds: thresholds.clone(),
            conflicts: (pc_steps > 0).then(|| conflicts as f64 / pc_steps as f64),
            align_loss: (align_steps > 0).then(|| align_sum / align_steps as f64),
            secs: t_epoch.elapsed().as_secs_f64(),
            examples_per_s: tok_train.ids.len() as f64 / train_secs,
            val,
        };
        on_event(Event::Epoch(Box::new(report.clone())));
        let key = cfg.select_by.key(&report.val);
        let improved = key < state.best_key || val_ex.is_empty();
        state.epochs.push(report);
        if improved {
            state.best_key = key;
            state.best_epoch = epoch;
            best_thresholds = thresholds;
            let snapshot: HashMap<String, Tensor> = opt
                .params
                .iter()
                .filter(|p| is_head(&p.name) || !frozen || epoch + 1 == epochs || from_init.contains(&p.name))
                .map(|p| {
                    // With f16_layers, encoder matrices in fp16 (biases, norms and heads stay fp32).
                    let t = p.var.as_tensor();
                    let t = if cfg.f16_layers && p.name.starts_with("bert.") && t.rank() >= 2 {
                        t.to_dtype(DType::F16)?
                    } else {
                        t.copy()?
                    };
                    Ok((p.name.clone(), t))
                })
                .collect::<candle_core::Result<HashMap<_, _>>>()?;
            best_params = Some(snapshot);
            stale = 0;
        } else {
            stale += 1;
        }
        // Save the model so far and a checkpoint to resume from.
        let has_layers = best_params
            .as_ref()
            .is_some_and(|p| p.keys().any(|k| k.starts_with("bert.")));
        let manifest = manifest_for(cfg, &enc, unfreeze, has_layers, &best_thresholds, &sources);
        if let Some(p) = &best_params {
            artifact::save(&cfg.out, &manifest, p)?;
        }
        std::fs::create_dir_all(&ckpt_dir).map_err(|e| Error::io(&ckpt_dir, e))?;
        state.next_epoch = epoch + 1;
        opt.save(&ckpt_dir.join("optimizer.safetensors"))?;
        std::fs::write(
            ckpt_dir.join("state.json"),
            serde_json::to_string(&state).expect("serialises"),
        )
        .map_err(|e| Error::io(&ckpt_dir, e))?;
        if stale >= cfg.patience && cfg.patience > 0 {
            tracing::info!(
                epoch,
                "early stop: no better validation {:?} for {stale} epochs",
                cfg.select_by
            );
            break;
        }
    }

    // The saved model, through the engine, on validation and test data.
    let loaded = artifact::load(&cfg.out, Some(&enc.dir), device, DType::F32)?;
    let scorer = viralclip_engine::scorer::BertScorer::new(loaded);
    let val_scores = scorer.score_ids(&tok_val.ids, &mut |_, _| {})?;
    let (val_reloaded, _) = evaluate(
        &tok_val.labels,
        &val_scores.iter().map(|s| s.popularity).collect::<Vec<_>>(),
        &val_scores.iter().map(|s| s.emotions.clone()).collect::<Vec<_>>(),
        &pw_vec,
        Some(&best_thresholds),
    );
    let test_eval = if test.is_empty() {
        None
    } else {
        let tok_test = tokenize(&tokenizer, &prefix, &test)?;
        let s = scorer.score_ids(&tok_test.ids, &mut |_, _| {})?;
        let (ev, _) = evaluate(
            &tok_test.labels,
            &s.iter().map(|s| s.popularity).collect::<Vec<_>>(),
            &s.iter().map(|s| s.emotions.clone()).collect::<Vec<_>>(),
            &pw_vec,
            Some(&best_thresholds),
        );
        Some(ev)
    };
    let report = TrainReport {
        config: cfg.clone(),
        sources,
        test_sources,
        train_examples: tok_train.ids.len(),
        val_examples: tok_val.ids.len(),
        pos_weight: pw_vec,
        epochs: state.epochs.clone(),
        best_epoch: state.best_epoch,
        val_reloaded,
        test: test_eval,
        cache_secs,
        wall_secs: t_all.elapsed().as_secs_f64(),
        labels: viralclip_engine::score::GOEMOTIONS_LABELS
            .iter()
            .map(|s| s.to_string())
            .collect(),
    };
    // Record the final metrics in the manifest too.
    let mut manifest = Manifest::read(&cfg.out)?;
    manifest.metrics = serde_json::json!({
        "best_epoch": report.best_epoch,
        "validation": report.val_reloaded,
        "test": report.test,
    });
    manifest.write(&cfg.out)?;
    let png = cfg.out.join("train-curves.png");
    if let Err(e) = crate::plot::learning_curves(&report, &png) {
        tracing::warn!("{e}");
    }
    let path = cfg.out.join("train-report.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&report).expect("serialises") + "\n",
    )
    .map_err(|e| Error::io(&path, e))?;
    Ok(report)
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

fn manifest_for(
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

/// The directory layout a run writes.
pub fn report_path(out: &Path) -> PathBuf {
    out.join("train-report.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny model (trainable from layer 1) and a batch of six rows of different lengths
    /// (padding differs between the whole batch and its parts), both tasks present.
    struct Batch {
        dev: Device,
        varmap: candle_nn::VarMap,
        model: MultiTask,
        lens: [usize; 6],
        mask: Tensor,
        labels: Vec<Label>,
        tg: Targets,
        pw: Tensor,
        from: usize,
        hidden: Tensor,
    }

    fn small_batch() -> Batch {
        use candle_nn::{VarBuilder, VarMap};
        let dev = Device::Cpu;
        let varmap = VarMap::new();
        let model = MultiTask::load(
            VarBuilder::from_varmap(&varmap, DType::F32, &dev),
            &crate::tiny_bert(40),
            EMOTIONS,
        )
        .unwrap();
        let lens = [9usize, 4, 7, 2, 9, 5];
        let t = 9;
        let ids: Vec<u32> = (0..lens.len() * t).map(|k| (k * 7 % 37 + 1) as u32).collect();
        let mask: Vec<u32> = lens
            .iter()
            .flat_map(|&l| (0..t).map(move |j| u32::from(j < l)))
            .collect();
        let ids = Tensor::from_vec(ids, (lens.len(), t), &dev).unwrap();
        let mask = Tensor::from_vec(mask, (lens.len(), t), &dev).unwrap();
        let labels: Vec<Label> = (0..lens.len())
            .map(|k| {
                if k % 3 == 0 {
                    Label::Popularity(k == 0)
                } else {
                    Label::Emotions(vec![k, 27])
                }
            })
            .collect();
        let rows: Vec<usize> = (0..lens.len()).collect();
        let tg = targets(&labels, &rows, &dev).unwrap();
        let pw = Tensor::ones(EMOTIONS, DType::F32, &dev).unwrap();
        let from = 1;
        let hidden = model
            .bert
            .hidden_before(&ids, &mask, from, Mode::Inference)
            .unwrap()
            .detach();
        Batch {
            dev,
            varmap,
            model,
            lens,
            mask,
            labels,
            tg,
            pw,
            from,
            hidden,
        }
    }

    /// The largest magnitude in `t`.
    fn max_abs(t: &Tensor) -> f32 {
        t.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
    }

    /// The tests' step settings: clipping at 1, a rate of 1e3 for both groups (see
    /// [`plain_steps_from`]).
    fn plain_rule(pw: &Tensor, pcgrad: bool, frozen: bool) -> StepRule<'_> {
        StepRule {
            pw,
            pcgrad,
            frozen,
            clip_norm: 1.0,
            lrs: &[1e3, 1e3],
        }
    }

    /// Sets `vars` back to `start` and gives an optimiser over them (heads in group 0, layers in
    /// group 1) whose first step (at a rate of 1e3) moves each weight by about its gradient: an
    /// epsilon far above every gradient makes lr·g/(|g| + eps) ≈ g, where Adam's own would move
    /// it by ±lr whatever the gradient's size, and hide a wrong gradient of the right sign.
    fn plain_steps_from(vars: &[(String, Var)], start: &[Tensor]) -> AdamW {
        for ((_, v), s) in vars.iter().zip(start) {
            v.set(s).unwrap();
        }
        let params = vars
            .iter()
            .map(|(n, v)| (n.clone(), v.clone(), if is_head(n) { 0 } else { 1 }))
            .collect();
        let mut opt = AdamW::new(params, 0.0).unwrap();
        opt.eps = 1e3;
        opt
    }

    /// The PCGrad step takes the same step whether each task's rows run as their own batch (the
    /// CPU's way) or both tasks share one forward pass (a GPU's), and whether the trainable
    /// layers run through candle's graph or by hand.
    #[test]
    fn every_way_of_running_the_step_takes_the_same_step() {
        let Batch {
            dev,
            varmap,
            model,
            mask,
            tg,
            pw,
            from,
            hidden,
            ..
        } = small_batch();
        let mut vars: Vec<(String, Var)> = varmap
            .data()
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, _)| {
                is_head(n) || n.starts_with("bert.encoder.layer.1.") || n.starts_with("bert.encoder.layer.2.")
            })
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let start: Vec<Tensor> = vars.iter().map(|(_, v)| v.as_tensor().copy().unwrap()).collect();
        let aligned = with_alignment(&tg, &model);
        let step = |tg: &Targets, split: bool, by_hand: bool| -> Vec<Tensor> {
            let mut opt = plain_steps_from(&vars, &start);
            let mut forward = |part: Option<&[usize]>| -> Result<Forwarded> {
                let (h, m) = match part {
                    None => (hidden.clone(), mask.clone()),
                    Some(r) => {
                        let idx =
                            Tensor::new(r.iter().map(|&k| k as u32).collect::<Vec<_>>().as_slice(), &dev)?;
                        (hidden.index_select(&idx, 0)?, mask.index_select(&idx, 0)?)
                    }
                };
                if by_hand {
                    let f = forward_layers(&model, &h, &m, from, Mode::Autograd)?;
                    assert!(f.tape.is_some(), "this model trains by hand");
                    Ok(f)
                } else {
                    Ok(model.bert.cls_from(&h, &m, from, Mode::Autograd)?.into())
                }
            };
            // Without dropout: the heads' masks would differ between one batch and two.
            let out = with_tasks_split(split, || {
                viralclip_engine::model::train_ops::without_dropout(|| {
                    apply_step(&model, &mut opt, &mut forward, tg, plain_rule(&pw, true, false))
                })
            });
            let out = out.unwrap().unwrap();
            let surgery = out.surgery.expect("PCGrad ran");
            // The two tasks' gradients' cosine: each task's gradient, not only their sum; and
            // the losses (the alignment term's too, when there is one).
            let reported = [surgery.cosine, out.loss, out.align_loss.unwrap_or(-1.0)].map(|v| v as f32);
            assert_eq!(out.align_loss.is_some(), tg.align.is_some());
            vars.iter()
                .map(|(_, v)| v.as_tensor().copy().unwrap())
                .chain([Tensor::new(&reported, &dev).unwrap()])
                .collect::<Vec<_>>()
        };
        // Each task's rows apart through candle's graph; both tasks in one pass; and both of
        // these with the trainable layers by hand (their taped backward from the [CLS] leaf);
        // without translated rows and with (the alignment loss by hand, or through the graph).
        let names: Vec<&str> = vars
            .iter()
            .map(|(n, _)| n.as_str())
            .chain(["cosine, losses"])
            .collect();
        for (tg, what) in [(&tg, "plain"), (&aligned, "aligned")] {
            let reference = step(tg, true, false);
            for (split, by_hand) in [(false, false), (true, true), (false, true)] {
                let other = step(tg, split, by_hand);
                for (name, (a, b)) in names.iter().zip(other.iter().zip(&reference)) {
                    let d = max_abs(&(a - b).unwrap());
                    assert!(d < 1e-4, "{what}: split {split}, by hand {by_hand}, {name}: {d}");
                }
            }
            for ((name, _), (a, s)) in vars.iter().zip(reference.iter().zip(&start)) {
                let moved = max_abs(&(a - s).unwrap());
                // The keys' bias has no gradient (softmax ignores a shift common to all keys).
                assert!(
                    moved > 1e-6 || name.ends_with("key.bias"),
                    "{what}: {name} did not move"
                );
            }
        }
    }

    /// `tg` with two of its emotion rows (the batch's rows 2 and 4) pulled toward fixed vectors
    /// by a weighted alignment loss.
    fn with_alignment(tg: &Targets, model: &MultiTask) -> Targets {
        let h = model.bert.config().hidden_size;
        let target: Vec<f32> = (0..2 * h).map(|k| ((k * 37 % 23) as f32 - 11.0) / 8.0).collect();
        let target = Tensor::from_vec(target, (2, h), &Device::Cpu).unwrap();
        assert!([2, 4].iter().all(|r| tg.emo_rows.contains(r)), "emotion rows");
        Targets {
            pop_idx: tg.pop_idx.clone(),
            emo_idx: tg.emo_idx.clone(),
            pop_rows: tg.pop_rows.clone(),
            emo_rows: tg.emo_rows.clone(),
            align: Some(Align::new(vec![2, 4], target, 0.7)),
        }
    }

    /// Without PCGrad (one backward pass of the summed losses) and with the layers frozen (the
    /// heads-only stage), the step by hand (heads, losses and layers outside candle's graph)
    /// takes the step that candle's graph and operations take, with the emotion classes weighted.
    #[test]
    fn the_step_by_hand_takes_the_graphs_step() {
        let Batch {
            dev,
            varmap,
            model,
            mask,
            tg,
            from,
            hidden,
            ..
        } = small_batch();
        let pw: Vec<f32> = (0..EMOTIONS).map(|k| 0.5 + (k % 5) as f32 * 0.6).collect();
        let pw = Tensor::from_vec(pw, EMOTIONS, &dev).unwrap();
        let vars: Vec<(String, Var)> = {
            let mut v: Vec<(String, Var)> = varmap
                .data()
                .lock()
                .unwrap()
                .iter()
                .filter(|(n, _)| is_head(n) || n.starts_with("bert.encoder.layer.1."))
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        let start: Vec<Tensor> = vars.iter().map(|(_, v)| v.as_tensor().copy().unwrap()).collect();
        let aligned = with_alignment(&tg, &model);
        let step = |tg: &Targets, frozen: bool| -> (Vec<Tensor>, [f64; 2]) {
            let mut opt = plain_steps_from(&vars, &start);
            let cls = model
                .bert
                .cls_from(&hidden, &mask, from, Mode::Inference)
                .unwrap()
                .detach();
            let mut forward = |part: Option<&[usize]>| -> Result<Forwarded> {
                assert!(part.is_none(), "one forward pass without PCGrad");
                if frozen {
                    Ok(cls.clone().into())
                } else {
                    forward_layers(&model, &hidden, &mask, from, Mode::Autograd)
                }
            };
            let out = viralclip_engine::model::train_ops::without_dropout(|| {
                apply_step(&model, &mut opt, &mut forward, tg, plain_rule(&pw, false, frozen))
            })
            .unwrap()
            .unwrap();
            assert!(out.surgery.is_none());
            (
                vars.iter().map(|(_, v)| v.as_tensor().copy().unwrap()).collect(),
                [out.loss, out.align_loss.unwrap_or(-1.0)],
            )
        };
        for (tg, what) in [(&tg, "plain"), (&aligned, "aligned")] {
            for frozen in [false, true] {
                let (by_hand, losses) = step(tg, frozen);
                let (graph, graph_losses) =
                    viralclip_engine::model::train_ops::without_fused(|| step(tg, frozen));
                // The batch's loss, then the unweighted alignment loss (-1: none).
                for (a, b) in losses.iter().zip(&graph_losses) {
                    assert!(
                        (a - b).abs() < 1e-5 * b.abs().max(1.0),
                        "{what}, frozen {frozen}: losses {losses:?} vs {graph_losses:?}"
                    );
                }
                assert_eq!(
                    losses[1] >= 0.0,
                    tg.align.is_some(),
                    "{what}: the alignment loss reported"
                );
                for (((name, _), a), (b, s)) in vars.iter().zip(&by_hand).zip(graph.iter().zip(&start)) {
                    let d = max_abs(&(a - b).unwrap());
                    assert!(d < 1e-4, "{what}, frozen {frozen}, {name}: {d}");
                    let moved = max_abs(&(a - s).unwrap());
                    let trained = is_head(name) || !frozen;
                    // The keys' bias has no gradient (softmax ignores a shift common to all keys).
                    if !name.ends_with("key.bias") {
                        assert_eq!(
                            moved > 1e-6,
                            trained,
                            "{what}, frozen {frozen}, {name} moved {moved}"
                        );
                    }
                }
            }
        }
    }

    /// The optimiser's fused passes and candle's operations take the same steps through the
    /// trainer's wiring ([`check_fused_step`]), and a tensor that sits a step out is not counted.
    #[test]
    fn fused_optimiser_step_matches_the_operations() {
        let (diff, fused) = check_fused_step(&Device::Cpu).unwrap();
        assert!(fused, "f32 on the CPU takes the fused passes");
        assert!(diff < 2e-5, "fused vs operations: {diff}");
    }

    /// The premise of the task-split PCGrad step: rows never interact in the encoder, so each
    /// task's gradient from its own rows alone (padded to their own length) is its gradient from
    /// the whole batch.
    #[test]
    fn task_split_forward_gives_the_whole_batch_gradients() {
        let Batch {
            dev,
            varmap,
            model,
            lens,
            mask,
            labels,
            tg,
            pw,
            from,
            hidden,
        } = small_batch();
        let shared: Vec<_> = varmap
            .data()
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, _)| n.starts_with("bert.encoder.layer.1.") || n.starts_with("bert.encoder.layer.2."))
            .map(|(_, v)| v.clone())
            .collect();
        assert!(shared.len() >= 16);
        // Whole batch: both losses from one forward.
        let cls = model.bert.cls_from(&hidden, &mask, from, Mode::Autograd).unwrap();
        let (lp, le) = task_losses(&model.heads(&cls, Mode::Autograd).unwrap(), &tg, &pw).unwrap();
        let (gp, ge) = (lp.unwrap().backward().unwrap(), le.unwrap().backward().unwrap());
        // Each task's rows alone, cut to their own longest row.
        let part = |r: &[usize]| {
            let idx = Tensor::new(r.iter().map(|&k| k as u32).collect::<Vec<_>>().as_slice(), &dev).unwrap();
            let longest = r.iter().map(|&k| lens[k]).max().unwrap();
            let h = hidden
                .index_select(&idx, 0)
                .unwrap()
                .narrow(1, 0, longest)
                .unwrap();
            let m = mask.index_select(&idx, 0).unwrap().narrow(1, 0, longest).unwrap();
            model.bert.cls_from(&h, &m, from, Mode::Autograd).unwrap()
        };
        let forward = |r: Option<&[usize]>| -> Result<Tensor> { Ok(part(r.unwrap())) };
        let one = |rows: &[usize]| rows.iter().map(|&k| labels[k].clone()).collect::<Vec<_>>();
        let (pr, er) = (tg.pop_rows.clone(), tg.emo_rows.clone());
        assert_eq!((pr.len(), er.len()), (2, 4));
        let all = |n: usize| (0..n).collect::<Vec<_>>();
        let tp = targets(&one(&pr), &all(pr.len()), &dev).unwrap();
        let te = targets(&one(&er), &all(er.len()), &dev).unwrap();
        let lp2 = task_losses(
            &model.heads(&forward(Some(&pr)).unwrap(), Mode::Autograd).unwrap(),
            &tp,
            &pw,
        )
        .unwrap()
        .0
        .unwrap();
        let le2 = task_losses(
            &model.heads(&forward(Some(&er)).unwrap(), Mode::Autograd).unwrap(),
            &te,
            &pw,
        )
        .unwrap()
        .1
        .unwrap();
        let (gp2, ge2) = (lp2.backward().unwrap(), le2.backward().unwrap());
        for v in &shared {
            for (a, b) in [(&gp, &gp2), (&ge, &ge2)] {
                let x = a.get(v.as_tensor()).unwrap();
                let y = b.get(v.as_tensor()).unwrap();
                let (d, size) = (max_abs(&(x - y).unwrap()), max_abs(x));
                assert!(
                    size > 0.0 && d <= 1e-5 * size.max(1.0),
                    "gradient differs by {d} (size {size})"
                );
            }
        }
    }

    /// Translated rows are named by their position in the batch; PCGrad's emotion-only pass
    /// sees the emotion rows alone, where the same rows sit elsewhere.
    #[test]
    fn alignment_rows_follow_the_task_split() {
        let dev = Device::Cpu;
        let labels: Vec<Label> = (0..6)
            .map(|k| {
                if k % 3 == 0 {
                    Label::Popularity(true)
                } else {
                    Label::Emotions(vec![k])
                }
            })
            .collect();
        let rows: Vec<usize> = (0..6).collect();
        let mut tg = targets(&labels, &rows, &dev).unwrap();
        assert_eq!(tg.emo_rows, [1, 2, 4, 5]);
        let cls = Tensor::randn(0f32, 1.0, (6, 8), &dev).unwrap();
        let target = Tensor::randn(0f32, 1.0, (2, 8), &dev).unwrap();
        tg.align = Some(Align::new(vec![2, 5], target.clone(), 0.5));
        let whole = tg
            .align
            .as_ref()
            .unwrap()
            .loss(&cls)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        // By hand: rows 2 and 5 against the targets.
        let picked = cls
            .index_select(&Tensor::new(&[2u32, 5], &dev).unwrap(), 0)
            .unwrap();
        let num = (&picked - &target)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let den = target
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((whole - num / den).abs() < 1e-5, "{whole} vs {}", num / den);
        let (tp, te) = tg.each_alone().unwrap();
        assert!(tp.align.is_none(), "popularity rows are never translated pairs");
        let a = te.align.as_ref().unwrap();
        assert_eq!(a.rows, [1, 3], "rows 2 and 5 are the 2nd and 4th emotion rows");
        assert_eq!(a.weight, 0.5);
        let emo = Tensor::new(&[1u32, 2, 4, 5], &dev).unwrap();
        let alone = a
            .loss(&cls.index_select(&emo, 0).unwrap())
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((alone - whole).abs() < 1e-6, "{alone} vs {whole}");
    }

    fn ex(label: Label) -> Example {
        Example {
            text: format!("{label:?}"),
            label,
            pair: None,
        }
    }

    #[test]
    fn split_is_stratified_and_seeded() {
        let mut all = Vec::new();
        let numbered = |i: usize, label: Label| Example {
            text: format!("{i} {label:?}"),
            label,
            pair: None,
        };
        for i in 0..100 {
            all.push(numbered(i, Label::Popularity(i % 4 == 0)));
            all.push(numbered(i, Label::Emotions(vec![i % 3, 27])));
        }
        let (train, val) = split(all.clone(), 0.2, 1);
        assert_eq!(train.len() + val.len(), 200);
        let pos = |v: &[Example]| v.iter().filter(|e| e.label == Label::Popularity(true)).count();
        assert_eq!(pos(&val), 5, "20% of the 25 positives");
        assert_eq!(split(all.clone(), 0.2, 1).1, val, "same seed, same split");
        assert!(split(all, 0.0, 1).1.is_empty());
    }

    #[test]
    fn repeated_rows_never_straddle_the_split() {
        let mut all = Vec::new();
        for i in 0..50 {
            all.push(Example {
                text: format!("text {i}"),
                label: Label::Emotions(vec![i % 2]),
                pair: None,
            });
        }
        let twice: Vec<Example> = all.iter().chain(all.iter()).cloned().collect();
        let (train, val) = split(twice, 0.2, 7);
        assert_eq!(val.len(), 10, "20% of the 50 distinct texts, one copy each");
        assert_eq!(train.len(), 80, "both copies of the other 40");
        for v in &val {
            assert!(!train.iter().any(|t| t.text == v.text), "{:?} is in both", v.text);
        }
    }

    #[test]
    fn weighted_bce_matches_the_formula() {
        let x = Tensor::new(&[[2.0f32, -1.0]], &Device::Cpu).unwrap();
        let y = Tensor::new(&[[1.0f32, 0.0]], &Device::Cpu).unwrap();
        let pw = Tensor::new(&[3.0f32, 0.5], &Device::Cpu).unwrap();
        let got = bce_with_logits(&x, &y, Some(&pw))
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let sig = |z: f32| 1.0 / (1.0 + (-z).exp());
        let want = (-(3.0 * sig(2.0).ln()) - (1.0 - sig(-1.0)).ln()) / 2.0;
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        let w = pos_weights(&[ex(Label::Emotions(vec![0])), ex(Label::Emotions(vec![0, 1]))]);
        assert_eq!(w[0], 0.1, "2 / (28 * 2) is clipped up to 0.1");
        assert_eq!(w[5], 10.0, "absent classes get the cap");
    }
}
