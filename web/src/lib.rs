//! `viralclip serve`: the web page for the same engine and the same jobs as the bot. Upload a
//! video (with subtitles, if any) or paste a link; the job's progress arrives live (server-sent
//! events read from the durable job store, [`viralclip_bot::store`]); then the timeline, every
//! moment with its score, emotions, title and quote, a `<video>` preview served with range
//! requests, downloads, and the bot's re-cut buttons.
//!
//! One job model and one settings model with the bot: jobs are [`viralclip_bot::job::Payload`]s
//! in a [`viralclip_bot::store::SqliteStore`] (the page's own file, `DATA/web/jobs.sqlite`),
//! their settings [`viralclip_bot::settings::Settings`], their files kept and swept by
//! [`viralclip_bot::retention`], re-cuts [`viralclip_bot::recut::ClipState`]. Only the delivery
//! differs: the page reads the job's folder instead of being sent messages.
//!
//! Access: 127.0.0.1 by default; any other address needs `--token`. Each browser gets a session
//! cookie, and sees only its own jobs.

mod error;
mod pages;
mod routes;
mod runner;
mod session;

pub use error::{Error, Result};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use viralclip_bot::clipper::Clipper;
use viralclip_bot::config::{EngineArgs, LinkArgs};
use viralclip_bot::store::{JobStore, SqliteStore};

/// `viralclip serve` options.
#[derive(Debug, Clone, clap::Args)]
pub struct WebConfig {
    /// Address to listen on. The default is this machine only; any other address needs --token.
    #[arg(long, env = "VIRALCLIP_WEB_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Access token, required when listening beyond loopback: open the page once as
    /// `/?token=TOKEN` (a cookie keeps it), or send `Authorization: Bearer TOKEN`.
    #[arg(long, env = "VIRALCLIP_WEB_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Where the page's jobs live (DATA/web/: jobs.sqlite, job folders, uploads).
    #[arg(long, env = "VIRALCLIP_DATA_DIR", default_value = "viralclip-data")]
    pub data_dir: PathBuf,
    /// Largest upload, MB (counted while it arrives).
    #[arg(long, env = "VIRALCLIP_WEB_MAX_UPLOAD_MB", default_value_t = 2000)]
    pub max_upload_mb: u64,
    /// Longest input video, minutes.
    #[arg(long, env = "VIRALCLIP_MAX_MINUTES", default_value_t = 60.0)]
    pub max_duration_mins: f64,
    /// Largest subtitle file read, MB.
    #[arg(long, env = "VIRALCLIP_MAX_SUBS_MB", default_value_t = 20)]
    pub max_subs_mb: u64,
    /// Hours a finished job's files are kept (for previews, downloads and re-cuts).
    #[arg(long, env = "VIRALCLIP_KEEP_HOURS", default_value_t = 48.0)]
    pub keep_hours: f64,
    /// Queued + running jobs per browser session.
    #[arg(long, env = "VIRALCLIP_USER_QUEUE", default_value_t = 3)]
    pub per_session_queue: usize,
    #[command(flatten)]
    pub engine: EngineArgs,
    #[command(flatten)]
    pub links: LinkArgs,
}

impl WebConfig {
    /// The page's own folder in the data dir.
    pub fn web_dir(&self) -> PathBuf {
        self.data_dir.join("web")
    }

    pub(crate) fn keep(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.keep_hours.max(0.0) * 3600.0)
    }
}

/// Beyond loopback the page needs an access token.
fn needs_token(addr: SocketAddr, config: &WebConfig) -> Result<()> {
    if !addr.ip().is_loopback() && config.token.as_deref().is_none_or(str::is_empty) {
        return Err(Error::Config(format!(
            "listening on {addr}, beyond this machine, needs an access token (--token or VIRALCLIP_WEB_TOKEN)"
        )));
    }
    Ok(())
}

/// What every request and the job runner share.
pub(crate) struct State {
    pub(crate) config: WebConfig,
    pub(crate) store: Arc<dyn JobStore>,
    pub(crate) clipper: Arc<dyn Clipper>,
    pub(crate) wake: tokio::sync::Notify,
}

/// Loads the engine (every model, now: a missing one stops the start) and serves until Ctrl-C.
pub async fn serve(config: WebConfig) -> Result<()> {
    // The address is checked before any model loads: a refusal is said at once.
    needs_token(config.listen, &config)?;
    let model = config
        .engine
        .model
        .clone()
        .or_else(|| Some(PathBuf::from("assets/model")).filter(|p| p.join("model.json").is_file()))
        .ok_or_else(|| Error::Config("no model: pass --model DIR (or VIRALCLIP_MODEL)".into()))?;
    let engine = config.engine.clone();
    let clipper = tokio::task::spawn_blocking(move || engine.clipper(model))
        .await
        .map_err(|e| Error::Config(format!("loading the engine: {e}")))??;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| Error::Config(format!("{}: {e}", config.listen)))?;
    serve_on(config, Arc::new(clipper), listener).await
}

/// [`serve`] with a given engine on a bound listener (the tests': a free port).
pub async fn serve_on(
    config: WebConfig,
    clipper: Arc<dyn Clipper>,
    listener: tokio::net::TcpListener,
) -> Result<()> {
    let addr = listener.local_addr()?;
    needs_token(addr, &config)?;
    let dir = config.web_dir();
    std::fs::create_dir_all(dir.join("uploads")).map_err(|e| Error::File {
        path: dir.clone(),
        source: e,
    })?;
    let store: Arc<dyn JobStore> = Arc::new(SqliteStore::open(&dir.join("jobs.sqlite"))?);
    let requeued = store.recover(2)?;
    if requeued > 0 {
        tracing::info!("{requeued} interrupted job(s) back in the queue");
    }
    let state = Arc::new(State {
        config: config.clone(),
        store: store.clone(),
        clipper,
        wake: tokio::sync::Notify::new(),
    });
    tokio::spawn(runner::run_jobs(state.clone()));
    tokio::spawn(viralclip_bot::retention::sweeper(dir, store, config.keep()));
    tracing::info!("serving on http://{addr}/");
    axum::serve(listener, routes::router(state).into_make_service())
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
