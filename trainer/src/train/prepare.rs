//! The data a run trains on, made ready once: loaded and split ([`Data`]), tokenised with the
//! translated rows' originals for the alignment ([`Texts`]), and what the frozen encoder layers
//! compute, cached ([`Caches`]).

use super::config::TrainConfig;
use super::report::Event;
use crate::data::{self, Example, Label, SourceStats, EMOTIONS};
use crate::error::{Error, Result};
use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use viralclip_engine::model::ops::dropout;
use viralclip_engine::model::{EncoderFiles, Manifest, Mode, MultiTask};
use viralclip_engine::scorer::{pad_batch, plan_batches, BatchLimits};

/// The run's examples: its sources loaded and split into training and validation rows, and the
/// held-out test rows.
pub(super) struct Data {
    pub(super) train: Vec<Example>,
    pub(super) val: Vec<Example>,
    pub(super) test: Vec<Example>,
    pub(super) sources: Vec<SourceStats>,
    pub(super) test_sources: Vec<SourceStats>,
}

impl Data {
    /// Loads `cfg`'s sources, splits them (seeded), and keeps at most `max_train` training rows.
    pub(super) fn load(cfg: &TrainConfig) -> Result<Data> {
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
        let (mut train, val) = split(all, cfg.val_fraction, cfg.seed);
        // Dropout masks from the run's seed too (heads are initialised from it, batches shuffled by
        // it): the same run twice on the CPU trains the same weights.
        dropout::seed_dropout(cfg.seed);
        if let Some(m) = cfg.max_train {
            train.truncate(m);
        }
        if train.is_empty() {
            return Err(Error::Config("no training examples".into()));
        }
        Ok(Data {
            train,
            val,
            test,
            sources,
            test_sources,
        })
    }
}

/// The examples as token ids, and for the alignment (`align`), each translated training row's
/// original (`pair_of`: an index into `pairs`, each distinct original once).
pub(super) struct Texts {
    pub(super) tokenizer: tokenizers::Tokenizer,
    pub(super) prefix: String,
    pub(super) pad: u32,
    pub(super) train: Tokenized,
    pub(super) val: Tokenized,
    pub(super) pairs: Tokenized,
    pub(super) pair_of: Vec<Option<usize>>,
    pub(super) align: bool,
}

impl Texts {
    /// Tokenises the training and validation rows once, and with `align`, the originals of the
    /// translated training rows.
    pub(super) fn tokenize(cfg: &TrainConfig, enc: &EncoderFiles, data: &Data, align: bool) -> Result<Texts> {
        let prefix = Manifest::text_prefix_for(&cfg.base_repo);
        let tokenizer = enc.tokenizer(cfg.max_length)?;
        let pad = tokenizer
            .get_padding()
            .map(|p| p.pad_id)
            .unwrap_or(enc.config.pad_token_id as u32);
        let train = tokenize(&tokenizer, &prefix, &data.train)?;
        let val = tokenize(&tokenizer, &prefix, &data.val)?;
        // The originals of translated emotion rows, each distinct text once (a source given 4× has
        // four copies of each row).
        let mut pair_of: Vec<Option<usize>> = vec![None; data.train.len()];
        let mut pairs: Vec<Example> = Vec::new();
        if align {
            let mut seen: HashMap<&str, usize> = HashMap::new();
            for (i, e) in data.train.iter().enumerate() {
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
        let pairs = tokenize(&tokenizer, &prefix, &pairs)?;
        Ok(Texts {
            tokenizer,
            prefix,
            pad,
            train,
            val,
            pairs,
            pair_of,
            align,
        })
    }
}

/// What the frozen layers compute for the training rows, the validation rows and the originals.
pub(super) struct Caches {
    pub(super) train: Cache,
    pub(super) val: Cache,
    pub(super) pairs: Cache,
}

impl Caches {
    /// Runs the frozen layers `..from` over every text once, with one progress count for all.
    pub(super) fn build(
        model: &MultiTask,
        texts: &Texts,
        from: usize,
        device: &Device,
        on_event: &mut dyn FnMut(Event),
        cancel: &AtomicBool,
    ) -> Result<Caches> {
        let sets = [&texts.train, &texts.val, &texts.pairs];
        let total: usize = sets.iter().map(|t| t.ids.len()).sum();
        let mut caches = Vec::with_capacity(sets.len());
        for tok in sets {
            let before: usize = caches.iter().map(|c: &Cache| c.lens.len()).sum();
            caches.push(build_cache(
                model,
                tok,
                from,
                texts.pad,
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
        let Ok([train, val, pairs]) = <[Cache; 3]>::try_from(caches) else {
            unreachable!("one cache per set")
        };
        Ok(Caches { train, val, pairs })
    }
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

/// Examples as token ids, with their labels.
pub(super) struct Tokenized {
    pub(super) ids: Vec<Vec<u32>>,
    pub(super) labels: Vec<Label>,
}

pub(super) fn tokenize(tok: &tokenizers::Tokenizer, prefix: &str, ex: &[Example]) -> Result<Tokenized> {
    let texts: Vec<String> = ex.iter().map(|e| e.text.clone()).collect();
    Ok(Tokenized {
        ids: viralclip_engine::scorer::tokenize(tok, prefix, &texts)?,
        labels: ex.iter().map(|e| e.label.clone()).collect(),
    })
}

/// Per-example tensors computed once by the frozen part of the encoder.
pub(super) struct Cache {
    /// Hidden states entering layer `from`, (len, hidden) each; empty when `from` = all layers.
    pub(super) hidden: Vec<Tensor>,
    /// [CLS] from the frozen encoder, (hidden) each.
    pub(super) cls: Vec<Tensor>,
    pub(super) lens: Vec<usize>,
}

pub(super) fn build_cache(
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

/// The cached hidden states of `rows`, padded to the longest, and their mask.
pub(super) fn batch_hidden(cache: &Cache, rows: &[usize], dev: &Device) -> Result<(Tensor, Tensor)> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use viralclip_engine::model::ops::loss::bce_with_logits;

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
