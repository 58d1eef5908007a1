//! The page's job runner: claims the page's jobs one at a time from its store, runs them with
//! the engine off the async threads (the input from the upload folder or a link, the settings the
//! job stored), records progress as the job's stage (which the page's event stream reads) and
//! ends each job as done or failed with the line its user reads (the bot's [`Cause`]).

use crate::State;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use viralclip_bot::failure::Cause;
use viralclip_bot::job::Payload;
use viralclip_bot::recut::ClipState;
use viralclip_bot::retention;
use viralclip_bot::store::{Job, JobStore};
use viralclip_engine::pipeline::{Recut, ShapeRequest, Stage};
use viralclip_engine::report::Report;

/// Runs jobs until the process ends.
pub(crate) async fn run_jobs(state: Arc<State>) {
    loop {
        let job = match state.store.claim_fair(1) {
            Ok(Some(j)) => j,
            Ok(None) => {
                tokio::select! {
                    _ = state.wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
                continue;
            }
            Err(e) => {
                tracing::error!("claiming a job: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let (s, j) = (state.clone(), job.clone());
        let result = tokio::task::spawn_blocking(move || process(&s, &j)).await;
        let error = match result {
            Ok(Ok(())) => {
                let _ = state.store.finish(job.id);
                continue;
            }
            Ok(Err(e)) => e,
            Err(e) => viralclip_bot::Error::from_join(e, "the job's thread"),
        };
        let cause = Cause::of(&error, None);
        tracing::warn!(
            job = job.id,
            "failed: {}",
            viralclip_bot::telegram::redact(&format!("{error:#}"))
        );
        let _ = state
            .store
            .fail(job.id, &cause.user_text(job.attempts.max(1)), cause.attempts(2));
    }
}

/// The stage line the page shows: `transcribing 42%`; written at most every 300 ms unless the
/// stage changes (each write is a durable commit).
struct Stages {
    store: Arc<dyn JobStore>,
    id: i64,
    last: Mutex<(Option<Stage>, Instant)>,
}

impl Stages {
    fn set(&self, s: Stage, f: f32) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.0 == Some(s) && last.1.elapsed() < Duration::from_millis(300) && f < 1.0 {
            return;
        }
        *last = (Some(s), Instant::now());
        let _ = self.store.set_stage(
            self.id,
            &format!("{} {:.0}%", s.label(), (f * 100.0).clamp(0.0, 100.0)),
        );
    }
}

fn process(state: &State, job: &Job) -> viralclip_bot::Result<()> {
    let p: Payload = serde_json::from_value(job.payload.clone()).map_err(viralclip_bot::Error::Payload)?;
    let web = state.config.web_dir();
    let dir = retention::job_dir(&web, job.id);
    std::fs::create_dir_all(&dir).map_err(|e| viralclip_bot::Error::file(&dir, e))?;
    let stages = Arc::new(Stages {
        store: state.store.clone(),
        id: job.id,
        last: Mutex::new((None, Instant::now())),
    });
    if let Some(clip) = p.recut {
        return recut(state, job, &dir, clip, &stages);
    }
    let cancel = AtomicBool::new(false);
    let (input, subs, source) = match (&p.url, &p.upload) {
        (Some(url), _) => {
            let f = viralclip_bot::job::link_input(
                &state.config.links,
                state.config.max_duration_mins * 60.0,
                &p.settings.language,
                url,
                &dir.join("link"),
                &|f| stages.set(Stage::Download, f),
                &cancel,
            )?;
            (f.video, f.subs, Some(f.source))
        }
        (None, Some(upload)) => {
            let input = upload.join(format!("input.{}", p.ext));
            let subs = p.subs_ext.as_ref().map(|e| upload.join(format!("subs.{e}")));
            (input, subs, None)
        }
        (None, None) => return Err(viralclip_bot::Error::Job("a web job with no input".into())),
    };
    let mut req = p.settings.request(
        &input,
        subs,
        &dir.join("out"),
        state.config.max_duration_mins * 60.0,
        state.config.max_subs_mb << 20,
    );
    req.source = source;
    let progress: viralclip_engine::pipeline::Progress = {
        let stages = stages.clone();
        Arc::new(move |s, f| stages.set(s, f))
    };
    let report = state
        .clipper
        .clip(&req, progress, Arc::new(AtomicBool::new(false)))?;
    if let Err(e) = viralclip_bot::timeline::draw(&report, &dir.join("timeline.png")) {
        tracing::warn!(job = job.id, "timeline: {e}");
    }
    retention::touch(&dir);
    Ok(())
}

/// A re-cut: one clip of the session's job `clip.job` cut again into that job's folder; the
/// result's facts in this job's `recut.json`.
fn recut(
    state: &State,
    job: &Job,
    dir: &Path,
    clip: ClipState,
    stages: &Stages,
) -> viralclip_bot::Result<()> {
    let of = retention::job_dir(&state.config.web_dir(), clip.job);
    let Some((report, input)) = retention::kept(&of, state.config.keep()) else {
        return Err(viralclip_bot::Error::Gone(format!(
            "the files of job #{} are gone (they are kept {} h); upload the video again",
            clip.job, state.config.keep_hours
        )));
    };
    stages.set(Stage::Cut, 0.0);
    retention::touch(&of);
    let r = Recut {
        rank: clip.rank,
        start: clip.start,
        end: clip.end,
        shape: ShapeRequest {
            format: clip.format,
            captions: clip.captions_mode(),
            caption_style: Default::default(),
        },
        mode: viralclip_engine::media::CutMode::Precise,
        name: format!("clip-{:02}-r{}", clip.rank, job.id),
    };
    let facts = state.clipper.recut(&input, &of.join("out"), &report, &r)?;
    let record = dir.join("recut.json");
    std::fs::write(&record, serde_json::to_vec(&(clip, facts))?)
        .map_err(|e| viralclip_bot::Error::file(&record, e))?;
    stages.set(Stage::Cut, 1.0);
    Ok(())
}

/// A finished job's report, from its folder.
pub(crate) fn report_of(dir: &Path) -> Option<Report> {
    serde_json::from_slice(&std::fs::read(dir.join("out/report.json")).ok()?).ok()
}
