//! The framing analysis of one clip: its frames sampled a few times a second and downscaled
//! ([`crate::media::Media::frames`]), faces found in each ([`crate::faces`]), the audio's loudness
//! around each, scene cuts from the difference between samples, then the plan
//! ([`crate::reframe`]).

use std::path::Path;

use crate::error::Result;
use crate::faces::FaceDetector;
use crate::format::Geometry;
use crate::media::Media;
use crate::reframe::{Plan, Reframe, Sample};

/// Samples a second: enough to follow a person, few enough to stay cheap.
pub const SAMPLES_PER_SEC: f64 = 5.0;
/// The long edge of a sampled frame (YuNet's input is 640 square).
pub const SAMPLE_EDGE: u32 = 640;
/// Mean absolute difference (0..255) of two consecutive samples' thumbnails that makes a cut.
pub const SCENE_CUT_DIFF: f32 = 38.0;

/// A 32×18 grey thumbnail of a packed RGB picture, for the scene-cut test.
pub fn thumb(rgb: &[u8], w: u32, h: u32) -> Vec<u8> {
    let (tw, th) = (32u32, 18u32);
    let mut out = Vec::with_capacity((tw * th) as usize);
    for ty in 0..th {
        for tx in 0..tw {
            let (x0, x1) = (tx * w / tw, ((tx + 1) * w / tw).max(tx * w / tw + 1));
            let (y0, y1) = (ty * h / th, ((ty + 1) * h / th).max(ty * h / th + 1));
            let (mut sum, mut n) = (0u64, 0u64);
            for y in (y0..y1.min(h)).step_by(2) {
                for x in (x0..x1.min(w)).step_by(2) {
                    let i = ((y * w + x) * 3) as usize;
                    sum += (rgb[i] as u64 * 299 + rgb[i + 1] as u64 * 587 + rgb[i + 2] as u64 * 114) / 1000;
                    n += 1;
                }
            }
            out.push((sum / n.max(1)) as u8);
        }
    }
    out
}

/// The times at which the picture changes all at once: between two samples whose thumbnails
/// differ by more than [`SCENE_CUT_DIFF`] on average (the cut is put at the later one).
pub fn scene_cuts(thumbs: &[(f64, Vec<u8>)]) -> Vec<f64> {
    thumbs
        .windows(2)
        .filter(|p| {
            let d: u64 = p[0]
                .1
                .iter()
                .zip(&p[1].1)
                .map(|(a, b)| a.abs_diff(*b) as u64)
                .sum();
            d as f32 / p[0].1.len().max(1) as f32 > SCENE_CUT_DIFF
        })
        .map(|p| p[1].0)
        .collect()
}

/// RMS of `audio` (16 kHz mono) in 0.4 s around its second `t`.
pub fn loudness(audio: &[f32], t: f64) -> f32 {
    let rate = crate::transcribe::SAMPLE_RATE as f64;
    let (a, b) = (((t - 0.2).max(0.0) * rate) as usize, ((t + 0.2) * rate) as usize);
    let s = &audio[a.min(audio.len())..b.min(audio.len())];
    if s.is_empty() {
        return 0.0;
    }
    (s.iter().map(|x| x * x).sum::<f32>() / s.len() as f32).sqrt()
}

/// Where the crop goes in the clip `[start, end)` of `src`, in clip time, from the frames `media`
/// samples. `audio`: the clip's sound at 16 kHz from `start` on ([`Media::audio_span`]; mouth
/// motion counts only while there is sound); `None` treats it all as sound.
pub fn plan(
    media: &dyn Media,
    src: &Path,
    (start, end): (f64, f64),
    geometry: Geometry,
    detector: &mut dyn FaceDetector,
    audio: Option<&[f32]>,
    reframe: &Reframe,
) -> Result<Plan> {
    let mut samples: Vec<Sample> = Vec::new();
    let mut thumbs: Vec<(f64, Vec<u8>)> = Vec::new();
    let mut size = (0u32, 0u32);
    let mut detect = |t: f64, rgb: &[u8], w: u32, h: u32| -> Result<()> {
        size = (w, h);
        let faces = detector.detect(rgb, w, h)?;
        let loud = audio.map(|a| loudness(a, t)).unwrap_or(1.0);
        samples.push(Sample {
            t,
            faces,
            loudness: loud,
        });
        thumbs.push((t, thumb(rgb, w, h)));
        Ok(())
    };
    let (src_w, src_h) = media.frames(src, (start, end), SAMPLES_PER_SEC, SAMPLE_EDGE, &mut detect)?;
    // Detections are in the sampled frame's pixels: back to the source's.
    if size.0 > 0 {
        let (sx, sy) = (src_w as f32 / size.0 as f32, src_h as f32 / size.1 as f32);
        for s in &mut samples {
            for f in &mut s.faces {
                f.bbox = [f.bbox[0] * sx, f.bbox[1] * sy, f.bbox[2] * sx, f.bbox[3] * sy];
                for l in &mut f.landmarks {
                    *l = [l[0] * sx, l[1] * sy];
                }
            }
        }
    }
    let cuts = scene_cuts(&thumbs);
    tracing::debug!(
        samples = samples.len(),
        faces = samples.iter().map(|s| s.faces.len()).sum::<usize>(),
        cuts = cuts.len(),
        "framing analysed"
    );
    Ok(reframe.plan(
        &samples,
        &cuts,
        (src_w, src_h),
        (geometry.crop_w, geometry.crop_h),
        end - start,
    ))
}

/// [`plan`] with the clip's own sound ([`Media::audio_span`]) when the source has an audio
/// stream (`has_audio`, from its probe); without one, all of it counts as sound.
pub fn plan_clip(
    media: &dyn Media,
    src: &Path,
    (start, end): (f64, f64),
    has_audio: bool,
    geometry: Geometry,
    detector: &mut dyn FaceDetector,
    reframe: &Reframe,
) -> Result<Plan> {
    let audio = match has_audio {
        true => Some(media.audio_span(src, start, end)?),
        false => None,
    };
    plan(
        media,
        src,
        (start, end),
        geometry,
        detector,
        audio.as_deref(),
        reframe,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat(v: u8, w: u32, h: u32) -> Vec<u8> {
        vec![v; (w * h * 3) as usize]
    }

    #[test]
    fn a_sudden_change_of_picture_is_a_cut_and_a_slow_one_is_not() {
        let (w, h) = (64, 36);
        let mut thumbs = Vec::new();
        for (i, v) in [20u8, 24, 28, 32, 200, 204].iter().enumerate() {
            thumbs.push((i as f64 * 0.2, thumb(&flat(*v, w, h), w, h)));
        }
        assert_eq!(scene_cuts(&thumbs), vec![0.8]);
    }

    #[test]
    fn loudness_is_the_rms_around_a_time() {
        let rate = crate::transcribe::SAMPLE_RATE as usize;
        let mut audio = vec![0f32; rate * 2];
        for x in &mut audio[rate..] {
            *x = 0.5;
        }
        assert_eq!(loudness(&audio, 0.5), 0.0);
        assert!((loudness(&audio, 1.5) - 0.5).abs() < 1e-6);
        assert_eq!(loudness(&audio, 10.0), 0.0);
    }
}
