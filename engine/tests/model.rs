//! The model definition: parity with PyTorch on the original project's checkpoint format, with
//! candle-transformers' BERT, between its fused and differentiable paths, and gradients reaching
//! every parameter.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use std::collections::HashMap;
use viralclip_engine::model::ops::{dropout, switches};
use viralclip_engine::model::{
    artifact, checks, BaseEncoder, BertConfig, Mode, MultiTask, Pooling, WeightStore,
};

fn tiny_config() -> BertConfig {
    serde_json::from_str(&std::fs::read_to_string(common::repo().join("tests/parity/config.json")).unwrap())
        .unwrap()
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    max_abs(&(a - b).unwrap())
}

#[derive(serde::Deserialize)]
struct Expected {
    input_ids: Vec<Vec<u32>>,
    attention_mask: Vec<Vec<u32>>,
    popularity_logits: Vec<f32>,
    emotion_logits: Vec<Vec<f32>>,
}

fn batch(rows: &[Vec<u32>]) -> Tensor {
    let flat: Vec<u32> = rows.iter().flatten().copied().collect();
    Tensor::from_vec(flat, (rows.len(), rows[0].len()), &Device::Cpu).unwrap()
}

/// The original project's `multitask_best.pth`, imported, gives PyTorch's outputs within 1e-4.
#[test]
fn imported_pytorch_checkpoint_matches_pytorch() {
    let dir = common::repo().join("tests/parity");
    let exp: Expected =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let out = tempfile::tempdir().unwrap();
    let base = BaseEncoder {
        repo: "tiny-random-bert".into(),
        revision: None,
        path: None,
    };
    let manifest = artifact::import_pth(&dir.join("multitask_best.pth"), base, out.path()).unwrap();
    assert_eq!(manifest.fine_tuned_layers, [0, 1]);
    assert_eq!(manifest.labels.len(), 28);
    let weights = out.path().join(&manifest.weights);
    let config = tiny_config();
    let (ids, mask) = (batch(&exp.input_ids), batch(&exp.attention_mask));
    let want_pop = Tensor::new(exp.popularity_logits.as_slice(), &Device::Cpu).unwrap();
    let want_emo = Tensor::new(exp.emotion_logits, &Device::Cpu).unwrap();
    // Packed (prepared) scoring path, plain fused path, differentiable path.
    for (mode, packed) in [
        (Mode::Inference, true),
        (Mode::Inference, false),
        (Mode::Autograd, false),
    ] {
        let store = WeightStore::open(Some(&weights), None, DType::F32).unwrap();
        let mut model = MultiTask::load(store.var_builder(&Device::Cpu), &config, 28).unwrap();
        if packed {
            model.prepare_inference().unwrap();
        }
        let got = model.forward(&ids, &mask, mode).unwrap();
        let (dp, de) = (
            max_abs_diff(&got.popularity, &want_pop),
            max_abs_diff(&got.emotions, &want_emo),
        );
        println!("{mode:?} (packed {packed}): max |Δ| popularity {dp:.2e}, emotions {de:.2e}");
        assert!(
            dp < 1e-4 && de < 1e-4,
            "{mode:?} packed {packed}: popularity {dp}, emotions {de}"
        );
    }
    // Not a trivially small signal: the outputs differ between the three texts.
    assert!((exp.popularity_logits[0] - exp.popularity_logits[1]).abs() > 1e-2);
}

fn random_model(config: &BertConfig, mode_labels: usize) -> (VarMap, MultiTask) {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let model = MultiTask::load(vb, config, mode_labels).unwrap();
    // Zero-initialised tensors (biases, position embeddings) would hide bugs: perturb everything.
    for var in varmap.all_vars() {
        let noise = var.as_tensor().randn_like(0.0, 0.2).unwrap();
        var.set(&(var.as_tensor() + noise).unwrap()).unwrap();
    }
    (varmap, model)
}

fn padded_inputs() -> (Tensor, Tensor) {
    let ids = batch(&[
        vec![2, 17, 33, 4, 9, 0, 0],
        vec![2, 5, 6, 7, 8, 10, 3],
        vec![2, 44, 3, 0, 0, 0, 0],
    ]);
    let mask = batch(&[vec![1, 1, 1, 1, 1, 0, 0], vec![1; 7], vec![1, 1, 1, 0, 0, 0, 0]]);
    (ids, mask)
}

fn loss(model: &MultiTask, mode: Mode) -> Tensor {
    let (ids, mask) = padded_inputs();
    let out = model.forward(&ids, &mask, mode).unwrap();
    (out.popularity.sum_all().unwrap() + out.emotions.sqr().unwrap().sum_all().unwrap()).unwrap()
}

fn zero_grads(varmap: &VarMap, model: &MultiTask, mode: Mode) -> Vec<String> {
    let grads = loss(model, mode).backward().unwrap();
    let data = varmap.data().lock().unwrap();
    let mut names: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    names.sort_by(|a, b| a.0.cmp(&b.0));
    names
        .into_iter()
        .filter(|(_, v)| {
            grads
                .get(v.as_tensor())
                .is_none_or(|g| g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() == 0.0)
        })
        .map(|(k, _)| k)
        .collect()
}

/// Every trainable parameter gets a non-zero gradient through the training path.
#[test]
fn every_parameter_gets_a_gradient() {
    let (varmap, model) = random_model(&tiny_config(), 28);
    let n = varmap.all_vars().len();
    assert!(n > 40, "only {n} parameters");
    let missing = zero_grads(&varmap, &model, Mode::Autograd);
    assert!(missing.is_empty(), "no gradient for {missing:?}");
    let missing = zero_grads(&varmap, &model, Mode::Training);
    assert!(missing.is_empty(), "no gradient with dropout for {missing:?}");
    let missing = switches::without_fused(|| zero_grads(&varmap, &model, Mode::Training));
    assert!(
        missing.is_empty(),
        "no gradient through candle's operations for {missing:?}"
    );
    // The trap this guards against is real: the fused kernels cut the graph.
    let cut = zero_grads(&varmap, &model, Mode::Inference);
    assert!(
        cut.iter().any(|k| k.starts_with("bert.embeddings")),
        "fused path unexpectedly differentiable"
    );
}

/// The training path's fused operations (layer norm, softmax, bias + GELU, each with its own
/// backward) give the gradients candle's operations give, for every parameter of a model
/// (`checks::training_ops`, which `bench --train-steps` also runs on its device).
#[test]
fn fused_training_ops_give_the_operations_gradients() {
    let check = checks::training_ops(&Device::Cpu).unwrap();
    println!(
        "largest relative gradient difference: {:.2e} ({})",
        check.max_diff, check.worst
    );
    assert!(check.fused, "the CPU runs the fused operations");
    assert!(check.max_diff < 1e-3, "{check:?}");
}

/// Training by hand (the layers' taped forward and backward passes, the heads through candle's
/// graph) gives the graph's gradients for every trainable parameter: without dropout, and with
/// it (both draw the same masks from the same seed); with [CLS] pooling and with mean pooling
/// (the last layer then computes every token, and the padded ones get no gradient).
#[test]
fn training_by_hand_gives_the_graphs_gradients() {
    let (varmap, mut model) = random_model(&tiny_config(), 28);
    let (ids, mask) = padded_inputs();
    let from = 0;
    let hidden = model
        .bert
        .hidden_before(&ids, &mask, from, Mode::Inference)
        .unwrap()
        .detach();
    let vars: Vec<(String, Var)> = {
        let data = varmap.data().lock().unwrap();
        let mut v: Vec<_> = data
            .iter()
            .filter(|(n, _)| !n.starts_with("bert.embeddings"))
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    for (pooling, mode) in [
        (Pooling::Cls, Mode::Autograd),
        (Pooling::Cls, Mode::Training),
        (Pooling::Mean, Mode::Autograd),
        (Pooling::Mean, Mode::Training),
    ] {
        model.bert.set_pooling(pooling);
        let loss = |cls: &Tensor, mode: Mode| {
            let out = model.heads(cls, mode).unwrap();
            (out.popularity.sum_all().unwrap() + out.emotions.sqr().unwrap().sum_all().unwrap()).unwrap()
        };
        dropout::seed_dropout(9);
        let graph = loss(&model.bert.cls_from(&hidden, &mask, from, mode).unwrap(), mode)
            .backward()
            .unwrap();
        dropout::seed_dropout(9);
        let (cls, tape) = model
            .bert
            .cls_from_taped(&hidden, &mask, from, mode)
            .unwrap()
            .expect("this model trains by hand");
        let leaf = Var::from_tensor(&cls).unwrap();
        let heads = loss(leaf.as_tensor(), mode).backward().unwrap();
        let by_hand = model
            .bert
            .backward_taped(&tape, heads.get(leaf.as_tensor()).unwrap())
            .unwrap();
        let mut worst = (0f32, String::new());
        let mut seen = 0;
        // Relative to each gradient's largest value, or to a thousandth of the model's largest
        // where that is larger: the keys' bias has a true gradient of zero (softmax ignores a
        // shift common to all keys), and both ways give rounding noise there.
        let largest = vars
            .iter()
            .map(|(_, v)| max_abs(graph.get(v.as_tensor()).unwrap()))
            .fold(0f32, f32::max);
        for (name, var) in &vars {
            let want = graph.get(var.as_tensor()).unwrap();
            let got = if name.starts_with("bert.") {
                let found: Vec<_> = by_hand
                    .iter()
                    .filter(|(p, _)| p.id() == var.as_tensor().id())
                    .collect();
                assert_eq!(found.len(), 1, "{name}: {} gradients by hand", found.len());
                found[0].1.clone()
            } else {
                heads.get(var.as_tensor()).unwrap().clone()
            };
            seen += 1;
            let rel = max_abs_diff(&got, want) / max_abs(want).max(1e-3 * largest);
            if rel > worst.0 {
                worst = (rel, name.clone());
            }
        }
        println!(
            "{pooling:?} pooling, {mode:?}: {seen} parameters, largest relative difference {:.2e} ({})",
            worst.0, worst.1
        );
        assert_eq!(by_hand.len(), 32, "16 tensors a layer");
        assert!(worst.0 < 1e-4, "{pooling:?} pooling, {mode:?}: {worst:?}");
    }
}

/// One backward pass by hand from two tasks' [CLS] gradients, each on its own texts (the first
/// `k`, the rest), split by rows (`backward_taped_split`), gives each task's own gradients: what a
/// backward pass from that task's gradient alone gives (PCGrad's two backward passes in one).
#[test]
fn one_backward_pass_gives_each_tasks_gradients() {
    let (_varmap, model) = random_model(&tiny_config(), 28);
    let (ids, mask) = padded_inputs();
    let b = ids.dim(0).unwrap();
    let k = 2;
    assert!(k < b);
    for from in [0, 1] {
        let hidden = model
            .bert
            .hidden_before(&ids, &mask, from, Mode::Inference)
            .unwrap()
            .detach();
        dropout::seed_dropout(5);
        let (cls, tape) = model
            .bert
            .cls_from_taped(&hidden, &mask, from, Mode::Training)
            .unwrap()
            .expect("this model trains by hand");
        let h = cls.dim(1).unwrap();
        // Each task's gradient: random on its own texts, zero on the other's.
        let g = Tensor::randn(0f32, 1.0, (b, h), &Device::Cpu).unwrap();
        let rows = |a: usize, n: usize| {
            let m: Vec<f32> = (0..b).map(|r| f32::from(r >= a && r < a + n)).collect();
            g.broadcast_mul(&Tensor::from_vec(m, (b, 1), &Device::Cpu).unwrap())
                .unwrap()
        };
        let (ga, gb) = (rows(0, k), rows(k, b - k));
        let (first, rest) = model
            .bert
            .backward_taped_split(&tape, &(&ga + &gb).unwrap(), k)
            .unwrap();
        let alone_a = model.bert.backward_taped(&tape, &ga).unwrap();
        let alone_b = model.bert.backward_taped(&tape, &gb).unwrap();
        for (split, alone) in [(&first, &alone_a), (&rest, &alone_b)] {
            assert_eq!(split.len(), alone.len());
            assert_eq!(split.len(), 16 * (2 - from));
            for ((p, x), (q, y)) in split.iter().zip(alone) {
                assert_eq!(p.id(), q.id());
                let scale = max_abs(y).max(1e-3);
                assert!(max_abs_diff(x, y) / scale < 1e-4, "from {from}: {:?}", p.dims());
            }
        }
        // And the two parts add up to the whole.
        let whole = model.bert.backward_taped(&tape, &(&ga + &gb).unwrap()).unwrap();
        // Each against a thousandth of the largest gradient where that is larger: the keys' bias
        // has a true gradient of zero, so its two sides are rounding noise (about 1e-7 here).
        let largest = whole.iter().map(|(_, w)| max_abs(w)).fold(0f32, f32::max);
        for (((p, w), (_, x)), (_, y)) in whole.iter().zip(&first).zip(&rest) {
            let d = max_abs_diff(w, &(x + y).unwrap()) / max_abs(w).max(1e-3 * largest);
            assert!(
                d < 1e-4,
                "from {from}: {:?} off by {d} of {}",
                p.dims(),
                max_abs(w)
            );
        }
    }
}

/// Fused and differentiable kernels compute the same function.
#[test]
fn fused_and_differentiable_paths_agree() {
    let (_vm, mut model) = random_model(&tiny_config(), 28);
    let (ids, mask) = padded_inputs();
    let a = model.forward(&ids, &mask, Mode::Inference).unwrap();
    let b = model.forward(&ids, &mask, Mode::Autograd).unwrap();
    model.prepare_inference().unwrap();
    let c = model.forward(&ids, &mask, Mode::Inference).unwrap();
    // Same maths, different summation order and (on the CPU) polynomial exp/erf with relative
    // errors around 3e-7, amplified through the layers: equal to 5e-5 of the scale (random
    // weights: 1e-5 held for most draws but not all).
    for (x, y) in [
        (&a.popularity, &b.popularity),
        (&a.emotions, &b.emotions),
        (&c.popularity, &b.popularity),
        (&c.emotions, &b.emotions),
    ] {
        let scale = max_abs(x).max(1.0);
        let d = max_abs_diff(x, y);
        println!("max |Δ| {d:.2e} at scale {scale:.2}");
        assert!(d < 5e-5 * scale, "{d} at scale {scale}");
    }
}

/// Our encoder equals candle-transformers' BertModel on the same weights (unpadded rows).
#[test]
fn encoder_matches_candle_transformers() {
    let config = tiny_config();
    let (varmap, model) = random_model(&config, 28);
    let tensors: HashMap<String, Tensor> = varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("bert.")?.to_string(), v.as_tensor().clone())))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("model.safetensors");
    candle_core::safetensors::save(&tensors, &file).unwrap();
    let mut cfg = serde_json::to_value(&config).unwrap();
    cfg["initializer_range"] = serde_json::json!(0.02);
    cfg["classifier_dropout"] = serde_json::Value::Null;
    cfg["position_embedding_type"] = serde_json::json!("absolute");
    let ct_config: candle_transformers::models::bert::Config = serde_json::from_value(cfg).unwrap();
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&file], DType::F32, &Device::Cpu).unwrap() };
    let theirs = candle_transformers::models::bert::BertModel::load(vb, &ct_config).unwrap();
    let (ids, mask) = padded_inputs();
    let ours = model.bert.forward(&ids, &mask, Mode::Inference).unwrap();
    let tt = ids.zeros_like().unwrap();
    let want = theirs.forward(&ids, &tt, Some(&mask)).unwrap();
    // Compare real tokens only (padded positions are undefined in both).
    for (row, len) in [(0usize, 5usize), (1, 7), (2, 3)] {
        let a = ours.get(row).unwrap().narrow(0, 0, len).unwrap();
        let b = want.get(row).unwrap().narrow(0, 0, len).unwrap();
        let d = max_abs_diff(&a, &b);
        assert!(d < 1e-4, "row {row}: {d}");
    }
}

/// Mean pooling: the heads read the mean of each row's real tokens (padding never counts), the
/// same on the fused and the differentiable path, and every parameter still gets a gradient.
#[test]
fn mean_pooling_averages_the_real_tokens() {
    use viralclip_engine::model::Pooling;
    let (varmap, mut model) = random_model(&tiny_config(), 28);
    model.bert.set_pooling(Pooling::Mean);
    let (ids, mask) = padded_inputs();
    let states = model.bert.forward(&ids, &mask, Mode::Autograd).unwrap();
    let pooled = model.bert.cls(&ids, &mask, Mode::Autograd).unwrap();
    for (row, len) in [(0usize, 5usize), (1, 7), (2, 3)] {
        let want = states
            .get(row)
            .unwrap()
            .narrow(0, 0, len)
            .unwrap()
            .mean(0)
            .unwrap();
        let d = max_abs_diff(&pooled.get(row).unwrap(), &want);
        assert!(d < 1e-5, "row {row}: {d}");
    }
    // A row alone, unpadded, pools to the same vector as in the padded batch.
    let alone = model
        .bert
        .cls(
            &batch(&[vec![2, 44, 3]]),
            &batch(&[vec![1, 1, 1]]),
            Mode::Autograd,
        )
        .unwrap();
    assert!(max_abs_diff(&alone.get(0).unwrap(), &pooled.get(2).unwrap()) < 1e-5);
    // Not the [CLS] state.
    model.bert.set_pooling(Pooling::Cls);
    let cls = model.bert.cls(&ids, &mask, Mode::Autograd).unwrap();
    assert!(max_abs_diff(&cls, &pooled) > 1e-3);
    model.bert.set_pooling(Pooling::Mean);
    let missing = zero_grads(&varmap, &model, Mode::Training);
    assert!(missing.is_empty(), "no gradient for {missing:?}");
    // From cached states (the trainer's path) and through the fused scoring path.
    let h = model.bert.hidden_before(&ids, &mask, 1, Mode::Autograd).unwrap();
    let from = model.bert.cls_from(&h, &mask, 1, Mode::Autograd).unwrap();
    assert!(max_abs_diff(&from, &pooled) < 1e-5);
    let top = model
        .bert
        .cls_from(&states, &mask, model.bert.num_layers(), Mode::Autograd)
        .unwrap();
    assert!(
        max_abs_diff(&top, &pooled) < 1e-5,
        "no layers left: the pooled states themselves"
    );
    model.prepare_inference().unwrap();
    let fused = model.bert.cls(&ids, &mask, Mode::Inference).unwrap();
    let scale = max_abs(&pooled).max(1.0);
    assert!(max_abs_diff(&fused, &pooled) < 5e-5 * scale);
}

/// `model average` gives each tensor the element-wise mean of the models' (fp16 tensors stay
/// fp16), averages the thresholds, and refuses models that do not share a layout, writing nothing.
#[test]
fn averaging_models_means_their_weights_and_refuses_mismatches() {
    use viralclip_engine::model::Manifest;
    let dir = tempfile::tempdir().unwrap();
    let base = BaseEncoder {
        repo: "intfloat/multilingual-e5-small".into(),
        revision: None,
        path: None,
    };
    let dev = Device::Cpu;
    let make = |name: &str, scale: f32, thr: f32, layers: Vec<usize>| {
        let mut m = Manifest::new(name, base.clone());
        m.thresholds.emotions = vec![thr; m.labels.len()];
        m.fine_tuned_layers = layers;
        let t: HashMap<String, Tensor> = [
            (
                "emotion_head.3.weight".to_string(),
                (Tensor::arange(0f32, 6.0, &dev).unwrap().reshape((2, 3)).unwrap() * scale as f64).unwrap(),
            ),
            (
                "bert.encoder.layer.11.output.dense.weight".to_string(),
                Tensor::full(scale, (2, 2), &dev)
                    .unwrap()
                    .to_dtype(DType::F16)
                    .unwrap(),
            ),
        ]
        .into_iter()
        .collect();
        let path = dir.path().join(name);
        artifact::save(&path, &m, &t).unwrap();
        path
    };
    let a = make("a", 1.0, 0.2, vec![11]);
    let b = make("b", 3.0, 0.4, vec![11]);
    let c = make("c", 5.0, 0.9, vec![11]);
    let out = dir.path().join("avg");
    let m = artifact::average(&[a.as_path(), b.as_path(), c.as_path()], &out).unwrap();
    assert!(
        (m.thresholds.emotions[0] - 0.5).abs() < 1e-6,
        "{:?}",
        m.thresholds.emotions
    );
    let t = candle_core::safetensors::load(out.join("weights.safetensors"), &dev).unwrap();
    let head = t["emotion_head.3.weight"]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(head, vec![0.0, 3.0, 6.0, 9.0, 12.0, 15.0]);
    let layer = &t["bert.encoder.layer.11.output.dense.weight"];
    assert_eq!(layer.dtype(), DType::F16);
    let layer = layer
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(layer, vec![3.0; 4]);
    // The manifest read back says what it is.
    let back = Manifest::read(&out).unwrap();
    assert!(back.name.starts_with("average of 3 models"), "{}", back.name);
    // Different fine-tuned layers: refused, and nothing written.
    let d = make("d", 1.0, 0.5, vec![10, 11]);
    let bad = dir.path().join("bad");
    let err = artifact::average(&[a.as_path(), d.as_path()], &bad)
        .unwrap_err()
        .to_string();
    assert!(err.contains("fine-tuned layers"), "{err}");
    assert!(!bad.exists());
    // One model is not an average.
    assert!(artifact::average(&[a.as_path()], &bad).is_err());
}
