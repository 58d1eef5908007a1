//! A batch's targets: each task's rows and labels ([`Targets`]) and the translated rows'
//! alignment to their originals ([`Align`]), reordered and split the ways the step strategies run
//! a batch.

use crate::data::{Label, EMOTIONS};
use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor};

/// Task targets of a batch: indices and tensors for each task present.
pub(crate) struct Targets {
    pub(super) pop_idx: Option<(Tensor, Tensor)>,
    pub(super) emo_idx: Option<(Tensor, Tensor)>,
    /// The batch's rows (positions in it) of each task.
    pub(super) pop_rows: Vec<usize>,
    pub(super) emo_rows: Vec<usize>,
    /// Translated rows and the [CLS] of their originals (`TrainConfig::align`).
    pub(crate) align: Option<Align>,
}

/// Rows of a batch (positions in it) and the [CLS] each should move toward, for the alignment
/// loss `weight · Σ‖cls − target‖² / Σ‖target‖²`.
#[derive(Clone)]
pub(crate) struct Align {
    pub(super) rows: Vec<usize>,
    pub(super) target: Tensor,
    pub(super) weight: f64,
}

impl Align {
    pub(crate) fn new(rows: Vec<usize>, target: Tensor, weight: f64) -> Self {
        Align { rows, target, weight }
    }

    /// The translated rows' positions, as an index tensor on `dev`.
    pub(super) fn positions(&self, dev: &Device) -> Result<Tensor> {
        let pos: Vec<u32> = self.rows.iter().map(|&r| r as u32).collect();
        Ok(Tensor::from_vec(pos, self.rows.len(), dev)?)
    }

    /// The unweighted loss of these [CLS] states (all the batch's rows, in order).
    pub(super) fn loss(&self, cls: &Tensor) -> Result<Tensor> {
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
    pub(super) fn loss_and_grad(&self, cls: &Tensor) -> Result<(Tensor, Tensor)> {
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
    pub(super) fn each_alone(&self) -> Result<(Targets, Targets)> {
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
    pub(super) fn align_from(&self, first: usize) -> Option<Align> {
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
    pub(super) fn by_task(&self) -> Result<(Vec<usize>, Targets)> {
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

/// The targets of the batch of `rows` (indices into `labels`).
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
