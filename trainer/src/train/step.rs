//! One optimisation step of a batch, four ways that take the same step: through candle's graph or
//! by hand (the trainable layers' taped forward and backward), each with the whole batch or with
//! each task's rows as a batch of their own (PCGrad); then PCGrad, clipping and AdamW, fused over
//! all parameters where the engine's one-pass step runs ([`check_fused_step`] holds it to the
//! operations).

use super::targets::Targets;
use crate::error::{Error, Result};
use crate::optim::AdamW;
use crate::pcgrad;
use candle_core::{DType, Device, Tensor, Var};
use std::collections::HashMap;
use viralclip_engine::model::ops::loss::{bce_with_logits, bce_with_logits_grad};
use viralclip_engine::model::{BertTape, HeadTape, Mode, MultiTask, ParamGrads};

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
    let dsel = bce_with_logits_grad(&sel, y, pw)?;
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

#[cfg(test)]
#[path = "step_tests.rs"]
mod tests;
