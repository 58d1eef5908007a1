//! The face detector and the framing on a real face: scikit-image's astronaut photograph, alone
//! and moving across a 16:9 frame with festival's Russian speech, cut to 9:16. Needs the face
//! fixtures (scripts/setup.sh), ffmpeg and festival.

mod common;

use std::path::{Path, PathBuf};

use viralclip_engine::faces::onnxruntime::YuNetOrt;
use viralclip_engine::faces::{FaceDetector, YuNet};
use viralclip_engine::format::Format;
use viralclip_engine::framing;
use viralclip_engine::media::{self, CutMode};
use viralclip_engine::reframe::{Layout, Reframe};
use viralclip_engine::shape::Shape;

fn rgb(path: &Path, t: Option<f64>, size: (u32, u32)) -> Vec<u8> {
    common::rgb_frame(path, t, size)
}

#[test]
fn yunet_finds_the_astronauts_face_where_onnx_runtime_does() {
    let (Some(model), Some(photo)) = (common::yunet(), common::face_photo()) else {
        return;
    };
    common::require_tool("ffmpeg");
    let mut det = YuNet::load(&model).unwrap();
    let faces = det.detect(&rgb(&photo, None, (512, 512)), 512, 512).unwrap();
    assert_eq!(faces.len(), 1, "{faces:?}");
    let f = faces[0];
    // ONNX Runtime 1.23 on the same model and picture (PIL's bilinear resize): box (179.0, 63.4,
    // 90.7, 110.8), eyes at (202, 105) and (245, 105), mouth corners at (204, 145), (242, 145).
    let want = [179.0, 63.4, 90.7, 110.8];
    for k in 0..4 {
        assert!((f.bbox[k] - want[k]).abs() < 6.0, "{:?} vs {want:?}", f.bbox);
    }
    assert!(
        (f.landmarks[0][0] - 202.0).abs() < 6.0 && (f.landmarks[1][0] - 245.0).abs() < 6.0,
        "{:?}",
        f.landmarks
    );
    assert!((f.landmarks[3][1] - 145.0).abs() < 6.0, "{:?}", f.landmarks);
    assert!(f.score > 0.85, "{}", f.score);
    // A picture with no face: nothing.
    let grey = vec![128u8; 320 * 180 * 3];
    assert!(det.detect(&grey, 320, 180).unwrap().is_empty());
}

/// YuNet on ONNX Runtime (the library from the onnxruntime wheel) finds what it finds on tract:
/// the astronaut's face at two sizes, the same box within 0.05 px and the same score within
/// 0.001 (measured: 1e-5 px apart), and nothing in a grey picture. `faces::load` picks it when the library is configured.
#[test]
fn yunet_on_onnx_runtime_finds_what_it_finds_on_tract() {
    let (Some(model), Some(photo), Some(lib)) =
        (common::yunet(), common::face_photo(), common::onnxruntime())
    else {
        return;
    };
    common::require_tool("ffmpeg");
    let mut tract = YuNet::load(&model).unwrap();
    let mut ort = YuNetOrt::load(&model, &lib).unwrap();
    assert_eq!((tract.engine(), ort.engine()), ("tract-onnx", "onnxruntime"));
    // The photograph alone, and put on a 960×540 grey canvas (another letterbox scale).
    let alone = rgb(&photo, None, (512, 512));
    let mut canvas = vec![90u8; 960 * 540 * 3];
    for y in 0..512 {
        let at = ((y + 14) * 960 + 300) * 3;
        canvas[at..at + 512 * 3].copy_from_slice(&alone[y * 512 * 3..(y + 1) * 512 * 3]);
    }
    for (pic, w, h) in [(alone.clone(), 512, 512), (canvas, 960, 540)] {
        let (want, got) = (tract.detect(&pic, w, h).unwrap(), ort.detect(&pic, w, h).unwrap());
        assert_eq!(got.len(), 1, "{w}x{h}: {got:?}");
        assert_eq!(
            want.len(),
            got.len(),
            "{w}x{h}: tract {want:?}, onnxruntime {got:?}"
        );
        for (a, b) in want.iter().zip(&got) {
            eprintln!(
                "{w}x{h}: tract {:?} {:.4}, onnxruntime {:?} {:.4}",
                a.bbox, a.score, b.bbox, b.score
            );
            for k in 0..4 {
                assert!(
                    (a.bbox[k] - b.bbox[k]).abs() < 0.05,
                    "{w}x{h}: {:?} vs {:?}",
                    a.bbox,
                    b.bbox
                );
            }
            assert!(
                (a.score - b.score).abs() < 1e-3,
                "{w}x{h}: {} vs {}",
                a.score,
                b.score
            );
        }
    }
    let grey = vec![128u8; 320 * 180 * 3];
    assert!(ort.detect(&grey, 320, 180).unwrap().is_empty());
    // A picture smaller than it says is an error, not a read past its end.
    assert!(ort.detect(&grey, 640, 360).is_err());
}

/// A library that is not there, or not ONNX Runtime, is an error that names it and says what to
/// set, and it leaves nothing behind: the real library still loads afterwards.
#[test]
fn a_missing_or_wrong_onnx_runtime_library_is_named_and_the_real_one_still_loads() {
    let (Some(model), Some(lib)) = (common::yunet(), common::onnxruntime()) else {
        return;
    };
    for bad in [PathBuf::from("/nonexistent/libonnxruntime.so"), model.clone()] {
        let err = YuNetOrt::load(&model, &bad)
            .err()
            .expect("a bad library loads")
            .to_string();
        assert!(
            err.contains(&bad.display().to_string()) && err.contains("VIRALCLIP_ONNXRUNTIME"),
            "{err}"
        );
    }
    let mut ort = YuNetOrt::load(&model, &lib).unwrap();
    assert!(ort.detect(&vec![0u8; 64 * 64 * 3], 64, 64).unwrap().is_empty());
}

/// 12 s of a 1280×720 room of colour `room` with `photo` put on it by the filter `graph` (inputs
/// `[0]` the room, `[1]` the photograph; output `[v]`), and `wav` looped under it, into `out`.
fn scene(photo: &Path, wav: &Path, room: &str, graph: &str, out: &Path) {
    let room = format!("color=c={room}:s=1280x720:r=25:d=12");
    let args: [&std::ffi::OsStr; 29] = [
        "-f".as_ref(),
        "lavfi".as_ref(),
        "-i".as_ref(),
        room.as_ref(),
        "-loop".as_ref(),
        "1".as_ref(),
        "-i".as_ref(),
        photo.as_os_str(),
        "-stream_loop".as_ref(),
        "3".as_ref(),
        "-i".as_ref(),
        wav.as_os_str(),
        "-filter_complex".as_ref(),
        graph.as_ref(),
        "-map".as_ref(),
        "[v]".as_ref(),
        "-map".as_ref(),
        "2:a".as_ref(),
        "-t".as_ref(),
        "12".as_ref(),
        "-c:v".as_ref(),
        "libx264".as_ref(),
        "-preset".as_ref(),
        "veryfast".as_ref(),
        "-pix_fmt".as_ref(),
        "yuv420p".as_ref(),
        "-c:a".as_ref(),
        "aac".as_ref(),
        out.as_os_str(),
    ];
    common::ffmpeg_ok(&args);
}

/// 12 s at 1280×720: the photograph (360 px) gliding from the left edge to the right and back
/// over a grey room, with Russian speech.
fn moving_face(dir: &Path, photo: &Path) -> PathBuf {
    common::require_tool("ffmpeg");
    let wav = common::say(
        dir,
        "say",
        "Добрый день. Сегодня мы поговорим о том, как камера следит за лицом. Это просто невероятно!",
    );
    let out = dir.join("moving.mp4");
    // x(t): 40 → 880 → 40 over 12 s, a cosine (at most ~220 px/s).
    scene(
        photo,
        &wav,
        "0x606060",
        "[1]scale=360:360[p];[0][p]overlay=x='460-420*cos(2*PI*t/12)':y=180:shortest=1[v]",
        &out,
    );
    out
}

#[test]
fn a_moving_face_stays_in_the_middle_third_of_a_smooth_9_16_crop() {
    let (Some(model), Some(photo)) = (common::yunet(), common::face_photo()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let src = moving_face(dir.path(), &photo);
    let mut det = YuNet::load(&model).unwrap();
    let g = Format::Vertical.geometry(1280, 720);
    let audio = media::decode_audio_span(&src, 0.0, 12.0, &Default::default()).unwrap();
    assert!(
        (audio.len() as i64 - 12 * 16000).abs() <= 16,
        "{} samples",
        audio.len()
    );
    // A span from the middle is the same sound as the whole file's decoding at that time.
    let whole =
        media::decode_audio_16k(&src, 60.0, &|_| {}, &Default::default(), &Default::default()).unwrap();
    let part = media::decode_audio_span(&src, 4.0, 7.0, &Default::default()).unwrap();
    assert!(
        (part.len() as i64 - 3 * 16000).abs() <= 16,
        "{} samples",
        part.len()
    );
    // (Away from the span's edges, where the 0.4 s window is cut short.)
    for k in 3..27 {
        let (t, w) = (4.0 + k as f64 * 0.1, 0.1);
        let a = framing::loudness(&whole, t + w / 2.0);
        let b = framing::loudness(&part, t - 4.0 + w / 2.0);
        assert!(
            (a - b).abs() <= 0.02 + 0.1 * a,
            "loudness at {t:.1} s: {a} vs {b}"
        );
    }
    let plan = framing::plan(
        &media::Ffmpeg::default(),
        &src,
        (0.0, 12.0),
        g,
        &mut det,
        Some(&audio),
        &Reframe::default(),
    )
    .unwrap();
    assert!(
        plan.segments.iter().all(|s| matches!(s.layout, Layout::Track(_))),
        "{:?}",
        plan.segments
    );

    // Where the face really is (the overlay's expression): its centre, source pixels.
    let face_x = |t: f64| (460.0 - 420.0 * (2.0 * std::f64::consts::PI * t / 12.0).cos() + 180.0) as f32;
    let mut inside = 0;
    let mut total = 0;
    let mut prev: Option<f32> = None;
    let mut max_step = 0f32;
    for k in 0..(12 * 25 - 1) {
        let t = k as f64 / 25.0;
        let Some(left) = plan.crop_start_at(t) else {
            continue;
        };
        let centre = left + plan.crop / 2.0;
        total += 1;
        // The photograph's face sits a little left of its middle (the box at x 179+45 of 512).
        let fx = face_x(t) - 180.0 + (224.0 / 512.0 * 360.0);
        if (fx - centre).abs() <= plan.crop / 6.0 {
            inside += 1;
        }
        if let Some(p) = prev {
            max_step = max_step.max((centre - p).abs());
        }
        prev = Some(centre);
    }
    eprintln!("face in the middle third on {inside} of {total} frames; largest step {max_step:.1} px");
    assert!(
        inside as f64 >= 0.95 * total as f64,
        "the face in the middle third on {inside} of {total} frames"
    );
    // Bounded speed: 0.6 crop widths a second at 25 frames a second.
    assert!(
        max_step <= 0.6 * plan.crop / 25.0 + 0.5,
        "the crop jumped {max_step} px in a frame"
    );

    // The rendered clip: YuNet finds the face again in the output's middle third.
    let out = dir.path().join("vertical.mp4");
    let shape = Shape {
        geometry: g,
        plan,
        captions: None,
        fonts_dir: None,
    };
    let clip = media::cut_shaped(
        &src,
        (0.0, 12.0),
        CutMode::Precise,
        Some(shape),
        &out,
        &Default::default(),
    )
    .unwrap();
    assert_eq!((clip.width, clip.height), (720, 1280));
    let mut found = 0;
    for t in [1.0, 3.0, 5.0, 7.0, 9.0, 11.0] {
        let f = rgb(&out, Some(t), (720, 1280));
        let faces = det.detect(&f, 720, 1280).unwrap();
        let Some(face) = faces.first() else { continue };
        let cx = face.bbox[0] + face.bbox[2] / 2.0;
        assert!((240.0..=480.0).contains(&cx), "t={t}: the face at x={cx} of 720");
        found += 1;
    }
    assert!(found >= 5, "the face was found in {found} of 6 output frames");
}

#[test]
fn no_face_gets_the_blurred_fill_and_two_faces_far_apart_never_a_crop_between_them() {
    let (Some(model), Some(photo)) = (common::yunet(), common::face_photo()) else {
        return;
    };
    common::require_tool("ffmpeg");
    let dir = tempfile::tempdir().unwrap();
    // 4 s of an empty room, then 4 s of two people at opposite sides.
    let src = dir.path().join("room.mp4");
    let (p, o) = (photo.as_os_str(), src.as_os_str());
    common::ffmpeg_ok(&[
        "-f".as_ref(), "lavfi".as_ref(), "-i".as_ref(), "color=c=0x506070:s=1280x720:r=25:d=8".as_ref(),
        "-loop".as_ref(), "1".as_ref(), "-i".as_ref(), p,
        "-filter_complex".as_ref(),
        "[1]scale=300:300,split[a][b];[0][a]overlay=x=20:y=200:enable='gte(t,4)'[v1];[v1][b]overlay=x=960:y=200:enable='gte(t,4)'[v]".as_ref(),
        "-map".as_ref(), "[v]".as_ref(), "-t".as_ref(), "8".as_ref(), "-c:v".as_ref(), "libx264".as_ref(),
        "-preset".as_ref(), "veryfast".as_ref(), "-pix_fmt".as_ref(), "yuv420p".as_ref(), o,
    ]);
    let mut det = YuNet::load(&model).unwrap();
    let g = Format::Vertical.geometry(1280, 720);
    let plan = framing::plan(
        &media::Ffmpeg::default(),
        &src,
        (0.0, 8.0),
        g,
        &mut det,
        None,
        &Reframe::default(),
    )
    .unwrap();
    let at = |t: f64| &plan.segment_at(t).unwrap().layout;
    assert_eq!(at(2.0), &Layout::Fill, "{:?}", plan.segments);
    // With two faces 940 px apart and nobody speaking (no sound): a split, never one crop.
    match at(6.0) {
        Layout::Split([a, b]) => assert!(*a < 400.0 && *b > 900.0, "{a} {b}"),
        Layout::Track(_) => {
            let left = plan.crop_start_at(6.0).unwrap();
            let (lo, hi) = (left, left + plan.crop);
            let whole = |a: f32, b: f32| lo <= a && b <= hi;
            assert!(
                whole(20.0, 320.0) || whole(960.0, 1260.0),
                "a crop between them: {lo}..{hi}"
            );
        }
        Layout::Fill => {}
    }
}

/// 12 s at 1280×720: two copies of the photograph at opposite sides, each "talking" in turn (the
/// part of the face below the nose pushed down and back 3.4 times a second, out of step with the
/// 5 samples a second; the mouth landmarks and the chin with it):
/// the left one for the first 6 s, the right one after; festival speech throughout.
fn two_speakers(dir: &Path, photo: &Path) -> PathBuf {
    common::require_tool("ffmpeg");
    let wav = common::say(
        dir,
        "say",
        "Добрый день. Сегодня мы поговорим о погоде и о том, что будет завтра.",
    );
    let out = dir.join("two.mp4");
    // The photograph at 500 px: the nose at y≈122, the mouth corners at y≈142; the jaw (from
    // y=132 down) moves up to 16 px while its person speaks.
    // The jaw's top edge sits at 110 + 132 = 242 in the frame.
    let jaw = |on: &str| format!("242+if({on},16*abs(sin(2*PI*1.7*t)),0)");
    let graph = format!(
        "[1]scale=500:500,split=4[l][lj0][r][rj0];[lj0]crop=500:368:0:132[lj];[rj0]crop=500:368:0:132[rj];\
         [0][l]overlay=x=0:y=110[v1];[v1][lj]overlay=x=0:y='{}'[v2];\
         [v2][r]overlay=x=780:y=110[v3];[v3][rj]overlay=x=780:y='{}'[v]",
        jaw("lt(t,6)"),
        jaw("gte(t,6)")
    );
    scene(photo, &wav, "0x506070", &graph, &out);
    out
}

#[test]
fn the_crop_cuts_to_whoever_moves_their_mouth_while_there_is_sound() {
    let (Some(model), Some(photo)) = (common::yunet(), common::face_photo()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let src = two_speakers(dir.path(), &photo);
    let mut det = YuNet::load(&model).unwrap();
    let g = Format::Vertical.geometry(1280, 720);
    let audio = media::decode_audio_span(&src, 0.0, 12.0, &Default::default()).unwrap();
    let plan = framing::plan(
        &media::Ffmpeg::default(),
        &src,
        (0.0, 12.0),
        g,
        &mut det,
        Some(&audio),
        &Reframe::default(),
    )
    .unwrap();
    let kinds: Vec<String> = plan
        .segments
        .iter()
        .map(|s| {
            format!(
                "{:.1}-{:.1} {}",
                s.start,
                s.end,
                match &s.layout {
                    Layout::Track(p) => format!("track at {:.0}", p[0].1),
                    Layout::Split(_) => "split".into(),
                    Layout::Fill => "fill".into(),
                }
            )
        })
        .collect();
    eprintln!("two speakers: {kinds:?}");
    // The faces' centres: the photograph's face sits at x≈220 of its 500 px.
    let (left, right) = (220.0f32, 780.0 + 220.0);
    let centre = |t: f64| plan.crop_start_at(t).map(|l| l + plan.crop / 2.0);
    for k in 0..(12 * 25) {
        let t = k as f64 / 25.0;
        if let Some(c) = centre(t) {
            // Never a crop between them: each crop holds one whole face.
            assert!(
                (c - left).abs() < plan.crop / 2.0 - 60.0 || (c - right).abs() < plan.crop / 2.0 - 60.0,
                "t={t:.2}: a crop centred at {c}, between the two"
            );
        }
    }
    // The speaker is followed: the left one while they talk, the right one after the turn
    // (after the hold before a cut, and a little for the motion to be seen).
    for t in [2.5, 3.5, 4.5, 5.5] {
        let c = centre(t).unwrap_or_else(|| panic!("t={t}: not a crop: {:?}", plan.segment_at(t)));
        assert!(
            (c - left).abs() < plan.crop / 6.0,
            "t={t}: the crop at {c}, the speaker at {left}"
        );
    }
    for t in [8.5, 9.5, 10.5, 11.5] {
        let c = centre(t).unwrap_or_else(|| panic!("t={t}: not a crop: {:?}", plan.segment_at(t)));
        assert!(
            (c - right).abs() < plan.crop / 6.0,
            "t={t}: the crop at {c}, the speaker at {right}"
        );
    }
    // The same pictures in silence: moving lips make nobody the speaker (a split, not a crop).
    let silence = vec![0f32; audio.len()];
    let mute = framing::plan(
        &media::Ffmpeg::default(),
        &src,
        (0.0, 12.0),
        g,
        &mut det,
        Some(&silence),
        &Reframe::default(),
    )
    .unwrap();
    assert!(
        mute.segments.iter().all(|s| matches!(s.layout, Layout::Split(_))),
        "{:?}",
        mute.segments
    );
}
