//! The training loop: load and split data, tokenise once, cache what the frozen encoder layers
//! compute, train the heads (stage 1) and then the top layers too (stage 2) with PCGrad, measure
//! every epoch, keep the best, checkpoint for resuming, and write the artifact the engine loads.
//!
//! [`train`] is the recipe; its parts: [`config`] (what a run is asked), [`prepare`] (data, tokens,
//! the frozen layers' cache), [`weights`] (the trainable model, the kept snapshot, the manifest),
//! [`targets`] and [`step`] (one batch's optimisation step, four ways), [`eval`] (losses and
//! metrics), [`checkpoint`] (the best epoch, resuming) and [`report`] (progress and the report).

mod checkpoint;
pub mod config;
pub mod eval;
pub mod prepare;
pub mod report;
pub(crate) mod step;
pub(crate) mod targets;
mod weights;

pub use config::{SelectBy, TrainConfig};
pub use eval::{evaluate, evaluate_model, Evaluation};
pub use prepare::{pos_weights, split};
pub use report::{report_path, EpochReport, Event, TrainReport};
pub use step::check_fused_step;
pub(crate) use step::{apply_step, forward_layers, with_tasks_split, Forwarded, StepOutcome, StepRule};
pub(crate) use targets::{targets, Align};

use crate::error::{Error, Result};
use crate::optim::{cosine_with_warmup, AdamW};
use candle_core::{DType, Device, Tensor};
use checkpoint::Kept;
use prepare::{batch_hidden, tokenize, Caches, Data, Texts};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use viralclip_engine::model::{artifact, EncoderFiles, Mode, MultiTask};

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
    cfg.check()?;
    let enc = EncoderFiles::open(&cfg.encoder_dir)?;
    let layers = enc.config.num_hidden_layers;
    let unfreeze = if cfg.unfrozen_epochs > 0 {
        cfg.unfreeze_layers.min(layers)
    } else {
        0
    };
    let from = layers - unfreeze;

    let data = Data::load(cfg)?;
    on_event(Event::Loaded {
        train: data.train.len(),
        val: data.val.len(),
        test: data.test.len(),
    });
    let pw_vec = pos_weights(&data.train);
    let texts = Texts::tokenize(cfg, &enc, &data, cfg.align > 0.0 && unfreeze > 0)?;
    // The model: heads and the top `unfreeze` layers are Vars.
    let (model, mut opt, from_init) = weights::trainable(cfg, &enc, from, device)?;
    let t_cache = Instant::now();
    let caches = Caches::build(&model, &texts, from, device, on_event, cancel)?;
    let cache_secs = t_cache.elapsed().as_secs_f64();

    std::fs::create_dir_all(&cfg.out).map_err(|e| Error::io(&cfg.out, e))?;
    let mut kept = Kept::start(cfg, &mut opt, device)?;
    let epochs = cfg.frozen_epochs + cfg.unfrozen_epochs;
    let stage = Epochs {
        cfg,
        model: &model,
        texts: &texts,
        caches: &caches,
        pw: Tensor::new(pw_vec.as_slice(), device)?,
        pw_vec: &pw_vec,
        from,
        unfreeze,
        device,
        total_steps: texts.train.ids.len().div_ceil(cfg.batch_size) * epochs,
    };
    for epoch in kept.state.next_epoch..epochs {
        let frozen = epoch < cfg.frozen_epochs;
        let (report, thresholds) = stage.run(epoch, &mut opt, &mut kept.state.step, on_event, cancel)?;
        on_event(Event::Epoch(Box::new(report.clone())));
        let phase = (frozen, epoch + 1 == epochs);
        kept.record(
            cfg,
            report,
            thresholds,
            &opt,
            phase,
            &from_init,
            data.val.is_empty(),
        )?;
        let manifest = weights::manifest_for(
            cfg,
            &enc,
            unfreeze,
            kept.has_layers(),
            &kept.thresholds,
            &data.sources,
        );
        kept.save(cfg, &manifest, &opt, epoch)?;
        if kept.stale >= cfg.patience && cfg.patience > 0 {
            tracing::info!(
                epoch,
                "early stop: no better validation {:?} for {} epochs",
                cfg.select_by,
                kept.stale
            );
            break;
        }
    }

    // The saved model, through the engine, on validation and test data.
    let loaded = artifact::load(&cfg.out, Some(&enc.dir), device, DType::F32)?;
    let scorer = viralclip_engine::scorer::BertScorer::new(loaded);
    let measure = |tok: &prepare::Tokenized| -> Result<Evaluation> {
        let s = scorer.score_ids(&tok.ids, &mut |_, _| {})?;
        let (ev, _) = evaluate(
            &tok.labels,
            &s.iter().map(|s| s.popularity).collect::<Vec<_>>(),
            &s.iter().map(|s| s.emotions.clone()).collect::<Vec<_>>(),
            &pw_vec,
            Some(&kept.thresholds),
        );
        Ok(ev)
    };
    let val_reloaded = measure(&texts.val)?;
    let test = if data.test.is_empty() {
        None
    } else {
        Some(measure(&tokenize(&texts.tokenizer, &texts.prefix, &data.test)?)?)
    };
    let report = TrainReport {
        config: cfg.clone(),
        sources: data.sources,
        test_sources: data.test_sources,
        train_examples: texts.train.ids.len(),
        val_examples: texts.val.ids.len(),
        pos_weight: pw_vec.clone(),
        epochs: kept.state.epochs.clone(),
        best_epoch: kept.state.best_epoch,
        val_reloaded,
        test,
        cache_secs,
        wall_secs: t_all.elapsed().as_secs_f64(),
        labels: viralclip_engine::score::GOEMOTIONS_LABELS
            .iter()
            .map(|s| s.to_string())
            .collect(),
    };
    report::write(cfg, &report)?;
    Ok(report)
}

/// What every epoch of a run shares.
struct Epochs<'a> {
    cfg: &'a TrainConfig,
    model: &'a MultiTask,
    texts: &'a Texts,
    caches: &'a Caches,
    /// The emotion classes' weights, as a tensor on the device and as numbers.
    pw: Tensor,
    pw_vec: &'a [f32],
    /// The lowest trainable layer, and how many layers train.
    from: usize,
    unfreeze: usize,
    device: &'a Device,
    total_steps: usize,
}

impl Epochs<'_> {
    /// Trains one epoch (heads only while `epoch` is a frozen one), counting optimiser steps in
    /// `step`, then validates: the epoch's report and its tuned thresholds.
    fn run(
        &self,
        epoch: usize,
        opt: &mut AdamW,
        step: &mut usize,
        on_event: &mut dyn FnMut(Event),
        cancel: &AtomicBool,
    ) -> Result<(EpochReport, Vec<f32>)> {
        let Epochs {
            cfg,
            model,
            texts,
            caches,
            from,
            device,
            ..
        } = *self;
        let frozen = epoch < cfg.frozen_epochs;
        let head_lr = cfg.head_lr.unwrap_or(cfg.lr);
        let t_epoch = Instant::now();
        let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed ^ (epoch as u64 + 1).wrapping_mul(0x9E37));
        // Length-bucketed batches: sort by length with jitter, cut, shuffle the batch order.
        let mut order: Vec<usize> = (0..texts.train.ids.len()).collect();
        order.shuffle(&mut rng);
        order.sort_by_key(|&i| caches.train.lens[i] / 4);
        let mut batches: Vec<Vec<usize>> = order.chunks(cfg.batch_size).map(<[usize]>::to_vec).collect();
        batches.shuffle(&mut rng);
        let (mut loss_sum, mut conflicts, mut pc_steps) = (0.0, 0usize, 0usize);
        let (mut align_sum, mut align_steps) = (0.0, 0usize);
        for (bi, rows) in batches.iter().enumerate() {
            if cancel.load(Ordering::Relaxed) {
                return Err(Error::Cancelled);
            }
            let f = cosine_with_warmup(*step, cfg.warmup_steps, self.total_steps);
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
                            .map(|&i| caches.train.cls[i].clone())
                            .collect::<Vec<_>>(),
                        0,
                    )?)
                } else {
                    let (h, m) = batch_hidden(&caches.train, &picked, device)?;
                    forward_layers(model, &h, &m, from, Mode::Training)?
                })
            };
            let mut t = targets(&texts.train.labels, rows, device)?;
            if texts.align && !frozen {
                // Targets from the model as it is now, without dropout and without a graph.
                let (pos, originals): (Vec<usize>, Vec<usize>) = rows
                    .iter()
                    .enumerate()
                    .filter_map(|(k, &i)| texts.pair_of[i].map(|p| (k, p)))
                    .unzip();
                if !pos.is_empty() {
                    let (h, m) = batch_hidden(&caches.pairs, &originals, device)?;
                    let target = model.bert.cls_from(&h, &m, from, Mode::Inference)?.detach();
                    t.align = Some(Align::new(pos, target, cfg.align));
                }
            }
            let Some(StepOutcome {
                loss: batch_loss,
                align_loss,
                surgery,
            }) = apply_step(
                model,
                opt,
                &mut forward,
                &t,
                StepRule {
                    pw: &self.pw,
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
            *step += 1;
            loss_sum += batch_loss;
            if bi % 20 == 0 || bi + 1 == batches.len() {
                let done = ((bi + 1) * cfg.batch_size).min(texts.train.ids.len());
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
        let (vp, ve) = eval::predict(model, &caches.val, from, frozen, device)?;
        let (val, thresholds) = evaluate(&texts.val.labels, &vp, &ve, self.pw_vec, None);
        let report = EpochReport {
            epoch,
            stage: if frozen {
                "heads".into()
            } else {
                format!("heads + top {} layers", self.unfreeze)
            },
            train_loss: loss_sum / batches.len().max(1) as f64,
            thresholds: thresholds.clone(),
            conflicts: (pc_steps > 0).then(|| conflicts as f64 / pc_steps as f64),
            align_loss: (align_steps > 0).then(|| align_sum / align_steps as f64),
            secs: t_epoch.elapsed().as_secs_f64(),
            examples_per_s: texts.train.ids.len() as f64 / train_secs,
            val,
        };
        Ok((report, thresholds))
    }
}
