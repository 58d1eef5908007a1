//! The running bot's shared state ([`App`]) and its start: recover interrupted jobs, serve updates
//! through [`crate::handlers::schema`], run the workers ([`crate::worker`]), and on SIGTERM or
//! Ctrl-C stop taking updates and let the running jobs finish or go back to the queue.

use crate::budget::Running;
use crate::clipper::Clipper;
use crate::config::BotConfig;
use crate::error::{joined, telegram, Error, Result};
use crate::settings::Settings;
use crate::store::{JobStore, SqliteStore};
use crate::telegram::{redact, retrying};
use crate::training::{Trainer, TrainerRun};
use dashmap::DashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use teloxide::net::Download;
use teloxide::prelude::*;
use teloxide::types::{ReplyParameters, ThreadId};
use tokio::sync::Notify;

/// Shared state of the running bot.
pub struct App {
    pub bot: Bot,
    pub config: BotConfig,
    pub store: Arc<dyn JobStore>,
    pub clipper: Arc<dyn Clipper>,
    pub username: String,
    pub trainer: Arc<dyn Trainer>,
    pub(crate) wake: Notify,
    pub(crate) shutdown: AtomicBool,
    /// The jobs running now, by id: their cancel flags and budgets.
    pub(crate) running: DashMap<i64, Arc<Running>>,
    pub(crate) training: tokio::sync::Mutex<()>,
}

/// Starts the bot: recovers interrupted jobs, serves updates, runs workers, and on SIGTERM or
/// Ctrl-C stops taking updates, lets the running jobs finish or requeues them, and exits.
pub async fn run(config: BotConfig) -> Result<()> {
    std::fs::create_dir_all(&config.data_dir).map_err(|e| Error::file(&config.data_dir, e))?;
    let model = current_model(&config)?;
    let clipper = {
        let c = config.clone();
        let clipper = tokio::task::spawn_blocking(move || c.engine.clipper(model));
        joined(clipper.await, "loading the engine")??
    };
    run_with(config, Arc::new(clipper)).await
}

fn default_model() -> Option<PathBuf> {
    let p = PathBuf::from("assets/model");
    p.join("model.json").is_file().then_some(p)
}

/// The model in use: the one /train switched to last (data dir), else `--model`, else assets/model.
fn current_model(config: &BotConfig) -> Result<PathBuf> {
    if let Ok(p) = std::fs::read_to_string(config.data_dir.join("current-model")) {
        let p = PathBuf::from(p.trim());
        if p.join("model.json").is_file() {
            return Ok(p);
        }
    }
    config
        .engine
        .model
        .clone()
        .or_else(default_model)
        .ok_or_else(|| Error::Config("no model: pass --model DIR (or VIRALCLIP_MODEL)".into()))
}

/// [`run`] with a given clipper (tests use a real engine with small settings) and the real
/// trainer.
pub async fn run_with(config: BotConfig, clipper: Arc<dyn Clipper>) -> Result<()> {
    run_with_trainer(config, clipper, Arc::new(TrainerRun)).await
}

/// [`run_with`] with a given trainer behind `/train` (tests without a training run).
pub async fn run_with_trainer(
    config: BotConfig,
    clipper: Arc<dyn Clipper>,
    trainer: Arc<dyn Trainer>,
) -> Result<()> {
    std::fs::create_dir_all(&config.data_dir).map_err(|e| Error::file(&config.data_dir, e))?;
    let store: Arc<dyn JobStore> = Arc::new(SqliteStore::open(&config.data_dir.join("jobs.sqlite"))?);
    let requeued = store.recover(config.max_attempts)?;
    if requeued > 0 {
        tracing::info!(requeued, "resuming interrupted jobs");
    }
    let mut bot = Bot::new(config.token.clone());
    if let Some(url) = config.api_url() {
        bot = bot.set_api_url(
            url.parse()
                .map_err(|e| Error::Config(format!("the Bot API URL (--api-url, TELOXIDE_API_URL): {e}")))?,
        );
    }
    let me = retrying(5, || bot.get_me().send())
        .await
        .map_err(telegram("getMe: "))?;
    let app = Arc::new(App {
        bot: bot.clone(),
        config: config.clone(),
        store,
        clipper,
        trainer,
        username: me.username.clone().unwrap_or_default(),
        wake: Notify::new(),
        shutdown: AtomicBool::new(false),
        running: DashMap::new(),
        training: tokio::sync::Mutex::new(()),
    });
    tracing::info!(bot = %app.username, "started");
    app.report_failures().await;
    let workers = tokio::spawn(crate::worker::worker_loop(app.clone()));
    let sweeper = tokio::spawn(crate::retention::sweeper(
        app.config.data_dir.clone(),
        app.store.clone(),
        app.config.keep(),
    ));

    let mut dispatcher = Dispatcher::builder(bot, crate::handlers::schema())
        .dependencies(dptree::deps![app.clone()])
        .default_handler(|_| async {})
        .error_handler(LoggingErrorHandler::with_custom_text("handler error"))
        .build();
    let token = dispatcher.shutdown_token();
    let app2 = app.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down: no new updates; running jobs finish or go back to the queue");
        app2.shutdown.store(true, Ordering::SeqCst);
        app2.wake.notify_waiters();
        if let Ok(f) = token.shutdown() {
            f.await;
        }
    });
    dispatcher.dispatch().await;
    app.shutdown.store(true, Ordering::SeqCst);
    app.wake.notify_waiters();
    let _ = workers.await;
    sweeper.abort();
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

/// Puts a request in the job's topic thread and makes it a reply, where those are known.
macro_rules! placed {
    ($req:expr, $thread:expr, $reply:expr) => {{
        let mut r = $req;
        if let Some(t) = $thread {
            r = r.message_thread_id(t);
        }
        if let Some(rp) = $reply {
            r = r.reply_parameters(rp.clone());
        }
        r
    }};
}
pub(crate) use placed;

/// Where a reply to `msg` goes: its topic thread (if any) and a reply to it.
pub(crate) fn reply_target(msg: &Message) -> (Option<ThreadId>, ReplyParameters) {
    let thread = if msg.is_topic_message { msg.thread_id } else { None };
    (thread, ReplyParameters::new(msg.id).allow_sending_without_reply())
}

impl App {
    /// Says `text` in reply to `msg` (in its topic thread).
    pub(crate) async fn say(&self, msg: &Message, text: impl Into<String>) -> Result<Message> {
        let text = text.into();
        let (thread, reply) = reply_target(msg);
        let m = retrying(5, || {
            placed!(
                self.bot.send_message(msg.chat.id, text.clone()),
                thread,
                Some(&reply)
            )
            .send()
        })
        .await
        .map_err(telegram(""))?;
        Ok(m)
    }

    /// The chat's settings (defaults where it has none).
    pub(crate) fn settings_for(&self, chat: i64) -> Settings {
        self.store
            .settings(chat)
            .ok()
            .flatten()
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default()
    }

    /// Tells each failed job's chat that it failed, once.
    pub(crate) async fn report_failures(&self) {
        let Ok(jobs) = self.store.take_unreported_failures() else {
            return;
        };
        for j in jobs {
            let why = j.error.clone().unwrap_or_else(|| "unknown error".into());
            let _ = retrying(3, || {
                self.bot
                    .send_message(ChatId(j.chat_id), format!("Job #{} failed: {why}", j.id))
                    .send()
            })
            .await;
        }
    }

    /// A private message to every admin (one who never opened a chat with the bot gets none; the
    /// log has it either way).
    pub(crate) async fn tell_admins(&self, text: &str) {
        for &admin in &self.config.admins {
            let sent = retrying(3, || {
                self.bot.send_message(ChatId(admin), text.to_string()).send()
            })
            .await;
            if let Err(e) = sent {
                tracing::warn!(admin, "cannot tell an admin: {}", redact(&e.to_string()));
            }
        }
    }

    /// Whether `msg` comes from one of the bot's admins.
    pub(crate) fn is_admin(&self, msg: &Message) -> bool {
        msg.from
            .as_ref()
            .is_some_and(|u| self.config.admins.contains(&(u.id.0 as i64)))
    }

    /// Downloads the file `file_id` to `dest` (through a `.part` file), or with a `--local` server
    /// reads it where the server keeps it.
    pub(crate) async fn download(&self, file_id: &str, dest: &Path) -> Result<PathBuf> {
        let file = retrying(5, || self.bot.get_file(file_id.to_string().into()).send())
            .await
            .map_err(telegram("getFile: "))?;
        // A --local server answers with a path on its disk: read it in place.
        let local = Path::new(&file.path);
        if self.config.local_api && local.is_absolute() {
            if local.is_file() {
                return Ok(local.to_path_buf());
            }
            return Err(Error::Config(
                "the Bot API server gave a local path this bot cannot read: mount the server's working directory at the same path".into(),
            ));
        }
        let tmp = dest.with_extension("part");
        let mut f = tokio::fs::File::create(&tmp).await?;
        self.bot
            .download_file(&file.path, &mut f)
            .await
            .map_err(|e| Error::Telegram(format!("download: {}", redact(&e.to_string()))))?;
        tokio::fs::rename(&tmp, dest).await?;
        Ok(dest.to_path_buf())
    }
}
