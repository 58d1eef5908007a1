//! The workers: claim jobs fairly, run each off the async threads under its budget (a panic stays
//! inside its job), report progress in the job's status message, and send the results, recording
//! each sent clip as Telegram confirms it so a resumed job never repeats one.

use crate::app::{placed, App};
use crate::budget::Running;
use crate::error::{joined, telegram, Error, Result};
use crate::failure::Cause;
use crate::format;
use crate::job::{InputKind, Payload};
use crate::recut::ClipState;
use crate::retention;
use crate::store::{Job, JobState};
use crate::telegram::{redact, retrying};
use crate::upload::{fit_for_upload, part_key};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use teloxide::prelude::*;
use teloxide::types::{
    InlineKeyboardButton, InlineKeyboardMarkup, InputFile, MessageId, ReplyParameters, ThreadId,
};
use tokio::sync::Semaphore;
use viralclip_engine::captions::Captions;
use viralclip_engine::pipeline::{ClipRequest, Recut, Stage};
use viralclip_engine::report::{ClipFacts, Report};

/// Runs jobs until shutdown, at most `workers` at once; at shutdown cancels what runs (it goes
/// back to the queue) and waits out the grace period.
pub(crate) async fn worker_loop(app: Arc<App>) {
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
                            Ok(Err(Error::Job("abandoned past its budget".into())))
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
        Err(e) => Error::from_join(e, "the job's task"),
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
pub(crate) struct Status {
    pub(crate) bot: Bot,
    pub(crate) chat: ChatId,
    pub(crate) message: Option<MessageId>,
    pub(crate) last: Option<(String, Instant)>,
}

impl Status {
    /// Shows `text` (now when `force`, else unless the last edit is under 2 s old).
    pub(crate) async fn set(&mut self, text: String, force: bool) {
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

/// Runs a job: its report (the clips it already cut when it resumes, else the engine's run on the
/// downloaded input), then what is left to send.
async fn process(app: Arc<App>, job: Job, cancel: Arc<AtomicBool>) -> Result<()> {
    let p: Payload = serde_json::from_value(job.payload.clone()).map_err(Error::Payload)?;
    let chat = ChatId(job.chat_id);
    let place = Place {
        chat,
        thread: p.thread_id.map(|t| ThreadId(MessageId(t))),
        reply: p
            .reply_to
            .map(|r| ReplyParameters::new(MessageId(r)).allow_sending_without_reply()),
    };
    if let Some(clip) = p.recut {
        return recut_job(&app, &job, &p, clip, &place).await;
    }
    let mut status = Status {
        bot: app.bot.clone(),
        chat,
        message: p.status_message.map(MessageId),
        last: None,
    };
    if status.message.is_none() {
        status.message = status_message_for(&app, &job, &place).await;
    }
    let dir = retention::job_dir(&app.config.data_dir, job.id);
    std::fs::create_dir_all(&dir).map_err(|e| Error::file(&dir, e))?;
    let report = match resumed_report(&dir.join("out")) {
        Some(r) => r,
        None => clip(&app, &job, &p, &dir, &mut status, &cancel).await?,
    };
    if cancel.load(Ordering::SeqCst) {
        return Err(Error::Job("cancelled".into()));
    }
    let _ = app.store.set_stage(job.id, "uploading");
    send_results(&app, &job, &p, &dir, &report, &place, &mut status, &cancel).await?;
    retention::touch(&dir);
    status
        .set(
            format!(
                "✅ done: {} moment(s) in {:.0} s",
                report.moments.len(),
                report.timings.total
            ),
            true,
        )
        .await;
    Ok(())
}

/// Where a job's messages go: its chat, its topic thread, and a reply to the message it came in.
struct Place {
    chat: ChatId,
    thread: Option<ThreadId>,
    reply: Option<ReplyParameters>,
}

/// The report a resumed job made before, when every clip it names is still there.
fn resumed_report(out: &Path) -> Option<Report> {
    std::fs::read_to_string(out.join("report.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .filter(|r: &Report| {
            r.moments
                .iter()
                .all(|m| m.clip.as_ref().is_none_or(|c| out.join(&c.path).is_file()))
        })
}

/// Downloads the job's input (and subtitles), runs the engine off the async threads with the
/// job's settings, and shows its progress.
async fn clip(
    app: &Arc<App>,
    job: &Job,
    p: &Payload,
    dir: &Path,
    status: &mut Status,
    cancel: &Arc<AtomicBool>,
) -> Result<Report> {
    status.set("⏳ downloading".into(), true).await;
    let _ = app.store.set_stage(job.id, "downloading");
    let (input, site_subs, source) = match &p.url {
        Some(url) => {
            let f = fetched_link(app, job, p, url, dir, status, cancel).await?;
            (f.video, f.subs, Some(f.source))
        }
        None => (
            fetched(app, &p.file_id, dir.join(format!("input.{}", p.ext))).await?,
            None,
            None,
        ),
    };
    let subs = match (&p.subs_file_id, &p.subs_ext) {
        (Some(id), Some(ext)) => Some(fetched(app, id, dir.join(format!("subs.{ext}"))).await?),
        _ => site_subs,
    };
    let mut req = request(app, p, &input, subs, &dir.join("out"));
    req.source = source;
    let clipper = app.clipper.clone();
    with_progress(app, job, status, cancel, move |progress, cancel| {
        clipper.clip(&req, progress, cancel)
    })
    .await
}

/// Runs `work` off the async threads, showing its progress in the status message and recording
/// each new stage in the store.
async fn with_progress<T: Send + 'static>(
    app: &App,
    job: &Job,
    status: &mut Status,
    cancel: &Arc<AtomicBool>,
    work: impl FnOnce(viralclip_engine::pipeline::Progress, Arc<AtomicBool>) -> Result<T> + Send + 'static,
) -> Result<T> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Stage, f32)>();
    let progress: viralclip_engine::pipeline::Progress = Arc::new(move |s, f| {
        let _ = tx.send((s, f));
    });
    let c2 = cancel.clone();
    let mut work = tokio::task::spawn_blocking(move || work(progress, c2));
    let mut last_stage = None;
    loop {
        tokio::select! {
            r = &mut work => return joined(r, "the engine's thread")?,
            Some((s, f)) = rx.recv() => {
                let changed = last_stage != Some(s);
                if changed {
                    let _ = app.store.set_stage(job.id, s.label());
                    last_stage = Some(s);
                }
                status.set(stage_text(s, f), changed).await;
            }
        }
    }
}

/// A link's video (and the site's subtitles), fetched into `dir/link/` with the bot's link
/// policy and the job's language, its progress in the status message.
async fn fetched_link(
    app: &App,
    job: &Job,
    p: &Payload,
    url: &str,
    dir: &Path,
    status: &mut Status,
    cancel: &Arc<AtomicBool>,
) -> Result<viralclip_engine::link::Fetched> {
    let (links, max) = (app.config.links.clone(), app.config.max_duration_mins * 60.0);
    let (url, language, into) = (url.to_string(), p.settings.language.clone(), dir.join("link"));
    with_progress(app, job, status, cancel, move |progress, cancel| {
        crate::job::link_input(
            &links,
            max,
            &language,
            &url,
            &into,
            &|f| progress(Stage::Download, f),
            &cancel,
        )
    })
    .await
}

/// The file `id` at `dest`: downloaded there unless an earlier attempt did.
async fn fetched(app: &App, id: &str, dest: std::path::PathBuf) -> Result<std::path::PathBuf> {
    if dest.is_file() {
        Ok(dest)
    } else {
        app.download(id, &dest).await
    }
}

/// The engine's request for a job: its settings and the bot's limits.
fn request(
    app: &App,
    p: &Payload,
    input: &Path,
    subs: Option<std::path::PathBuf>,
    out: &Path,
) -> ClipRequest {
    p.settings.request(
        input,
        subs,
        out,
        app.config.max_duration_mins * 60.0,
        app.config.max_subs_mb << 20,
    )
}

/// The part of the timeline's record among the sent messages.
const TIMELINE: u32 = 1000;

/// Sends what the job has not sent yet: its clips (each split to fit the upload limit, each part
/// recorded as Telegram confirms it), or the moments as text for subtitles alone; then the
/// timeline picture.
#[allow(clippy::too_many_arguments)]
async fn send_results(
    app: &App,
    job: &Job,
    p: &Payload,
    dir: &Path,
    report: &Report,
    place: &Place,
    status: &mut Status,
    cancel: &AtomicBool,
) -> Result<()> {
    let Place { chat, thread, reply } = place;
    let (chat, thread) = (*chat, *thread);
    let sent = app.store.sent(job.id)?;
    let total = report.moments.len();
    if p.kind == InputKind::Subtitles || report.moments.iter().all(|m| m.clip.is_none()) {
        if !sent.contains(&0) {
            let text = format::moments_text(report);
            let m = retrying(5, || {
                placed!(app.bot.send_message(chat, text.clone()), thread, reply.as_ref()).send()
            })
            .await
            .map_err(telegram(""))?;
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
                return Err(Error::Job("cancelled".into()));
            }
            status
                .set(format!("⏳ uploading clip {rank} of {total}"), true)
                .await;
            let caption = format::caption(m, total);
            let parts = fit_for_upload(app.config.max_upload_bytes(), dir, m, clip)?;
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
                // The buttons that re-cut the clip go under its last part.
                let buttons = (k + 1 == n).then(|| {
                    buttons(&ClipState {
                        job: job.id,
                        rank: m.rank,
                        start: m.start,
                        end: m.end,
                        format: p.settings.format,
                        captions: p.settings.captions != Captions::Off,
                    })
                });
                let msg = send_clip(app, place, part, &cap, buttons).await?;
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
    if !sent.contains(&TIMELINE) && !report.timeline.is_empty() {
        let png = dir.join("timeline.png");
        match crate::timeline::draw(report, &png) {
            Ok(()) => {
                let m = retrying(5, || {
                    let r = app
                        .bot
                        .send_photo(chat, InputFile::file(&png))
                        .caption("Virality across the video; the clips are shaded.");
                    placed!(r, thread, None::<&ReplyParameters>).send()
                })
                .await
                .map_err(telegram("sendPhoto: "))?;
                app.store.mark_sent(job.id, TIMELINE, m.id.0 as i64)?;
            }
            Err(e) => tracing::warn!("timeline: {e}"),
        }
    }
    Ok(())
}

/// The job's status message: the one its "Queued" reply became (which may still be on its way
/// when a worker takes the job at once), else, for a job whose reply was lost in a crash, a
/// fresh one, recorded so later edits and the final line have somewhere to go.
async fn status_message_for(app: &App, job: &Job, place: &Place) -> Option<MessageId> {
    let (chat, thread, reply) = (place.chat, place.thread, place.reply.as_ref());
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

/// The keyboard of a clip's re-cut buttons.
fn buttons(clip: &ClipState) -> InlineKeyboardMarkup {
    InlineKeyboardMarkup::new(clip.keyboard().into_iter().map(|row| {
        row.into_iter()
            .map(|(l, d)| InlineKeyboardButton::callback(l, d))
            .collect::<Vec<_>>()
    }))
}

/// Sends one clip file with everything sendVideo should have (width, height, duration,
/// thumbnail, streaming), retrying; `buttons` under it.
async fn send_clip(
    app: &App,
    place: &Place,
    part: &ClipFacts,
    caption: &str,
    buttons: Option<InlineKeyboardMarkup>,
) -> Result<Message> {
    let Place { chat, thread, reply } = place;
    retrying(6, || {
        let mut r = app
            .bot
            .send_video(*chat, InputFile::file(&part.path))
            .caption(caption.to_string())
            .width(part.width)
            .height(part.height)
            .duration(part.duration.round().max(1.0) as u32)
            .thumbnail(InputFile::file(&part.thumbnail))
            .supports_streaming(true);
        if let Some(b) = &buttons {
            r = r.reply_markup(b.clone());
        }
        placed!(r, *thread, reply.as_ref()).send()
    })
    .await
    .map_err(telegram("sendVideo: "))
}

/// A re-cut job: one clip of job `clip.job` cut again from its kept files (no transcription, no
/// scoring) and sent with its own buttons, recorded as sent like any clip.
async fn recut_job(app: &Arc<App>, job: &Job, p: &Payload, clip: ClipState, place: &Place) -> Result<()> {
    if app.store.sent(job.id)?.contains(&0) {
        return Ok(());
    }
    let dir = retention::job_dir(&app.config.data_dir, clip.job);
    let keep = app.config.keep();
    let d2 = dir.clone();
    let kept = tokio::task::spawn_blocking(move || retention::kept(&d2, keep));
    let Some((report, input)) = joined(kept.await, "reading a job's files")? else {
        return Err(Error::Gone(format!(
            "the files of job #{} are gone (they are kept {} h after the job); send the video again",
            clip.job, app.config.keep_hours
        )));
    };
    retention::touch(&dir);
    let r = Recut {
        rank: clip.rank,
        start: clip.start,
        end: clip.end,
        shape: viralclip_engine::pipeline::ShapeRequest {
            format: clip.format,
            captions: clip.captions_mode(),
            caption_style: Default::default(),
        },
        mode: if p.settings.fast && clip.format == viralclip_engine::format::Format::Original {
            viralclip_engine::media::CutMode::Fast
        } else {
            viralclip_engine::media::CutMode::Precise
        },
        name: format!("clip-{:02}-r{}", clip.rank, job.id),
    };
    let clipper = app.clipper.clone();
    let (out, rep) = (dir.join("out"), report.clone());
    let made = tokio::task::spawn_blocking(move || clipper.recut(&input, &out, &rep, &r));
    let mut facts = joined(made.await, "the engine's thread")??;
    facts.path = dir.join("out").join(&facts.path);
    facts.thumbnail = dir.join("out").join(&facts.thumbnail);
    let caption = format!(
        "#{} re-cut: {}–{} ({:.0} s), {}, captions {}",
        clip.rank,
        viralclip_engine::cue::format_time(clip.start),
        viralclip_engine::cue::format_time(clip.end),
        clip.end - clip.start,
        clip.format,
        if clip.captions { "on" } else { "off" }
    );
    let msg = send_clip(app, place, &facts, &caption, Some(buttons(&clip))).await?;
    app.store.mark_sent(job.id, 0, msg.id.0 as i64)?;
    Ok(())
}
