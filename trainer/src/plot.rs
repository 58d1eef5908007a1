//! The learning-curves PNG: losses and validation metrics per epoch, and per-class F1 of the best
//! epoch. Text is drawn with the project's font ([`viralclip_engine::font`]).

use crate::error::{Error, Result};
use crate::train::report::{EpochReport, TrainReport};
use plotters::prelude::*;
use std::path::Path;
use std::sync::OnceLock;

/// Registers the project's font ([`viralclip_engine::font`]) as plotters' "sans-serif" (once);
/// the error says what to install.
pub fn register_font() -> std::result::Result<(), String> {
    static DONE: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, viralclip_engine::font::bytes()?)
            .map_err(|_| "bad font file".to_string())
    })
    .clone()
}

/// A named, coloured series of (epoch, value) points.
type Series<'a> = (&'a str, RGBColor, Vec<(f64, f64)>);

fn err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::data(path, format!("cannot draw the learning curves: {e}"))
}

/// Draws the report's curves into `path` (PNG, 1400×560).
pub fn learning_curves(report: &TrainReport, path: &Path) -> Result<()> {
    register_font().map_err(|e| err(path, e))?;
    let root = BitMapBackend::new(path, (1400, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(path, e))?;
    let (left, right) = root.split_horizontally(620);
    let n = report.epochs.len().max(1);
    let mut lines: Vec<Series> = vec![
        (
            "train loss",
            BLUE,
            report
                .epochs
                .iter()
                .map(|e| ((e.epoch + 1) as f64, e.train_loss))
                .collect(),
        ),
        (
            "val loss",
            RED,
            report
                .epochs
                .iter()
                .map(|e| ((e.epoch + 1) as f64, e.val.loss()))
                .collect(),
        ),
    ];
    let pts = |f: &dyn Fn(&EpochReport) -> Option<f64>| -> Vec<(f64, f64)> {
        report
            .epochs
            .iter()
            .filter_map(|e| Some(((e.epoch + 1) as f64, f(e)?)))
            .collect()
    };
    lines.push((
        "emotion macro-F1 (tuned)",
        GREEN,
        pts(&|e| Some(e.val.emotions_tuned.as_ref()?.macro_f1)),
    ));
    lines.push((
        "popularity accuracy",
        MAGENTA,
        pts(&|e| Some(e.val.popularity.as_ref()?.accuracy)),
    ));
    lines.push((
        "popularity ROC-AUC",
        CYAN,
        pts(&|e| e.val.popularity.as_ref()?.roc_auc),
    ));
    let ymax = lines
        .iter()
        .flat_map(|l| l.2.iter().map(|p| p.1))
        .fold(1.0f64, f64::max)
        * 1.05;
    let mut chart = ChartBuilder::on(&left)
        .caption("Learning curves (validation)", ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(45)
        .build_cartesian_2d(0.5f64..(n as f64 + 0.5), 0f64..ymax)
        .map_err(|e| err(path, e))?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .x_labels(n.min(12))
        .draw()
        .map_err(|e| err(path, e))?;
    for (name, color, data) in lines {
        chart
            .draw_series(LineSeries::new(data.clone(), color.stroke_width(2)))
            .map_err(|e| err(path, e))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        chart
            .draw_series(data.into_iter().map(|p| Circle::new(p, 3, color.filled())))
            .map_err(|e| err(path, e))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| err(path, e))?;

    // Per-class F1 of the best epoch (tuned thresholds), one bar each.
    let best = report.epochs.iter().find(|e| e.epoch == report.best_epoch);
    let f1: Vec<f64> = best
        .and_then(|e| e.val.emotions_tuned.as_ref())
        .map(|m| m.per_class_f1.clone())
        .unwrap_or_default();
    let k = f1.len().max(1);
    let mut bars = ChartBuilder::on(&right)
        .caption(
            format!("Per-class F1, best epoch {}", report.best_epoch + 1),
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(110)
        .y_label_area_size(45)
        .build_cartesian_2d((0..k as i32).into_segmented(), 0f64..1f64)
        .map_err(|e| err(path, e))?;
    let labels = report.labels.clone();
    bars.configure_mesh()
        .disable_x_mesh()
        .x_labels(k)
        .x_label_formatter(&|x| match x {
            SegmentValue::CenterOf(i) => labels.get(*i as usize).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .x_label_style(("sans-serif", 13).into_font().transform(FontTransform::Rotate90))
        .draw()
        .map_err(|e| err(path, e))?;
    bars.draw_series(
        Histogram::vertical(&bars)
            .style(GREEN.mix(0.7).filled())
            .margin(3)
            .data(f1.iter().enumerate().map(|(i, v)| (i as i32, *v))),
    )
    .map_err(|e| err(path, e))?;
    root.present().map_err(|e| err(path, e))?;
    Ok(())
}
