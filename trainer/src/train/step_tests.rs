//! The four ways of one step held to each other, and the task split and the alignment rows.

use super::*;
use crate::data::{Label, EMOTIONS};
use crate::train::targets::{targets, Align};
use crate::train::weights::is_head;
use viralclip_engine::model::ops::switches;

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
                    let idx = Tensor::new(r.iter().map(|&k| k as u32).collect::<Vec<_>>().as_slice(), &dev)?;
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
            switches::without_dropout(|| {
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
        let out = switches::without_dropout(|| {
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
            let (graph, graph_losses) = switches::without_fused(|| step(tg, frozen));
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
