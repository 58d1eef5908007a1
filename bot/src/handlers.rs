//! The update handlers: one [`schema`] of dptree branches (commands, a mention in a reply, files
//! in private chats, the settings keyboard). Handlers only validate and enqueue: the job is
//! committed to the store before the user hears "queued".

use crate::admin;
use crate::app::{placed, reply_target, App};
use crate::commands::Command;
use crate::error::{telegram, Error, Result};
use crate::format;
use crate::job::{media_of, InputKind, Media, Payload, ALBUM_WAIT_SECS};
use crate::recut::{Action, ClipState};
use crate::retention;
use crate::settings::Settings;
use crate::store::{JobState, NewJob};
use crate::telegram::redact;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use teloxide::dispatching::UpdateHandler;
use teloxide::prelude::*;
use teloxide::types::{ChatKind, InlineKeyboardButton, InlineKeyboardMarkup};
use viralclip_engine::link::{check_url, find_link};

/// Every update the bot answers, by kind: a command of ours, a mention of the bot in a reply
/// (`/clip` in other words), a file or text in a private chat, a press on the settings keyboard.
/// In groups, privacy mode shows the bot only commands, replies and mentions; anything else there
/// is ignored.
pub fn schema() -> UpdateHandler<Error> {
    let message = Update::filter_message()
        .branch(
            dptree::filter_map(|msg: Message, app: Arc<App>| {
                Command::parse_for(msg.text().or(msg.caption())?, &app.username)
            })
            .endpoint(on_command),
        )
        .branch(
            dptree::filter(|msg: Message, app: Arc<App>| mentioned_in_reply(&app, &msg)).endpoint(on_mention),
        )
        .branch(
            dptree::filter(|msg: Message| matches!(msg.chat.kind, ChatKind::Private(_))).endpoint(on_private),
        );
    dptree::entry()
        .branch(message)
        .branch(Update::filter_callback_query().endpoint(on_callback))
}

/// Runs a message's handler; a failure is logged and told to the user in one line.
async fn answering(
    app: &App,
    msg: &Message,
    handled: impl std::future::Future<Output = Result<()>>,
) -> Result<()> {
    if let Err(e) = handled.await {
        tracing::warn!("message {}: {}", msg.id, redact(&format!("{e:#}")));
        let _ = app
            .say(msg, format!("Sorry, that failed: {}", redact(&format!("{e}"))))
            .await;
    }
    Ok(())
}

const HELP: &str = "Send me a video (as a video or a file) and I send back its most viral moments as clips, \
with scores and reasons. A subtitle file (.srt/.vtt) alone gets the moments as text; a subtitle file sent as a \
reply to a video is used instead of speech recognition.\n\n\
A link to a video (YouTube, VK, Rutube, ...) works too: send it, or /clip LINK in groups; the site's \
own subtitles are used when it has them.\n\n\
In groups, reply /clip to a message with a video, subtitles or a link (or mention me in the reply). /clip takes \
options: /clip 3 30-45 (3 clips of 30-45 s), fast|precise, a language code (ru, en).\n\n\
/settings: clip count, length, cutting mode, language\n/status: your queue\n/cancel: cancel your jobs";

async fn on_command(app: Arc<App>, msg: Message, cmd: Command) -> Result<()> {
    answering(&app, &msg, command(&app, &msg, cmd)).await
}

async fn command(app: &Arc<App>, msg: &Message, cmd: Command) -> Result<()> {
    let chat = msg.chat.id.0;
    match cmd {
        Command::Start | Command::Help => {
            app.say(msg, HELP).await?;
        }
        Command::Settings => {
            let s = app.settings_for(chat);
            send_settings(app, msg, &s).await?;
        }
        Command::Status => {
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
        Command::Cancel => {
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
        Command::Clip(args) => clip_reply(app, msg, &args).await?,
        Command::Train(_) | Command::Rollback | Command::Data => admin::command(app, msg, cmd).await?,
    }
    Ok(())
}

/// A reply that mentions the bot: `/clip` with the rest of the text as its options.
fn mentioned_in_reply(app: &App, msg: &Message) -> bool {
    let text = msg.text().or(msg.caption()).unwrap_or("");
    !app.username.is_empty()
        && text.contains(&format!("@{}", app.username))
        && msg.reply_to_message().is_some()
}

async fn on_mention(app: Arc<App>, msg: Message) -> Result<()> {
    let text = msg.text().or(msg.caption()).unwrap_or("");
    let args = text.replace(&format!("@{}", app.username), " ");
    answering(&app, &msg, clip_reply(&app, &msg, args.trim())).await
}

async fn on_private(app: Arc<App>, msg: Message) -> Result<()> {
    answering(&app, &msg, private(&app, &msg)).await
}

/// A message in a private chat that is no command of ours: a video or a subtitle file to clip.
async fn private(app: &Arc<App>, msg: &Message) -> Result<()> {
    let chat = msg.chat.id.0;
    let Some(media) = media_of(msg) else {
        let text = msg.text().or(msg.caption()).unwrap_or("");
        // Another bot's command, or one this bot does not have: not ours to answer.
        if text.trim_start().starts_with('/') {
            return Ok(());
        }
        // A link, with options around it ("https://… 2 fast") among other words (ignored).
        if let Some(link) = find_link(text) {
            let rest = text.replacen(link, " ", 1);
            let settings = rest.split_whitespace().fold(app.settings_for(chat), |s, w| {
                format::parse_clip_args(w, &s).unwrap_or(s)
            });
            return enqueue_link(app, msg, link, settings).await;
        }
        app.say(
            msg,
            "Send me a video, a subtitle file or a link to a video (/help).",
        )
        .await?;
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
                return enqueue(app, msg, video, Some(media), settings, None).await;
            }
        }
    }
    // A video and its subtitles sent as one album.
    if let Some(group) = msg.media_group_id() {
        let own = with_caption(msg);
        if join_album(app, msg, &media, &group.0, own.as_ref()).await? {
            return Ok(());
        }
    }
    let settings = with_caption(msg).unwrap_or(base);
    enqueue(app, msg, media, None, settings, None).await
}

/// `/clip [URL] [options]`: the link it names, else the message it replies to (a video, a
/// subtitle file, or a text with a link in it).
async fn clip_reply(app: &Arc<App>, msg: &Message, args: &str) -> Result<()> {
    let own_link = find_link(args).map(str::to_string);
    let args = match &own_link {
        Some(l) => args.replacen(l.as_str(), " ", 1),
        None => args.to_string(),
    };
    let settings = match format::parse_clip_args(args.trim(), &app.settings_for(msg.chat.id.0)) {
        Ok(s) => s,
        Err(e) => {
            app.say(msg, e).await?;
            return Ok(());
        }
    };
    if let Some(link) = own_link {
        return enqueue_link(app, msg, &link, settings).await;
    }
    let Some(target) = msg.reply_to_message() else {
        app.say(
            msg,
            "Reply /clip to a message with a video, a subtitle file or a link, or write /clip LINK.",
        )
        .await?;
        return Ok(());
    };
    let Some(media) = media_of(target) else {
        if let Some(link) = find_link(target.text().or(target.caption()).unwrap_or("")) {
            return enqueue_link(app, msg, link, settings).await;
        }
        app.say(msg, "That message has no video, subtitle file or link.")
            .await?;
        return Ok(());
    };
    enqueue(app, msg, media, None, settings, None).await
}

/// A link's job: the link checked at once (scheme, allowed host, public address), so a refused
/// one is answered now; its probe and download run in the worker.
async fn enqueue_link(app: &Arc<App>, msg: &Message, link: &str, settings: Settings) -> Result<()> {
    let policy = app.config.links.policy(app.config.max_duration_mins * 60.0, None);
    let l = link.to_string();
    let checked = tokio::task::spawn_blocking(move || check_url(&l, &policy))
        .await
        .map_err(|e| Error::from_join(e, "checking a link"))?;
    if let Err(e) = checked {
        app.say(msg, format!("I can't take this link: {}", e.for_user()))
            .await?;
        return Ok(());
    }
    enqueue(app, msg, Media::link(), None, settings, Some(link)).await
}

async fn send_settings(app: &App, msg: &Message, s: &Settings) -> Result<()> {
    let (thread, reply) = reply_target(msg);
    let r = app
        .bot
        .send_message(msg.chat.id, format!("Settings: {}", s.summary()))
        .reply_markup(keyboard(s));
    placed!(r, thread, Some(&reply)).await.map_err(telegram(""))?;
    Ok(())
}

fn keyboard(s: &Settings) -> InlineKeyboardMarkup {
    InlineKeyboardMarkup::new(s.keyboard().into_iter().map(|row| {
        row.into_iter()
            .map(|(l, d)| InlineKeyboardButton::callback(l, d))
            .collect::<Vec<_>>()
    }))
}

async fn on_callback(app: Arc<App>, q: CallbackQuery) -> Result<()> {
    let data = q.data.clone().unwrap_or_default();
    if let Some((clip, action)) = ClipState::parse(&data) {
        let text = match recut_pressed(&app, &q, clip, action).await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!("re-cut button: {}", redact(&format!("{e:#}")));
                format!("Sorry, that failed: {}", redact(&e.to_string()))
            }
        };
        let _ = app
            .bot
            .answer_callback_query(q.id.clone())
            .text(text)
            .show_alert(true)
            .await;
        return Ok(());
    }
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

/// A file from an album whose other file is already queued: a video and its subtitles become
/// one job (whichever came first). True when it joined; false for anything else (then it is a
/// job of its own).
/// `settings`: from this file's caption, if it has one (they replace the job's).
async fn join_album(
    app: &App,
    msg: &Message,
    media: &Media,
    group: &str,
    settings: Option<&Settings>,
) -> Result<bool> {
    let Some(user) = msg.from.as_ref() else {
        return Ok(false);
    };
    if media.size > app.config.max_input_bytes() {
        return Ok(false); // enqueue explains the limit
    }
    let mates = app.store.pending_for(user.id.0 as i64)?;
    let mate = mates.iter().find_map(|j| {
        let p: Payload = serde_json::from_value(j.payload.clone()).ok()?;
        (j.chat_id == msg.chat.id.0 && j.state == JobState::Queued && p.media_group.as_deref() == Some(group))
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
    if !app.store.amend_queued(id, &patch)? {
        return Ok(false); // a worker took it already: this file is a job of its own
    }
    app.say(msg, text).await?;
    Ok(true)
}

/// Validates and stores a job, then says "queued". `url`: a link the worker fetches (then
/// `media` is [`Media::link`]).
pub(crate) async fn enqueue(
    app: &App,
    msg: &Message,
    media: Media,
    subs: Option<Media>,
    settings: Settings,
    url: Option<&str>,
) -> Result<()> {
    let Some(user) = msg.from.as_ref() else {
        app.say(
            msg,
            "I take jobs from users only (not from channels or anonymous admins).",
        )
        .await?;
        return Ok(());
    };
    // Telegram delivers an update again when the bot died before confirming it: the job it
    // made is found instead of made twice (its worker sends a status message if the reply
    // was lost).
    if let Some(j) = app.store.by_message(msg.chat.id.0, msg.id.0 as i64)? {
        tracing::info!(job = j.id, "an update delivered again: its job exists");
        return Ok(());
    }
    let limit = app.config.max_input_bytes();
    if media.size > limit {
        let text = if app.config.local_api {
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
        app.say(msg, text).await?;
        return Ok(());
    }
    let user_id = user.id.0 as i64;
    let pending = app.store.pending_for(user_id)?;
    if pending.len() >= app.config.per_user_queue {
        app.say(
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
        url: url.map(str::to_string),
        upload: None,
        recut: None,
    };
    let id = app.store.enqueue(&NewJob {
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
    let status = app
        .say(
            msg,
            format!("Queued as job #{id}. {}", payload.settings.summary()),
        )
        .await?;
    app.store
        .update_payload(id, &serde_json::json!({ "status_message": status.id.0 }))?;
    app.wake.notify_one();
    Ok(())
}

/// A button under a delivered clip: the clip moved, re-shaped or re-captioned as a job of its own
/// (queued like any job; only the cut runs), from the original job's kept files. Returns what the
/// button's press is answered with.
async fn recut_pressed(app: &Arc<App>, q: &CallbackQuery, clip: ClipState, action: Action) -> Result<String> {
    let Some(msg) = q.regular_message() else {
        return Ok("That clip's message is too old to re-cut from.".into());
    };
    let job = match app.store.get(clip.job) {
        Ok(j) if j.chat_id == msg.chat.id.0 => j,
        _ => return Ok("That clip is not from this chat.".into()),
    };
    let dir = retention::job_dir(&app.config.data_dir, job.id);
    let keep = app.config.keep();
    let Some((report, _)) = tokio::task::spawn_blocking(move || retention::kept(&dir, keep))
        .await
        .map_err(|e| Error::from_join(e, "reading a job's files"))?
    else {
        return Ok(format!(
            "The files of job #{} are gone (they are kept {} h after the job); send the video again to clip it anew.",
            job.id, app.config.keep_hours
        ));
    };
    let p: Payload = serde_json::from_value(job.payload.clone()).map_err(Error::Payload)?;
    let Some(next) = clip.after_in(action, &report, p.settings.format) else {
        return Ok(format!(
            "It can't move that way: a clip stays within the video and {}–{} s long.",
            viralclip_engine::adjust::MIN_SECS,
            viralclip_engine::adjust::MAX_SECS
        ));
    };
    let user = q.from.id.0 as i64;
    if app.store.pending_for(user)?.len() >= app.config.per_user_queue {
        return Ok("You have jobs waiting; press again when one is done (/status).".into());
    }
    let (thread, _) = reply_target(msg);
    let payload = Payload {
        kind: InputKind::Video,
        file_id: String::new(),
        file_size: 0,
        ext: p.ext.clone(),
        subs_file_id: None,
        subs_ext: None,
        settings: p.settings.clone(),
        thread_id: thread.map(|t| t.0 .0),
        reply_to: Some(msg.id.0),
        status_message: None,
        media_group: None,
        url: None,
        upload: None,
        recut: Some(next),
    };
    let id = app.store.enqueue(&NewJob {
        chat_id: msg.chat.id.0,
        user_id: user,
        payload: serde_json::to_value(&payload)?,
        hold_secs: 0,
    })?;
    app.wake.notify_one();
    Ok(format!(
        "Re-cutting clip #{} as job #{id}: {}–{}.",
        clip.rank,
        viralclip_engine::cue::format_time(next.start),
        viralclip_engine::cue::format_time(next.end)
    ))
}
