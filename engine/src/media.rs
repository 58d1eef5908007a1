//! Media through ffmpeg-next: probing, 16 kHz mono audio for Whisper, text subtitle streams,
//! cutting clips (precise re-encode or fast stream copy) and JPEG thumbnails.
//!
//! Inputs are untrusted: they are opened with a `file`-only protocol whitelist and a whitelist of
//! container demuxers (no playlists, no concat), and bounded by [`Limits`] before any decoding.

use crate::cue::Cue;
use crate::error::{Error, Result};
use ff::{codec, filter, format, frame, media, Dictionary, Packet, Rational};
use ffmpeg_next as ff;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;

/// Demuxers an input may be read with: real containers only.
pub const DEMUXERS: &str =
    "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi,flv,mpegts,ogg,wav,mp3,flac,aac,asf,srt,webvtt,ass";

/// Bounds on what an input may be.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Limits {
    pub max_duration_secs: f64,
    pub max_width: u32,
    pub max_height: u32,
    pub max_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_duration_secs: 4.0 * 3600.0,
            max_width: 7680,
            max_height: 4320,
            max_bytes: 4 << 30,
        }
    }
}

/// What a probe found.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MediaInfo {
    pub container: String,
    pub duration: f64,
    pub size_bytes: u64,
    pub video: Option<VideoInfo>,
    pub audio: Option<AudioInfo>,
    pub subtitles: Vec<SubtitleStream>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VideoInfo {
    pub codec: String,
    pub width: u32,
    pub height: u32,
    pub fps: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AudioInfo {
    pub codec: String,
    pub sample_rate: u32,
    pub channels: u16,
}

/// A subtitle stream inside the container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubtitleStream {
    pub index: usize,
    pub codec: String,
    pub language: Option<String>,
    /// Text (subrip, mov_text, webvtt, ass) rather than bitmaps.
    pub is_text: bool,
}

/// How a clip is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CutMode {
    /// Re-encode H.264/AAC, yuv420p: frame-exact edges.
    Precise,
    /// Copy streams from the keyframe at or before the start: fast, edges on keyframes.
    Fast,
}

/// A clip written to disk, with what Telegram's sendVideo wants to know.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClipFile {
    pub path: PathBuf,
    pub width: u32,
    pub height: u32,
    pub duration: f64,
    /// Where the clip really starts in the source (a keyframe in fast mode).
    pub source_start: f64,
    pub size_bytes: u64,
    pub mode: CutMode,
}

/// A JPEG thumbnail.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Thumbnail {
    pub path: PathBuf,
    pub width: u32,
    pub height: u32,
    pub size_bytes: u64,
}

fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = ff::init();
        ff::util::log::set_level(ff::util::log::Level::Error);
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
        if !attached && w > 0 && h > 0 {
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

/// The best audio stream of `ictx` (the file at `path`): its index, time base, a decoder, and
/// the graph that makes 16 kHz mono f32 of it.
fn audio_16k(
    ictx: &format::context::Input,
    path: &Path,
) -> Result<(usize, Rational, codec::decoder::Audio, filter::Graph)> {
    let st = ictx
        .streams()
        .best(media::Type::Audio)
        .ok_or_else(|| Error::NoAudio(path.into()))?;
    let (idx, tb) = (st.index(), st.time_base());
    let mut cctx =
        codec::context::Context::from_parameters(st.parameters()).map_err(media_err("audio decoder"))?;
    threading(&mut cctx);
    let dec = cctx.decoder().audio().map_err(media_err("audio decoder"))?;
    let graph = audio_graph(
        &dec,
        tb,
        "aresample=16000,aformat=sample_fmts=flt:channel_layouts=mono",
        None,
    )?;
    Ok((idx, tb, dec, graph))
}

/// One decoded frame through the 16 kHz graph of [`audio_16k`], its samples onto `out`.
fn feed_16k(
    graph: &mut filter::Graph,
    decoded: &frame::Audio,
    filtered: &mut frame::Audio,
    out: &mut Vec<f32>,
) -> Result<()> {
    graph
        .get("in")
        .expect("in")
        .source()
        .add(decoded)
        .map_err(media_err("audio filter"))?;
    while graph.get("out").expect("out").sink().frame(filtered).is_ok() {
        out.extend_from_slice(&filtered.plane::<f32>(0)[..filtered.samples()]);
    }
    Ok(())
}

/// Decodes the best audio stream to 16 kHz mono f32 for Whisper. `progress` gets 0..=1.
///
/// `max_secs` bounds what decoding produces, not what the header claims: a file whose header
/// says one minute but holds ten hours stops with [`Error::TooLarge`] once the decoded audio
/// passes the limit, so memory stays within `max_secs` × 64 kB.
pub fn decode_audio_16k(
    path: &Path,
    max_secs: f64,
    progress: &dyn Fn(f32),
    cancel: &AtomicBool,
) -> Result<Vec<f32>> {
    let mut ictx = open_input(path)?;
    let duration = (ictx.duration().max(1) as f64) / f64::from(ff::ffi::AV_TIME_BASE);
    let max_samples = (max_secs.max(0.0) * 16000.0) as usize;
    let too_long = |got: usize| Error::TooLarge {
        path: path.into(),
        limit: format!(
            "it holds more than {} of audio (its header says {}), the limit is {}",
            span(got as f64 / 16000.0),
            span(duration),
            span(max_secs)
        ),
    };
    let (idx, _, mut dec, mut graph) = audio_16k(&ictx, path)?;
    let mut out: Vec<f32> =
        Vec::with_capacity(((duration * 16000.0) as usize + 16000).min(max_samples.saturating_add(16000)));
    let mut decoded = frame::Audio::empty();
    let mut filtered = frame::Audio::empty();
    let mut last_report = 0.0;
    for (s, packet) in ictx.packets() {
        if s.index() != idx {
            continue;
        }
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        if dec.send_packet(&packet).is_err() {
            continue; // a damaged packet: skip it, as players do
        }
        while dec.receive_frame(&mut decoded).is_ok() {
            feed_16k(&mut graph, &decoded, &mut filtered, &mut out)?;
            if out.len() > max_samples {
                return Err(too_long(out.len()));
            }
        }
        let done = out.len() as f64 / 16000.0 / duration;
        if done - last_report > 0.02 {
            last_report = done;
            progress(done.min(1.0) as f32);
        }
    }
    let _ = dec.send_eof();
    while dec.receive_frame(&mut decoded).is_ok() {
        feed_16k(&mut graph, &decoded, &mut filtered, &mut out)?;
    }
    let _ = graph.get("in").expect("in").source().flush();
    while graph.get("out").expect("out").sink().frame(&mut filtered).is_ok() {
        out.extend_from_slice(&filtered.plane::<f32>(0)[..filtered.samples()]);
    }
    if out.len() > max_samples {
        return Err(too_long(out.len()));
    }
    progress(1.0);
    if out.is_empty() {
        return Err(Error::NoAudio(path.into()));
    }
    Ok(out)
}

/// The sound of `[start, end)` seconds of `path` at 16 kHz mono, for the framing's loudness: the
/// first sample is at `start` (silence where the stream starts later). Decodes from the packet
/// before `start` to `end` only, so a clip's sound costs what the clip's length does. A file with
/// no audio stream gives [`Error::NoAudio`].
pub fn decode_audio_span(path: &Path, start: f64, end: f64) -> Result<Vec<f32>> {
    let mut ictx = open_input(path)?;
    let t0 = container_start(&ictx);
    let (idx, tb, mut dec, mut graph) = audio_16k(&ictx, path)?;
    let seek_to = ((start + t0 - 1.0).max(0.0) * f64::from(ff::ffi::AV_TIME_BASE)) as i64;
    if seek_to > 0 {
        ictx.seek(seek_to, ..seek_to).map_err(media_err("seek"))?;
    }
    let want = ((end - start).max(0.0) * 16000.0).ceil() as usize;
    // Samples from `first` (source seconds, the first decoded frame's time) on.
    let (mut first, mut got): (Option<f64>, Vec<f32>) = (None, Vec::new());
    let mut decoded = frame::Audio::empty();
    let mut filtered = frame::Audio::empty();
    let full = |first: Option<f64>, got: &Vec<f32>| {
        first.is_some_and(|f| f + got.len() as f64 / 16000.0 >= end + t0)
    };
    for (s, packet) in ictx.packets() {
        if s.index() != idx || dec.send_packet(&packet).is_err() {
            continue;
        }
        while dec.receive_frame(&mut decoded).is_ok() {
            if first.is_none() {
                first = Some(decoded.timestamp().map_or(t0, |ts| stream_secs(ts, tb)));
            }
            feed_16k(&mut graph, &decoded, &mut filtered, &mut got)?;
        }
        if full(first, &got) {
            break;
        }
    }
    let Some(first) = first else {
        return Err(Error::NoAudio(path.into()));
    };
    // Shift so that sample 0 is `start`.
    let lead = ((start + t0 - first) * 16000.0).round() as i64;
    let mut out = if lead >= 0 {
        got.get(lead as usize..).unwrap_or_default().to_vec()
    } else {
        let mut v = vec![0.0; (-lead) as usize];
        v.extend_from_slice(&got);
        v
    };
    out.truncate(want);
    Ok(out)
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

/// Cuts `[start, end)` seconds of `src` into an MP4 at `out` (`+faststart`).
/// Fast mode falls back to precise when the streams cannot be copied into MP4.
pub fn cut(src: &Path, start: f64, end: f64, mode: CutMode, out: &Path) -> Result<ClipFile> {
    cut_shaped(src, start, end, mode, None, out)
}

/// [`cut`], shaped: cropped or filled into a delivery shape along a plan, captions burned in
/// ([`crate::shape`]). A shape is always re-encoded (`mode` is then precise).
pub fn cut_shaped(
    src: &Path,
    start: f64,
    end: f64,
    mode: CutMode,
    shape: Option<crate::shape::Shape>,
    out: &Path,
) -> Result<ClipFile> {
    if end <= start || start < 0.0 || end.is_nan() {
        return Err(Error::Invalid(format!("cannot cut {start:.3}-{end:.3} s")));
    }
    let res = match (mode, shape) {
        (_, Some(shape)) => cut_precise(src, start, end, Some(shape), out),
        (CutMode::Precise, None) => cut_precise(src, start, end, None, out),
        (CutMode::Fast, None) => match cut_fast(src, start, end, out) {
            Err(Error::Media(why)) => {
                tracing::warn!(%why, "stream copy impossible; re-encoding");
                cut_precise(src, start, end, None, out)
            }
            other => other,
        },
    };
    if res.is_err() {
        let _ = std::fs::remove_file(out);
    }
    res
}

fn mp4_output(out: &Path) -> Result<format::context::Output> {
    init();
    format::output_as(&out, "mp4").map_err(|e| Error::Media(format!("{}: {e}", out.display())))
}

fn write_header_faststart(octx: &mut format::context::Output) -> Result<()> {
    let mut opts = Dictionary::new();
    opts.set("movflags", "+faststart");
    octx.write_header_with(opts)
        .map(|_| ())
        .map_err(media_err("mp4 header"))
}

struct VideoPath {
    ist: usize,
    ist_tb: Rational,
    dec: codec::decoder::Video,
    graph: filter::Graph,
    /// Set for a shaped clip: frames go through it instead of `graph`.
    shaper: Option<crate::shape::Shaper>,
    enc: codec::encoder::video::Encoder,
    ost: usize,
    width: u32,
    height: u32,
}

struct AudioPath {
    ist: usize,
    dec: codec::decoder::Audio,
    graph: filter::Graph,
    enc: codec::encoder::audio::Encoder,
    ost: usize,
}

fn cut_precise(
    src: &Path,
    start: f64,
    end: f64,
    shape: Option<crate::shape::Shape>,
    out: &Path,
) -> Result<ClipFile> {
    let mut ictx = open_input(src)?;
    let t0 = container_start(&ictx);
    let (abs_s, abs_e) = (start + t0, end + t0);
    let mut octx = mp4_output(out)?;
    let global = octx.format().flags().contains(format::Flags::GLOBAL_HEADER);

    let vst = ictx
        .streams()
        .best(media::Type::Video)
        .ok_or_else(|| Error::NotAVideo {
            path: src.into(),
            reason: "no video stream".into(),
        })?;
    let vidx = vst.index();
    let vtb = vst.time_base();
    let rate = {
        let r = vst.avg_frame_rate();
        if r.numerator() > 0 && r.denominator() > 0 {
            r
        } else {
            Rational(25, 1)
        }
    };
    let mut vctx =
        codec::context::Context::from_parameters(vst.parameters()).map_err(media_err("video decoder"))?;
    threading(&mut vctx);
    let vdec = vctx.decoder().video().map_err(media_err("video decoder"))?;
    let (w, h) = match &shape {
        Some(s) => (s.geometry.out_w, s.geometry.out_h),
        None => output_size(vdec.width(), vdec.height(), 1920),
    };
    let vspec = format!(
        "trim=start={abs_s:.6}:end={abs_e:.6},setpts=PTS-STARTPTS,scale={w}:{h},setsar=1,format=yuv420p"
    );
    let vgraph = video_graph(&vdec, vtb, &vspec)?;
    let shaper = match shape {
        None => None,
        Some(shape) => {
            let source = crate::shape::Source {
                width: vdec.width(),
                height: vdec.height(),
                pix_fmt: vdec.format(),
                time_base: vtb,
                sar: vdec.aspect_ratio(),
            };
            Some(crate::shape::Shaper::new(shape, source, abs_s, abs_e)?)
        }
    };
    let h264 = codec::encoder::find_by_name("libx264")
        .or_else(|| codec::encoder::find(codec::Id::H264))
        .ok_or_else(|| Error::Media("no H.264 encoder in this FFmpeg".into()))?;
    let mut ost = octx.add_stream(h264).map_err(media_err("mp4 stream"))?;
    let vost = ost.index();
    let mut ectx = codec::context::Context::new_with_codec(h264)
        .encoder()
        .video()
        .map_err(media_err("H.264 encoder"))?;
    ectx.set_width(w);
    ectx.set_height(h);
    ectx.set_format(format::Pixel::YUV420P);
    ectx.set_time_base(vtb);
    ectx.set_frame_rate(Some(rate));
    ectx.set_aspect_ratio(Rational(1, 1));
    if global {
        ectx.set_flags(codec::Flags::GLOBAL_HEADER);
    }
    let mut x264 = Dictionary::new();
    x264.set("preset", "veryfast");
    x264.set("crf", "23");
    let venc = ectx
        .open_as_with(h264, x264)
        .map_err(media_err("H.264 encoder"))?;
    ost.set_parameters(&venc);
    ost.set_time_base(vtb);
    let mut video = VideoPath {
        ist: vidx,
        ist_tb: vtb,
        dec: vdec,
        graph: vgraph,
        shaper,
        enc: venc,
        ost: vost,
        width: w,
        height: h,
    };

    let mut audio = match ictx.streams().best(media::Type::Audio) {
        None => None,
        Some(ast) => {
            let aidx = ast.index();
            let atb = ast.time_base();
            let mut actx = codec::context::Context::from_parameters(ast.parameters())
                .map_err(media_err("audio decoder"))?;
            threading(&mut actx);
            let adec = actx.decoder().audio().map_err(media_err("audio decoder"))?;
            let aac =
                codec::encoder::find(codec::Id::AAC).ok_or_else(|| Error::Media("no AAC encoder".into()))?;
            let mut ost = octx.add_stream(aac).map_err(media_err("mp4 stream"))?;
            let aost = ost.index();
            let mut ectx = codec::context::Context::new_with_codec(aac)
                .encoder()
                .audio()
                .map_err(media_err("AAC encoder"))?;
            ectx.set_rate(48000);
            ectx.set_channel_layout(ff::ChannelLayout::STEREO);
            ectx.set_format(format::Sample::F32(format::sample::Type::Planar));
            ectx.set_bit_rate(128_000);
            ectx.set_time_base(Rational(1, 48000));
            if global {
                ectx.set_flags(codec::Flags::GLOBAL_HEADER);
            }
            let aenc = ectx.open_as(aac).map_err(media_err("AAC encoder"))?;
            ost.set_parameters(&aenc);
            ost.set_time_base(Rational(1, 48000));
            let aspec = format!(
                "atrim=start={abs_s:.6}:end={abs_e:.6},asetpts=PTS-STARTPTS,aresample=48000,aformat=sample_fmts=fltp:channel_layouts=stereo"
            );
            let graph = audio_graph(&adec, atb, &aspec, Some(aenc.frame_size()))?;
            Some(AudioPath {
                ist: aidx,
                dec: adec,
                graph,
                enc: aenc,
                ost: aost,
            })
        }
    };

    write_header_faststart(&mut octx)?;
    let vost_tb = octx.stream(video.ost).expect("added").time_base();
    let aost_tb = audio
        .as_ref()
        .map(|a| octx.stream(a.ost).expect("added").time_base());

    // Seek a little before the start: the decoder lands on the keyframe before it.
    let seek_to = ((abs_s - 2.0).max(0.0) * f64::from(ff::ffi::AV_TIME_BASE)) as i64;
    if seek_to > 0 {
        ictx.seek(seek_to, ..seek_to).map_err(media_err("seek"))?;
    }
    let mut vframe = frame::Video::empty();
    let mut aframe = frame::Audio::empty();
    let mut video_done = false;
    let mut audio_done = audio.is_none();
    for (s, packet) in ictx.packets() {
        let idx = s.index();
        let secs = packet
            .pts()
            .or(packet.dts())
            .map(|t| stream_secs(t, s.time_base()));
        if idx == video.ist && !video_done {
            if video.dec.send_packet(&packet).is_ok() {
                pump_video(&mut video, &mut vframe, &mut octx, vost_tb)?;
            }
            if secs.is_some_and(|t| t > abs_e + 2.0) {
                video_done = true;
            }
        } else if let Some(a) = audio.as_mut().filter(|a| a.ist == idx && !audio_done) {
            if a.dec.send_packet(&packet).is_ok() {
                pump_audio(a, &mut aframe, &mut octx, aost_tb.expect("audio"))?;
            }
            if secs.is_some_and(|t| t > abs_e + 1.0) {
                audio_done = true;
            }
        }
        if video_done && audio_done {
            break;
        }
    }
    // Flush decoders, filters and encoders.
    let _ = video.dec.send_eof();
    pump_video(&mut video, &mut vframe, &mut octx, vost_tb)?;
    let _ = video.graph.get("in").expect("in").source().flush();
    drain_video(&mut video, &mut octx, vost_tb)?;
    let _ = video.enc.send_eof();
    write_packets(&mut video.enc, video.ost, video.ist_tb, vost_tb, &mut octx)?;
    if let Some(a) = audio.as_mut() {
        let _ = a.dec.send_eof();
        pump_audio(a, &mut aframe, &mut octx, aost_tb.expect("audio"))?;
        let _ = a.graph.get("in").expect("in").source().flush();
        drain_audio(a, &mut octx, aost_tb.expect("audio"))?;
        let _ = a.enc.send_eof();
        write_packets(
            &mut a.enc,
            a.ost,
            Rational(1, 48000),
            aost_tb.expect("audio"),
            &mut octx,
        )?;
    }
    octx.write_trailer().map_err(media_err("mp4 trailer"))?;
    drop(octx);
    finish_clip(out, start, CutMode::Precise, Some((video.width, video.height)))
}

fn pump_video(
    v: &mut VideoPath,
    f: &mut frame::Video,
    octx: &mut format::context::Output,
    ost_tb: Rational,
) -> Result<()> {
    while v.dec.receive_frame(f).is_ok() {
        let ts = f.timestamp();
        f.set_pts(ts);
        if let Some(shaper) = v.shaper.as_mut() {
            if let Some(mut shaped) = shaper.push(f)? {
                shaped.set_kind(ff::picture::Type::None);
                v.enc.send_frame(&shaped).map_err(media_err("H.264 encoder"))?;
                write_packets(&mut v.enc, v.ost, v.ist_tb, ost_tb, octx)?;
            }
            continue;
        }
        v.graph
            .get("in")
            .expect("in")
            .source()
            .add(f)
            .map_err(media_err("video filter"))?;
        drain_video(v, octx, ost_tb)?;
    }
    Ok(())
}

fn drain_video(v: &mut VideoPath, octx: &mut format::context::Output, ost_tb: Rational) -> Result<()> {
    let mut filtered = frame::Video::empty();
    while v
        .graph
        .get("out")
        .expect("out")
        .sink()
        .frame(&mut filtered)
        .is_ok()
    {
        filtered.set_kind(ff::picture::Type::None);
        v.enc.send_frame(&filtered).map_err(media_err("H.264 encoder"))?;
        write_packets(&mut v.enc, v.ost, v.ist_tb, ost_tb, octx)?;
    }
    Ok(())
}

fn pump_audio(
    a: &mut AudioPath,
    f: &mut frame::Audio,
    octx: &mut format::context::Output,
    ost_tb: Rational,
) -> Result<()> {
    while a.dec.receive_frame(f).is_ok() {
        let ts = f.timestamp();
        f.set_pts(ts);
        a.graph
            .get("in")
            .expect("in")
            .source()
            .add(f)
            .map_err(media_err("audio filter"))?;
        drain_audio(a, octx, ost_tb)?;
    }
    Ok(())
}

fn drain_audio(a: &mut AudioPath, octx: &mut format::context::Output, ost_tb: Rational) -> Result<()> {
    let mut filtered = frame::Audio::empty();
    while a
        .graph
        .get("out")
        .expect("out")
        .sink()
        .frame(&mut filtered)
        .is_ok()
    {
        a.enc.send_frame(&filtered).map_err(media_err("AAC encoder"))?;
        write_packets(&mut a.enc, a.ost, Rational(1, 48000), ost_tb, octx)?;
    }
    Ok(())
}

fn write_packets(
    enc: &mut codec::encoder::Encoder,
    ost: usize,
    enc_tb: Rational,
    ost_tb: Rational,
    octx: &mut format::context::Output,
) -> Result<()> {
    let mut p = Packet::empty();
    while enc.receive_packet(&mut p).is_ok() {
        p.set_stream(ost);
        p.rescale_ts(enc_tb, ost_tb);
        p.write_interleaved(octx).map_err(media_err("mp4 write"))?;
    }
    Ok(())
}

fn cut_fast(src: &Path, start: f64, end: f64, out: &Path) -> Result<ClipFile> {
    let mut ictx = open_input(src)?;
    let t0 = container_start(&ictx);
    let (abs_s, abs_e) = (start + t0, end + t0);
    let vst = ictx
        .streams()
        .best(media::Type::Video)
        .ok_or_else(|| Error::NotAVideo {
            path: src.into(),
            reason: "no video stream".into(),
        })?;
    let vidx = vst.index();
    let aidx = ictx.streams().best(media::Type::Audio).map(|s| s.index());
    let mut octx = mp4_output(out)?;
    let mut map: Vec<Option<usize>> = vec![None; ictx.nb_streams() as usize];
    let mut in_tbs = vec![Rational(1, 1); ictx.nb_streams() as usize];
    for s in ictx.streams() {
        if s.index() != vidx && Some(s.index()) != aidx {
            continue;
        }
        let mut ost = octx
            .add_stream(codec::encoder::find(codec::Id::None))
            .map_err(media_err("mp4 stream"))?;
        ost.set_parameters(s.parameters());
        unsafe {
            (*ost.parameters().as_mut_ptr()).codec_tag = 0;
        }
        map[s.index()] = Some(ost.index());
        in_tbs[s.index()] = s.time_base();
    }
    let (w, h) = {
        let p = vst.parameters();
        unsafe { ((*p.as_ptr()).width as u32, (*p.as_ptr()).height as u32) }
    };
    write_header_faststart(&mut octx)?;
    let out_tbs: Vec<Rational> = (0..octx.nb_streams())
        .map(|i| octx.stream(i as usize).expect("stream").time_base())
        .collect();
    let seek_to = (abs_s.max(0.0) * f64::from(ff::ffi::AV_TIME_BASE)) as i64;
    if seek_to > 0 {
        ictx.seek(seek_to, ..seek_to).map_err(media_err("seek"))?;
    }
    // The clip starts at the first video keyframe at or before the start.
    let mut base: Option<f64> = None;
    let mut done = vec![false; map.len()];
    for (s, mut packet) in ictx.packets() {
        let i = s.index();
        let Some(o) = map[i] else { continue };
        let tb = in_tbs[i];
        let Some(ts) = packet.dts().or(packet.pts()) else {
            continue;
        };
        let secs = stream_secs(ts, tb);
        if base.is_none() {
            if i != vidx || !packet.is_key() {
                continue;
            }
            if secs > abs_s + 0.5 && seek_to > 0 {
                // The seek overshot (no index): accept this keyframe anyway.
                tracing::debug!(secs, abs_s, "first keyframe after the requested start");
            }
            base = Some(secs);
        }
        let b = base.expect("set above");
        let pts_secs = packet.pts().map(|p| stream_secs(p, tb)).unwrap_or(secs);
        if pts_secs >= abs_e {
            done[i] = true;
            if map.iter().enumerate().all(|(k, m)| m.is_none() || done[k]) {
                break;
            }
            continue;
        }
        if pts_secs < b - 0.05 {
            continue; // audio before the keyframe
        }
        let shift = (b / f64::from(tb)).round() as i64;
        packet.set_pts(packet.pts().map(|p| p - shift));
        packet.set_dts(packet.dts().map(|d| d - shift));
        packet.rescale_ts(tb, out_tbs[o]);
        packet.set_position(-1);
        packet.set_stream(o);
        packet
            .write_interleaved(&mut octx)
            .map_err(media_err("mp4 write"))?;
    }
    let Some(b) = base else {
        return Err(Error::Media("no keyframe before the clip's end".into()));
    };
    octx.write_trailer().map_err(media_err("mp4 trailer"))?;
    drop(octx);
    finish_clip(out, b - t0, CutMode::Fast, Some((w, h)))
}

fn finish_clip(out: &Path, source_start: f64, mode: CutMode, size: Option<(u32, u32)>) -> Result<ClipFile> {
    let info = probe(out, &Limits::default())?;
    let (width, height) = info
        .video
        .as_ref()
        .map(|v| (v.width, v.height))
        .or(size)
        .unwrap_or((0, 0));
    Ok(ClipFile {
        path: out.to_path_buf(),
        width,
        height,
        duration: info.duration,
        source_start,
        size_bytes: info.size_bytes,
        mode,
    })
}

/// An untrusted input opened for its best video stream, with that stream's decoder.
struct VideoInput {
    ictx: format::context::Input,
    /// The container's start time, seconds.
    t0: f64,
    vidx: usize,
    vtb: Rational,
    dec: codec::decoder::Video,
}

impl VideoInput {
    fn parts(
        self,
    ) -> (
        format::context::Input,
        f64,
        usize,
        Rational,
        codec::decoder::Video,
    ) {
        (self.ictx, self.t0, self.vidx, self.vtb, self.dec)
    }
}

fn open_video(src: &Path, threaded: bool) -> Result<VideoInput> {
    let ictx = open_input(src)?;
    let t0 = container_start(&ictx);
    let vst = ictx
        .streams()
        .best(media::Type::Video)
        .ok_or_else(|| Error::NotAVideo {
            path: src.into(),
            reason: "no video stream".into(),
        })?;
    let (vidx, vtb) = (vst.index(), vst.time_base());
    let mut cctx =
        codec::context::Context::from_parameters(vst.parameters()).map_err(media_err("video decoder"))?;
    if threaded {
        threading(&mut cctx);
    }
    let dec = cctx.decoder().video().map_err(media_err("video decoder"))?;
    Ok(VideoInput {
        ictx,
        t0,
        vidx,
        vtb,
        dec,
    })
}

/// Frames of `src` between `start` and `end` seconds, `per_sec` of them a second (the first at
/// or after `start`, then the next one due), scaled to at most `max_edge` px on the long side, as
/// packed RGB: `each(t, rgb, w, h)` with `t` from `start`. Returns the source's size. Decoding
/// stops at `end`; `each` may stop it early with an error (e.g. [`Error::Cancelled`]).
pub fn sample_frames(
    src: &Path,
    start: f64,
    end: f64,
    per_sec: f64,
    max_edge: u32,
    mut each: impl FnMut(f64, &[u8], u32, u32) -> Result<()>,
) -> Result<(u32, u32)> {
    let (mut ictx, t0, vidx, vtb, mut dec) = open_video(src, true)?.parts();
    let (src_w, src_h) = (dec.width(), dec.height());
    let (w, h) = output_size(src_w, src_h, max_edge);
    let mut graph = video_graph(&dec, vtb, &format!("scale={w}:{h}:flags=area,format=rgb24"))?;
    let (abs_s, abs_e) = (start + t0, end + t0);
    let seek_to = ((abs_s - 2.0).max(0.0) * f64::from(ff::ffi::AV_TIME_BASE)) as i64;
    if seek_to > 0 {
        ictx.seek(seek_to, ..seek_to).map_err(media_err("seek"))?;
    }
    let step = 1.0 / per_sec.max(0.1);
    let mut next = abs_s;
    let mut decoded = frame::Video::empty();
    let mut rgb = frame::Video::empty();
    let mut packed: Vec<u8> = Vec::with_capacity((w * h * 3) as usize);
    let mut take = |f: &mut frame::Video, next: &mut f64| -> Result<bool> {
        let Some(ts) = f.timestamp() else { return Ok(false) };
        let t = stream_secs(ts, vtb);
        if t >= abs_e {
            return Ok(true);
        }
        if t + 1e-6 < *next {
            return Ok(false);
        }
        while *next <= t + 1e-6 {
            *next += step;
        }
        f.set_pts(Some(ts));
        graph
            .get("in")
            .expect("in")
            .source()
            .add(f)
            .map_err(media_err("sample filter"))?;
        graph
            .get("out")
            .expect("out")
            .sink()
            .frame(&mut rgb)
            .map_err(media_err("sample filter"))?;
        packed.clear();
        let stride = rgb.stride(0);
        for row in 0..h as usize {
            packed.extend_from_slice(&rgb.data(0)[row * stride..row * stride + w as usize * 3]);
        }
        each(t - abs_s, &packed, w, h)?;
        Ok(false)
    };
    'read: for (s, packet) in ictx.packets() {
        if s.index() != vidx || dec.send_packet(&packet).is_err() {
            continue;
        }
        while dec.receive_frame(&mut decoded).is_ok() {
            if take(&mut decoded, &mut next)? {
                break 'read;
            }
        }
    }
    let _ = dec.send_eof();
    while dec.receive_frame(&mut decoded).is_ok() {
        if take(&mut decoded, &mut next)? {
            break;
        }
    }
    Ok((src_w, src_h))
}

/// Writes a JPEG of the frame at `at` seconds of `src` (a clip), at most `max_edge` px on its
/// long side.
pub fn thumbnail(src: &Path, at: f64, max_edge: u32, out: &Path) -> Result<Thumbnail> {
    let (mut ictx, t0, vidx, vtb, mut dec) = open_video(src, false)?.parts();
    let (w, h) = output_size(dec.width(), dec.height(), max_edge);
    let mut graph = video_graph(&dec, vtb, &format!("scale={w}:{h},format=yuvj420p"))?;
    let target = at + t0;
    let seek_to = (target.max(0.0) * f64::from(ff::ffi::AV_TIME_BASE)) as i64;
    if seek_to > 0 {
        ictx.seek(seek_to, ..seek_to).map_err(media_err("seek"))?;
    }
    let mut decoded = frame::Video::empty();
    let mut picked: Option<frame::Video> = None;
    'read: for (s, packet) in ictx.packets() {
        if s.index() != vidx {
            continue;
        }
        if dec.send_packet(&packet).is_err() {
            continue;
        }
        while dec.receive_frame(&mut decoded).is_ok() {
            let t = decoded.timestamp().map(|t| stream_secs(t, vtb)).unwrap_or(target);
            picked = Some(decoded.clone());
            if t >= target {
                break 'read;
            }
        }
    }
    if picked.is_none() {
        let _ = dec.send_eof();
        while dec.receive_frame(&mut decoded).is_ok() {
            picked = Some(decoded.clone());
        }
    }
    let mut f = picked.ok_or_else(|| {
        Error::Media(format!(
            "{}: no video frame to take a thumbnail from",
            src.display()
        ))
    })?;
    f.set_pts(Some(0));
    graph
        .get("in")
        .expect("in")
        .source()
        .add(&f)
        .map_err(media_err("thumbnail filter"))?;
    let mut scaled = frame::Video::empty();
    graph
        .get("out")
        .expect("out")
        .sink()
        .frame(&mut scaled)
        .map_err(media_err("thumbnail filter"))?;
    let mjpeg =
        codec::encoder::find(codec::Id::MJPEG).ok_or_else(|| Error::Media("no MJPEG encoder".into()))?;
    let mut ectx = codec::context::Context::new_with_codec(mjpeg)
        .encoder()
        .video()
        .map_err(media_err("JPEG encoder"))?;
    ectx.set_width(w);
    ectx.set_height(h);
    ectx.set_format(format::Pixel::YUVJ420P);
    ectx.set_time_base(Rational(1, 25));
    let mut opts = Dictionary::new();
    opts.set("flags", "+qscale");
    opts.set("global_quality", &(4 * 118).to_string());
    let mut enc = ectx
        .open_as_with(mjpeg, opts)
        .map_err(media_err("JPEG encoder"))?;
    scaled.set_pts(Some(0));
    enc.send_frame(&scaled).map_err(media_err("JPEG encoder"))?;
    let _ = enc.send_eof();
    let mut p = Packet::empty();
    enc.receive_packet(&mut p).map_err(media_err("JPEG encoder"))?;
    let data = p.data().ok_or_else(|| Error::Media("empty JPEG".into()))?;
    std::fs::write(out, data).map_err(|e| Error::io(out, e))?;
    Ok(Thumbnail {
        path: out.to_path_buf(),
        width: w,
        height: h,
        size_bytes: data.len() as u64,
    })
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
