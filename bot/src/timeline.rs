//! The timeline PNG: virality across the video, with the chosen moments shaded and numbered.

use plotters::prelude::*;
use plotters::style::register_font as register_font_as;
use std::path::Path;
use std::sync::OnceLock;
use viralclip_engine::report::Report;

/// Registers the project's font ([`viralclip_engine::font`]) as plotters' "sans-serif" (once).
fn register_font() -> Result<(), String> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        register_font_as("sans-serif", FontStyle::Normal, viralclip_engine::font::bytes()?)
            .map_err(|_| "bad font file".to_string())
    })
    .clone()
}

/// Draws `report`'s timeline into `path` (PNG, 1200×360).
pub fn draw(report: &Report, path: &Path) -> Result<(), String> {
    register_font()?;
    let e = |e: &dyn std::fmt::Display| format!("timeline: {e}");
    let end = report
        .timeline
        .iter()
        .map(|p| p.end)
        .chain(report.moments.iter().map(|m| m.end))
        .fold(1.0f64, f64::max);
    let root = BitMapBackend::new(path, (1200, 360)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("virality across the video", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d(0f64..end, 0f64..1f64)
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .x_desc("time")
        .y_desc("virality")
        .x_label_formatter(&|x| crate::format::clock(*x))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(|x| e(&x))?;
    for m in &report.moments {
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(m.start, 0.0), (m.end, 1.0)],
                RGBColor(255, 140, 0).mix(0.25).filled(),
            )))
            .map_err(|x| e(&x))?;
        chart
            .draw_series(std::iter::once(Text::new(
                format!("#{}", m.rank),
                (m.start, 0.97),
                ("sans-serif", 16).into_font(),
            )))
            .map_err(|x| e(&x))?;
    }
    let mut pts: Vec<(f64, f64)> = report
        .timeline
        .iter()
        .map(|p| ((p.start + p.end) / 2.0, p.virality as f64))
        .collect();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    chart
        .draw_series(LineSeries::new(pts, BLUE.stroke_width(2)))
        .map_err(|x| e(&x))?;
    root.present().map_err(|x| e(&x))?;
    Ok(())
}
