//! Update handlers and workers. Handlers only validate and enqueue (the job is committed before
//! the user hears "queued"); workers claim jobs, run the engine off the async threads, and send
//! the results, recording each sent clip so a resumed job never repeats one.

use crate::budget::Running;
use crate::clipper::{Clipper, EngineClipper};
use crate::config::BotConfig;
use crate::failure::{Cause, Panicked};
use crate::format;
use crate::settings::Settings;
use crate::store::{Job, JobState, JobStore, NewJob, SqliteStore};
use crate::telegram::{redact, retrying};
use anyhow::{anyhow, Context, Result};
use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use teloxide::net::Download;
use teloxide::prelude::*;
use teloxide::types::{
    ChatKind, InlineKeyboardButton, InlineKeyboardMarkup, InputFile, MessageId, ReplyParameters, ThreadId,
};
use tokio::sync::{Notify, Semaphore};
use viralclip_engine::pipeline::{ClipRequest, Stage};
use viralclip_engine::report::Report;

/// What kind of input a job has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputKind {
    Video,
    Subtitles,
}

/// A job as stored: everything needed to run it again after a restart.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Payload {
    pub kind: InputKind,
    pub file_id: String,
    pub file_size: u64,
    /// Extension from a fixed list (never from the user's file name).
    pub ext: String,
    #[serde(default)]
    pub subs_file_id: Option<String>,
    #[serde(default)]
    pub subs_ext: Option<String>,
    pub settings: Settings,
    #[serde(default)]
    pub thread_id: Option<i32>,
    #[serde(default)]
    pub reply_to: Option<i32>,
    #[serde(default)]
    pub status_message: Option<i32>,
    /// The album (Telegram media group) the input came in: a video and its subtitles sent
    /// together become one job.
    #[serde(default)]
    pub media_group: Option<String>,
}

/// How long a job from an album waits for the album's other files before a worker may take it.
const ALBUM_WAIT_SECS: u32 = 3;

const VIDEO_EXTS: &[&str] = &["mp4", "mkv", "webm", "mov", "avi", "m4v"];
const SUB_EXTS: &[&str] = &["srt", "vtt"];
const TRAIN_EXTS: &[&str] = &["csv", "tsv", "txt", "gz"];

/// A file in a message that the bot can work on.
#[derive(Debug, Clone)]
struct Media {
    kind: InputKind,
    file_id: String,
    size: u64,
    ext: &'static str,
}

fn ext_of(name: Option<&str>, allowed: &[&'static str]) -> Option<&'static str> {
    let lower = name?.rsplit('.').next()?.to_ascii_lowercase();
    allowed.iter().copied().find(|e| *e == lower)
}

fn media_of(msg: &Message) -> Option<Media> {
    if let Some(v) = msg.video() {
        return Some(Media {
            kind: InputKind::Video,
            file_id: v.file.id.to_string(),
            size: v.file.size as u64,
            ext: "mp4",
        });
    }
    let d = msg.document()?;
    let name = d.file_name.as_deref();
    let mime = d
        .mime_type
        .as_ref()
        .map(|m| m.essence_str().to_string())
        .unwrap_or_default();
    if let Some(ext) = ext_of(name, SUB_EXTS) {
        return Some(Media {
            kind: InputKind::Subtitles,
            file_id: d.file.id.to_string(),
            size: d.file.size as u64,
            ext,
        });
    }
    let ext = ext_of(name, VIDEO_EXTS).or(mime.starts_with("video/").then_some("mp4"))?;
    Some(Media {
        kind: InputKind::Video,
        file_id: d.file.id.to_string(),
        size: d.file.size as u64,
        ext,
    })
}

/// Shared state of the running bot.
pub struct App {
    pub bot: Bot,
    pub config: BotConfig,
    pub store: Arc<dyn JobStore>,
    pub clipper: Arc<dyn Clipper>,
    pub username: String,
    wake: Notify,
    shutdown: AtomicBool,
    /// The jobs running now, by id: their cancel flags and budgets.
    running: DashMap<i64, Arc<Running>>,
    training: tokio::sync::Mutex<()>,
}

/// Starts the bot: recovers interrupted jobs, serves updates, runs workers, and on SIGTERM or
/// Ctrl-C stops taking updates, lets the running jobs finish or requeues them, and exits.
pub async fn run(config: BotConfig) -> Result<()> {
    std::fs::create_dir_all(&config.data_dir).with_context(|| format!("{}", config.data_dir.display()))?;
    let model = current_model(&config)?;
    let clipper = {
        let c = config.clone();
        tokio::task::spawn_blocking(move || {
            EngineClipper::new(
                model,
                c.encoder.clone(),
                Some(c.whisper.clone()),
                c.face_model_path()?,
                c.device,
                c.precision,
            )
        })
        .await??
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
        .model
        .clone()
        .or_else(default_model)
        .ok_or_else(|| anyhow!("no model: pass --model DIR (or VIRALCLIP_MODEL)"))
}

/// [`run`] with a given clipper (tests use a real engine with small settings).
pub async fn run_with(config: BotConfig, clipper: Arc<dyn Clipper>) -> Result<()> {
    std::fs::create_dir_all(&config.data_dir).with_context(|| format!("{}", config.data_dir.display()))?;
    let store: Arc<dyn JobStore> = Arc::new(SqliteStore::open(&config.data_dir.join("jobs.sqlite"))?);
    let requeued = store.recover(config.max_attempts)?;
    if requeued > 0 {
        tracing::info!(requeued, "resuming interrupted jobs");
    }
    let mut bot = Bot::new(config.token.clone());
    if let Some(url) = config.api_url() {
        bot = bot.set_api_url(
            url.parse()
                .context("the Bot API URL (--api-url, TELOXIDE_API_URL)")?,
        );
    }
    let me = retrying(5, || bot.get_me().send())
        .await
        .map_err(|e| anyhow!("getMe: {}", redact(&e.to_string())))?;
    let app = Arc::new(App {
        bot: bot.clone(),
        config: config.clone(),
        store,
        clipper,
        username: me.username.clone().unwrap_or_default(),
        wake: Notify::new(),
        shutdown: AtomicBool::new(false),
        running: DashMap::new(),
        training: tokio::sync::Mutex::new(()),
    });
    tracing::info!(bot = %app.username, "started");
    app.report_failures().await;
    let workers = tokio::spawn(worker_loop(app.clone()));

    let handler = dptree::entry()
        .branch(Update::filter_message().endpoint(on_message))
        .branch(Update::filter_callback_query().endpoint(on_callback));
    let mut dispatcher = Dispatcher::builder(bot, handler)
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

const HELP: &str = "Send me a video (as a video or a file) and I send back its most viral moments as clips, \
with scores and reasons. A subtitle file (.srt/.vtt) alone gets the moments as text; a subtitle file sent as a \
reply to a video is used instead of speech recognition.\n\n\
In groups, reply /clip to a message with a video or subtitles (or mention me in the reply). /clip takes \
options: /clip 3 30-45 (3 clips of 30-45 s), fast|precise, a language code (ru, en).\n\n\
/settings: clip count, length, cutting mode, language\n/status: your queue\n/cancel: cancel your jobs";

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

fn reply_target(msg: &Message) -> (Option<ThreadId>, ReplyParameters) {
    let thread = if msg.is_topic_message { msg.thread_id } else { None };
    (thread, ReplyParameters::new(msg.id).allow_sending_without_reply())
}

impl App {
    async fn say(&self, msg: &Message, text: impl Into<String>) -> Result<Message> {
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
        .map_err(|e| anyhow!(redact(&e.to_string())))?;
        Ok(m)
    }

    fn settings_for(&self, chat: i64) -> Settings {
        self.store
            .settings(chat)
            .ok()
            .flatten()
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default()
    }

    async fn report_failures(&self) {
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
    async fn tell_admins(&self, text: &str) {
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

    fn is_admin(&self, msg: &Message) -> bool {
        msg.from
            .as_ref()
            .is_some_and(|u| self.config.admins.contains(&(u.id.0 as i64)))
    }

    /// Validates and stores a job, then says "queued".
    /// A file from an album whose other file is already queued: a video and its subtitles become
    /// one job (whichever came first). True when it joined; false for anything else (then it is a
    /// job of its own).
    /// `settings`: from this file's caption, if it has one (they replace the job's).
    async fn join_album(
        &self,
        msg: &Message,
        media: &Media,
        group: &str,
        settings: Option<&Settings>,
    ) -> Result<bool> {
        let Some(user) = msg.from.as_ref() else {
            return Ok(false);
        };
        if media.size > self.config.max_input_bytes() {
            return Ok(false); // enqueue explains the limit
        }
        let mates = self.store.pending_for(user.id.0 as i64)?;
        let mate = mates.iter().find_map(|j| {
            let p: Payload = serde_json::from_value(j.payload.clone()).ok()?;
            (j.chat_id == msg.chat.id.0
                && j.state == JobState::Queued
                && p.media_group.as_deref() == Some(group))
            .then_some((j.id, p))
        });
        let Some((id, p)) = mate else { return Ok(false) };
        let (mut patch, text) = match (p.kind, media.kind, &p.subs_file_id) {
            (InputKind::Video, InputKind::Subtitles, None) => (
                serde_json::json!({ "subs_file_id": media.file_id, "subs_ext": media.ext }),
                format!("Subtitles added to job #{id}: no transcription needed."),
            ),
            (InputKind::Subtitles, InputKind::Video, _) => (
                serde_json::json!({
                    "kind": InputKind::Video,
                    "file_id": media.file_id,
                    "file_size": media.size,
                    "ext": media.ext,
                    "subs_file_id": p.file_id,
                    "subs_ext": p.ext,
                }),
                format!("Job #{id} is now this video with the subtitles sent with it."),
            ),
            _ => return Ok(false),
        };
        if let Some(s) = settings {
            patch["settings"] = serde_json::to_value(s)?;
        }
        if !self.store.amend_queued(id, &patch)? {
            return Ok(false); // a worker took it already: this file is a job of its own
        }
        self.say(msg, text).await?;
        Ok(true)
    }

    async fn enqueue(
        &self,
        msg: &Message,
        media: Media,
        subs: Option<Media>,
        settings: Settings,
    ) -> Result<()> {
        let Some(user) = msg.from.as_ref() else {
            self.say(
                msg,
                "I take jobs from users only (not from channels or anonymous admins).",
            )
            .await?;
            return Ok(());
        };
        // Telegram delivers an update again when the bot died before confirming it: the job it
        // made is found instead of made twice (its worker sends a status message if the reply
        // was lost).
        if let Some(j) = self.store.by_message(msg.chat.id.0, msg.id.0 as i64)? {
            tracing::info!(job = j.id, "an update delivered again: its job exists");
            return Ok(());
        }
        let limit = self.config.max_input_bytes();
        if media.size > limit {
            let text = if self.config.local_api {
                format!(
                    "This file is {}; the limit here is {}.",
                    format::megabytes(media.size),
                    format::megabytes(limit)
                )
            } else {
                format!(
                    "This file is {}. Telegram lets bots download files only up to 20 MB through its cloud Bot API. \
                     Send a shorter or more compressed video, or ask the bot's admin to run it with a self-hosted \
                     telegram-bot-api server in --local mode, which takes files up to 2000 MB.",
                    format::megabytes(media.size)
                )
            };
            self.say(msg, text).await?;
            return Ok(());
        }
        let user_id = user.id.0 as i64;
        let pending = self.store.pending_for(user_id)?;
        if pending.len() >= self.config.per_user_queue {
            self.say(
                msg,
                format!(
                    "You already have {} jobs waiting; send this again when one is done (/status, /cancel).",
                    pending.len()
                ),
            )
            .await?;
            return Ok(());
        }
        let (thread, _) = reply_target(msg);
        let payload = Payload {
            kind: media.kind,
            file_id: media.file_id,
            file_size: media.size,
            ext: media.ext.to_string(),
            subs_file_id: subs.as_ref().map(|s| s.file_id.clone()),
            subs_ext: subs.as_ref().map(|s| s.ext.to_string()),
            settings,
            thread_id: thread.map(|t| t.0 .0),
            reply_to: Some(msg.id.0),
            status_message: None,
            media_group: msg.media_group_id().map(|g| g.0.clone()),
        };
        let id = self.store.enqueue(&NewJob {
            chat_id: msg.chat.id.0,
            user_id,
            payload: serde_json::to_value(&payload)?,
            hold_secs: if payload.media_group.is_some() {
                ALBUM_WAIT_SECS
            } else {
                0
            },
        })?;
        // Committed: only now may the user hear that it is queued.
        let status = self
            .say(
                msg,
                format!("Queued as job #{id}. {}", payload.settings.summary()),
            )
            .await?;
        self.store
            .update_payload(id, &serde_json::json!({ "status_message": status.id.0 }))?;
        self.wake.notify_one();
        Ok(())
    }
}

async fn on_message(app: Arc<App>, msg: Message) -> ResponseResult<()> {
    if let Err(e) = handle_message(&app, &msg).await {
        tracing::warn!("message {}: {}", msg.id, redact(&format!("{e:#}")));
        let _ = app
            .say(&msg, format!("Sorry, that failed: {}", redact(&format!("{e}"))))
            .await;
    }
    Ok(())
}

/// `/cmd@bot args` → ("cmd", args) when addressed to this bot (or to no bot).
fn command<'a>(text: &'a str, me: &str) -> Option<(String, &'a str)> {
    let text = text.trim_start();
    let rest = text.strip_prefix('/')?;
    let (head, args) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    let (cmd, target) = head.split_once('@').unwrap_or((head, ""));
    if !target.is_empty() && !target.eq_ignore_ascii_case(me) {
        return None;
    }
    Some((cmd.to_ascii_lowercase(), args.trim()))
}

async fn handle_message(app: &Arc<App>, msg: &Message) -> Result<()> {
    let private = matches!(msg.chat.kind, ChatKind::Private(_));
    let text = msg.text().or(msg.caption()).unwrap_or("");
    let mention = !app.username.is_empty() && text.contains(&format!("@{}", app.username));
    let cmd = command(text, &app.username);
    let chat = msg.chat.id.0;
    match cmd.as_ref().map(|(c, a)| (c.as_str(), *a)) {
        Some(("start" | "help", _)) => {
            app.say(msg, HELP).await?;
        }
        Some(("settings", _)) => {
            let s = app.settings_for(chat);
            send_settings(app, msg, &s).await?;
        }
        Some(("status", _)) => {
            let user = msg.from.as_ref().map_or(0, |u| u.id.0 as i64);
            let jobs = app.store.pending_for(user)?;
            let text = if jobs.is_empty() {
                "No jobs waiting.".to_string()
            } else {
                jobs.iter()
                    .map(|j| {
                        format!(
                            "#{}: {}{}",
                            j.id,
                            if j.state == JobState::Running {
                                "running"
                            } else {
                                "queued"
                            },
                            j.stage.as_ref().map(|s| format!(" ({s})")).unwrap_or_default()
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            app.say(msg, text).await?;
        }
        Some(("cancel", _)) => {
            let user = msg.from.as_ref().map_or(0, |u| u.id.0 as i64);
            let mut n = 0;
            for j in app.store.pending_for(user)? {
                if app.store.cancel(j.id)? {
                    n += 1;
                }
                if let Some(r) = app.running.get(&j.id) {
                    r.cancel.store(true, Ordering::SeqCst);
                }
            }
            app.say(msg, format!("Cancelled {n} job(s).")).await?;
        }
        Some(("train" | "rollback" | "data", args)) => {
            let c = cmd.as_ref().expect("some").0.clone();
            admin_command(app, msg, &c, args).await?;
        }
        Some(("clip", args)) => clip_reply(app, msg, args).await?,
        _ if mention && msg.reply_to_message().is_some() => {
            let args = text.replace(&format!("@{}", app.username), " ");
            clip_reply(app, msg, args.trim()).await?
        }
        _ => {
            if !private {
                return Ok(()); // in groups only commands, replies to commands and mentions count
            }
            let Some(media) = media_of(msg) else {
                if cmd.is_none() {
                    app.say(msg, "Send me a video or a subtitle file (/help).")
                        .await?;
                }
                return Ok(());
            };
            let base = app.settings_for(chat);
            // Options in a caption: "2 fast", "3 30-45 ru".
            let with_caption = |m: &Message| match m.caption() {
                Some(c) => format::parse_clip_args(c, &base).ok(),
                None => None,
            };
            // A subtitle file sent as a reply to a video: that video with these subtitles.
            if media.kind == InputKind::Subtitles {
                if let Some(parent) = msg.reply_to_message() {
                    if let Some(video) = media_of(parent).filter(|v| v.kind == InputKind::Video) {
                        let settings = with_caption(msg).or_else(|| with_caption(parent)).unwrap_or(base);
                        return app.enqueue(msg, video, Some(media), settings).await;
                    }
                }
            }
            // A video and its subtitles sent as one album.
            if let Some(group) = msg.media_group_id() {
                let own = with_caption(msg);
                if app.join_album(msg, &media, &group.0, own.as_ref()).await? {
                    return Ok(());
                }
            }
            let settings = with_caption(msg).unwrap_or(base);
            app.enqueue(msg, media, None, settings).await?;
        }
    }
    Ok(())
}

async fn clip_reply(app: &Arc<App>, msg: &Message, args: &str) -> Result<()> {
    let Some(target) = msg.reply_to_message() else {
        app.say(msg, "Reply /clip to a message with a video or a subtitle file.")
            .await?;
        return Ok(());
    };
    let Some(media) = media_of(target) else {
        app.say(msg, "That message has no video or subtitle file.")
            .await?;
        return Ok(());
    };
    let settings = match format::parse_clip_args(args, &app.settings_for(msg.chat.id.0)) {
        Ok(s) => s,
        Err(e) => {
            app.say(msg, e).await?;
            return Ok(());
        }
    };
    app.enqueue(msg, media, None, settings).await
}

async fn send_settings(app: &App, msg: &Message, s: &Settings) -> Result<()> {
    let (thread, reply) = reply_target(msg);
    let r = app
        .bot
        .send_message(msg.chat.id, format!("Settings: {}", s.summary()))
        .reply_markup(keyboard(s));
    placed!(r, thread, Some(&reply))
        .await
        .map_err(|e| anyhow!(redact(&e.to_string())))?;
    Ok(())
}

fn keyboard(s: &Settings) -> InlineKeyboardMarkup {
    InlineKeyboardMarkup::new(s.keyboard().into_iter().map(|row| {
        row.into_iter()
            .map(|(l, d)| InlineKeyboardButton::callback(l, d))
            .collect::<Vec<_>>()
    }))
}

async fn on_callback(app: Arc<App>, q: CallbackQuery) -> ResponseResult<()> {
    let data = q.data.clone().unwrap_or_default();
    let Some(action) = data.strip_prefix("set:") else {
        return Ok(());
    };
    let Some(msg) = q.regular_message() else {
        return Ok(());
    };
    let chat = msg.chat.id;
    let current = app.settings_for(chat.0);
    if let Some(s) = current.apply(action) {
        if let Ok(v) = serde_json::to_value(&s) {
            let _ = app.store.set_settings(chat.0, &v);
        }
        let _ = app
            .bot
            .edit_message_text(chat, msg.id, format!("Settings: {}", s.summary()))
            .reply_markup(keyboard(&s))
            .await;
    }
    let _ = app.bot.answer_callback_query(q.id.clone()).await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Workers

async fn worker_loop(app: Arc<App>) {
    let slots = Arc::new(Semaphore::new(app.config.workers.max(1)));
    let mut running = tokio::task::JoinSet::new();
    loop {
        if app.shutdown.load(Ordering::SeqCst) {
            break;
        }
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("semaphore"),
            _ = app.wake.notified() => continue,
        };
        let job = match app.store.claim_fair(app.config.per_user_running) {
            Ok(Some(j)) => j,
            Ok(None) => {
                drop(permit);
                tokio::select! {
                    _ = app.wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            }
            Err(e) => {
                tracing::error!("claiming a job: {e}");
                drop(permit);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let app2 = app.clone();
        running.spawn(async move {
            let id = job.id;
            let run = Running::new();
            app2.running.insert(id, run.clone());
            // A panic inside the job stays inside its task. Past its budget the job's cancel flag
            // goes up; a job that does not stop within BUDGET_GRACE of that is abandoned, so the
            // worker is free either way.
            let mut task = tokio::spawn(process(app2.clone(), job.clone(), run.cancel.clone()));
            let budget = app2.config.budget();
            let result = tokio::select! {
                r = &mut task => r,
                _ = async {
                    run.watch(budget).await;
                    tokio::time::sleep(BUDGET_GRACE).await;
                } => {
                    match tokio::time::timeout(Duration::from_millis(100), &mut task).await {
                        Ok(r) => r,
                        Err(_) => {
                            task.abort();
                            tracing::warn!(job = id, "did not stop within {BUDGET_GRACE:?} of its budget; abandoned");
                            Ok(Err(anyhow!("abandoned past its budget")))
                        }
                    }
                }
            };
            app2.running.remove(&id);
            finish_job(&app2, &job, result, &run).await;
            drop(permit);
        });
        while running.try_join_next().is_some() {}
    }
    // Shutdown: cancel what runs (it is requeued) unless it finishes first; after the grace
    // period whatever still runs is stopped and put back in the queue without spending an attempt.
    for r in app.running.iter() {
        r.value().cancel.store(true, Ordering::SeqCst);
    }
    let grace = Duration::from_secs(app.config.shutdown_grace_secs);
    let drained = tokio::time::timeout(grace, async { while running.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        running.abort_all();
        let stuck: Vec<i64> = app.running.iter().map(|e| *e.key()).collect();
        for id in stuck {
            let _ = app.store.requeue(id);
            tracing::info!(job = id, "stopped at shutdown; requeued");
        }
    }
}

async fn finish_job(
    app: &App,
    job: &Job,
    result: std::result::Result<Result<()>, tokio::task::JoinError>,
    run: &Running,
) {
    let cancelled_by_user = matches!(app.store.get(job.id).map(|j| j.state), Ok(JobState::Cancelled));
    let exceeded = run.exceeded();
    let error = match result {
        Ok(Ok(())) => {
            let _ = app.store.finish(job.id);
            return;
        }
        Ok(Err(e)) => e,
        Err(e) => match Panicked::from_join(e) {
            Some(p) => anyhow::Error::new(p),
            None => anyhow!("the job's task was stopped"),
        },
    };
    if cancelled_by_user {
        return;
    }
    if exceeded.is_none() && run.cancel.load(Ordering::SeqCst) && app.shutdown.load(Ordering::SeqCst) {
        let _ = app.store.requeue(job.id);
        tracing::info!(job = job.id, "requeued for the next start");
        return;
    }
    let cause = Cause::of(&error, exceeded);
    let detail = redact(&format!("{error:#}"));
    match &cause {
        Cause::Other => tracing::warn!(job = job.id, "failed: {detail}"),
        _ => tracing::error!(job = job.id, ?cause, "failed: {detail}"),
    }
    if cause.tells_admins() {
        let what = match cause {
            Cause::Config => "because of the bot's setup, not the user's file",
            _ => "because the bot broke (a bug: please report it)",
        };
        app.tell_admins(&format!(
            "Job #{} (chat {}) failed {what}: {detail}",
            job.id, job.chat_id
        ))
        .await;
    }
    // Retrying cannot fix the input, the budget, the installation or a bug: those fail at once.
    let max = cause.attempts(app.config.max_attempts);
    let why = cause.user_text(job.attempts.max(1));
    if let Ok(JobState::Failed) = app.store.fail(job.id, &why, max) {
        app.report_failures().await;
    } else {
        app.wake.notify_one();
    }
}

/// How long a job past its budget gets to stop by itself before it is abandoned.
const BUDGET_GRACE: Duration = Duration::from_secs(30);

/// Edits the job's status message, at most every 2 s unless the stage changes.
struct Status {
    bot: Bot,
    chat: ChatId,
    message: Option<MessageId>,
    last: Option<(String, Instant)>,
}

impl Status {
    async fn set(&mut self, text: String, force: bool) {
        let Some(m) = self.message else { return };
        if let Some((prev, at)) = &self.last {
            if *prev == text || (!force && at.elapsed() < Duration::from_secs(2)) {
                return;
            }
        }
        self.last = Some((text.clone(), Instant::now()));
        let _ = retrying(3, || {
            self.bot.edit_message_text(self.chat, m, text.clone()).send()
        })
        .await;
    }
}

fn stage_text(stage: Stage, f: f32) -> String {
    let label = match stage {
        Stage::Transcribe => "transcribing",
        Stage::Score => "scoring",
        Stage::Cut => "cutting",
        s => s.label(),
    };
    format!("⏳ {label} {:.0}%", (f * 100.0).clamp(0.0, 100.0))
}

async fn download(app: &App, file_id: &str, dest: &Path) -> Result<PathBuf> {
    let file = retrying(5, || app.bot.get_file(file_id.to_string().into()).send())
        .await
        .map_err(|e| anyhow!("getFile: {}", redact(&e.to_string())))?;
    // A --local server answers with a path on its disk: read it in place.
    let local = Path::new(&file.path);
    if app.config.local_api && local.is_absolute() {
        if local.is_file() {
            return Ok(local.to_path_buf());
        }
        return Err(anyhow!(
            "the Bot API server gave a local path this bot cannot read: mount the server's working directory at the same path"
        ));
    }
    let tmp = dest.with_extension("part");
    let mut f = tokio::fs::File::create(&tmp).await?;
    app.bot
        .download_file(&file.path, &mut f)
        .await
        .map_err(|e| anyhow!("download: {}", redact(&e.to_string())))?;
    tokio::fs::rename(&tmp, dest).await?;
    Ok(dest.to_path_buf())
}

async fn process(app: Arc<App>, job: Job, cancel: Arc<AtomicBool>) -> Result<()> {
    let p: Payload = serde_json::from_value(job.payload.clone()).context("job payload")?;
    let chat = ChatId(job.chat_id);
    let thread = p.thread_id.map(|t| ThreadId(MessageId(t)));
    let reply = p
        .reply_to
        .map(|r| ReplyParameters::new(MessageId(r)).allow_sending_without_reply());
    let mut status = Status {
        bot: app.bot.clone(),
        chat,
        message: p.status_message.map(MessageId),
        last: None,
    };
    if status.message.is_none() {
        status.message = status_message_for(&app, &job, chat, thread, reply.as_ref()).await;
    }
    let dir = app.config.data_dir.join("jobs").join(job.id.to_string());
    std::fs::create_dir_all(&dir)?;
    let out = dir.join("out");
    let report_path = out.join("report.json");
    // A resumed job reuses the clips it already cut.
    let existing: Option<Report> = std::fs::read_to_string(&report_path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .filter(|r: &Report| {
            r.moments
                .iter()
                .all(|m| m.clip.as_ref().is_none_or(|c| out.join(&c.path).is_file()))
        });
    let report = match existing {
        Some(r) => r,
        None => {
            status.set("⏳ downloading".into(), true).await;
            let _ = app.store.set_stage(job.id, "downloading");
            let input = {
                let dest = dir.join(format!("input.{}", p.ext));
                if dest.is_file() {
                    dest
                } else {
                    download(&app, &p.file_id, &dest).await?
                }
            };
            let subs = match (&p.subs_file_id, &p.subs_ext) {
                (Some(id), Some(ext)) => {
                    let dest = dir.join(format!("subs.{ext}"));
                    Some(if dest.is_file() {
                        dest
                    } else {
                        download(&app, id, &dest).await?
                    })
                }
                _ => None,
            };
            let mut req = ClipRequest::new(&input, &out);
            req.subs = subs;
            req.select.count = p.settings.count;
            req.select.min_secs = p.settings.min_secs;
            req.select.max_secs = p.settings.max_secs;
            req.language = Some(p.settings.language.clone()).filter(|l| l != "auto");
            #[cfg(feature = "media")]
            {
                req.mode = if p.settings.fast {
                    viralclip_engine::media::CutMode::Fast
                } else {
                    viralclip_engine::media::CutMode::Precise
                };
                req.limits.max_duration_secs = app.config.max_duration_mins * 60.0;
                req.shape = viralclip_engine::pipeline::ShapeRequest {
                    format: p.settings.format,
                    captions: p.settings.captions,
                    caption_style: Default::default(),
                };
            }
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Stage, f32)>();
            let progress: viralclip_engine::pipeline::Progress = Arc::new(move |s, f| {
                let _ = tx.send((s, f));
            });
            let clipper = app.clipper.clone();
            let c2 = cancel.clone();
            let mut work = tokio::task::spawn_blocking(move || clipper.clip(&req, progress, c2));
            let store = app.store.clone();
            let mut last_stage = None;
            let report = loop {
                tokio::select! {
                    r = &mut work => break r.map_err(|e| match Panicked::from_join(e) {
                        Some(p) => anyhow::Error::new(p),
                        None => anyhow!("the engine's thread was stopped"),
                    })??,
                    Some((s, f)) = rx.recv() => {
                        let changed = last_stage != Some(s);
                        if changed {
                            let _ = store.set_stage(job.id, s.label());
                            last_stage = Some(s);
                        }
                        status.set(stage_text(s, f), changed).await;
                    }
                }
            };
            report
        }
    };
    if cancel.load(Ordering::SeqCst) {
        return Err(anyhow!("cancelled"));
    }
    let _ = app.store.set_stage(job.id, "uploading");
    let sent = app.store.sent(job.id)?;
    let total = report.moments.len();
    if p.kind == InputKind::Subtitles || report.moments.iter().all(|m| m.clip.is_none()) {
        if !sent.contains(&0) {
            let text = format::moments_text(&report);
            let m = retrying(5, || {
                placed!(app.bot.send_message(chat, text.clone()), thread, reply.as_ref()).send()
            })
            .await
            .map_err(|e| anyhow!(redact(&e.to_string())))?;
            app.store.mark_sent(job.id, 0, m.id.0 as i64)?;
        }
    } else {
        for m in &report.moments {
            let Some(clip) = &m.clip else { continue };
            let rank = m.rank as u32;
            if sent.contains(&rank) {
                continue;
            }
            if cancel.load(Ordering::SeqCst) {
                return Err(anyhow!("cancelled"));
            }
            status
                .set(format!("⏳ uploading clip {rank} of {total}"), true)
                .await;
            let caption = format::caption(m, total);
            let parts = fit_for_upload(&app, &dir, m, clip)?;
            let n = parts.len();
            let mut last_id = 0;
            for (k, part) in parts.iter().enumerate() {
                // Each part of a split clip is recorded as it is confirmed, like a whole clip.
                let key = part_key(rank, k);
                if n > 1 && sent.contains(&key) {
                    continue;
                }
                let cap = if n > 1 {
                    format!("{caption}\n(part {} of {n})", k + 1)
                } else {
                    caption.clone()
                };
                let msg = retrying(6, || {
                    let r = app
                        .bot
                        .send_video(chat, InputFile::file(&part.path))
                        .caption(cap.clone())
                        .width(part.width)
                        .height(part.height)
                        .duration(part.duration.round().max(1.0) as u32)
                        .thumbnail(InputFile::file(&part.thumbnail))
                        .supports_streaming(true);
                    placed!(r, thread, reply.as_ref()).send()
                })
                .await
                .map_err(|e| anyhow!("sendVideo: {}", redact(&e.to_string())))?;
                last_id = msg.id.0;
                // Recorded as soon as Telegram's answer is read, before anything else: a restart
                // never sends a confirmed clip (or part) again.
                if n > 1 {
                    app.store.mark_sent(job.id, key, last_id as i64)?;
                }
            }
            app.store.mark_sent(job.id, rank, last_id as i64)?;
        }
    }
    const TIMELINE: u32 = 1000;
    if !sent.contains(&TIMELINE) && !report.timeline.is_empty() {
        let png = dir.join("timeline.png");
        match crate::timeline::draw(&report, &png) {
            Ok(()) => {
                let m = retrying(5, || {
                    let r = app
                        .bot
                        .send_photo(chat, InputFile::file(&png))
                        .caption("Virality across the video; the clips are shaded.");
                    placed!(r, thread, None::<&ReplyParameters>).send()
                })
                .await
                .map_err(|e| anyhow!("sendPhoto: {}", redact(&e.to_string())))?;
                app.store.mark_sent(job.id, TIMELINE, m.id.0 as i64)?;
            }
            Err(e) => tracing::warn!("timeline: {e}"),
        }
    }
    status
        .set(
            format!("✅ done: {total} moment(s) in {:.0} s", report.timings.total),
            true,
        )
        .await;
    Ok(())
}

/// The key under which part `k` of a split clip `rank` is recorded as sent (whole clips use
/// their rank, the timeline 1000).
fn part_key(rank: u32, k: usize) -> u32 {
    10_000 + rank * 100 + k as u32
}

/// The job's status message: the one its "Queued" reply became (which may still be on its way
/// when a worker takes the job at once), else, for a job whose reply was lost in a crash, a
/// fresh one, recorded so later edits and the final line have somewhere to go.
async fn status_message_for(
    app: &App,
    job: &Job,
    chat: ChatId,
    thread: Option<ThreadId>,
    reply: Option<&ReplyParameters>,
) -> Option<MessageId> {
    let recorded = || {
        app.store
            .get(job.id)
            .ok()
            .and_then(|j| j.payload.get("status_message").and_then(|v| v.as_i64()))
            .map(|id| MessageId(id as i32))
    };
    for _ in 0..15 {
        if let Some(m) = recorded() {
            return Some(m);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let text = format!("⏳ working on job #{}", job.id);
    let sent = retrying(5, || {
        placed!(app.bot.send_message(chat, text.clone()), thread, reply).send()
    })
    .await;
    match sent {
        Ok(m) => {
            let _ = app
                .store
                .update_payload(job.id, &serde_json::json!({ "status_message": m.id.0 }));
            Some(m.id)
        }
        Err(e) => {
            tracing::warn!(job = job.id, "no status message: {}", redact(&e.to_string()));
            None
        }
    }
}

/// The clip as it can be uploaded: itself, or re-cut in consecutive parts that each fit the
/// upload limit (never dropped).
fn fit_for_upload(
    app: &App,
    dir: &Path,
    m: &viralclip_engine::report::MomentReport,
    clip: &viralclip_engine::report::ClipFacts,
) -> Result<Vec<viralclip_engine::report::ClipFacts>> {
    let limit = app.config.max_upload_bytes();
    if clip.size_bytes <= limit {
        let mut c = clip.clone();
        c.path = dir.join("out").join(&clip.path);
        c.thumbnail = dir.join("out").join(&clip.thumbnail);
        return Ok(vec![c]);
    }
    #[cfg(feature = "media")]
    {
        // The parts are cut from the clip as it was made (its shape, framing and burned-in
        // captions), not from the source again.
        let made = dir.join("out").join(&clip.path);
        if !made.is_file() {
            return Err(anyhow!("the clip file is gone"));
        }
        let mut n = (clip.size_bytes as f64 / (limit as f64 * 0.9)).ceil().max(2.0) as usize;
        // Bitrate varies along a clip: if a part still does not fit, cut finer (a few rounds).
        for _round in 0..4 {
            let step = clip.duration.max(m.end - m.start).min(clip.duration) / n as f64;
            let mut parts = Vec::new();
            for k in 0..n {
                let out = dir.join(format!("part-{}-{k}.mp4", m.rank));
                let c = viralclip_engine::media::cut(
                    &made,
                    step * k as f64,
                    step * (k + 1) as f64,
                    viralclip_engine::media::CutMode::Precise,
                    &out,
                )?;
                let thumb_path = out.with_extension("jpg");
                let t =
                    viralclip_engine::media::thumbnail(&out, (c.duration / 2.0).min(1.0), 320, &thumb_path)?;
                parts.push(viralclip_engine::report::ClipFacts {
                    path: c.path,
                    thumbnail: t.path,
                    width: c.width,
                    height: c.height,
                    duration: c.duration,
                    size_bytes: c.size_bytes,
                    thumbnail_bytes: t.size_bytes,
                    mode: "precise".into(),
                    source_start: clip.source_start + c.source_start,
                });
            }
            let biggest = parts.iter().map(|p| p.size_bytes).max().unwrap_or(0);
            if biggest <= limit {
                return Ok(parts);
            }
            n = (n as f64 * biggest as f64 / (limit as f64 * 0.9)).ceil() as usize;
        }
        Err(anyhow!(
            "clip {} cannot be cut into parts under the {} upload limit",
            m.rank,
            format::megabytes(limit)
        ))
    }
    #[cfg(not(feature = "media"))]
    {
        let _ = (dir, input, m);
        Err(anyhow!("clip {} is over the upload limit", clip.path.display()))
    }
}

// ---------------------------------------------------------------------------------------------
// Admin: /train, /rollback, /data

async fn admin_command(app: &Arc<App>, msg: &Message, cmd: &str, args: &str) -> Result<()> {
    let private = matches!(msg.chat.kind, ChatKind::Private(_));
    if !private {
        app.say(msg, format!("/{cmd} works only in a private chat with me."))
            .await?;
        return Ok(());
    }
    if msg.forward_origin().is_some() || msg.sender_chat.is_some() {
        app.say(
            msg,
            format!("/{cmd} must be sent by an admin directly, not forwarded."),
        )
        .await?;
        return Ok(());
    }
    if !app.is_admin(msg) {
        app.say(msg, format!("/{cmd} is for the bot's admins.")).await?;
        return Ok(());
    }
    match cmd {
        "data" => {
            let Some(doc) = msg
                .reply_to_message()
                .and_then(|m| m.document())
                .or(msg.document())
            else {
                app.say(msg, "Reply /data to a training file (.csv, .tsv, .txt, .gz).")
                    .await?;
                return Ok(());
            };
            let Some(ext) = ext_of(doc.file_name.as_deref(), TRAIN_EXTS) else {
                app.say(msg, "Training files are .csv, .tsv, .txt or .txt.gz.")
                    .await?;
                return Ok(());
            };
            let dir = app.config.data_dir.join("train-data");
            std::fs::create_dir_all(&dir)?;
            let n = std::fs::read_dir(&dir)?.count();
            let ext = if ext == "gz" { "txt.gz" } else { ext };
            let dest = dir.join(format!("upload-{n:03}.{ext}"));
            download(app, &doc.file.id.to_string(), &dest).await?;
            app.say(msg, format!("Saved for the next /train as {}.", dest.display()))
                .await?;
        }
        "rollback" => {
            let prev = std::fs::read_to_string(app.config.data_dir.join("previous-model")).ok();
            let Some(prev) = prev.map(|s| PathBuf::from(s.trim())) else {
                app.say(msg, "No earlier model to roll back to.").await?;
                return Ok(());
            };
            switch_model(app, &prev).await?;
            app.say(msg, format!("Rolled back to {}.", prev.display()))
                .await?;
        }
        _ => train(app, msg, args.split_whitespace().any(|a| a == "force")).await?,
    }
    Ok(())
}

async fn switch_model(app: &Arc<App>, dir: &Path) -> Result<()> {
    let old = app.clipper.model_dir();
    let c = app.clipper.clone();
    let d = dir.to_path_buf();
    tokio::task::spawn_blocking(move || c.switch_model(&d)).await??;
    std::fs::write(
        app.config.data_dir.join("previous-model"),
        old.to_string_lossy().as_bytes(),
    )?;
    std::fs::write(
        app.config.data_dir.join("current-model"),
        dir.to_string_lossy().as_bytes(),
    )?;
    Ok(())
}

/// The numbers a new model must not be worse in: emotion macro-F1 (tuned) and popularity ROC-AUC
/// on validation, from a manifest's `metrics`.
fn key_metrics(metrics: &serde_json::Value) -> (Option<f64>, Option<f64>) {
    let v = metrics.get("validation").unwrap_or(metrics);
    (
        v.pointer("/emotions_tuned/macro_f1").and_then(|x| x.as_f64()),
        v.pointer("/popularity/roc_auc").and_then(|x| x.as_f64()),
    )
}

async fn train(app: &Arc<App>, msg: &Message, force: bool) -> Result<()> {
    let Ok(_guard) = app.training.try_lock() else {
        app.say(msg, "A training run is already going; one at a time.")
            .await?;
        return Ok(());
    };
    let mut sources: Vec<String> = app.config.train_data.clone();
    if let Ok(rd) = std::fs::read_dir(app.config.data_dir.join("train-data")) {
        let mut files: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        sources.extend(files.iter().map(|p| p.to_string_lossy().into_owned()));
    }
    if sources.is_empty() {
        app.say(
            msg,
            "No training data: configure --train-data or send files with /data.",
        )
        .await?;
        return Ok(());
    }
    let Some(encoder) = app.config.encoder.clone() else {
        app.say(
            msg,
            "Training needs the base encoder's directory (--encoder / VIRALCLIP_ENCODER).",
        )
        .await?;
        return Ok(());
    };
    let parse = |s: &String| {
        s.parse::<viralclip_trainer::data::Source>()
            .map_err(|e| anyhow!("{s}: {e}"))
    };
    let data = sources.iter().map(parse).collect::<Result<Vec<_>>>()?;
    let test = app
        .config
        .train_test
        .iter()
        .map(parse)
        .collect::<Result<Vec<_>>>()?;
    let stamp = chrono::Utc::now().format("%Y%m%d-%H%M%S").to_string();
    let out = app.config.data_dir.join("models").join(&stamp);
    let mut cfg = viralclip_trainer::TrainConfig::new(encoder, out.clone(), data);
    cfg.test = test;
    cfg.unfrozen_epochs = app.config.train_unfrozen_epochs;
    let (dev, note) = viralclip_engine::device::open(app.config.device)?;
    let mut head = String::new();
    if let Some(n) = note {
        head = format!("{n}\n");
    }
    if !dev.is_cuda() {
        head.push_str("⚠️ No GPU: training on the CPU, which is slow.\n");
    }
    let status = app
        .say(
            msg,
            format!("{head}Training started ({} sources).", sources.len()),
        )
        .await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let cancel = Arc::new(AtomicBool::new(false));
    let c2 = cancel.clone();
    let mut work = tokio::task::spawn_blocking(move || {
        let mut on_event = |e: viralclip_trainer::Event| {
            let _ = tx.send(e.to_string());
        };
        viralclip_trainer::train(&cfg, &dev, &mut on_event, &c2)
    });
    let mut st = Status {
        bot: app.bot.clone(),
        chat: msg.chat.id,
        message: Some(status.id),
        last: None,
    };
    let report = loop {
        tokio::select! {
            r = &mut work => break r,
            Some(line) = rx.recv() => st.set(format!("{head}⏳ {line}"), false).await,
        }
    };
    let report = match report {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            app.say(msg, format!("Training failed: {}", redact(&e.to_string())))
                .await?;
            return Ok(());
        }
        Err(e) => {
            app.say(msg, format!("Training crashed: {e}")).await?;
            return Ok(());
        }
    };
    let new = key_metrics(&serde_json::to_value(&report.val_reloaded)?);
    let current = viralclip_engine::model::Manifest::read(&app.clipper.model_dir())
        .map(|m| key_metrics(&m.metrics))
        .unwrap_or((None, None));
    let no_worse = |n: Option<f64>, c: Option<f64>| match (n, c) {
        (Some(n), Some(c)) => n + 1e-9 >= c,
        _ => true,
    };
    let better = no_worse(new.0, current.0) && no_worse(new.1, current.1);
    let fmt = |x: Option<f64>| x.map_or("-".into(), |v| format!("{v:.3}"));
    let mut text = format!(
        "Training done in {:.0} s (best epoch {}). Validation: emotion macro-F1 {} (current model {}), popularity ROC-AUC {} (current {}).",
        report.wall_secs,
        report.best_epoch + 1,
        fmt(new.0),
        fmt(current.0),
        fmt(new.1),
        fmt(current.1)
    );
    if better || force {
        switch_model(app, &out).await?;
        text.push_str(&format!(
            "\nSwitched to the new model{}. /rollback undoes it.",
            if better { "" } else { " (forced)" }
        ));
    } else {
        text.push_str(&format!(
            "\nKept the current model: the new one is worse. It is saved at {}; /train force switches anyway.",
            out.display()
        ));
    }
    app.say(msg, text).await?;
    let png = out.join("train-curves.png");
    if png.is_file() {
        let _ = retrying(3, || {
            app.bot.send_photo(msg.chat.id, InputFile::file(&png)).send()
        })
        .await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_addressed_to_us_or_nobody() {
        assert_eq!(
            command("/clip 3 30-45", "vc_bot"),
            Some(("clip".into(), "3 30-45"))
        );
        assert_eq!(command("/clip@vc_bot 3", "vc_bot"), Some(("clip".into(), "3")));
        assert_eq!(command("/CLIP@VC_BOT", "vc_bot"), Some(("clip".into(), "")));
        assert_eq!(command("/clip@other_bot 3", "vc_bot"), None);
        assert_eq!(command("hello", "vc_bot"), None);
    }

    #[test]
    fn file_extensions_come_from_the_allow_list() {
        assert_eq!(ext_of(Some("../../etc/passwd.SRT"), SUB_EXTS), Some("srt"));
        assert_eq!(ext_of(Some("x.mp4.exe"), VIDEO_EXTS), None);
        assert_eq!(ext_of(None, VIDEO_EXTS), None);
    }

    #[test]
    fn metrics_comparison_reads_validation_numbers() {
        let m = serde_json::json!({"validation": {"emotions_tuned": {"macro_f1": 0.4}, "popularity": {"roc_auc": 0.99}}});
        assert_eq!(key_metrics(&m), (Some(0.4), Some(0.99)));
        assert_eq!(key_metrics(&serde_json::Value::Null), (None, None));
    }
}
