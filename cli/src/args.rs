//! Command-line flags (clap), each with an environment variable.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use viralclip_engine::device::{DeviceChoice, Precision};

#[derive(Debug, Parser)]
#[command(
    name = "viralclip",
    version,
    about = "Finds the most viral moments of a video and cuts them into clips"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Clip a video (or list the moments of a subtitle file).
    Clip(ClipArgs),
    /// Score texts (lines on stdin, or a CSV column): one JSON line per text.
    Score(ScoreArgs),
    /// Create or import model artifacts.
    Model(ModelArgs),
    /// Train a model (popularity + emotions) and write its artifact.
    Train(crate::train::TrainArgs),
    /// Measure scoring throughput (and cutting and Whisper speed): one JSON line per case.
    Bench(crate::bench::BenchArgs),
    /// How well moments are found on a corpus with planted lines (bench/moments/build.sh):
    /// hit@1, hit@3 and average precision, from subtitles and from Whisper.
    Eval(crate::eval::EvalArgs),
    /// Run the Telegram bot (token from TELOXIDE_TOKEN; see README "The Telegram bot").
    Bot(viralclip_bot::BotConfig),
    /// Serve the web page (http://127.0.0.1:8080/ by default; see README "The web page").
    Serve(viralclip_web::WebConfig),
}

/// Which model, on which device.
#[derive(Debug, Args)]
pub struct ModelOpts {
    /// Model directory (model.json + weights). Default: assets/model.
    #[arg(long, env = "VIRALCLIP_MODEL")]
    pub model: Option<PathBuf>,
    /// Base encoder directory (config.json, tokenizer.json, model.safetensors); overrides the
    /// model's own and the Hugging Face hub.
    #[arg(long, env = "VIRALCLIP_ENCODER")]
    pub encoder: Option<PathBuf>,
    /// cpu, cuda or auto.
    #[arg(long, env = "VIRALCLIP_DEVICE", default_value = "auto")]
    pub device: DeviceChoice,
    /// f32, tf32, bf16, f16 or auto (bf16 on CUDA, f32 on CPU).
    #[arg(long, env = "VIRALCLIP_PRECISION", default_value = "auto")]
    pub precision: Precision,
}

#[derive(Debug, Args)]
pub struct ClipArgs {
    /// A video (mp4, mkv, webm, mov), a subtitle file (srt, vtt), or a link to a video (fetched
    /// with yt-dlp; hosts from --link-hosts).
    pub input: PathBuf,
    /// Subtitles for the video (used instead of transcribing).
    #[arg(long)]
    pub subs: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelOpts,
    /// Whisper model for videos without subtitles: a ggml .bin file, or a whisper.cpp model name
    /// (base, small, large-v3-turbo, base-q5_1, ...) fetched from the Hugging Face hub once.
    #[arg(long, env = "VIRALCLIP_WHISPER", default_value = viralclip_engine::whisper_model::DEFAULT_NAME)]
    pub whisper: viralclip_engine::whisper_model::WhisperModel,
    /// Spoken language (ru, en, ...) or auto.
    #[arg(long, env = "VIRALCLIP_LANG")]
    pub lang: Option<String>,
    /// How many clips at most.
    #[arg(long, default_value_t = 5)]
    pub count: usize,
    /// Shortest clip, seconds.
    #[arg(long, default_value_t = 15.0)]
    pub min_secs: f64,
    /// Longest clip, seconds.
    #[arg(long, default_value_t = 60.0)]
    pub max_secs: f64,
    /// Clips cut at the same time (0: one per 4 CPU cores).
    #[arg(long, default_value_t = 0)]
    pub cut_jobs: usize,
    /// Score greetings, thank-yous, goodbyes and subscribe calls too (they are left out by default).
    #[arg(long)]
    pub keep_formulas: bool,
    /// Score windows while Whisper is still transcribing: auto (when the model runs on a GPU),
    /// on, off.
    #[arg(long, default_value = "auto", value_parser = ["auto", "on", "off"])]
    pub overlap: String,
    /// Copy streams from keyframes instead of re-encoding (fast, edges on keyframes; `original`
    /// format only).
    #[arg(long)]
    pub fast: bool,
    /// Clip shape: 9:16 (Shorts, Reels, TikTok), 1:1, 4:5, 16:9, or original (the source's
    /// framing, no captions: the clips of earlier versions).
    #[arg(long, env = "VIRALCLIP_FORMAT", default_value = "9:16")]
    pub format: viralclip_engine::format::Format,
    /// Burned-in captions: words (the spoken word highlighted), lines, off.
    #[arg(long, env = "VIRALCLIP_CAPTIONS", default_value = "words")]
    pub captions: viralclip_engine::captions::Captions,
    /// Caption look: bold, boxed, minimal.
    #[arg(long, env = "VIRALCLIP_CAPTION_STYLE", default_value = "bold")]
    pub caption_style: viralclip_engine::captions::CaptionStyle,
    /// The face detector that frames shaped clips (YuNet 2023mar ONNX); default: fetched from
    /// the Hugging Face hub once.
    #[arg(long, env = "VIRALCLIP_FACE_MODEL")]
    pub face_model: Option<PathBuf>,
    /// Output directory (clips/ and report.json).
    #[arg(long, default_value = "out")]
    pub out: PathBuf,
    /// Longest input accepted, minutes.
    #[arg(long, env = "VIRALCLIP_MAX_DURATION_MINS", default_value_t = 240.0)]
    pub max_duration_mins: f64,
    /// Largest subtitle file read, MB.
    #[arg(long, env = "VIRALCLIP_MAX_SUBS_MB", default_value_t = 20)]
    pub max_subs_mb: u64,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
    #[command(flatten)]
    pub links: viralclip_bot::config::LinkArgs,
}

#[derive(Debug, Args)]
pub struct ScoreArgs {
    #[command(flatten)]
    pub model: ModelOpts,
    /// Read texts from this CSV file instead of stdin.
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// The CSV column holding the texts.
    #[arg(long, default_value = "text")]
    pub column: String,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct ModelArgs {
    #[command(subcommand)]
    pub command: ModelCommand,
}

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// A model with untrained heads over a base encoder (a training start; its scores mean nothing).
    Init {
        /// Base encoder directory.
        #[arg(long)]
        encoder: PathBuf,
        /// The encoder's Hugging Face name, recorded in the manifest.
        #[arg(long, default_value = "intfloat/multilingual-e5-small")]
        repo: String,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Measure a model on labelled data (same sources as `train --data`), with its own thresholds.
    Eval {
        #[arg(long)]
        model: PathBuf,
        #[arg(long, env = "VIRALCLIP_ENCODER")]
        encoder: Option<PathBuf>,
        #[arg(long, required = true)]
        test: Vec<viralclip_trainer::data::Source>,
        /// Tune the per-class emotion thresholds on this data and store them in the model's
        /// manifest (use rows held out of training, and measure on other rows afterwards).
        #[arg(long)]
        tune_thresholds: bool,
    },
    /// Average the weights and thresholds of models fine-tuned from one base (checkpoint
    /// averaging, "model soup"): measure the result with `model eval` before using it.
    Average {
        /// The models to average (at least two).
        #[arg(required = true, num_args = 2..)]
        models: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Quantize a Whisper model (a ggml .bin in f16 or f32, or a model name) into whisper.cpp's
    /// q8_0, q5_1, q5_0 or q4_0 format: 2-3× smaller, and faster on a CPU (integer dot products).
    /// Use the result with --whisper FILE.
    #[cfg(feature = "whisper")]
    WhisperQuantize {
        /// The model: a ggml .bin file, or a name (base, small, ...) fetched from the hub once.
        whisper: viralclip_engine::whisper_model::WhisperModel,
        /// The quantized file to write.
        out: PathBuf,
        /// q8_0 (the closest to f16), q5_1, q5_0 or q4_0.
        #[arg(long = "type", default_value = "q8_0")]
        quant: viralclip_engine::whisper_quant::Quant,
    },
    /// Draw the learning curves of a training report (train-report.json) as a PNG.
    Curves { report: PathBuf, out: PathBuf },
    /// Import the original ViralBERT v2 PyTorch checkpoint (multitask_best.pth).
    ImportPth {
        pth: PathBuf,
        /// The base encoder it was trained on (tokenizer and config come from it).
        #[arg(long, default_value = "ai-forever/ruBert-base")]
        base_repo: String,
        /// A local copy of that encoder.
        #[arg(long)]
        base_dir: Option<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
}
