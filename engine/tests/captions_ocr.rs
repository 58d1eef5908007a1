//! Captions read back from the picture: Russian sentences spoken by festival one after another
//! (so when each is said is known), transcribed by the fixture Whisper base, cut to a 9:16 clip
//! with word captions burned in; then frames of the clip are read by Tesseract (Russian) and the
//! words it finds are those being spoken at that moment, and the boxes it finds lie inside the
//! safe zone. Needs the e5 and Whisper fixtures, ffmpeg, festival and tesseract with `rus`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use candle_core::{DType, Device};
use viralclip_engine::captions::{self, CaptionStyle, Captions};
use viralclip_engine::format::Format;
use viralclip_engine::media::{self, Limits};
use viralclip_engine::model::artifact;
use viralclip_engine::pipeline::{no_progress, ClipRequest, Engine, ShapeRequest};
use viralclip_engine::scorer::BertScorer;
use viralclip_engine::whisper_model::WhisperModel;

const SENTENCES: [&str; 4] = [
    "Добрый день, друзья.",
    "Сегодня мы поговорим о погоде в нашем городе.",
    "Завтра будет солнечно и очень тепло.",
    "Это просто невероятная новость для всех!",
];
/// Silence between sentences, seconds.
const GAP: f64 = 0.7;

/// The sentences spoken one by one over a plain blue-grey 1280×720 picture; returns the video and
/// each sentence's span in it.
fn spoken(dir: &Path) -> (PathBuf, Vec<(f64, f64)>) {
    common::require_tool("ffmpeg");
    let mut spans = Vec::new();
    let mut t = 0.5;
    let mut inputs: Vec<std::ffi::OsString> = Vec::new();
    let mut chain = String::new();
    for (k, s) in SENTENCES.iter().enumerate() {
        let wav = common::say(dir, &format!("s{k}"), s);
        let d = media::probe(&wav, &Limits::default()).unwrap().duration;
        spans.push((t, t + d));
        t += d + GAP;
        inputs.extend(["-i".into(), wav.into_os_string()]);
        chain.push_str(&format!("[{}]aresample=48000,apad=pad_dur={GAP}[a{k}];", k + 1));
    }
    let n = SENTENCES.len();
    for k in 0..n {
        chain.push_str(&format!("[a{k}]"));
    }
    chain.push_str(&format!("concat=n={n}:v=0:a=1,adelay=500:all=1[a]"));
    let out = dir.join("spoken.mp4");
    let mut args: Vec<std::ffi::OsString> = vec![
        "-f".into(),
        "lavfi".into(),
        "-i".into(),
        format!("color=c=0x406080:s=1280x720:r=25:d={:.2}", t + 0.5).into(),
    ];
    args.extend(inputs);
    for a in [
        "-filter_complex",
        &chain,
        "-map",
        "0:v",
        "-map",
        "[a]",
        "-shortest",
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "aac",
    ] {
        args.push(a.into());
    }
    args.push(out.clone().into_os_string());
    common::ffmpeg_ok(&args);
    (out, spans)
}

/// Lower case, letters only, ё as е.
fn norm(w: &str) -> String {
    w.chars()
        .filter(|c| c.is_alphabetic())
        .flat_map(char::to_lowercase)
        .map(|c| if c == 'ё' { 'е' } else { c })
        .collect()
}

fn edits(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut prev = row[0];
        row[0] = i;
        for j in 1..=b.len() {
            let cur = row[j];
            row[j] = (row[j] + 1)
                .min(row[j - 1] + 1)
                .min(prev + usize::from(a[i - 1] != b[j - 1]));
            prev = cur;
        }
    }
    row[b.len()]
}

/// The same word, allowing one misread letter in five.
fn same(a: &str, b: &str) -> bool {
    edits(a, b) <= a.chars().count().max(b.chars().count()) / 5
}

/// One word Tesseract read, with its box in the clip's pixels.
#[derive(Debug)]
struct Read {
    text: String,
    conf: f32,
    box_: (u32, u32, u32, u32),
}

/// The frame at clip second `t`, kept to its bright strokes (the caption's white and the
/// highlight's yellow) as black on white, read by Tesseract as Russian.
fn ocr(clip: &Path, t: f64, dir: &Path) -> Vec<Read> {
    let png = dir.join(format!("f{:05}.png", (t * 1000.0) as u64));
    common::ffmpeg_ok(&[
        "-ss".as_ref(),
        format!("{t:.3}").as_ref(),
        "-i".as_ref(),
        clip.as_os_str(),
        "-frames:v".as_ref(),
        "1".as_ref(),
        "-vf".as_ref(),
        "format=gray,lut=y='if(gt(val,165),0,255)'".as_ref(),
        png.as_os_str(),
    ]);
    let out = Command::new("tesseract")
        .arg(&png)
        .args(["stdout", "-l", "rus", "--psm", "11", "tsv"])
        .output()
        .expect("tesseract runs");
    assert!(
        out.status.success(),
        "tesseract: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            if f.len() < 12 || f[0] != "5" {
                return None;
            }
            let n = |i: usize| f[i].parse::<u32>().ok();
            Some(Read {
                text: norm(f[11]),
                conf: f[10].parse().ok()?,
                box_: (n(6)?, n(7)?, n(8)?, n(9)?),
            })
        })
        .filter(|r| r.conf >= 40.0 && r.text.chars().count() >= 3)
        .collect()
}

#[test]
fn burned_in_captions_read_back_as_the_words_being_spoken() {
    let (Some(e5), Some(whisper)) = (common::e5(), common::whisper_base()) else {
        return;
    };
    common::require_tool("tesseract");
    let langs = Command::new("tesseract").arg("--list-langs").output().unwrap();
    assert!(
        String::from_utf8_lossy(&langs.stdout)
            .lines()
            .any(|l| l.trim() == "rus"),
        "tesseract has no Russian (tesseract-ocr-rus; scripts/setup.sh installs it)"
    );
    let dir = tempfile::tempdir().unwrap();
    let (video, spans) = spoken(dir.path());

    let model = tempfile::tempdir().unwrap();
    artifact::init(&e5, "intfloat/multilingual-e5-small", model.path(), 1).unwrap();
    let loaded = artifact::load(model.path(), None, &Device::Cpu, DType::F32).unwrap();
    let mut eng =
        Engine::new(Box::new(BertScorer::new(loaded))).with_whisper(Some(WhisperModel::File(whisper)));
    let out = dir.path().join("out");
    let mut req = ClipRequest::new(&video, &out);
    req.language = Some("ru".into());
    req.select.count = 1;
    // One clip of (nearly) everything said, so that every sentence is read back.
    req.select.min_secs = 10.0;
    req.select.max_secs = 30.0;
    req.shape = ShapeRequest {
        format: Format::Vertical,
        captions: Captions::Words,
        caption_style: CaptionStyle::Bold,
    };
    let report = eng
        .run(&req, no_progress(), Arc::new(AtomicBool::new(false)))
        .unwrap();
    let m = &report.moments[0];
    let c = m.clip.as_ref().expect("a clip");
    assert_eq!((c.width, c.height), (720, 1280));
    let clip = out.join(&c.path);
    let srt_path = clip.with_extension("srt");
    assert!(clip.with_extension("ass").is_file(), "no .ass beside the clip");
    let groups = viralclip_engine::subtitle::parse_bytes(&std::fs::read(&srt_path).unwrap())
        .unwrap()
        .cues;
    assert!(groups.len() >= 3, "{groups:?}");

    let (w, h) = (720u32, 1280u32);
    let side = (w as f64 * captions::SAFE_SIDE) as u32;
    let floor = (h as f64 * (1.0 - captions::SAFE_BOTTOM)) as u32;
    let spoken_at = |src_t: f64| -> Option<usize> {
        spans
            .iter()
            .position(|&(s, e)| src_t >= s - 0.4 && src_t <= e + 0.4)
    };
    let (mut checked, mut matched) = (0, 0);
    let mut read_any = 0;
    for g in &groups {
        let t = (g.start + g.end) / 2.0;
        let reads = ocr(&clip, t, dir.path());
        let shown: Vec<String> = g
            .text
            .split_whitespace()
            .map(norm)
            .filter(|w| w.chars().count() >= 3)
            .collect();
        // Every box Tesseract found lies inside the frame's safe zone and in its lower half.
        for r in &reads {
            let (x, y, bw, bh) = r.box_;
            assert!(
                x >= side && x + bw <= w - side && y >= h / 2 && y + bh <= floor,
                "a caption box outside the safe zone at {t:.2} s: {r:?}"
            );
        }
        if shown.is_empty() {
            continue;
        }
        read_any += reads.len();
        // What the .srt says is shown at t is what the picture shows...
        let found = shown
            .iter()
            .filter(|s| reads.iter().any(|r| same(&r.text, s)))
            .count();
        // ...and what the picture shows was being said then (the sentence spoken at t in the
        // source, by festival's own timing, not Whisper's).
        let Some(k) = spoken_at(m.start + t) else {
            panic!("a caption at {t:.2} s of the clip while nothing is said: {g:?}");
        };
        let said: Vec<String> = SENTENCES[k].split_whitespace().map(norm).collect();
        let heard = reads
            .iter()
            .filter(|r| said.iter().any(|s| same(&r.text, s)))
            .count();
        eprintln!(
            "{t:5.2} s: srt «{}» | read {:?} | said «{}»: {found}/{} shown, {heard}/{} read were said",
            g.text.replace('\n', " "),
            reads.iter().map(|r| r.text.as_str()).collect::<Vec<_>>(),
            SENTENCES[k],
            shown.len(),
            reads.len()
        );
        checked += 1;
        if found * 2 >= shown.len() && heard * 3 >= reads.len() * 2 && heard > 0 {
            matched += 1;
        }
    }
    assert!(read_any > 0, "Tesseract read nothing from the clip");
    assert!(
        matched * 5 >= checked * 4,
        "only {matched} of {checked} caption groups read back as the words spoken then"
    );
}
