//! A clip as it can be uploaded: itself when it fits the Bot API's upload limit, else re-cut in
//! consecutive parts that each fit (never dropped).

use crate::error::{Error, Result};
use crate::format;
use std::path::Path;

/// The key under which part `k` of a split clip `rank` is recorded as sent (whole clips use
/// their rank, the timeline 1000).
pub(crate) fn part_key(rank: u32, k: usize) -> u32 {
    10_000 + rank * 100 + k as u32
}

/// The clip as it can be uploaded: itself, or re-cut in consecutive parts that each fit the
/// upload limit (never dropped).
pub(crate) fn fit_for_upload(
    limit: u64,
    dir: &Path,
    m: &viralclip_engine::report::MomentReport,
    clip: &viralclip_engine::report::ClipFacts,
) -> Result<Vec<viralclip_engine::report::ClipFacts>> {
    if clip.size_bytes <= limit {
        let mut c = clip.clone();
        c.path = dir.join("out").join(&clip.path);
        c.thumbnail = dir.join("out").join(&clip.thumbnail);
        return Ok(vec![c]);
    }
    // The parts are cut from the clip as it was made (its shape, framing and burned-in
    // captions), not from the source again.
    let made = dir.join("out").join(&clip.path);
    let media = viralclip_engine::media::built_in();
    if !made.is_file() {
        return Err(Error::Job("the clip file is gone".into()));
    }
    let mut n = (clip.size_bytes as f64 / (limit as f64 * 0.9)).ceil().max(2.0) as usize;
    // Bitrate varies along a clip: if a part still does not fit, cut finer (a few rounds).
    for _round in 0..4 {
        let step = clip.duration.max(m.end - m.start).min(clip.duration) / n as f64;
        let mut parts = Vec::new();
        for k in 0..n {
            let out = dir.join(format!("part-{}-{k}.mp4", m.rank));
            let span = (step * k as f64, step * (k + 1) as f64);
            let c = media.cut(&made, span, viralclip_engine::media::CutMode::Precise, None, &out)?;
            let thumb_path = out.with_extension("jpg");
            let t = media.thumbnail(&out, (c.duration / 2.0).min(1.0), 320, &thumb_path)?;
            parts.push(viralclip_engine::report::ClipFacts {
                path: c.path,
                thumbnail: t.path,
                width: c.width,
                height: c.height,
                duration: c.duration,
                size_bytes: c.size_bytes,
                thumbnail_bytes: t.size_bytes,
                mode: "precise".into(),
                source_start: clip.source_start + c.source_start,
            });
        }
        let biggest = parts.iter().map(|p| p.size_bytes).max().unwrap_or(0);
        if biggest <= limit {
            return Ok(parts);
        }
        n = (n as f64 * biggest as f64 / (limit as f64 * 0.9)).ceil() as usize;
    }
    Err(Error::Job(format!(
        "clip {} cannot be cut into parts under the {} upload limit",
        m.rank,
        format::megabytes(limit)
    )))
}
