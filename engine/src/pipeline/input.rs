//! The input checked before any model is loaded ([`inspect`]: files, the probe against the
//! limits, subtitles read and bounded), and a transcript bounded by what the job can use
//! ([`bound`]).

use super::*;

/// What [`inspect`] found: everything about the input that needs no model.
#[derive(Debug, Clone)]
pub struct Input {
    /// The input is a subtitle file alone (moments, no clips).
    pub subtitle_only: bool,
    pub size_bytes: u64,
    /// The probe of a video (`None` for subtitles alone).
    pub info: Option<MediaInfo>,
    /// The subtitles' cues (the input itself, or `req.subs`), read and repaired; `None` when the
    /// cues are to come from the video (an embedded stream or Whisper).
    pub subtitles: Option<Transcript>,
    /// Seconds the probe took.
    pub probe_secs: f64,
}

/// Checks `req`'s input as far as it can be without a model: the files exist and are regular,
/// a video probes within `req.limits` and has a video stream, subtitles parse within their
/// caps, and subtitles alone end within `req.limits.max_duration_secs`. Every refusal is a
/// bad-input error ([`Error::is_bad_input`]) that names the file. Cheap (no decoding): a caller
/// runs it before loading models and hands the result to [`Engine::run_inspected`];
/// [`Engine::run`] runs it first.
pub fn inspect(req: &ClipRequest, media: &dyn Media) -> Result<Input> {
    req.select.validate()?;
    let meta = std::fs::metadata(&req.input).map_err(|e| Error::io(&req.input, e))?;
    if let Some(s) = &req.subs {
        std::fs::metadata(s).map_err(|e| Error::io(s, e))?;
    }
    let subtitle_only = is_subtitle_file(&req.input);
    let t = Instant::now();
    let info = if subtitle_only {
        None
    } else {
        let info = media.probe(&req.input, &req.limits)?;
        if info.video.is_none() {
            return Err(Error::NotAVideo {
                path: req.input.clone(),
                reason: "it has no video stream with frames".into(),
            });
        }
        Some(info)
    };
    let probe_secs = t.elapsed().as_secs_f64();
    let subtitles = match (subtitle_only, &req.subs) {
        (true, _) => Some(subtitle::read_file_within(
            &req.input,
            req.limits.max_subtitle_bytes,
        )?),
        (false, Some(s)) => Some(subtitle::read_file_within(s, req.limits.max_subtitle_bytes)?),
        (false, None) => None,
    };
    if let (true, Some(t)) = (subtitle_only, &subtitles) {
        let end = t.cues.last().map_or(0.0, |c| c.end);
        if end > req.limits.max_duration_secs {
            return Err(Error::TooLarge {
                path: req.input.clone(),
                limit: format!(
                    "the subtitles run to {:.0} min, the limit is {:.0} min",
                    end / 60.0,
                    req.limits.max_duration_secs / 60.0
                ),
            });
        }
    }
    Ok(Input {
        subtitle_only,
        size_bytes: meta.len(),
        info,
        subtitles,
        probe_secs,
    })
}

/// Seconds of transcript per cue in speech as people say it (Whisper's segments, a film's
/// subtitles): a transcript with more cues than one per this many seconds is dense.
pub const SECS_PER_LINE: f64 = 3.0;

/// Bounds a transcript by what the job can use, so that the scoring work follows the input's
/// duration: cues that start at or after the media's end are dropped (no clip can hold them),
/// and a dense transcript (more than one cue per [`SECS_PER_LINE`] seconds) has its runs of short
/// cues folded into lines ([`Transcript::merge_short`]) of a quarter window, then if still dense
/// of half a window, so that a window still holds two lines or more. A transcript that is not
/// dense is left as it is. An empty result is an [`Error::EmptyTranscript`].
pub fn bound(t: &mut Transcript, media_end: Option<f64>, cfg: &SelectConfig) -> Result<()> {
    if let Some(end) = media_end {
        let before = t.cues.len();
        t.cues.retain(|c| c.start < end);
        t.repairs.past_end_dropped += before - t.cues.len();
        if t.cues.is_empty() {
            return Err(Error::EmptyTranscript(format!(
                "every cue starts after the video ends ({})",
                format_time(end)
            )));
        }
    }
    let dense = |t: &Transcript| t.cues.len() as f64 > t.span() / SECS_PER_LINE + 1.0;
    for span in [cfg.window_span() / 4.0, cfg.window_span() / 2.0] {
        if !dense(t) {
            break;
        }
        t.merge_short(span);
    }
    Ok(())
}
