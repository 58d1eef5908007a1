//! Classification metrics, pure: accuracy, F1, ROC-AUC, multi-label micro/macro F1, and
//! per-class thresholds tuned for F1.

use serde::{Deserialize, Serialize};

/// Area under the ROC curve (ties count half); `None` when one class is absent.
pub fn roc_auc(scores: &[f32], labels: &[bool]) -> Option<f64> {
    let pos = labels.iter().filter(|&&l| l).count();
    let neg = labels.len() - pos;
    if pos == 0 || neg == 0 {
        return None;
    }
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Average ranks over ties, then the Mann-Whitney U statistic.
    let mut rank_sum_pos = 0.0;
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        let avg_rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum_pos += idx[i..=j].iter().filter(|&&k| labels[k]).count() as f64 * avg_rank;
        i = j + 1;
    }
    Some((rank_sum_pos - (pos * (pos + 1)) as f64 / 2.0) / (pos as f64 * neg as f64))
}

/// Counts for one binary decision.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counts {
    pub tp: usize,
    pub fp: usize,
    pub fn_: usize,
    pub tn: usize,
}

impl Counts {
    pub fn of(probs: impl Iterator<Item = f32>, labels: impl Iterator<Item = bool>, thr: f32) -> Self {
        let mut c = Counts::default();
        for (p, l) in probs.zip(labels) {
            match (p >= thr, l) {
                (true, true) => c.tp += 1,
                (true, false) => c.fp += 1,
                (false, true) => c.fn_ += 1,
                (false, false) => c.tn += 1,
            }
        }
        c
    }
    pub fn f1(&self) -> f64 {
        let d = 2 * self.tp + self.fp + self.fn_;
        if d == 0 {
            0.0
        } else {
            2.0 * self.tp as f64 / d as f64
        }
    }
    pub fn accuracy(&self) -> f64 {
        let n = self.tp + self.fp + self.fn_ + self.tn;
        if n == 0 {
            0.0
        } else {
            (self.tp + self.tn) as f64 / n as f64
        }
    }
    fn add(&mut self, o: Counts) {
        self.tp += o.tp;
        self.fp += o.fp;
        self.fn_ += o.fn_;
        self.tn += o.tn;
    }
}

/// Popularity metrics.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BinaryMetrics {
    pub n: usize,
    pub accuracy: f64,
    pub f1: f64,
    pub roc_auc: Option<f64>,
}

pub fn binary(probs: &[f32], labels: &[bool], thr: f32) -> BinaryMetrics {
    let c = Counts::of(probs.iter().copied(), labels.iter().copied(), thr);
    BinaryMetrics {
        n: probs.len(),
        accuracy: c.accuracy(),
        f1: c.f1(),
        roc_auc: roc_auc(probs, labels),
    }
}

/// Emotion (multi-label) metrics at given thresholds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MultiLabelMetrics {
    pub n: usize,
    pub micro_f1: f64,
    /// Mean F1 over the classes that occur in the labels.
    pub macro_f1: f64,
    pub per_class_f1: Vec<f64>,
    pub support: Vec<usize>,
}

pub fn multilabel(probs: &[Vec<f32>], labels: &[Vec<bool>], thresholds: &[f32]) -> MultiLabelMetrics {
    let k = thresholds.len();
    let mut micro = Counts::default();
    let mut per = Vec::with_capacity(k);
    let mut support = Vec::with_capacity(k);
    for c in 0..k {
        let counts = Counts::of(
            probs.iter().map(|p| p[c]),
            labels.iter().map(|l| l[c]),
            thresholds[c],
        );
        micro.add(counts);
        per.push(counts.f1());
        support.push(labels.iter().filter(|l| l[c]).count());
    }
    let present: Vec<f64> = per
        .iter()
        .zip(&support)
        .filter(|(_, s)| **s > 0)
        .map(|(f, _)| *f)
        .collect();
    MultiLabelMetrics {
        n: probs.len(),
        micro_f1: micro.f1(),
        macro_f1: if present.is_empty() {
            0.0
        } else {
            present.iter().sum::<f64>() / present.len() as f64
        },
        per_class_f1: per,
        support,
    }
}

/// For each class, the threshold in 0.02..=0.98 that maximises its F1 (0.5 for absent classes).
pub fn tune_thresholds(probs: &[Vec<f32>], labels: &[Vec<bool>], k: usize) -> Vec<f32> {
    (0..k)
        .map(|c| {
            if !labels.iter().any(|l| l[c]) {
                return 0.5;
            }
            let mut best = (0.5f32, -1.0f64);
            for step in 1..50 {
                let t = step as f32 * 0.02;
                let f1 = Counts::of(probs.iter().map(|p| p[c]), labels.iter().map(|l| l[c]), t).f1();
                if f1 > best.1 + 1e-12 {
                    best = (t, f1);
                }
            }
            best.0
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_of_known_cases() {
        assert_eq!(
            roc_auc(&[0.1, 0.2, 0.8, 0.9], &[false, false, true, true]),
            Some(1.0)
        );
        assert_eq!(
            roc_auc(&[0.9, 0.8, 0.2, 0.1], &[false, false, true, true]),
            Some(0.0)
        );
        assert_eq!(
            roc_auc(&[0.5, 0.5, 0.5, 0.5], &[false, true, false, true]),
            Some(0.5)
        );
        // One positive ranked above one of two negatives.
        assert!((roc_auc(&[0.3, 0.5, 0.7], &[false, true, false]).unwrap() - 0.5).abs() < 1e-12);
        assert_eq!(roc_auc(&[0.3], &[true]), None);
    }

    #[test]
    fn f1_and_thresholds() {
        let probs = vec![vec![0.9, 0.2], vec![0.6, 0.3], vec![0.1, 0.35], vec![0.4, 0.1]];
        let labels = vec![
            vec![true, false],
            vec![true, true],
            vec![false, true],
            vec![false, false],
        ];
        let at_half = multilabel(&probs, &labels, &[0.5, 0.5]);
        assert_eq!(at_half.per_class_f1, [1.0, 0.0]);
        assert!((at_half.macro_f1 - 0.5).abs() < 1e-12);
        assert!((at_half.micro_f1 - 2.0 * 2.0 / (2.0 * 2.0 + 2.0)).abs() < 1e-12);
        let t = tune_thresholds(&probs, &labels, 2);
        let tuned = multilabel(&probs, &labels, &t);
        assert_eq!(tuned.per_class_f1, [1.0, 1.0], "{t:?}");
        assert!(t[1] > 0.2 && t[1] <= 0.3);
    }

    #[test]
    fn binary_metrics() {
        let m = binary(&[0.9, 0.4, 0.6, 0.1], &[true, true, false, false], 0.5);
        assert_eq!(m.accuracy, 0.5);
        assert_eq!(m.roc_auc, Some(0.75));
    }
}
