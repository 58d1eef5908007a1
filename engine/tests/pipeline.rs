//! The whole pipeline on real media: festival Russian speech over a test pattern, transcribed
//! by the fixture Whisper base, scored with the fixture multilingual-e5-small encoder, cut with
//! ffmpeg-next. Also: embedded subtitle streams, subtitle-only input, fast cuts, bad inputs.

mod common;

use candle_core::{DType, Device};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use viralclip_engine::cue::{CueSource, Transcript};
use viralclip_engine::media::{self, CutMode, Limits};
use viralclip_engine::model::artifact;
use viralclip_engine::pipeline::{no_progress, ClipRequest, Engine};
use viralclip_engine::scorer::BertScorer;
use viralclip_engine::whisper_model::WhisperModel;
use viralclip_engine::Error;

/// The demo script spoken by festival over testsrc (1280x720, 25 fps, keyframe every 2 s),
/// built once per test run.
fn speech_video() -> &'static Path {
    static V: OnceLock<PathBuf> = OnceLock::new();
    V.get_or_init(|| {
        common::require_tool("ffmpeg");
        common::require_tool("text2wave");
        // In cargo's per-target scratch directory, rewritten each run (not a new /tmp dir each time).
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("pipeline-speech");
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("speech.mp4");
        let st = Command::new(common::repo().join("assets/demo/make-demo.sh"))
            .arg(common::repo().join("assets/demo/script.ru.txt"))
            .arg(&out)
            .status()
            .unwrap();
        assert!(st.success(), "make-demo.sh failed");
        out
    })
}

fn engine(encoder: &Path) -> Engine {
    // Loading reads everything; the directory goes when `dir` drops.
    let dir = tempfile::tempdir().unwrap();
    artifact::init(encoder, "intfloat/multilingual-e5-small", dir.path(), 1).unwrap();
    let loaded = artifact::load(dir.path(), None, &Device::Cpu, DType::F32).unwrap();
    Engine::new(Box::new(BertScorer::new(loaded)))
}

fn ffmpeg(args: &[&str]) {
    let st = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-y"])
        .args(args)
        .status()
        .unwrap();
    assert!(st.success(), "ffmpeg {args:?}");
}

/// A 48x27 grey picture of the frame at `t` seconds.
fn frame_at(path: &Path, t: f64) -> Vec<u8> {
    let out = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-ss", &format!("{t:.3}"), "-i"])
        .arg(path)
        .args([
            "-frames:v",
            "1",
            "-s",
            "48x27",
            "-pix_fmt",
            "gray",
            "-f",
            "rawvideo",
            "-",
        ])
        .output()
        .unwrap();
    assert_eq!(out.stdout.len(), 48 * 27, "no frame at {t} in {}", path.display());
    out.stdout
}

fn diff(a: &[u8], b: &[u8]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).abs())
        .sum::<f64>()
        / a.len() as f64
}

#[test]
fn russian_speech_end_to_end() {
    let (Some(e5), Some(whisper)) = (common::e5(), common::whisper_base()) else {
        return;
    };
    let video = speech_video();
    let info = media::probe(video, &Limits::default()).unwrap();
    assert!(
        (60.0..=90.0).contains(&info.duration),
        "video is {} s",
        info.duration
    );
    let out = tempfile::tempdir().unwrap();
    let mut req = ClipRequest::new(video, out.path());
    req.language = Some("ru".into());
    req.select.count = 3;
    req.select.min_secs = 10.0;
    req.select.max_secs = 25.0;
    // All three clips cut at once: the checks below hold for each.
    req.cut_jobs = 3;
    // Windows scored while Whisper still works (on by default only on a GPU).
    req.overlap = Some(true);
    let mut eng = engine(&e5).with_whisper(Some(WhisperModel::File(whisper)));
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = seen.clone();
    let progress = Arc::new(move |stage, f: f32| s.lock().unwrap().push((stage, f)));
    let report = eng.run(&req, progress, Arc::new(AtomicBool::new(false))).unwrap();

    // Whisper heard the Russian words.
    match &report.transcript.source {
        CueSource::Whisper { language, .. } => assert_eq!(language, "ru"),
        other => panic!("transcribed by {other:?}"),
    }
    let text: String = report
        .transcript
        .lines
        .iter()
        .map(|c| c.text.to_lowercase())
        .collect::<Vec<_>>()
        .join(" ");
    let all: String = std::fs::read_to_string(out.path().join("report.json"))
        .unwrap()
        .to_lowercase();
    let stems = common::DEMO_STEMS;
    let found = stems.iter().filter(|s| text.contains(*s)).count();
    assert!(
        found >= 9,
        "only {found} of {} words came back: {text}",
        stems.len()
    );
    assert!(report.transcript.cues >= 8, "{} cues", report.transcript.cues);

    // Progress went through the stages in order and reached the end.
    let stages: Vec<_> = seen.lock().unwrap().iter().map(|(s, _)| *s).collect();
    use viralclip_engine::pipeline::Stage::*;
    for st in [Probe, DecodeAudio, Transcribe, Score, Select, Cut, Done] {
        assert!(stages.contains(&st), "no {st:?} progress");
    }

    // Three clips of the right length, inside the video, not overlapping, frame-exact.
    assert_eq!(report.moments.len(), 3);
    for (i, m) in report.moments.iter().enumerate() {
        assert!(m.start >= 0.0 && m.end <= info.duration + 1e-6, "{m:?}");
        assert!(m.duration >= 10.0 && m.duration <= 25.0 + 1e-6, "{}", m.duration);
        for o in &report.moments[i + 1..] {
            assert!(m.end <= o.start || o.end <= m.start, "overlap");
        }
        let c = m.clip.as_ref().expect("a clip");
        let path = out.path().join(&c.path);
        let probed = media::probe(&path, &Limits::default()).unwrap();
        let v = probed.video.as_ref().unwrap();
        assert_eq!((v.codec.as_str(), v.width, v.height), ("h264", 1280, 720));
        assert_eq!(probed.audio.as_ref().unwrap().codec, "aac");
        assert!(
            (probed.duration - m.duration).abs() <= 0.05,
            "clip {} s for {} s",
            probed.duration,
            m.duration
        );
        // +faststart: the moov box comes before the media data.
        let head = std::fs::read(&path).unwrap();
        let moov = head.windows(4).position(|w| w == b"moov").unwrap();
        let mdat = head.windows(4).position(|w| w == b"mdat").unwrap();
        assert!(moov < mdat, "moov after mdat");
        // The first frame is the source's frame at the start, not one a frame away.
        let first = frame_at(&path, 0.0);
        let d0 = diff(&first, &frame_at(video, m.start));
        let d1 = diff(&first, &frame_at(video, m.start + 0.08));
        assert!(
            d0 < d1,
            "clip {} starts at the wrong frame ({d0} vs {d1})",
            m.rank
        );
        // Thumbnail as Telegram wants it.
        let thumb = std::fs::read(out.path().join(&c.thumbnail)).unwrap();
        assert_eq!(&thumb[..2], &[0xFF, 0xD8], "not a JPEG");
        assert!(thumb.len() < 200_000);
        assert!(c.width == 1280 && c.height == 720);
    }
    // Some windows were scored during transcription, and the scores are those of a fresh pass.
    assert!(
        report.timings.windows_prefetched > 0,
        "nothing scored during transcription ({} windows)",
        report.timings.windows_scored
    );
    assert!(report.timings.windows_prefetched < report.timings.windows_scored);
    let heard = Transcript::repair(report.transcript.lines.clone(), report.transcript.source.clone());
    assert_eq!(heard.cues, report.transcript.lines);
    let fresh = eng
        .analyse(&heard, Some(info.duration), &req.select, &no_progress())
        .unwrap();
    assert_eq!(fresh.virality.len(), report.timeline.len());
    for (f, p) in fresh.virality.iter().zip(&report.timeline) {
        assert!((f - p.virality).abs() < 1e-4, "{f} vs {}", p.virality);
    }
    let rep: serde_json::Value = serde_json::from_str(&all).unwrap();
    assert!(rep["timings"]["transcribe"].as_f64().unwrap() > 0.0);
    assert_eq!(rep["moments"][0]["emotions"].as_array().unwrap().len(), 3);
}

#[test]
fn fast_cut_starts_on_the_keyframe_before() {
    let video = speech_video();
    let out = tempfile::tempdir().unwrap();
    let clip = media::cut(video, 13.3, 27.0, CutMode::Fast, &out.path().join("f.mp4")).unwrap();
    assert_eq!(clip.mode, CutMode::Fast);
    assert!(
        clip.source_start <= 13.3 + 1e-6 && clip.source_start >= 13.3 - 2.0 - 1e-6,
        "{}",
        clip.source_start
    );
    assert!(
        (clip.duration - (27.0 - clip.source_start)).abs() < 0.15,
        "{clip:?}"
    );
    let precise = media::cut(video, 13.3, 27.0, CutMode::Precise, &out.path().join("p.mp4")).unwrap();
    assert!((precise.duration - 13.7).abs() <= 0.05, "{precise:?}");
}

const SRT: &str = "1\n00:00:01,000 --> 00:00:09,000\nДобрый день, сегодня мы поговорим о погоде.\n\n2\n00:00:10,000 --> 00:00:19,500\nНе может быть! Это просто невероятно!\n\n3\n00:00:20,000 --> 00:00:30,000\nСпасибо, что были с нами.\n";

#[test]
fn embedded_subtitle_streams_replace_transcription() {
    let Some(e5) = common::e5() else { return };
    common::require_tool("ffmpeg");
    let dir = tempfile::tempdir().unwrap();
    let srt = dir.path().join("s.srt");
    std::fs::write(&srt, SRT).unwrap();
    let src = common::repo().join("assets/demo/demo.mp4");
    let mkv = dir.path().join("with-subs.mkv");
    let mp4 = dir.path().join("with-subs.mp4");
    let (s, k, m) = (
        src.to_str().unwrap(),
        srt.to_str().unwrap(),
        mkv.to_str().unwrap(),
    );
    ffmpeg(&[
        "-i", s, "-i", k, "-map", "0", "-map", "1", "-c", "copy", "-c:s", "srt", "-t", "35", m,
    ]);
    ffmpeg(&[
        "-i",
        s,
        "-i",
        k,
        "-map",
        "0",
        "-map",
        "1",
        "-c",
        "copy",
        "-c:s",
        "mov_text",
        "-t",
        "35",
        mp4.to_str().unwrap(),
    ]);
    for (input, codec) in [(&mkv, "subrip"), (&mp4, "mov_text")] {
        let out = dir.path().join(codec);
        let mut req = ClipRequest::new(input, &out);
        req.select.min_secs = 8.0;
        req.select.max_secs = 12.0;
        // No Whisper: the embedded stream must be enough.
        let report = engine(&e5)
            .run(&req, no_progress(), Arc::new(AtomicBool::new(false)))
            .unwrap();
        match &report.transcript.source {
            CueSource::EmbeddedStream { codec: c, .. } => assert_eq!(c, codec),
            other => panic!("{other:?}"),
        }
        assert_eq!(report.transcript.cues, 3, "{codec}");
        let m = &report.moments[0];
        assert!(m.clip.is_some());
        let starts: Vec<f64> = report.moments.iter().map(|m| m.start).collect();
        assert!(
            starts
                .iter()
                .all(|s| [0.7, 9.7, 19.75].iter().any(|x| (x - s).abs() < 0.05)),
            "{codec}: {starts:?}"
        );
    }
}

#[test]
fn subtitle_file_alone_gives_moments_without_clips() {
    let Some(e5) = common::e5() else { return };
    let dir = tempfile::tempdir().unwrap();
    let srt = dir.path().join("talk.srt");
    // Windows-1251 with CRLF, as Russian SRT files often come.
    let crlf = SRT.replace('\n', "\r\n");
    let (bytes, _, _) = encoding_rs::WINDOWS_1251.encode(&crlf);
    std::fs::write(&srt, &bytes).unwrap();
    let mut req = ClipRequest::new(&srt, dir.path().join("out"));
    req.select.min_secs = 8.0;
    req.select.max_secs = 12.0;
    req.select.count = 5;
    let report = engine(&e5)
        .run(&req, no_progress(), Arc::new(AtomicBool::new(false)))
        .unwrap();
    assert_eq!(report.input.kind, "subtitles");
    assert_eq!(report.moments.len(), 3);
    assert!(report.moments.iter().all(|m| m.clip.is_none()));
    assert!(report.moments.iter().any(|m| m.text.contains("невероятно")));
    assert!(!dir.path().join("out/clips").exists());
    assert_eq!(report.timeline.len(), 3);
}

#[test]
fn bad_inputs_get_clear_errors() {
    let Some(e5) = common::e5() else { return };
    common::require_tool("ffmpeg");
    let dir = tempfile::tempdir().unwrap();
    let run = |input: &Path, subs: Option<&Path>| {
        let mut req = ClipRequest::new(input, dir.path().join("out"));
        req.subs = subs.map(Path::to_path_buf);
        engine(&e5)
            .run(&req, no_progress(), Arc::new(AtomicBool::new(false)))
            .expect_err("an error")
    };
    let missing = run(&dir.path().join("nope.mp4"), None);
    assert!(matches!(missing, Error::NotFound(_)), "{missing}");

    let text = dir.path().join("notes.mp4");
    std::fs::write(&text, "just some text, not a video\n".repeat(50)).unwrap();
    let e = run(&text, None);
    assert!(matches!(e, Error::NotAVideo { .. }), "{e}");

    let playlist = dir.path().join("list.m3u8");
    std::fs::write(
        &playlist,
        format!(
            "#EXTM3U\n#EXTINF:10,\nfile://{}\n",
            common::repo().join("assets/demo/demo.mp4").display()
        ),
    )
    .unwrap();
    let e = run(&playlist, None);
    assert!(matches!(e, Error::NotAVideo { .. }), "playlists are refused: {e}");
    let concat = dir.path().join("list.txt");
    std::fs::write(
        &concat,
        format!(
            "ffconcat version 1.0\nfile '{}'\n",
            common::repo().join("assets/demo/demo.mp4").display()
        ),
    )
    .unwrap();
    let e = run(&concat, None);
    assert!(
        matches!(e, Error::NotAVideo { .. }),
        "concat lists are refused: {e}"
    );

    let silent = dir.path().join("silent.mp4");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=320x240:rate=10",
        "-t",
        "3",
        "-pix_fmt",
        "yuv420p",
        silent.to_str().unwrap(),
    ]);
    let e = run(&silent, None);
    assert!(matches!(e, Error::NoAudio(_)), "{e}");

    let empty = dir.path().join("empty.srt");
    std::fs::write(&empty, "").unwrap();
    let e = run(&silent, Some(&empty));
    assert!(matches!(e, Error::EmptyTranscript(_)), "{e}");
    let garbage = dir.path().join("garbage.srt");
    std::fs::write(
        &garbage,
        "1\n00:00:01,000 --> 00:00:02,000\nhello\n\nwhat is this\nnot srt\n",
    )
    .unwrap();
    let e = run(&silent, Some(&garbage));
    assert!(matches!(e, Error::Subtitle { line: 5, .. }), "{e}");

    let limits = Limits {
        max_duration_secs: 10.0,
        ..Default::default()
    };
    let e = media::probe(&common::repo().join("assets/demo/demo.mp4"), &limits)
        .err()
        .unwrap();
    assert!(matches!(e, Error::TooLarge { .. }), "{e}");
}

/// A Matroska file whose header says 20 s but which holds ten minutes of audio passes the probe's
/// duration check (it reads the header) and is stopped while decoding, once the decoded audio
/// passes the limit: what decoding produces is bounded, not what the header claims.
#[test]
fn a_header_that_lies_about_the_duration_is_stopped_while_decoding() {
    let dir = tempfile::tempdir().unwrap();
    let liar = common::lying_mkv(dir.path(), 600);
    let limits = Limits {
        max_duration_secs: 60.0,
        ..Default::default()
    };
    let info = media::probe(&liar, &limits).expect("the header passes the check");
    assert!(info.duration < 30.0, "the header says {} s", info.duration);
    let cancel = AtomicBool::new(false);
    let e = media::decode_audio_16k(
        &liar,
        limits.max_duration_secs,
        &|_| {},
        &cancel,
        &Default::default(),
    )
    .expect_err("stopped at the limit");
    assert!(matches!(e, Error::TooLarge { .. }), "{e}");
    assert!(e.is_bad_input(), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("more than 60 s of audio (its header says 20 s)"),
        "{text}"
    );
    // Under a limit above what it holds, the same file decodes whole.
    let all = media::decode_audio_16k(&liar, 700.0, &|_| {}, &cancel, &Default::default()).unwrap();
    let secs = all.len() as f64 / 16000.0;
    assert!((secs - 600.0).abs() < 1.0, "decoded {secs} s");
}

/// A file whose header says 64×64 and whose stream turns into frames over the decoding budget
/// (issue 25: 16384×8192 frames behind a 64×64 header took 11 GB and 50 s to cut) is refused
/// while decoding, by every pass that decodes it, as a bad input naming the file; under a budget
/// above its frames the same file cuts, so it is the budget that refused it.
#[test]
fn frames_bigger_than_the_header_said_are_refused_while_decoding() {
    let dir = tempfile::tempdir().unwrap();
    let liar = common::size_liar_mkv(dir.path(), (1280, 720));
    let info = media::probe(&liar, &Limits::default()).expect("the header passes the check");
    let v = info.video.expect("a video stream");
    assert_eq!((v.width, v.height), (64, 64), "the header");
    let tight = media::Ffmpeg {
        budget: media::DecodeBudget {
            max_pixels: 640 * 480,
            ..Default::default()
        },
    };
    use viralclip_engine::media::Media;
    let out = dir.path().join("clip.mp4");
    for mode in [CutMode::Precise, CutMode::Fast] {
        let e = tight.cut(&liar, (0.0, 2.5), mode, None, &out);
        match mode {
            // A stream copy decodes nothing: the frames go out as they came in.
            CutMode::Fast => assert!(e.is_ok(), "{e:?}"),
            CutMode::Precise => {
                let e = e.expect_err("refused");
                assert!(e.is_bad_input(), "{e}");
                assert!(
                    e.to_string().contains("size-liar.mkv: not a video we can read"),
                    "{e}"
                );
                assert!(e.to_string().contains("frames would not decode"), "{e}");
                assert!(!out.exists(), "no clip is left behind");
            }
        }
    }
    let e = tight
        .frames(&liar, (0.0, 2.5), 2.0, 320, &mut |_, _, _, _| Ok(()))
        .unwrap_err();
    assert!(
        e.is_bad_input() && e.to_string().contains("frames would not decode"),
        "{e}"
    );
    let roomy = media::Ffmpeg::default();
    let clip = roomy
        .cut(&liar, (0.0, 2.5), CutMode::Precise, None, &out)
        .unwrap();
    assert!((clip.duration - 2.5).abs() < 0.2, "{clip:?}");
}

/// A small file that decodes into 2,000 frames a second is stopped within its first second of
/// frames (the budget's 240 a second), however long the cut asked for: the work is counted on
/// the frames that come out, not on the header's duration.
#[test]
fn a_flood_of_frames_is_stopped_while_decoding() {
    let dir = tempfile::tempdir().unwrap();
    let flood = common::frame_flood_mkv(dir.path(), 2000, 8);
    let info = media::probe(&flood, &Limits::default()).expect("the header passes the check");
    assert!((info.duration - 8.0).abs() < 0.5, "{info:?}");
    use viralclip_engine::media::Media;
    let ff = media::Ffmpeg::default();
    let out = dir.path().join("clip.mp4");
    let e = ff
        .cut(&flood, (2.0, 7.0), CutMode::Precise, None, &out)
        .unwrap_err();
    assert!(matches!(e, Error::TooLarge { .. }) && e.is_bad_input(), "{e}");
    let text = e.to_string();
    assert!(
        text.starts_with(&format!("{}: it decodes into ", flood.display())),
        "{text}"
    );
    assert!(text.contains("more than 240 a second"), "{text}");
    let frames: u32 = text
        .split("decodes into ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a frame count in {text}"));
    assert!(frames < 400, "stopped after {frames} frames");
    let mut seen = 0;
    let e = ff.frames(&flood, (0.0, 8.0), 2.0, 320, &mut |_, _, _, _| {
        seen += 1;
        Ok(())
    });
    assert!(e.unwrap_err().to_string().contains("more than 240 a second"));
    assert!(seen <= 2, "{seen} frames sampled before the stop");
}

/// A Matroska file with sound and a video track that holds no frame (issue 25: it ended with
/// exit 1 and "media: video filter: Invalid argument" after the model had loaded) is refused at
/// the probe, as a bad input that names the file.
#[test]
fn a_video_track_without_frames_is_refused_at_the_probe() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("novideo.mkv");
    let e = empty.to_str().unwrap();
    common::ffmpeg_ok(&[
        "-f",
        "lavfi",
        "-i",
        "sine=d=3",
        "-f",
        "lavfi",
        "-i",
        "color=s=320x240:d=3",
        "-map",
        "0:a",
        "-map",
        "1:v",
        "-c:v",
        "libx264",
        "-frames:v",
        "0",
        "-c:a",
        "aac",
        e,
    ]);
    let info = media::probe(&empty, &Limits::default()).unwrap();
    assert!(info.video.is_none() && info.audio.is_some(), "{info:?}");
    let req = ClipRequest::new(&empty, dir.path().join("out"));
    let err = viralclip_engine::pipeline::inspect(&req, &media::Ffmpeg::default()).unwrap_err();
    assert!(err.is_bad_input(), "{err}");
    assert!(err.to_string().contains("novideo.mkv: not a video"), "{err}");
}

/// The default model (assets/model) finds the one sensational line of the demo speech: the top
/// moment is the clip around it, not the greeting or the sign-off (which the model, left alone,
/// rates highest: formulas are taken out before scoring).
#[test]
fn default_model_picks_the_sensational_line() {
    let (Some(e5), Some(whisper)) = (common::e5(), common::whisper_base()) else {
        return;
    };
    let model = common::repo().join("assets/model");
    assert!(
        model.join("model.json").is_file(),
        "no default model in assets/model"
    );
    let loaded = artifact::load(&model, Some(&e5), &Device::Cpu, DType::F32).unwrap();
    let mut eng =
        Engine::new(Box::new(BertScorer::new(loaded))).with_whisper(Some(WhisperModel::File(whisper)));
    let out = tempfile::tempdir().unwrap();
    let mut req = ClipRequest::new(speech_video(), out.path());
    req.language = Some("ru".into());
    req.select.count = 3;
    req.select.min_secs = 10.0;
    req.select.max_secs = 30.0;
    let report = eng
        .run(&req, no_progress(), Arc::new(AtomicBool::new(false)))
        .unwrap();
    let top = &report.moments[0];
    let text = top.text.to_lowercase();
    assert!(
        text.contains("невероятн") || text.contains("сокровищ") || text.contains("восторг"),
        "top moment is not the sensational line: {:?} (quote {:?})",
        top.text,
        top.quote
    );
    // And it is scored above the plain weather lines.
    let peak = report.timeline.iter().map(|p| p.virality).fold(0.0f32, f32::max);
    let plain = &report.timeline[0];
    eprintln!(
        "top moment {:?}; peak virality {peak:.3}, first line {:.3}",
        top.text, plain.virality
    );
    assert!(
        peak > plain.virality + 0.1,
        "peak {peak} vs first line {}",
        plain.virality
    );
}

/// VP9/Opus in WebM, H.265 in Matroska and H.264 in MOV cut in both modes; fast mode falls back
/// to re-encoding when the streams cannot be copied into MP4.
#[test]
fn other_containers_and_codecs_cut() {
    common::require_tool("ffmpeg");
    let dir = tempfile::tempdir().unwrap();
    let src = common::repo().join("assets/demo/demo.mp4");
    let s = src.to_str().unwrap();
    let inputs = [
        (
            "v.webm",
            vec![
                "-c:v",
                "libvpx-vp9",
                "-deadline",
                "realtime",
                "-cpu-used",
                "8",
                "-b:v",
                "300k",
                "-c:a",
                "libopus",
            ],
        ),
        (
            "v.mkv",
            vec![
                "-c:v",
                "libx265",
                "-preset",
                "ultrafast",
                "-x265-params",
                "log-level=error",
                "-c:a",
                "aac",
            ],
        ),
        ("v.mov", vec!["-c", "copy"]),
    ];
    for (name, codec_args) in inputs {
        let input = dir.path().join(name);
        let mut args = vec!["-i", s, "-t", "12"];
        args.extend(codec_args);
        args.push(input.to_str().unwrap());
        ffmpeg(&args);
        let info = media::probe(&input, &Limits::default()).unwrap();
        assert!(info.video.is_some() && info.audio.is_some(), "{name}: {info:?}");
        for mode in [CutMode::Precise, CutMode::Fast] {
            let out = dir.path().join(format!("{name}-{mode:?}.mp4"));
            let clip =
                media::cut(&input, 3.0, 9.0, mode, &out).unwrap_or_else(|e| panic!("{name} {mode:?}: {e}"));
            assert!(clip.source_start <= 3.0 + 1e-6, "{name} {mode:?}: {clip:?}");
            assert!(
                (clip.duration - (9.0 - clip.source_start)).abs() < 0.15,
                "{name} {mode:?}: {clip:?}"
            );
            assert_eq!((clip.width, clip.height), (1280, 720));
            let probed = media::probe(&out, &Limits::default()).unwrap();
            assert!(probed.audio.is_some(), "{name} {mode:?}: clip has no audio");
        }
    }
}
