//! Measuring a model: losses and metrics from probabilities ([`evaluate`]), through the cache
//! while training ([`predict`]) or through the engine on a saved model ([`evaluate_model`]).

use super::prepare::{batch_hidden, tokenize, Cache};
use crate::data::{self, Label, Source, SourceStats, EMOTIONS};
use crate::error::Result;
use crate::metrics::{self, BinaryMetrics, MultiLabelMetrics};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use std::path::Path;
use viralclip_engine::model::{artifact, Mode, MultiTask};
use viralclip_engine::scorer::{plan_batches, BatchLimits};

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
pub(super) fn predict(
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
