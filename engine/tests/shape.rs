//! Shaped clips on real FFmpeg: a 16:9 source whose left half is red and right half blue, cut to
//! 9:16 along a plan that tracks the left, cuts to the right, fills, then splits; and captions
//! burned in by libass. Needs the ffmpeg tool (to make the source and read frames back).

mod common;

use std::path::Path;
use std::process::Command;

use viralclip_engine::captions::{self, CaptionStyle, Captions, Word};
use viralclip_engine::format::Format;
use viralclip_engine::media::{self, CutMode, Limits};
use viralclip_engine::reframe::{Axis, Layout, Plan, Segment};
use viralclip_engine::shape::Shape;

fn source(dir: &Path) -> std::path::PathBuf {
    common::require_tool("ffmpeg");
    let out = dir.join("halves.mp4");
    let st = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-y"])
        .args(["-f", "lavfi", "-i", "color=c=red:s=640x720:r=25:d=6"])
        .args(["-f", "lavfi", "-i", "color=c=blue:s=640x720:r=25:d=6"])
        .args([
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=48000:duration=6",
        ])
        .args(["-filter_complex", "[0][1]hstack[v]", "-map", "[v]", "-map", "2"])
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
        ])
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success());
    out
}

/// The frame at `t` as RGB rows.
fn rgb_at(path: &Path, t: f64, size: (u32, u32)) -> Vec<u8> {
    common::rgb_frame(path, Some(t), size)
}

fn px(frame: &[u8], w: u32, x: u32, y: u32) -> (u8, u8, u8) {
    let i = ((y * w + x) * 3) as usize;
    (frame[i], frame[i + 1], frame[i + 2])
}

fn red(p: (u8, u8, u8)) -> bool {
    p.0 > 180 && p.1 < 80 && p.2 < 80
}

fn blue(p: (u8, u8, u8)) -> bool {
    p.2 > 180 && p.0 < 80 && p.1 < 80
}

fn plan() -> Plan {
    let seg = |start: f64, end: f64, layout| Segment { start, end, layout };
    Plan {
        axis: Axis::X,
        crop: 404.0,
        extent: 1280.0,
        segments: vec![
            seg(0.0, 1.5, Layout::Track(vec![(0.0, 202.0)])),
            seg(1.5, 3.0, Layout::Track(vec![(1.5, 1078.0)])),
            seg(3.0, 4.5, Layout::Fill),
            seg(4.5, 6.0, Layout::Split([320.0, 960.0])),
        ],
    }
}

#[test]
fn a_9_16_clip_follows_its_plan_frame_by_frame() {
    let dir = tempfile::tempdir().unwrap();
    let src = source(dir.path());
    let g = Format::Vertical.geometry(1280, 720);
    assert_eq!((g.out_w, g.out_h), (720, 1280));
    let shape = Shape {
        geometry: g,
        plan: plan(),
        captions: None,
        fonts_dir: None,
    };
    let out = dir.path().join("clip.mp4");
    let clip = media::cut_shaped(
        &src,
        (0.0, 6.0),
        CutMode::Fast,
        Some(shape),
        &out,
        &Default::default(),
    )
    .unwrap();
    assert_eq!((clip.width, clip.height), (720, 1280));
    assert!((clip.duration - 6.0).abs() < 0.15, "{}", clip.duration);
    let info = media::probe(&out, &Limits::default()).unwrap();
    let v = info.video.unwrap();
    assert_eq!((v.width, v.height), (720, 1280));
    assert!(info.audio.is_some(), "the sound stays");

    let size = (720, 1280);
    let f = rgb_at(&out, 0.7, size);
    assert!(
        red(px(&f, 720, 10, 640)) && red(px(&f, 720, 710, 640)),
        "the left is tracked: all red"
    );
    let f = rgb_at(&out, 2.2, size);
    assert!(
        blue(px(&f, 720, 10, 640)) && blue(px(&f, 720, 710, 640)),
        "cut to the right: all blue"
    );
    // The fill: the whole frame across the middle (red then blue), a blurred copy above it.
    let f = rgb_at(&out, 3.7, size);
    assert!(
        red(px(&f, 720, 150, 640)) && blue(px(&f, 720, 570, 640)),
        "the whole frame in the middle"
    );
    let top = px(&f, 720, 360, 100);
    assert!(
        top.0 > 60 || top.2 > 60,
        "the band above is the blurred picture, not black: {top:?}"
    );
    // The split: the left person above, the right below.
    let f = rgb_at(&out, 5.2, size);
    assert!(red(px(&f, 720, 360, 320)), "{:?}", px(&f, 720, 360, 320));
    assert!(blue(px(&f, 720, 360, 960)), "{:?}", px(&f, 720, 360, 960));
}

#[test]
fn captions_are_burned_in_by_libass_inside_the_safe_zone() {
    let dir = tempfile::tempdir().unwrap();
    let src = source(dir.path());
    let g = Format::Vertical.geometry(1280, 720);
    let words: Vec<Word> = ["ОЧЕНЬ", "КРУПНО"]
        .iter()
        .enumerate()
        .map(|(i, w)| Word {
            text: w.to_string(),
            start: i as f64 * 1.5,
            end: i as f64 * 1.5 + 1.4,
        })
        .collect();
    let ass = captions::ass(
        &words,
        Captions::Words,
        CaptionStyle::Bold,
        (g.out_w, g.out_h),
        "DejaVu Sans",
    );
    // A directory name the filter graph would misread: the file is copied to a plain name.
    let odd = dir.path().join("it's [odd]");
    std::fs::create_dir_all(&odd).unwrap();
    let ass_path = odd.join("clip.ass");
    std::fs::write(&ass_path, ass).unwrap();
    let mut shape = Shape::centred(g, (1280, 720), 3.0);
    shape.captions = Some(ass_path);
    let out = dir.path().join("captioned.mp4");
    media::cut_shaped(
        &src,
        (0.0, 3.0),
        CutMode::Precise,
        Some(shape),
        &out,
        &Default::default(),
    )
    .unwrap();
    let f = rgb_at(&out, 0.7, (720, 1280));
    // White text (R, G and B all high) somewhere in the caption band, none in the bottom band or
    // in the top half.
    let white = |x: u32, y: u32| {
        let p = px(&f, 720, x, y);
        p.0 > 200 && p.1 > 200 && p.2 > 200
    };
    let rows_with_text: Vec<u32> = (0..1280).filter(|&y| (0..720).any(|x| white(x, y))).collect();
    assert!(!rows_with_text.is_empty(), "no caption drawn");
    let bottom_band = (1280.0 * (1.0 - captions::SAFE_BOTTOM)) as u32;
    assert!(
        rows_with_text.iter().all(|&y| y > 640 && y < bottom_band),
        "caption rows {:?}..{:?}",
        rows_with_text.first(),
        rows_with_text.last()
    );
    let cols: Vec<u32> = (0..720).filter(|&x| (0..1280).any(|y| white(x, y))).collect();
    let side = (720.0 * captions::SAFE_SIDE) as u32;
    assert!(
        cols.iter().all(|&x| x >= side && x < 720 - side),
        "caption columns {:?}..{:?}",
        cols.first(),
        cols.last()
    );
}

/// An AVI (MPEG-4 video and MP3, time base 1/25) cut to 9:16 from half a frame off its grid: two
/// frames rounded to one tick once made the MP4 muxer refuse the clip ("non monotonically
/// increasing dts"; found running the hostile corpus's AVI in 9:16). Every frame is kept, in
/// order.
#[test]
fn a_coarse_time_base_cut_off_the_frame_grid_keeps_every_frame_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("coarse.avi");
    common::ffmpeg_ok(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=640x360:rate=25:duration=8",
        "-f",
        "lavfi",
        "-i",
        "sine=duration=8",
        "-c:v",
        "mpeg4",
        "-c:a",
        "libmp3lame",
        src.to_str().unwrap(),
    ]);
    let g = Format::Vertical.geometry(640, 360);
    for start in [1.02, 2.7, 3.3] {
        let shape = Shape::centred(g, (640, 360), 3.0);
        let out = dir.path().join(format!("clip-{start}.mp4"));
        let clip = media::cut_shaped(
            &src,
            (start, start + 3.0),
            CutMode::Precise,
            Some(shape),
            &out,
            &Default::default(),
        )
        .unwrap_or_else(|e| panic!("from {start} s: {e}"));
        assert!((clip.duration - 3.0).abs() < 0.1, "from {start} s: {clip:?}");
        let frames = Command::new("ffprobe")
            .args(["-v", "error", "-select_streams", "v", "-count_frames"])
            .args(["-show_entries", "stream=nb_read_frames", "-of", "csv=p=0"])
            .arg(&out)
            .output()
            .unwrap();
        let n: u32 = String::from_utf8_lossy(&frames.stdout).trim().parse().unwrap();
        assert!(
            (74..=76).contains(&n),
            "from {start} s: {n} frames in 3 s at 25 fps"
        );
    }
}
