//! Training a tiny model on a tiny synthetic task: the loss falls, the metrics rise, and the saved
//! artifact, loaded by the engine, reproduces the validation metrics the trainer reported.

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use viralclip_engine::model::{BertConfig, MultiTask};
use viralclip_trainer::{data::Source, train, TrainConfig};

fn minilm_tokenizer() -> Option<PathBuf> {
    let p = std::env::var_os("VIRALCLIP_ENCODER_ENGLISH")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/viralclip-fixtures/encoders/all-MiniLM-L6-v2")
        });
    let t = p.join("tokenizer.json");
    if t.is_file() {
        return Some(t);
    }
    let msg = format!("{} missing: run ../shared/tools/fetch-fixtures.sh", t.display());
    if std::env::var("VIRALCLIP_ALLOW_MISSING_FIXTURES").as_deref() == Ok("1") {
        eprintln!("SKIPPED: {msg}");
        None
    } else {
        panic!("{msg}")
    }
}

/// A random 2-layer BERT (hidden 32) with MiniLM's WordPiece tokenizer.
fn tiny_encoder(dir: &Path, tokenizer: &Path) {
    let config: BertConfig = serde_json::from_value(serde_json::json!({
        "vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 64, "max_position_embeddings": 64, "type_vocab_size": 2,
        "hidden_act": "gelu", "layer_norm_eps": 1e-12, "pad_token_id": 0
    }))
    .unwrap();
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    MultiTask::load(vb, &config, 28).unwrap();
    let tensors: HashMap<String, candle_core::Tensor> = varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("bert.")?.to_string(), v.as_tensor().clone())))
        .collect();
    // Seeded values (candle's CPU random numbers cannot be seeded): norms' gains 1 + noise, every
    // other tensor noise alone, so the same test trains the same weights every run.
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut names: Vec<String> = tensors.keys().cloned().collect();
    names.sort();
    let tensors: HashMap<String, candle_core::Tensor> = names
        .into_iter()
        .map(|k| {
            let t = &tensors[&k];
            let noise: Vec<f32> = (0..t.elem_count())
                .map(|_| rng.random_range(-0.5f32..0.5))
                .collect();
            let noise = candle_core::Tensor::from_vec(noise, t.shape(), &Device::Cpu).unwrap();
            let gain = k.ends_with("LayerNorm.weight") || k.ends_with("LayerNorm.gamma");
            (k, if gain { (noise + 1.0).unwrap() } else { noise })
        })
        .collect();
    std::fs::create_dir_all(dir).unwrap();
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("config.json"), serde_json::to_string(&config).unwrap()).unwrap();
    std::fs::copy(tokenizer, dir.join("tokenizer.json")).unwrap();
}

/// Popularity: "shocking"/"unbelievable" headlines are 1, dull ones 0. Emotions: joy (17) for
/// happy words, sadness (25) for sad ones, neutral (27) otherwise.
fn synthetic_data(dir: &Path) -> (PathBuf, PathBuf) {
    let things = [
        "cat", "city", "river", "phone", "garden", "team", "movie", "train", "market", "school",
    ];
    let mut pop = String::from("text,label\n");
    let mut emo = String::new();
    for (i, t) in things.iter().cycle().take(300).enumerate() {
        let n = i % 7;
        if i % 2 == 0 {
            pop += &format!("\"shocking! you will not believe this {t} number {n}\",1\n");
        } else {
            pop += &format!("\"council notes about the {t} budget item {n}\",0\n");
        }
        let (text, label) = match i % 3 {
            0 => (format!("i am so happy and glad about the {t} {n}"), 17),
            1 => (format!("this is so sad, i miss the {t} {n}"), 25),
            _ => (format!("the {t} is on the list as item {n}"), 27),
        };
        emo += &format!("{text}\t{label}\tid{i}\n");
    }
    let (p, e) = (dir.join("pop.csv"), dir.join("emo.tsv"));
    std::fs::write(&p, pop).unwrap();
    std::fs::write(&e, emo).unwrap();
    (p, e)
}

/// A tiny encoder, the synthetic data, and a config over them in a fresh directory.
fn tiny_setup() -> Option<(tempfile::TempDir, TrainConfig)> {
    let tok = minilm_tokenizer()?;
    let d = tempfile::tempdir().unwrap();
    tiny_encoder(&d.path().join("enc"), &tok);
    let (p, e) = synthetic_data(d.path());
    let sources: Vec<Source> = vec![
        p.display().to_string().parse().unwrap(),
        e.display().to_string().parse().unwrap(),
    ];
    let mut cfg = TrainConfig::new(d.path().join("enc"), d.path().join("model"), sources);
    cfg.base_repo = "tiny-random-bert".into();
    Some((d, cfg))
}

#[test]
fn tiny_model_learns_and_the_engine_reproduces_its_metrics() {
    let Some((d, mut cfg)) = tiny_setup() else { return };
    cfg.val_fraction = 0.2;
    cfg.batch_size = 16;
    cfg.frozen_epochs = 2;
    cfg.unfrozen_epochs = 4;
    cfg.unfreeze_layers = 1;
    cfg.head_lr = Some(3e-3);
    cfg.lr = 3e-3;
    cfg.unfrozen_lr_mult = 0.5;
    cfg.warmup_steps = 40;
    cfg.patience = 0;
    let mut events = 0;
    let r = train::train(&cfg, &Device::Cpu, &mut |_| events += 1, &AtomicBool::new(false)).unwrap();
    assert!(events > 6);
    assert_eq!(r.epochs.len(), 6);
    let first = &r.epochs[0];
    let last = r.epochs.last().unwrap();
    for ep in &r.epochs {
        println!(
            "epoch {} {}: train {:.4} val {:.4} pop acc {:.3} emo macro {:.3} conflicts {:?}",
            ep.epoch,
            ep.stage,
            ep.train_loss,
            ep.val.loss(),
            ep.val.popularity.as_ref().unwrap().accuracy,
            ep.val.emotions_tuned.as_ref().unwrap().macro_f1,
            ep.conflicts
        );
    }
    assert!(
        last.train_loss < first.train_loss * 0.8,
        "loss {} → {}",
        first.train_loss,
        last.train_loss
    );
    assert!(last.val.loss() < first.val.loss());
    let acc = |ep: &viralclip_trainer::train::EpochReport| ep.val.popularity.as_ref().unwrap().accuracy;
    let macro_f1 =
        |ep: &viralclip_trainer::train::EpochReport| ep.val.emotions_tuned.as_ref().unwrap().macro_f1;
    assert!(
        acc(last) >= 0.9 && acc(last) >= acc(first),
        "accuracy {} → {}",
        acc(first),
        acc(last)
    );
    assert!(
        macro_f1(last) >= 0.75 && macro_f1(last) >= macro_f1(first) + 0.1,
        "macro-F1 {} → {}",
        macro_f1(first),
        macro_f1(last)
    );
    assert!(last.conflicts.is_some(), "PCGrad ran in the unfrozen stage");

    // The artifact holds the heads and the one trained layer, not the whole encoder.
    let m = viralclip_engine::model::Manifest::read(&d.path().join("model")).unwrap();
    assert_eq!(m.fine_tuned_layers, [1]);
    let w = candle_core::safetensors::load(d.path().join("model/weights.safetensors"), &Device::Cpu).unwrap();
    assert!(w.keys().any(|k| k.starts_with("bert.encoder.layer.1.")));
    assert!(!w
        .keys()
        .any(|k| k.starts_with("bert.encoder.layer.0.") || k.starts_with("bert.embeddings")));

    // Loaded by the engine, it reproduces the best epoch's validation metrics.
    let best = &r.epochs[r.best_epoch];
    let (a, b) = (&best.val, &r.val_reloaded);
    assert!(
        (a.popularity_loss.unwrap() - b.popularity_loss.unwrap()).abs() < 1e-4,
        "{a:?} vs {b:?}"
    );
    assert!((a.emotion_loss.unwrap() - b.emotion_loss.unwrap()).abs() < 1e-4);
    assert_eq!(
        a.popularity.as_ref().unwrap().accuracy,
        b.popularity.as_ref().unwrap().accuracy
    );
    assert!(
        (a.emotions_tuned.as_ref().unwrap().macro_f1 - b.emotions_tuned.as_ref().unwrap().macro_f1).abs()
            < 1e-9
    );
    assert!(d.path().join("model/train-report.json").is_file());
    let png = std::fs::read(d.path().join("model/train-curves.png"))
        .expect("learning curves drawn (fonts-dejavu-core)");
    assert_eq!(&png[1..4], b"PNG");
    assert!(png.len() > 10_000);
}

#[test]
fn a_killed_run_resumes_from_its_checkpoint() {
    let Some((_dir, mut cfg)) = tiny_setup() else {
        return;
    };
    cfg.frozen_epochs = 1;
    cfg.unfrozen_epochs = 2;
    cfg.unfreeze_layers = 1;
    cfg.warmup_steps = 5;
    cfg.head_lr = Some(3e-3);
    cfg.patience = 0;
    // "Kill" the run after its first epoch by cancelling at the next step.
    let cancel = AtomicBool::new(false);
    let err = train::train(
        &cfg,
        &Device::Cpu,
        &mut |ev| {
            if let viralclip_trainer::Event::Epoch(_) = ev {
                cancel.store(true, std::sync::atomic::Ordering::Relaxed)
            }
        },
        &cancel,
    )
    .unwrap_err();
    assert!(matches!(err, viralclip_trainer::Error::Cancelled));
    cfg.resume = true;
    let mut epochs_seen = Vec::new();
    let r = train::train(
        &cfg,
        &Device::Cpu,
        &mut |ev| {
            if let viralclip_trainer::Event::Epoch(e) = ev {
                epochs_seen.push(e.epoch)
            }
        },
        &AtomicBool::new(false),
    )
    .unwrap();
    assert_eq!(epochs_seen, [1, 2], "resumed after epoch 0");
    assert_eq!(r.epochs.len(), 3);
}

#[test]
fn init_starts_from_a_model_and_macro_f1_picks_the_epoch() {
    let Some((d, mut cfg)) = tiny_setup() else {
        return;
    };
    cfg.val_fraction = 0.2;
    // One epoch that trains the layer, so the model always holds a fine-tuned layer (with a
    // heads-only epoch first, that one could be the best and the model would hold none).
    cfg.frozen_epochs = 0;
    cfg.unfrozen_epochs = 1;
    cfg.unfreeze_layers = 1;
    cfg.warmup_steps = 5;
    cfg.head_lr = Some(3e-3);
    cfg.lr = 3e-3;
    cfg.patience = 0;
    let quiet = AtomicBool::new(false);
    let a = train::train(&cfg, &Device::Cpu, &mut |_| {}, &quiet).unwrap();

    // A run that cannot change anything (rates 0) starts exactly where the model ended.
    let mut again = cfg.clone();
    again.init = Some(cfg.out.clone());
    again.out = d.path().join("again");
    again.frozen_epochs = 0;
    again.lr = 0.0;
    again.head_lr = Some(0.0);
    let b = train::train(&again, &Device::Cpu, &mut |_| {}, &quiet).unwrap();
    let (va, vb) = (&a.val_reloaded, &b.epochs[0].val);
    assert!(
        (va.loss() - vb.loss()).abs() < 1e-5,
        "started from {} not {}",
        vb.loss(),
        va.loss()
    );

    // Its layer must be trained, or the new artifact would lose it: a clear error.
    let mut heads_only = again.clone();
    heads_only.unfrozen_epochs = 0;
    heads_only.frozen_epochs = 1;
    heads_only.out = d.path().join("heads-only");
    let err = train::train(&heads_only, &Device::Cpu, &mut |_| {}, &quiet).unwrap_err();
    assert!(err.to_string().contains("--unfreeze-layers"), "{err}");

    // Choosing by macro-F1 keeps the epoch with the best tuned macro-F1.
    let mut more = again.clone();
    more.out = d.path().join("more");
    more.lr = 3e-3;
    more.head_lr = Some(3e-3);
    more.unfrozen_epochs = 3;
    more.select_by = viralclip_trainer::SelectBy::MacroF1;
    let r = train::train(&more, &Device::Cpu, &mut |_| {}, &quiet).unwrap();
    let f1 = |e: &viralclip_trainer::train::EpochReport| e.val.emotions_tuned.as_ref().unwrap().macro_f1;
    let best = r.epochs.iter().map(f1).fold(f64::MIN, f64::max);
    assert_eq!(
        f1(&r.epochs[r.best_epoch]),
        best,
        "{:?}",
        r.epochs.iter().map(f1).collect::<Vec<_>>()
    );
}

/// Translated rows (a made-up language: every word spelt backwards, so other word pieces) with
/// their originals beside them, as ru_go_emotions has them: rows `lo..hi` of the synthetic
/// emotions, in a `ru_text,text,labels,id` CSV.
fn translated(dir: &Path, name: &str, lo: usize, hi: usize) -> (PathBuf, Vec<(String, String)>) {
    let emo = std::fs::read_to_string(dir.join("emo.tsv")).unwrap();
    let mut csv = String::from("ru_text,text,labels,id\n");
    let mut pairs = Vec::new();
    for line in emo.lines().skip(lo).take(hi - lo) {
        let mut f = line.split('\t');
        let (text, label, id) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
        let foreign: Vec<String> = text.split(' ').map(|w| w.chars().rev().collect()).collect();
        let foreign = foreign.join(" ");
        csv += &format!("\"{foreign}\",\"{text}\",[{label}],t{id}\n");
        pairs.push((foreign, text.to_string()));
    }
    let p = dir.join(name);
    std::fs::write(&p, csv).unwrap();
    (p, pairs)
}

#[test]
fn align_pulls_translations_toward_their_originals() {
    use viralclip_engine::model::Mode;
    let Some((d, mut cfg)) = tiny_setup() else {
        return;
    };
    let (trans, _) = translated(d.path(), "trans.csv", 0, 200);
    let (_, held_out) = translated(d.path(), "held-out.csv", 200, 300);
    cfg.data.push(trans.display().to_string().parse().unwrap());
    cfg.val_fraction = 0.1;
    cfg.batch_size = 16;
    cfg.frozen_epochs = 1;
    cfg.unfrozen_epochs = 4;
    cfg.unfreeze_layers = 2;
    cfg.head_lr = Some(3e-3);
    cfg.lr = 3e-3;
    cfg.warmup_steps = 20;
    cfg.patience = 0;
    let quiet = AtomicBool::new(false);
    let mut plain = cfg.clone();
    plain.out = d.path().join("plain");
    let p = train::train(&plain, &Device::Cpu, &mut |_| {}, &quiet).unwrap();
    assert!(p.epochs.iter().all(|e| e.align_loss.is_none()), "off by default");
    cfg.align = 2.0;
    let a = train::train(&cfg, &Device::Cpu, &mut |_| {}, &quiet).unwrap();
    let losses: Vec<Option<f64>> = a.epochs.iter().map(|e| e.align_loss).collect();
    println!("alignment loss per epoch: {losses:?}");
    assert_eq!(losses[0], None, "a heads-only epoch cannot move the encoder");
    let (first, last) = (losses[1].unwrap(), losses[4].unwrap());
    assert!(first > 0.0 && last < first, "alignment loss {first} → {last}");

    // On pairs neither run saw, the aligned encoder puts a translation nearer its original.
    let distance = |model: &Path| {
        let loaded =
            viralclip_engine::model::artifact::load(model, Some(&cfg.encoder_dir), &Device::Cpu, DType::F32)
                .unwrap();
        let cls = |text: &str| {
            let prefix = &loaded.manifest.text_prefix;
            let ids =
                viralclip_engine::scorer::tokenize(&loaded.tokenizer, prefix, &[text.to_string()]).unwrap();
            let (ids, mask) = viralclip_engine::scorer::pad_batch(&[&ids[0]], 0, &Device::Cpu).unwrap();
            loaded
                .model
                .bert
                .cls(&ids, &mask, Mode::Inference)
                .unwrap()
                .flatten_all()
                .unwrap()
        };
        let (mut num, mut den) = (0.0, 0.0);
        for (foreign, orig) in &held_out {
            let (f, o) = (cls(foreign), cls(orig));
            num += (&f - &o)
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap() as f64;
            den += o.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() as f64;
        }
        num / den
    };
    let (d_plain, d_aligned) = (distance(&plain.out), distance(&cfg.out));
    println!("held-out pairs, relative squared [CLS] distance: plain {d_plain:.4}, aligned {d_aligned:.4}");
    assert!(
        d_aligned < d_plain * 0.8,
        "plain {d_plain:.4}, aligned {d_aligned:.4}"
    );
}

#[test]
fn mean_pooling_round_trips_through_the_artifact() {
    let Some((d, mut cfg)) = tiny_setup() else {
        return;
    };
    cfg.pooling = viralclip_engine::model::Pooling::Mean;
    cfg.val_fraction = 0.2;
    cfg.frozen_epochs = 1;
    cfg.unfrozen_epochs = 1;
    cfg.unfreeze_layers = 1;
    cfg.head_lr = Some(3e-3);
    cfg.lr = 3e-3;
    cfg.warmup_steps = 5;
    cfg.patience = 0;
    let quiet = AtomicBool::new(false);
    let r = train::train(&cfg, &Device::Cpu, &mut |_| {}, &quiet).unwrap();
    let m = viralclip_engine::model::Manifest::read(&cfg.out).unwrap();
    assert_eq!(m.pooling, viralclip_engine::model::Pooling::Mean);
    // The engine pools as the trainer did: the reloaded model measures what the trainer saw
    // (with [CLS] instead, the losses would differ by far more).
    let (a, b) = (&r.epochs[r.best_epoch].val, &r.val_reloaded);
    assert!((a.loss() - b.loss()).abs() < 1e-4, "{} vs {}", a.loss(), b.loss());
    // Heads trained on means cannot continue on [CLS].
    let mut other = cfg.clone();
    other.init = Some(cfg.out.clone());
    other.out = d.path().join("other");
    other.pooling = viralclip_engine::model::Pooling::Cls;
    let err = train::train(&other, &Device::Cpu, &mut |_| {}, &quiet).unwrap_err();
    assert!(err.to_string().contains("pooling"), "{err}");
}

/// A seeded run is reproducible on the CPU: the heads' initial weights, the batches and the
/// dropout masks all come from `--seed`, so the same run twice writes the same weights, bit for
/// bit, and another seed writes others.
#[test]
fn a_seeded_run_trains_the_same_weights_twice() {
    let run = |seed: u64| -> Vec<u8> {
        let (dir, mut cfg) = tiny_setup().expect("the tokenizer fixture");
        cfg.frozen_epochs = 1;
        cfg.unfrozen_epochs = 1;
        cfg.unfreeze_layers = 1;
        cfg.head_lr = Some(3e-3);
        cfg.patience = 0;
        cfg.seed = seed;
        train::train(&cfg, &Device::Cpu, &mut |_| {}, &AtomicBool::new(false)).unwrap();
        std::fs::read(dir.path().join("model/weights.safetensors")).unwrap()
    };
    if minilm_tokenizer().is_none() {
        return;
    }
    let (a, b, c) = (run(42), run(42), run(7));
    // For comparing builds (a refactor must not move a bit): VIRALCLIP_SEEDED_WEIGHTS_OUT=FILE
    // keeps seed 42's weights.
    if let Some(out) = std::env::var_os("VIRALCLIP_SEEDED_WEIGHTS_OUT") {
        std::fs::write(&out, &a).unwrap();
        eprintln!("seed 42's weights written to {}", PathBuf::from(out).display());
    }
    assert!(a == b, "the same seed trained different weights");
    assert!(a != c, "another seed trained the same weights");
}
