//! Cutting a moment into its clip: the shape it is delivered in (framed by faces, captions
//! burned in) and the clip and thumbnail files.

use super::*;

impl Engine {
    /// The shape of one clip: `None` for `original`; else its geometry, the framing (faces, or
    /// the centre without a detector) and, unless captions are off, `clip-NN.ass` and
    /// `clip-NN.srt` beside it (the ASS is burned in).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn shape_for(
        media: &dyn Media,
        faces: Option<&std::sync::Mutex<Box<dyn crate::faces::FaceDetector>>>,
        req: &ClipRequest,
        info: Option<&MediaInfo>,
        t: &Transcript,
        start: f64,
        end: f64,
        clips_dir: &Path,
        name: &str,
    ) -> Result<Option<crate::shape::Shape>> {
        use crate::captions::{self, Captions};
        use crate::format::Format;
        let sr = req.shape;
        if sr.format == Format::Original {
            return Ok(None);
        }
        let Some(v) = info.and_then(|i| i.video.as_ref()) else {
            return Ok(None);
        };
        let g = sr.format.geometry(v.width, v.height);
        let mut shape = match faces {
            Some(det) => {
                // The clip's loudness says when mouth motion is speech.
                let mut det = det.lock().unwrap_or_else(|p| p.into_inner());
                let plan = crate::framing::plan_clip(
                    media,
                    &req.input,
                    (start, end),
                    info.is_some_and(|i| i.audio.is_some()),
                    g,
                    det.as_mut(),
                    &crate::reframe::Reframe::default(),
                )?;
                crate::shape::Shape {
                    geometry: g,
                    plan,
                    captions: None,
                    fonts_dir: None,
                }
            }
            None => crate::shape::Shape::centred(g, (v.width, v.height), end - start),
        };
        if sr.captions != Captions::Off {
            let words = captions::spread_words(&t.cues, start, end);
            let ass = captions::ass(
                &words,
                sr.captions,
                sr.caption_style,
                (g.out_w, g.out_h),
                CAPTION_FONT,
            );
            let ass_path = clips_dir.join(format!("{name}.ass"));
            std::fs::write(&ass_path, ass).map_err(|e| Error::io(&ass_path, e))?;
            let lay = sr.caption_style.layout(g.out_w, g.out_h);
            let srt_path = clips_dir.join(format!("{name}.srt"));
            std::fs::write(&srt_path, captions::srt(&words, lay.line_chars))
                .map_err(|e| Error::io(&srt_path, e))?;
            shape.captions = Some(ass_path);
        }
        Ok(Some(shape))
    }
}

/// The captions' font ([`crate::font`]), found by libass through fontconfig.
pub const CAPTION_FONT: &str = crate::font::NAME;

/// The files of moment `rank`: `clip-NN`.
pub(super) fn clip_name(rank: usize) -> String {
    format!("clip-{rank:02}")
}

/// Cuts one moment into `clips_dir/<name>.mp4` with its thumbnail `<name>.jpg`.
pub(super) fn cut_one(
    media: &dyn Media,
    input: &Path,
    clips_dir: &Path,
    name: &str,
    span: (f64, f64),
    mode: CutMode,
    shape: Option<crate::shape::Shape>,
) -> Result<ClipFacts> {
    let clip_path = clips_dir.join(format!("{name}.mp4"));
    let clip = media.cut(input, span, mode, shape, &clip_path)?;
    let thumb_path = clips_dir.join(format!("{name}.jpg"));
    let thumb = media.thumbnail(&clip_path, (clip.duration / 2.0).min(1.0), 320, &thumb_path)?;
    Ok(ClipFacts {
        path: PathBuf::from("clips").join(format!("{name}.mp4")),
        thumbnail: PathBuf::from("clips").join(format!("{name}.jpg")),
        width: clip.width,
        height: clip.height,
        duration: clip.duration,
        size_bytes: clip.size_bytes,
        thumbnail_bytes: thumb.size_bytes,
        mode: match clip.mode {
            CutMode::Precise => "precise".into(),
            CutMode::Fast => "fast".into(),
        },
        source_start: clip.source_start,
    })
}

/// One moment of an earlier run cut again with another range, shape or cutting mode: no new
/// transcription or scoring (the captions come from the report's own transcript).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recut {
    pub rank: usize,
    pub start: f64,
    pub end: f64,
    pub shape: ShapeRequest,
    pub mode: CutMode,
    /// The files' name in `clips/` (`<name>.mp4`, `.jpg`): never the original's.
    pub name: String,
}

impl Engine {
    /// Cuts `r` from `input` (the video `report` was made from) into `out_dir/clips/`.
    pub fn recut(&self, input: &Path, out_dir: &Path, report: &Report, r: &Recut) -> Result<ClipFacts> {
        if r.name.is_empty() || r.name.contains(['/', '\\', '.']) || r.name == clip_name(r.rank) {
            return Err(Error::Invalid(format!(
                "a re-cut's name must be new and plain: {:?}",
                r.name
            )));
        }
        if !(r.start >= 0.0 && r.end > r.start) {
            return Err(Error::Invalid(format!(
                "no such range: {:.2}–{:.2} s",
                r.start, r.end
            )));
        }
        let info = self.media.probe(input, &Limits::default())?;
        let transcript = Transcript {
            cues: report.transcript.lines.clone(),
            repairs: Default::default(),
            source: report.transcript.source.clone(),
        };
        let mut req = ClipRequest::new(input, out_dir);
        req.shape = r.shape;
        req.mode = r.mode;
        let clips_dir = out_dir.join("clips");
        std::fs::create_dir_all(&clips_dir).map_err(|e| Error::io(&clips_dir, e))?;
        let media = self.media.as_ref();
        let shape = Self::shape_for(
            media,
            self.faces.as_ref(),
            &req,
            Some(&info),
            &transcript,
            r.start,
            r.end,
            &clips_dir,
            &r.name,
        );
        shape
            .and_then(|shape| cut_one(media, input, &clips_dir, &r.name, (r.start, r.end), r.mode, shape))
            .map_err(|e| e.on_input(input))
    }
}
