//! The bot's configuration: flags with environment fallbacks, sane defaults.

use std::path::PathBuf;
use viralclip_engine::device::{DeviceChoice, Precision};
use viralclip_engine::whisper_model::WhisperModel;

/// `viralclip bot` options. The token comes from `TELOXIDE_TOKEN` and is never logged.
#[derive(Debug, Clone, clap::Args)]
pub struct BotConfig {
    /// Bot token from @BotFather.
    #[arg(long, env = "TELOXIDE_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Bot API server URL (a self-hosted `telegram-bot-api`, e.g. http://localhost:8081), read
    /// from `TELOXIDE_API_URL` as teloxide documents it; `VIRALCLIP_API_URL` is an older alias.
    #[arg(long, env = "TELOXIDE_API_URL")]
    pub api_url: Option<String>,
    /// The API server runs with `--local`: files up to 2000 MB both ways, and `getFile` returns
    /// local paths the bot reads directly (mount the server's working directory).
    #[arg(long, env = "VIRALCLIP_LOCAL_API")]
    pub local_api: bool,
    /// Where jobs.sqlite, job folders, training data and trained models live.
    #[arg(long, env = "VIRALCLIP_DATA_DIR", default_value = "viralclip-data")]
    pub data_dir: PathBuf,
    /// User ids allowed to run /train (comma-separated).
    #[arg(long, env = "VIRALCLIP_ADMINS", value_delimiter = ',')]
    pub admins: Vec<i64>,
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Jobs processed at once across all chats (the heavy-work cap).
    #[arg(long, env = "VIRALCLIP_WORKERS", default_value_t = 1)]
    pub workers: usize,
    /// Running jobs per user.
    #[arg(long, env = "VIRALCLIP_USER_RUNNING", default_value_t = 1)]
    pub per_user_running: u32,
    /// Queued + running jobs per user.
    #[arg(long, env = "VIRALCLIP_USER_QUEUE", default_value_t = 3)]
    pub per_user_queue: usize,
    /// Attempts per job before the user is told it failed.
    #[arg(long, env = "VIRALCLIP_MAX_ATTEMPTS", default_value_t = 3)]
    pub max_attempts: u32,
    /// Longest input video, minutes.
    #[arg(long, env = "VIRALCLIP_MAX_MINUTES", default_value_t = 60.0)]
    pub max_duration_mins: f64,
    /// Largest subtitle file read, MB (counted while reading).
    #[arg(long, env = "VIRALCLIP_MAX_SUBS_MB", default_value_t = 20)]
    pub max_subs_mb: u64,
    /// Wall-clock budget of one job, minutes: past it the job stops and fails with a reason (not
    /// retried), and its worker is free again.
    #[arg(long, env = "VIRALCLIP_JOB_MINUTES", default_value_t = 120.0)]
    pub job_minutes: f64,
    /// Memory budget of one job, MB: how much it may grow the bot's resident memory (decoding,
    /// transcription, cutting); past it the job stops and fails with a reason. 0: no limit.
    #[arg(long, env = "VIRALCLIP_JOB_MEMORY_MB", default_value_t = 4000)]
    pub job_memory_mb: u64,
    /// Largest input, MB (default: 20 with the cloud Bot API, 2000 with --local-api).
    #[arg(long, env = "VIRALCLIP_MAX_INPUT_MB")]
    pub max_input_mb: Option<u64>,
    /// Largest clip to upload, MB (default: 50 with the cloud Bot API, 2000 with --local-api);
    /// longer clips are re-cut into consecutive parts that fit.
    #[arg(long, env = "VIRALCLIP_MAX_UPLOAD_MB")]
    pub max_upload_mb: Option<f64>,
    /// Training data sources for /train (same syntax as `viralclip train --data`).
    #[arg(long = "train-data", env = "VIRALCLIP_TRAIN_DATA", value_delimiter = ';')]
    pub train_data: Vec<String>,
    /// Held-out sources measured after /train.
    #[arg(long = "train-test", env = "VIRALCLIP_TRAIN_TEST", value_delimiter = ';')]
    pub train_test: Vec<String>,
    /// On SIGTERM, seconds the running jobs get to finish before they are put back in the queue.
    #[arg(long, env = "VIRALCLIP_SHUTDOWN_GRACE", default_value_t = 60)]
    pub shutdown_grace_secs: u64,
    /// Extra `viralclip train` settings for /train: epochs with layers unfrozen (0 = heads only).
    #[arg(long, env = "VIRALCLIP_TRAIN_UNFROZEN_EPOCHS", default_value_t = 3)]
    pub train_unfrozen_epochs: usize,
    /// Hours a finished job's files (its input, transcript and clips) are kept, so the buttons
    /// under its clips can re-cut them; then they are deleted and the buttons say so.
    #[arg(long, env = "VIRALCLIP_KEEP_HOURS", default_value_t = 48.0)]
    pub keep_hours: f64,
    #[command(flatten)]
    pub links: LinkArgs,
}

/// The engine a service runs (the bot's, the web page's): its model, encoder, Whisper, face
/// model and device.
#[derive(Debug, Clone, clap::Args)]
pub struct EngineArgs {
    /// Model directory (default: assets/model).
    #[arg(long, env = "VIRALCLIP_MODEL")]
    pub model: Option<PathBuf>,
    /// Base encoder directory (else the model's own, else the Hugging Face hub).
    #[arg(long, env = "VIRALCLIP_ENCODER")]
    pub encoder: Option<PathBuf>,
    /// Whisper model for videos without subtitles: a ggml .bin file, or a whisper.cpp model name
    /// (base, small, large-v3-turbo, ...) fetched from the Hugging Face hub once. Loaded at start.
    #[arg(long, env = "VIRALCLIP_WHISPER", default_value = viralclip_engine::whisper_model::DEFAULT_NAME)]
    pub whisper: WhisperModel,
    /// The face detector that frames 9:16 clips (YuNet 2023mar ONNX); default: fetched from the
    /// Hugging Face hub once. Loaded at start: a bot that cannot frame does not start.
    #[arg(long, env = "VIRALCLIP_FACE_MODEL")]
    pub face_model: Option<PathBuf>,
    #[arg(long, env = "VIRALCLIP_DEVICE", default_value = "auto")]
    pub device: DeviceChoice,
    #[arg(long, env = "VIRALCLIP_PRECISION", default_value = "auto")]
    pub precision: Precision,
}

impl EngineArgs {
    /// The face model's file (a local path wins, else the hub); `None` in a build without face
    /// framing (its clips get centre crops).
    pub fn face_model_path(&self) -> crate::Result<Option<PathBuf>> {
        #[cfg(feature = "faces")]
        {
            let p = self.face_model.as_deref().filter(|p| !p.as_os_str().is_empty());
            Ok(Some(viralclip_engine::faces::resolve_model(p)?))
        }
        #[cfg(not(feature = "faces"))]
        Ok(None)
    }

    /// Loads the engine with the model in `model` (every model it needs, now).
    pub fn clipper(&self, model: PathBuf) -> crate::Result<crate::clipper::EngineClipper> {
        crate::clipper::EngineClipper::new(
            model,
            self.encoder.clone(),
            Some(self.whisper.clone()),
            self.face_model_path()?,
            self.device,
            self.precision,
        )
    }
}

/// Where links may come from and how they are fetched (yt-dlp); the bot and `viralclip clip`
/// share these flags.
#[derive(Debug, Clone, clap::Args)]
pub struct LinkArgs {
    /// Hosts links are taken from, comma-separated (subdomains included; `*`: any host).
    #[arg(
        long = "link-hosts",
        env = "VIRALCLIP_LINK_HOSTS",
        value_delimiter = ',',
        default_values_t = viralclip_engine::link::DEFAULT_HOSTS.iter().map(|h| h.to_string()).collect::<Vec<_>>()
    )]
    pub hosts: Vec<String>,
    /// Fetch links whose host is a private, loopback or link-local address (off: a server's own
    /// network is not fetched for strangers).
    #[arg(long, env = "VIRALCLIP_ALLOW_PRIVATE_LINKS")]
    pub allow_private_links: bool,
    /// A cookies file (Netscape format, as browsers' "export cookies" write it) for sites that
    /// want a login; handed to yt-dlp, never logged.
    #[arg(long, env = "VIRALCLIP_COOKIES")]
    pub cookies: Option<PathBuf>,
    /// The yt-dlp program.
    #[arg(long = "yt-dlp", env = "VIRALCLIP_YT_DLP", default_value = "yt-dlp")]
    pub yt_dlp: PathBuf,
    /// Largest video fetched from a link, MB.
    #[arg(long, env = "VIRALCLIP_MAX_LINK_MB", default_value_t = 2000)]
    pub max_link_mb: u64,
}

impl LinkArgs {
    /// The engine's policy for one fetch: these flags, the job's longest video and language.
    pub fn policy(
        &self,
        max_duration_secs: f64,
        language: Option<String>,
    ) -> viralclip_engine::link::LinkPolicy {
        viralclip_engine::link::LinkPolicy {
            hosts: self.hosts.clone(),
            allow_private: self.allow_private_links,
            cookies: self.cookies.clone(),
            program: self.yt_dlp.clone(),
            max_bytes: self.max_link_mb * 1_000_000,
            max_duration_secs,
            language,
            ..Default::default()
        }
    }
}

pub const CLOUD_DOWNLOAD_MB: u64 = 20;
pub const CLOUD_UPLOAD_MB: u64 = 50;
pub const LOCAL_LIMIT_MB: u64 = 2000;

impl BotConfig {
    /// The Bot API server: `--api-url`/`TELOXIDE_API_URL`, else the alias `VIRALCLIP_API_URL`.
    pub fn api_url(&self) -> Option<String> {
        self.api_url
            .clone()
            .or_else(|| std::env::var("VIRALCLIP_API_URL").ok())
            .filter(|u| !u.trim().is_empty())
    }

    /// How long a finished job's files are kept.
    pub fn keep(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.keep_hours.max(0.0) * 3600.0)
    }

    /// What each job may spend.
    pub fn budget(&self) -> crate::budget::Budget {
        crate::budget::Budget {
            wall: std::time::Duration::from_secs_f64(self.job_minutes.max(0.01) * 60.0),
            memory: (self.job_memory_mb > 0).then_some(self.job_memory_mb * 1_000_000),
        }
    }

    /// Largest file the bot takes, bytes.
    pub fn max_input_bytes(&self) -> u64 {
        let server = if self.local_api {
            LOCAL_LIMIT_MB
        } else {
            CLOUD_DOWNLOAD_MB
        };
        self.max_input_mb.unwrap_or(server).min(server) * 1_000_000
    }

    /// Largest file the bot may upload, bytes.
    pub fn max_upload_bytes(&self) -> u64 {
        let server = if self.local_api {
            LOCAL_LIMIT_MB
        } else {
            CLOUD_UPLOAD_MB
        } as f64;
        (self.max_upload_mb.unwrap_or(server).min(server) * 1e6) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct C {
        #[command(flatten)]
        c: BotConfig,
    }

    /// The Bot API URL as teloxide documents it (`TELOXIDE_API_URL`), the old variable as an
    /// alias, the flag over both. The only test that touches these variables.
    #[test]
    fn the_api_url_comes_from_teloxide_api_url() {
        let parse = |args: &[&str]| C::parse_from([&["t", "--token", "1:x"], args].concat()).c;
        std::env::remove_var("TELOXIDE_API_URL");
        std::env::remove_var("VIRALCLIP_API_URL");
        assert_eq!(parse(&[]).api_url(), None);
        std::env::set_var("VIRALCLIP_API_URL", "http://old:8081");
        assert_eq!(parse(&[]).api_url().as_deref(), Some("http://old:8081"));
        std::env::set_var("TELOXIDE_API_URL", "http://bot-api:8081");
        assert_eq!(parse(&[]).api_url().as_deref(), Some("http://bot-api:8081"));
        assert_eq!(
            parse(&["--api-url", "http://flag:1"]).api_url().as_deref(),
            Some("http://flag:1")
        );
        std::env::remove_var("TELOXIDE_API_URL");
        std::env::remove_var("VIRALCLIP_API_URL");
        assert_eq!(parse(&[]).engine.whisper, WhisperModel::Hub("base-q8_0".into()));
    }
}
