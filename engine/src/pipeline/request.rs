//! What a job asks for ([`ClipRequest`], [`ShapeRequest`]) and how it reports progress
//! ([`Stage`], [`Progress`]).

use super::*;

/// A stage of the job, for progress reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Fetching a link ([`crate::link`]), before the engine runs.
    Download,
    Probe,
    DecodeAudio,
    Transcribe,
    Score,
    Select,
    Cut,
    Done,
}

impl Stage {
    pub fn label(self) -> &'static str {
        match self {
            Stage::Download => "downloading",
            Stage::Probe => "reading the input",
            Stage::DecodeAudio => "decoding audio",
            Stage::Transcribe => "transcribing",
            Stage::Score => "scoring",
            Stage::Select => "choosing moments",
            Stage::Cut => "cutting clips",
            Stage::Done => "done",
        }
    }
}

/// Progress callback: a stage and how far through it (0..=1).
pub type Progress = Arc<dyn Fn(Stage, f32) + Send + Sync>;

/// A progress callback that ignores everything.
pub fn no_progress() -> Progress {
    Arc::new(|_, _| {})
}

/// What to clip and how.
#[derive(Debug, Clone)]
pub struct ClipRequest {
    /// A video, or a subtitle file alone (then: moments, no clips).
    pub input: PathBuf,
    /// Subtitles for the video, used instead of transcribing.
    pub subs: Option<PathBuf>,
    /// Where `clips/` and `report.json` go.
    pub out_dir: PathBuf,
    pub select: SelectConfig,
    pub mode: CutMode,
    pub limits: Limits,
    /// Whisper language code, `None` to detect.
    pub language: Option<String>,
    /// Clips cut at the same time (0: one per 4 CPU cores, at least 1). Each encode is itself
    /// multi-threaded; on a many-core GPU host several at once keep the cores busy.
    pub cut_jobs: usize,
    /// Score windows while Whisper is still transcribing (`None`: when the model runs on an
    /// accelerator; on the CPU the two would only share the same cores).
    pub overlap: Option<bool>,
    /// The clips' shape and captions (default: `original`, the source's own framing, no captions).
    pub shape: ShapeRequest,
    /// Where the input was fetched from, when it came from a link ([`crate::link`]).
    pub source: Option<crate::link::SourceFacts>,
}

/// How clips are delivered: their shape, framed by faces when the engine has a detector
/// ([`Engine::with_faces`]; a still centre crop otherwise), and their burned-in captions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ShapeRequest {
    pub format: crate::format::Format,
    pub captions: crate::captions::Captions,
    pub caption_style: crate::captions::CaptionStyle,
}

impl ShapeRequest {
    /// `original`: today's clips exactly (no crop, no captions).
    pub fn original() -> Self {
        ShapeRequest {
            format: crate::format::Format::Original,
            ..ShapeRequest::default()
        }
    }
}

impl ClipRequest {
    pub fn new(input: impl Into<PathBuf>, out_dir: impl Into<PathBuf>) -> Self {
        ClipRequest {
            input: input.into(),
            subs: None,
            out_dir: out_dir.into(),
            select: SelectConfig::default(),
            mode: CutMode::Precise,
            limits: Limits::default(),
            language: None,
            cut_jobs: 0,
            overlap: None,
            shape: ShapeRequest::original(),
            source: None,
        }
    }
}

/// Whether `path` is a subtitle file (by extension, or by its first bytes).
pub fn is_subtitle_file(path: &Path) -> bool {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    if matches!(ext.as_str(), "srt" | "vtt" | "webvtt") {
        return true;
    }
    // Only a regular file is sniffed: opening a FIFO would block, a device never end.
    if !std::fs::metadata(path).is_ok_and(|m| m.is_file()) {
        return false;
    }
    let Ok(mut f) = std::fs::File::open(path) else {
        return false;
    };
    let mut head = vec![0u8; 4096];
    let n = std::io::Read::read(&mut f, &mut head).unwrap_or(0);
    head.truncate(n);
    let (text, _) = subtitle::decode(&head);
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    match lines.next() {
        Some(l) if l.starts_with("WEBVTT") => true,
        Some(l) if l.chars().all(|c| c.is_ascii_digit()) => lines.next().is_some_and(|l| l.contains("-->")),
        _ => false,
    }
}
