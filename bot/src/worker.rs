//! The workers: claim jobs fairly, run each off the async threads under its budget (a panic stays
//! inside its job), report progress in the job's status message, and send the results, recording
//! each sent clip as Telegram confirms it so a resumed job never repeats one.

use crate::app::{placed, App};
use crate::budget::Running;
use crate::error::{joined, telegram, Error, Result};
use crate::failure::Cause;
use crate::format;
use crate::job::{InputKind, Payload};
use crate::store::{Job, JobState};
use crate::telegram::{redact, retrying};
use crate::upload::{fit_for_upload, part_key};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use teloxide::prelude::*;
use teloxide::types::{InputFile, MessageId, ReplyParameters, ThreadId};
use tokio::sync::Semaphore;
use viralclip_engine::pipeline::{ClipRequest, Stage};
use viralclip_engine::report::Report;

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
    let mut status = Status {
        bot: app.bot.clone(),
        chat,
        message: p.status_message.map(MessageId),
        last: None,
    };
    if status.message.is_none() {
        status.message = status_message_for(&app, &job, &place).await;
    }
    let dir = app.config.data_dir.join("jobs").join(job.id.to_string());
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
    let input = fetched(app, &p.file_id, dir.join(format!("input.{}", p.ext))).await?;
    let subs = match (&p.subs_file_id, &p.subs_ext) {
        (Some(id), Some(ext)) => Some(fetched(app, id, dir.join(format!("subs.{ext}"))).await?),
        _ => None,
    };
    let req = request(app, p, &input, subs, &dir.join("out"));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Stage, f32)>();
    let progress: viralclip_engine::pipeline::Progress = Arc::new(move |s, f| {
        let _ = tx.send((s, f));
    });
    let clipper = app.clipper.clone();
    let c2 = cancel.clone();
    let mut work = tokio::task::spawn_blocking(move || clipper.clip(&req, progress, c2));
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
    let mut req = ClipRequest::new(input, out);
    req.subs = subs;
    req.select.count = p.settings.count;
    req.select.min_secs = p.settings.min_secs;
    req.select.max_secs = p.settings.max_secs;
    req.language = Some(p.settings.language.clone()).filter(|l| l != "auto");
    req.mode = if p.settings.fast {
        viralclip_engine::media::CutMode::Fast
    } else {
        viralclip_engine::media::CutMode::Precise
    };
    req.limits.max_duration_secs = app.config.max_duration_mins * 60.0;
    req.limits.max_subtitle_bytes = app.config.max_subs_mb << 20;
    req.shape = viralclip_engine::pipeline::ShapeRequest {
        format: p.settings.format,
        captions: p.settings.captions,
        caption_style: Default::default(),
    };
    req
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
                .map_err(telegram("sendVideo: "))?;
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
