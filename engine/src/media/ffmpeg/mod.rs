//! Media through ffmpeg-next, the engine's [`Media`]: probing, 16 kHz mono audio for Whisper,
//! text subtitle streams, cutting clips (precise re-encode or fast stream copy, shaped by
//! [`shaper`]) and JPEG thumbnails.
//!
//! Inputs are untrusted: they are opened with a `file`-only protocol whitelist and a whitelist of
//! container demuxers (no playlists, no concat), bounded by [`Limits`] before any decoding and
//! by a [`DecodeBudget`] while decoding (every pass keeps a [`Meter`]).
//!
//! Here: the inputs' probing, the shared filter graphs and text subtitle streams; [`audio`]
//! (16 kHz mono), [`cut`] (clips), [`frames`] (sampled frames, thumbnails), [`shaper`] (frames in
//! a delivery shape, captions burned in).

mod audio;
mod cut;
mod frames;
mod shaper;

pub use audio::{decode_audio_16k, decode_audio_span};
pub use cut::{cut, cut_shaped};
pub use frames::{sample_frames, thumbnail};

use crate::cue::Cue;
use crate::error::{Error, Result};
use crate::shape::Shape;
use ff::{codec, filter, format, frame, media, Dictionary, Packet, Rational};
use ffmpeg_next as ff;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;

use super::{
    AudioInfo, ClipFile, CutMode, DecodeBudget, Limits, Media, MediaInfo, Meter, OnFrame, SubtitleStream,
    Thumbnail, VideoInfo,
};

/// Demuxers an input may be read with: real containers only.
pub const DEMUXERS: &str =
    "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi,flv,mpegts,ogg,wav,mp3,flac,aac,asf,srt,webvtt,ass";

fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = ff::init();
        // FFmpeg's own log lines would break the one-line error a failure ends with: they are
        // shown only when debugging (RUST_LOG=debug); its errors come back as `Error`s anyway.
        let level = match tracing::enabled!(tracing::Level::DEBUG) {
            true => ff::util::log::Level::Error,
            false => ff::util::log::Level::Fatal,
        };
        ff::util::log::set_level(level);
    });
}

fn media_err(what: &str) -> impl Fn(ff::Error) -> Error + '_ {
    move |e| Error::Media(format!("{what}: {e}"))
}

/// Opens an untrusted input: regular file only, whitelisted protocol and demuxers.
pub fn open_input(path: &Path) -> Result<format::context::Input> {
    init();
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(Error::NotAVideo {
            path: path.into(),
            reason: "not a regular file".into(),
        });
    }
    let mut opts = Dictionary::new();
    opts.set("protocol_whitelist", "file");
    opts.set("format_whitelist", DEMUXERS);
    let mut p = std::ffi::OsString::from("file:");
    p.push(path.as_os_str());
    format::input_with_dictionary(&PathBuf::from(p), opts).map_err(|e| Error::NotAVideo {
        path: path.into(),
        reason: match e {
            ff::Error::InvalidData => "unknown or damaged format".into(),
            other => other.to_string(),
        },
    })
}

fn stream_secs(ts: i64, tb: Rational) -> f64 {
    ts as f64 * f64::from(tb)
}

fn container_start(ictx: &format::context::Input) -> f64 {
    let st = unsafe { (*ictx.as_ptr()).start_time };
    if st == ff::ffi::AV_NOPTS_VALUE {
        0.0
    } else {
        st as f64 / f64::from(ff::ffi::AV_TIME_BASE)
    }
}

fn codec_name(id: codec::Id) -> String {
    format!("{id:?}").to_lowercase()
}

/// Reads the container's facts and checks them against `limits`.
pub fn probe(path: &Path, limits: &Limits) -> Result<MediaInfo> {
    let size_bytes = std::fs::metadata(path).map_err(|e| Error::io(path, e))?.len();
    if size_bytes > limits.max_bytes {
        return Err(Error::TooLarge {
            path: path.into(),
            limit: format!(
                "{} MB is over the {} MB limit",
                size_bytes >> 20,
                limits.max_bytes >> 20
            ),
        });
    }
    let ictx = open_input(path)?;
    let mut info = MediaInfo {
        container: ictx.format().name().to_string(),
        duration: (ictx.duration().max(0) as f64) / f64::from(ff::ffi::AV_TIME_BASE),
        size_bytes,
        ..Default::default()
    };
    if let Some(v) = ictx.streams().best(media::Type::Video) {
        let p = v.parameters();
        let (w, h) = unsafe { ((*p.as_ptr()).width as u32, (*p.as_ptr()).height as u32) };
        // No pixel format: the stream never gave a frame to learn it from (a video track with no
        // frames): nothing to cut.
        let decodable = unsafe { (*p.as_ptr()).format } >= 0;
        let r = v.avg_frame_rate();
        let r = if r.denominator() != 0 && r.numerator() > 0 {
            r
        } else {
            v.rate()
        };
        let fps = if r.denominator() != 0 { f64::from(r) } else { 0.0 };
        // Cover art in an audio file is a "video" stream of one picture: not a video.
        let attached = v
            .disposition()
            .contains(format::stream::Disposition::ATTACHED_PIC);
        if !attached && decodable && w > 0 && h > 0 {
            info.video = Some(VideoInfo {
                codec: codec_name(p.id()),
                width: w,
                height: h,
                fps,
            });
        }
    }
    if let Some(a) = ictx.streams().best(media::Type::Audio) {
        let p = a.parameters();
        let (rate, ch) = unsafe {
            (
                (*p.as_ptr()).sample_rate as u32,
                (*p.as_ptr()).ch_layout.nb_channels as u16,
            )
        };
        info.audio = Some(AudioInfo {
            codec: codec_name(p.id()),
            sample_rate: rate,
            channels: ch,
        });
    }
    for s in ictx.streams() {
        if s.parameters().medium() == media::Type::Subtitle {
            let id = s.parameters().id();
            let is_text = matches!(
                id,
                codec::Id::SUBRIP
                    | codec::Id::SRT
                    | codec::Id::MOV_TEXT
                    | codec::Id::WEBVTT
                    | codec::Id::ASS
                    | codec::Id::SSA
                    | codec::Id::TEXT
            );
            info.subtitles.push(SubtitleStream {
                index: s.index(),
                codec: codec_name(id),
                language: s.metadata().get("language").map(str::to_string),
                is_text,
            });
        }
    }
    if info.duration <= 0.0 {
        // Some containers only know it per stream.
        info.duration = ictx
            .streams()
            .map(|s| stream_secs(s.duration().max(0), s.time_base()))
            .fold(0.0, f64::max);
    }
    if info.duration > limits.max_duration_secs {
        return Err(Error::TooLarge {
            path: path.into(),
            limit: format!(
                "{:.0} min long, the limit is {:.0} min",
                info.duration / 60.0,
                limits.max_duration_secs / 60.0
            ),
        });
    }
    if let Some(v) = &info.video {
        if v.width > limits.max_width || v.height > limits.max_height {
            return Err(Error::TooLarge {
                path: path.into(),
                limit: format!(
                    "{}x{} is over the {}x{} limit",
                    v.width, v.height, limits.max_width, limits.max_height
                ),
            });
        }
    }
    Ok(info)
}

fn threading(ctx: &mut codec::context::Context) {
    let n = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .min(8);
    ctx.set_threading(codec::threading::Config {
        kind: codec::threading::Type::Frame,
        count: n,
        ..Default::default()
    });
}

/// A decoder for the video stream with `params`, told the budget's largest picture
/// (`max_pixels`: a bigger frame is refused before it is allocated, whatever the header said).
fn video_decoder(
    params: codec::Parameters,
    threaded: bool,
    budget: &DecodeBudget,
) -> Result<codec::decoder::Video> {
    let mut cctx = codec::context::Context::from_parameters(params).map_err(media_err("video decoder"))?;
    if threaded {
        threading(&mut cctx);
    }
    // SAFETY: the context is ours and not opened yet; max_pixels is a plain field read when the
    // decoder sets a frame's dimensions.
    unsafe {
        (*cctx.as_mut_ptr()).max_pixels = budget.max_pixels.min(i64::MAX as u64) as i64;
    }
    cctx.decoder().video().map_err(media_err("video decoder"))
}

/// Gives `packet` to a video decoder; a packet it fails on counts as a broken frame.
fn send_video(dec: &mut codec::decoder::Video, packet: &Packet, meter: &mut Meter) -> Result<()> {
    match dec.send_packet(packet) {
        Ok(()) => Ok(()),
        Err(e) => meter.broken(&e),
    }
}

/// The next decoded frame into `f`, counted by `meter`: `false` when the decoder wants more
/// input or is done. A frame the decoder fails on counts as broken; a frame past the budget
/// (too big, too many for its time) ends the pass with the budget's error.
fn receive_video(
    dec: &mut codec::decoder::Video,
    f: &mut frame::Video,
    tb: Rational,
    meter: &mut Meter,
) -> Result<bool> {
    match dec.receive_frame(f) {
        Ok(()) => {
            let t = f.timestamp().map(|ts| stream_secs(ts, tb));
            meter.frame(t, f.width(), f.height())?;
            Ok(true)
        }
        Err(ff::Error::Eof)
        | Err(ff::Error::Other {
            errno: ff::util::error::EAGAIN,
        }) => Ok(false),
        Err(e) => {
            meter.broken(&e)?;
            Ok(false)
        }
    }
}

fn audio_graph(
    dec: &codec::decoder::Audio,
    tb: Rational,
    spec: &str,
    frame_size: Option<u32>,
) -> Result<filter::Graph> {
    let layout = if dec.channel_layout().is_empty() {
        ff::ChannelLayout::default(dec.channels() as i32)
    } else {
        dec.channel_layout()
    };
    let args = format!(
        "time_base={}/{}:sample_rate={}:sample_fmt={}:channel_layout=0x{:x}",
        tb.numerator(),
        tb.denominator(),
        dec.rate(),
        dec.format().name(),
        layout.bits()
    );
    let mut g = graph(("abuffer", "abuffersink"), &args, spec, "audio filter")?;
    if let Some(n) = frame_size {
        g.get("out").expect("out").sink().set_frame_size(n);
    }
    Ok(g)
}

fn video_graph(dec: &codec::decoder::Video, tb: Rational, spec: &str) -> Result<filter::Graph> {
    let sar = dec.aspect_ratio();
    let sar = if sar.numerator() <= 0 || sar.denominator() <= 0 {
        Rational(1, 1)
    } else {
        sar
    };
    let args = format!(
        "video_size={}x{}:pix_fmt={}:time_base={}/{}:pixel_aspect={}/{}",
        dec.width(),
        dec.height(),
        ff::ffi::AVPixelFormat::from(dec.format()) as i32,
        tb.numerator(),
        tb.denominator(),
        sar.numerator(),
        sar.denominator()
    );
    graph(("buffer", "buffersink"), &args, spec, "video filter")
}

/// A filter graph `in` (source with `args`) → `spec` → `out` (sink).
fn graph((source, sink): (&str, &str), args: &str, spec: &str, what: &str) -> Result<filter::Graph> {
    let err = media_err(what);
    let mut g = filter::Graph::new();
    g.add(&filter::find(source).expect("built-in filter"), "in", args)
        .map_err(&err)?;
    g.add(&filter::find(sink).expect("built-in filter"), "out", "")
        .map_err(&err)?;
    g.output("in", 0)
        .and_then(|p| p.input("out", 0))
        .and_then(|p| p.parse(spec))
        .map_err(&err)?;
    g.validate().map_err(&err)?;
    Ok(g)
}

/// A duration as people say it: seconds under a minute and a half, else minutes.
fn span(secs: f64) -> String {
    if secs < 90.0 {
        format!("{secs:.0} s")
    } else {
        format!("{:.0} min", secs / 60.0)
    }
}

/// Reads the cues of a text subtitle stream (`index` as in [`MediaInfo::subtitles`]).
pub fn read_subtitle_stream(path: &Path, index: usize) -> Result<Vec<Cue>> {
    let mut ictx = open_input(path)?;
    let start0 = container_start(&ictx);
    let st = ictx
        .stream(index)
        .ok_or_else(|| Error::Media(format!("no stream {index}")))?;
    let tb = st.time_base();
    let cctx =
        codec::context::Context::from_parameters(st.parameters()).map_err(media_err("subtitle decoder"))?;
    let mut dec = cctx.decoder().subtitle().map_err(media_err("subtitle decoder"))?;
    let mut cues = Vec::new();
    for (s, packet) in ictx.packets() {
        if s.index() != index {
            continue;
        }
        let mut sub = codec::subtitle::Subtitle::new();
        if !matches!(dec.decode(&packet, &mut sub), Ok(true)) {
            continue;
        }
        let Some(pts) = packet.pts() else { continue };
        let base = stream_secs(pts, tb) - start0;
        let start = base + sub.start() as f64 / 1000.0;
        let end = if sub.end() > sub.start() && sub.end() != u32::MAX {
            base + sub.end() as f64 / 1000.0
        } else {
            base + stream_secs(packet.duration(), tb)
        };
        let mut text = String::new();
        for rect in sub.rects() {
            let t = match rect {
                codec::subtitle::Rect::Text(t) => t.get().to_string(),
                codec::subtitle::Rect::Ass(a) => ass_dialogue_text(a.get()),
                _ => continue,
            };
            if !text.is_empty() {
                text.push(' ');
            }
            text.push_str(&t);
        }
        if !text.trim().is_empty() {
            cues.push(Cue::new(start, end, text));
        }
    }
    Ok(cues)
}

/// The text of an ASS event as FFmpeg hands it out:
/// `ReadOrder,Layer,Style,Name,MarginL,MarginR,MarginV,Effect,Text` (or a `Dialogue:` line).
pub fn ass_dialogue_text(line: &str) -> String {
    let line = line.trim();
    let (fields, body) = match line.strip_prefix("Dialogue:") {
        Some(rest) => (9, rest),
        None => (8, line),
    };
    body.splitn(fields + 1, ',').nth(fields).unwrap_or("").to_string()
}

/// Output size: the source's, with the long edge at most `max_edge`, both sides even.
fn output_size(w: u32, h: u32, max_edge: u32) -> (u32, u32) {
    let scale = (max_edge as f64 / w.max(h) as f64).min(1.0);
    let even = |x: f64| ((x / 2.0).round() as u32 * 2).max(2);
    (even(w as f64 * scale), even(h as f64 * scale))
}

/// The engine's media through FFmpeg (ffmpeg-next): every method is the free function of the
/// same job in this module, decoding within `budget`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ffmpeg {
    pub budget: DecodeBudget,
}

impl Media for Ffmpeg {
    fn probe(&self, path: &Path, limits: &Limits) -> Result<MediaInfo> {
        probe(path, limits)
    }

    fn subtitle_stream(&self, path: &Path, index: usize) -> Result<Vec<Cue>> {
        read_subtitle_stream(path, index)
    }

    fn audio_16k(
        &self,
        path: &Path,
        max_secs: f64,
        progress: &dyn Fn(f32),
        cancel: &AtomicBool,
    ) -> Result<Vec<f32>> {
        decode_audio_16k(path, max_secs, progress, cancel, &self.budget)
    }

    fn audio_span(&self, path: &Path, start: f64, end: f64) -> Result<Vec<f32>> {
        decode_audio_span(path, start, end, &self.budget)
    }

    fn frames(
        &self,
        path: &Path,
        (start, end): (f64, f64),
        per_sec: f64,
        max_edge: u32,
        each: &mut OnFrame,
    ) -> Result<(u32, u32)> {
        sample_frames(path, (start, end), per_sec, max_edge, &self.budget, each)
    }

    fn cut(
        &self,
        src: &Path,
        (start, end): (f64, f64),
        mode: CutMode,
        shape: Option<Shape>,
        out: &Path,
    ) -> Result<ClipFile> {
        cut_shaped(src, (start, end), mode, shape, out, &self.budget)
    }

    fn thumbnail(&self, src: &Path, at: f64, max_edge: u32, out: &Path) -> Result<Thumbnail> {
        thumbnail(src, at, max_edge, out, &self.budget)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ass_events_give_their_text() {
        assert_eq!(
            ass_dialogue_text("0,0,Default,,0,0,0,,Привет, мир"),
            "Привет, мир"
        );
        assert_eq!(
            ass_dialogue_text("Dialogue: 0,0:00:01.00,0:00:02.00,Default,,0,0,0,,{\\i1}Hi{\\i0}, there"),
            "{\\i1}Hi{\\i0}, there"
        );
    }

    #[test]
    fn output_sizes_are_even_and_bounded() {
        assert_eq!(output_size(1280, 720, 1920), (1280, 720));
        assert_eq!(output_size(3840, 2160, 1920), (1920, 1080));
        assert_eq!(output_size(721, 405, 320), (320, 180));
        assert_eq!(output_size(1080, 1920, 320), (180, 320));
    }
}
