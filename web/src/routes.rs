//! The page's routes (axum): the start page and the two vendored scripts, a new job (an upload,
//! streamed to disk and bounded, or a link), a job's page and its event stream, its files (range
//! requests, for `<video>`), and a re-cut. Every route past the token check knows its session;
//! a job of another session is "not found".

// A refusal is the response itself (axum's way); these results are not kept around.
#![allow(clippy::result_large_err)]

use crate::pages;
use crate::runner::report_of;
use crate::session::{self, new_session, session_of, SESSION, TOKEN};
use crate::State;
use axum::extract::{DefaultBodyLimit, Multipart, Path as UrlPath, Request, State as AppState};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use futures_util::stream::{self, Stream};
use maud::Markup;
use std::convert::Infallible;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tower_http::services::ServeFile;
use viralclip_bot::job::{ext_of, InputKind, Payload, SUB_EXTS, VIDEO_EXTS};
use viralclip_bot::recut::ClipState;
use viralclip_bot::retention;
use viralclip_bot::settings::Settings;
use viralclip_bot::store::{Job, JobState, NewJob};
use viralclip_engine::captions::Captions;

pub(crate) fn router(state: Arc<State>) -> Router {
    let limit = (state.config.max_upload_mb + 1) << 20;
    Router::new()
        .route("/", get(index))
        .route(
            "/static/htmx.min.js",
            get(|| script(include_str!("../static/htmx.min.js"))),
        )
        .route(
            "/static/sse.min.js",
            get(|| script(include_str!("../static/sse.min.js"))),
        )
        .route("/jobs", post(new_job))
        .route("/jobs/{id}", get(job_page))
        .route("/jobs/{id}/events", get(events))
        .route("/jobs/{id}/files/{*path}", get(file))
        .route("/recut", post(recut))
        .layer(DefaultBodyLimit::max(limit as usize))
        .layer(middleware::from_fn_with_state(state.clone(), gate))
        .with_state(state)
}

async fn script(body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], body).into_response()
}

/// The access token (when one is set) and the session cookie (made on the first visit).
async fn gate(AppState(state): AppState<Arc<State>>, mut req: Request, next: Next) -> Response {
    let mut set_token = false;
    if let Some(token) = state.config.token.as_deref().filter(|t| !t.is_empty()) {
        if !session::has_token(req.headers(), req.uri().query(), token) {
            return (
                StatusCode::UNAUTHORIZED,
                pages::message("Access", "This page needs its access token: open it as /?token=…"),
            )
                .into_response();
        }
        set_token = session::cookie(req.headers(), TOKEN).is_none();
    }
    let fresh = session_of(req.headers()).is_none().then(new_session);
    if let Some(s) = &fresh {
        // This request already counts as the new session's.
        let cookie = format!("{SESSION}={s}");
        let all = match req.headers().get(header::COOKIE).and_then(|v| v.to_str().ok()) {
            Some(c) => format!("{c}; {cookie}"),
            None => cookie,
        };
        if let Ok(v) = HeaderValue::from_str(&all) {
            req.headers_mut().insert(header::COOKIE, v);
        }
    }
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    if let Some(s) = fresh {
        if let Ok(v) = HeaderValue::from_str(&format!(
            "{SESSION}={s}; Path=/; HttpOnly; SameSite=Lax; Max-Age=31536000"
        )) {
            h.append(header::SET_COOKIE, v);
        }
    }
    if set_token {
        if let Some(t) = &state.config.token {
            if let Ok(v) = HeaderValue::from_str(&format!("{TOKEN}={t}; Path=/; HttpOnly; SameSite=Strict")) {
                h.append(header::SET_COOKIE, v);
            }
        }
    }
    res
}

fn owner(headers: &HeaderMap) -> i64 {
    session_of(headers).unwrap_or(-1)
}

/// The session's job `id`, or 404 (another session's jobs do not exist for it).
fn own_job(state: &State, headers: &HeaderMap, id: i64) -> Result<Job, Response> {
    match state.store.get(id) {
        Ok(j) if j.user_id == owner(headers) => Ok(j),
        _ => Err((StatusCode::NOT_FOUND, pages::message("Not found", "No such job.")).into_response()),
    }
}

async fn index(AppState(state): AppState<Arc<State>>) -> Markup {
    pages::index(state.config.max_upload_mb)
}

fn bad(status: StatusCode, text: impl Into<String>) -> Response {
    (status, pages::message("Sorry", &text.into())).into_response()
}

/// A new job from the form: an upload (streamed to disk, counted, then stored as the job's
/// input folder) or a link (checked now: a refused one is answered at once). Committed, then
/// the browser goes to the job's page.
async fn new_job(AppState(state): AppState<Arc<State>>, headers: HeaderMap, mut form: Multipart) -> Response {
    let user = owner(&headers);
    match state.store.pending_for(user) {
        Ok(p) if p.len() >= state.config.per_session_queue => {
            return bad(
                StatusCode::TOO_MANY_REQUESTS,
                format!("You have {} jobs waiting; start this when one is done.", p.len()),
            )
        }
        Err(e) => return bad(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        _ => {}
    }
    let folder = state.config.web_dir().join("uploads").join(new_session());
    let mut settings = Settings::default();
    let (mut video_ext, mut subs_ext, mut link, mut captions) = (None, None, None, false);
    let max = state.config.max_upload_mb * 1_000_000;
    let mut total = 0u64;
    loop {
        let field = match form.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                return gone_upload(
                    &folder,
                    bad(StatusCode::BAD_REQUEST, format!("the upload broke off: {e}")),
                )
            }
        };
        let name = field.name().unwrap_or("").to_string();
        match name.as_str() {
            "video" | "subs" => {
                let (exts, stem): (&[&'static str], &str) = if name == "video" {
                    (VIDEO_EXTS, "input")
                } else {
                    (SUB_EXTS, "subs")
                };
                let file_name = field.file_name().map(str::to_string).unwrap_or_default();
                if file_name.is_empty() {
                    continue; // no file chosen
                }
                let Some(ext) = ext_of(Some(&file_name), exts) else {
                    return gone_upload(
                        &folder,
                        bad(
                            StatusCode::BAD_REQUEST,
                            format!("{file_name}: not a file this page takes ({})", exts.join(", ")),
                        ),
                    );
                };
                if let Err(e) = tokio::fs::create_dir_all(&folder).await {
                    return bad(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
                }
                match save(field, &folder.join(format!("{stem}.{ext}")), max, &mut total).await {
                    Ok(()) => {}
                    Err(r) => return gone_upload(&folder, r),
                }
                if name == "video" {
                    video_ext = Some(ext);
                } else {
                    subs_ext = Some(ext);
                }
            }
            _ => {
                let text = field.text().await.unwrap_or_default();
                match name.as_str() {
                    "link" => link = Some(text.trim().to_string()).filter(|l| !l.is_empty()),
                    "count" => settings.count = text.trim().parse().unwrap_or(settings.count),
                    "format" => settings.format = text.trim().parse().unwrap_or(settings.format),
                    "captions" => captions = text == "on",
                    _ => {}
                }
            }
        }
    }
    settings.captions = if captions { Captions::Words } else { Captions::Off };
    if let Err(e) = settings.validate() {
        return gone_upload(&folder, bad(StatusCode::BAD_REQUEST, e));
    }
    let (kind, upload, ext, url) = match (video_ext, &link, subs_ext) {
        (Some(ext), _, _) => (InputKind::Video, Some(folder.clone()), ext, None),
        (None, Some(l), _) => {
            let policy = state
                .config
                .links
                .policy(state.config.max_duration_mins * 60.0, None);
            let l2 = l.clone();
            let checked =
                tokio::task::spawn_blocking(move || viralclip_engine::link::check_url(&l2, &policy)).await;
            match checked {
                Ok(Ok(_)) => (InputKind::Video, None, "mp4", Some(l.clone())),
                Ok(Err(e)) => {
                    return gone_upload(
                        &folder,
                        bad(
                            StatusCode::BAD_REQUEST,
                            format!("This link is not taken: {}", e.for_user()),
                        ),
                    )
                }
                Err(e) => return bad(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            }
        }
        (None, None, Some(ext)) => (InputKind::Subtitles, Some(folder.clone()), ext, None),
        (None, None, None) => return bad(StatusCode::BAD_REQUEST, "Choose a video file or paste a link."),
    };
    let payload = Payload {
        kind,
        file_id: String::new(),
        file_size: total,
        ext: ext.to_string(),
        subs_file_id: None,
        subs_ext: if kind == InputKind::Video {
            subs_ext.map(str::to_string)
        } else {
            None
        },
        settings,
        thread_id: None,
        reply_to: None,
        status_message: None,
        media_group: None,
        url,
        upload,
        recut: None,
    };
    if kind == InputKind::Subtitles {
        // A subtitle file alone: the moments, no clips; its file is the job's input.
        if let Err(e) = tokio::fs::rename(
            folder.join(format!("subs.{ext}")),
            folder.join(format!("input.{ext}")),
        )
        .await
        {
            return bad(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
        }
    }
    let id = match enqueue(&state, user, &payload) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let to = format!("/jobs/{id}");
    let mut res = (StatusCode::SEE_OTHER, [(header::LOCATION, to.clone())]).into_response();
    if let Ok(v) = HeaderValue::from_str(&to) {
        res.headers_mut().insert("HX-Redirect", v);
    }
    res
}

fn enqueue(state: &State, user: i64, payload: &Payload) -> Result<i64, Response> {
    let value =
        serde_json::to_value(payload).map_err(|e| bad(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let id = state
        .store
        .enqueue(&NewJob {
            chat_id: user,
            user_id: user,
            payload: value,
            hold_secs: 0,
        })
        .map_err(|e| bad(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    state.wake.notify_one();
    Ok(id)
}

/// An upload refused: its folder removed with it.
fn gone_upload(folder: &Path, r: Response) -> Response {
    let _ = std::fs::remove_dir_all(folder);
    r
}

/// One file field to `dest`, counting every byte against `max` (all fields together).
async fn save(
    mut field: axum::extract::multipart::Field<'_>,
    dest: &Path,
    max: u64,
    total: &mut u64,
) -> Result<(), Response> {
    let mut f = tokio::fs::File::create(dest)
        .await
        .map_err(|e| bad(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    loop {
        match field.chunk().await {
            Ok(Some(b)) => {
                *total += b.len() as u64;
                if *total > max {
                    return Err(bad(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("The upload is over the limit of {} MB.", max / 1_000_000),
                    ));
                }
                f.write_all(&b)
                    .await
                    .map_err(|e| bad(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
            }
            Ok(None) => break,
            Err(e) => return Err(bad(StatusCode::BAD_REQUEST, format!("the upload broke off: {e}"))),
        }
    }
    f.flush()
        .await
        .map_err(|e| bad(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(())
}

fn stage_line(j: &Job) -> String {
    match j.state {
        JobState::Queued => "queued".into(),
        JobState::Running => j.stage.clone().unwrap_or_else(|| "starting".into()),
        JobState::Done => "done".into(),
        JobState::Failed => "failed".into(),
        JobState::Cancelled => "cancelled".into(),
    }
}

async fn job_page(
    AppState(state): AppState<Arc<State>>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<i64>,
) -> Response {
    let j = match own_job(&state, &headers, id) {
        Ok(j) => j,
        Err(r) => return r,
    };
    // A finished job's page shows its results at once; the rest listen for them.
    match finished(&state, &j) {
        Some(m) => pages::job_done(id, m).into_response(),
        None => pages::job(id, &stage_line(&j)).into_response(),
    }
}

/// What a finished job shows (its results, a re-cut's clip, or why it failed); `None` while it
/// runs.
fn finished(state: &State, j: &Job) -> Option<Markup> {
    let dir = retention::job_dir(&state.config.web_dir(), j.id);
    match j.state {
        JobState::Done => {
            let p: Payload = serde_json::from_value(j.payload.clone()).ok()?;
            if p.recut.is_some() {
                let (clip, facts): (ClipState, viralclip_engine::report::ClipFacts) =
                    serde_json::from_slice(&std::fs::read(dir.join("recut.json")).ok()?).ok()?;
                return Some(pages::recut_clip(j.id, &clip, &facts));
            }
            match report_of(&dir) {
                Some(r) => Some(pages::results(j.id, &r, &p.settings)),
                None => Some(pages::failed(j.id, "its files are gone (kept for a while only)")),
            }
        }
        JobState::Failed | JobState::Cancelled => {
            Some(pages::failed(j.id, j.error.as_deref().unwrap_or("cancelled")))
        }
        _ => None,
    }
}

/// The job's progress as server-sent events, read from the store: `progress` when the stage
/// line changes, then one `done` (the results, or why it failed), then the stream ends.
async fn events(
    AppState(state): AppState<Arc<State>>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<i64>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Response> {
    own_job(&state, &headers, id)?;
    let s = stream::unfold(
        (state, None::<String>, false),
        move |(state, last, ended)| async move {
            if ended {
                return None;
            }
            let mut first = last.is_none();
            loop {
                if !first {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                first = false;
                let Ok(j) = state.store.get(id) else { return None };
                if let Some(done) = finished(&state, &j) {
                    let ev = Event::default().event("done").data(done.into_string());
                    return Some((Ok(ev), (state, last, true)));
                }
                let line = stage_line(&j);
                if last.as_deref() != Some(line.as_str()) {
                    let ev = Event::default()
                        .event("progress")
                        .data(pages::progress(id, &line).into_string());
                    return Some((Ok(ev), (state, Some(line), false)));
                }
            }
        },
    );
    Ok(Sse::new(s).keep_alive(KeepAlive::default()))
}

/// A file of the session's job (clips, thumbnails, the timeline), with range requests.
async fn file(
    AppState(state): AppState<Arc<State>>,
    headers: HeaderMap,
    UrlPath((id, path)): UrlPath<(i64, String)>,
    req: Request,
) -> Response {
    if let Err(r) = own_job(&state, &headers, id) {
        return r;
    }
    let rel = PathBuf::from(&path);
    let plain = rel.components().all(|c| matches!(c, Component::Normal(_)));
    let allowed = path == "timeline.png" || path.starts_with("out/clips/");
    let full = retention::job_dir(&state.config.web_dir(), id).join(&rel);
    if !plain || !allowed || !full.is_file() {
        return (StatusCode::NOT_FOUND, "no such file").into_response();
    }
    match tower::ServiceExt::oneshot(ServeFile::new(full), req).await {
        Ok(r) => r.into_response(),
        Err(e) => match e {},
    }
}

#[derive(serde::Deserialize)]
struct RecutForm {
    data: String,
}

/// A re-cut button: the bot's [`ClipState`] moved, queued as a job of its own; the answer is the
/// part of the page that follows it.
async fn recut(
    AppState(state): AppState<Arc<State>>,
    headers: HeaderMap,
    Form(f): Form<RecutForm>,
) -> Response {
    let Some((clip, action)) = ClipState::parse(&f.data) else {
        return bad(StatusCode::BAD_REQUEST, "not a re-cut button");
    };
    let j = match own_job(&state, &headers, clip.job) {
        Ok(j) => j,
        Err(r) => return r,
    };
    let dir = retention::job_dir(&state.config.web_dir(), j.id);
    let Some((report, _)) = retention::kept(&dir, state.config.keep()) else {
        return pages::failed(
            j.id,
            &format!(
                "its files are gone (kept {} h); upload the video again",
                state.config.keep_hours
            ),
        )
        .into_response();
    };
    let Ok(p) = serde_json::from_value::<Payload>(j.payload.clone()) else {
        return bad(StatusCode::INTERNAL_SERVER_ERROR, "a job without its payload");
    };
    let Some(next) = clip.after_in(action, &report, p.settings.format) else {
        return maud::html! { p.error { "It can't move that way: a clip stays within the video and 3–180 s long." } }.into_response();
    };
    let payload = Payload {
        recut: Some(next),
        upload: None,
        url: None,
        ..p
    };
    match enqueue(&state, owner(&headers), &payload) {
        Ok(id) => pages::live(id, "queued").into_response(),
        Err(r) => r,
    }
}
