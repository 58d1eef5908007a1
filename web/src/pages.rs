//! The page's HTML (maud: escaped by default, checked when it compiles): the start page, a job
//! page whose progress arrives by server-sent events, the results (timeline, moments, previews,
//! downloads, re-cut buttons) and a re-cut's clip.

use maud::{html, Markup, PreEscaped, DOCTYPE};
use viralclip_bot::recut::ClipState;
use viralclip_bot::settings::Settings;
use viralclip_engine::cue::format_time;
use viralclip_engine::format::Format;
use viralclip_engine::report::{ClipFacts, MomentReport, Report};

const STYLE: &str = "
body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222;background:#fafafa}
h1{font-size:1.6rem} form{display:grid;gap:.6rem;max-width:32rem;padding:1rem;border:1px solid #ddd;border-radius:8px;background:#fff}
.moment{display:grid;grid-template-columns:minmax(0,16rem) 1fr;gap:1rem;padding:1rem;margin:1rem 0;border:1px solid #ddd;border-radius:8px;background:#fff}
.moment video{width:100%;max-height:28rem;background:#000;border-radius:6px}
.score{font-weight:bold;color:#b3261e} .emotions{color:#555;font-size:.9rem} blockquote{margin:.5rem 0;padding-left:.8rem;border-left:3px solid #ccc}
.adjust button{margin:.15rem;font-size:.8rem} .timeline{width:100%;border:1px solid #ddd;border-radius:6px}
.progress{font-size:1.2rem;padding:1rem;background:#fff;border:1px solid #ddd;border-radius:8px} .error{color:#b3261e}
";

fn page(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · viralclip" }
                style { (PreEscaped(STYLE)) }
                script src="/static/htmx.min.js" {}
                script src="/static/sse.min.js" {}
            }
            body hx-ext="sse" { h1 { a href="/" { "viralclip" } } (body) }
        }
    }
}

/// Upload a file or paste a link, with the bot's settings' main choices.
pub(crate) fn index(max_upload_mb: u64) -> Markup {
    let d = Settings::default();
    page(
        "Clip a video",
        html! {
            p { "Upload a video (and its subtitles, if you have them) or paste a link: you get its most viral moments as clips." }
            form #new method="post" action="/jobs" enctype="multipart/form-data" {
                label { "Video file (up to " (max_upload_mb) " MB) " input #video type="file" name="video" accept="video/*,.mkv,.webm,.mov,.avi,.m4v"; }
                label { "Subtitles (.srt, .vtt; optional) " input #subs type="file" name="subs" accept=".srt,.vtt"; }
                label { "or a link " input #link type="url" name="link" placeholder="https://youtu.be/…" size="40"; }
                label { "Clips " input type="number" name="count" min="1" max="10" value=(d.count); }
                label { "Format "
                    select name="format" {
                        @for f in Format::ALL { option value=(f.to_string()) selected[f == d.format] { (f.to_string()) } }
                    }
                }
                label { input type="checkbox" name="captions" value="on" checked; " burned-in captions" }
                button #start type="submit" { "Find the moments" }
            }
        },
    )
}

/// A job's page: its progress, live, until the results replace it.
pub(crate) fn job(id: i64, stage: &str) -> Markup {
    page(&format!("Job #{id}"), html! { (live(id, stage)) })
}

/// A finished job's page.
pub(crate) fn job_done(id: i64, body: Markup) -> Markup {
    page(&format!("Job #{id}"), body)
}

/// The part that listens to job `id`'s events; the `done` event replaces it.
pub(crate) fn live(id: i64, stage: &str) -> Markup {
    html! {
        div id=(format!("job-{id}")) sse-connect=(format!("/jobs/{id}/events")) {
            div.progress sse-swap="progress" { (stage) }
            div sse-swap="done" hx-target=(format!("#job-{id}")) hx-swap="outerHTML" {}
        }
    }
}

/// A job's progress line.
pub(crate) fn progress(id: i64, stage: &str) -> Markup {
    html! { span #progress { "Job #" (id) ": " (stage) } }
}

pub(crate) fn failed(id: i64, why: &str) -> Markup {
    html! { div id=(format!("job-{id}")) .error { "Job #" (id) " failed: " (why) } }
}

fn file_url(job: i64, rel: &std::path::Path) -> String {
    format!("/jobs/{job}/files/out/{}", rel.display())
}

/// The results: the timeline, then every moment.
pub(crate) fn results(id: i64, r: &Report, settings: &Settings) -> Markup {
    html! {
        div id=(format!("job-{id}")) .results {
            p #summary { (r.moments.len()) " moment(s) from " (r.transcript.cues) " lines, in " (format!("{:.0}", r.timings.total)) " s"
                @if let Some(s) = &r.input.source { " · from " a href=(s.webpage_url) { (s.title) } } }
            @if !r.timeline.is_empty() { img.timeline src=(format!("/jobs/{id}/files/timeline.png")) alt="Virality across the video"; }
            @for m in &r.moments { (moment(id, m, settings)) }
        }
    }
}

fn moment(id: i64, m: &MomentReport, settings: &Settings) -> Markup {
    let state = ClipState {
        job: id,
        rank: m.rank,
        start: m.start,
        end: m.end,
        format: settings.format,
        captions: settings.captions != viralclip_engine::captions::Captions::Off,
    };
    html! {
        article.moment id=(format!("moment-{}", m.rank)) {
            div { @if let Some(c) = &m.clip { (player(id, c)) } }
            div {
                h3 { "#" (m.rank) " " (m.title) }
                p { span.score { "virality " (format!("{:.2}", m.virality)) } " · " (format_time(m.start)) "–" (format_time(m.end)) " (" (format!("{:.0}", m.duration)) " s)" }
                p.emotions { @for (i, e) in m.emotions.iter().enumerate() { @if i > 0 { " · " } (e.label) " " (format!("{:.2}", e.p)) } }
                blockquote { (m.quote) }
                @if !m.hashtags.is_empty() { p { (m.hashtags.join(" ")) } }
                @if let Some(c) = &m.clip { p { a download href=(file_url(id, &c.path)) { "Download clip" } } }
                (buttons(&state, m.rank))
                div id=(format!("recuts-{}", m.rank)) {}
            }
        }
    }
}

fn player(job: i64, c: &ClipFacts) -> Markup {
    html! {
        video controls preload="metadata" playsinline width=(c.width) height=(c.height)
            poster=(file_url(job, &c.thumbnail)) src=(file_url(job, &c.path)) {}
    }
}

/// The re-cut buttons (the bot's): each posts its callback data; the new clip lands above.
fn buttons(state: &ClipState, rank: usize) -> Markup {
    html! {
        div.adjust {
            @for row in state.keyboard() {
                div { @for (label, data) in row {
                    button hx-post="/recut" hx-vals=(serde_json::json!({ "data": data }).to_string())
                        hx-target=(format!("#recuts-{rank}")) hx-swap="afterbegin" { (label) }
                } }
            }
        }
    }
}

/// A re-cut's clip, with its own buttons.
pub(crate) fn recut_clip(id: i64, of: &ClipState, c: &ClipFacts) -> Markup {
    html! {
        div id=(format!("job-{id}")) .recut {
            p { "Re-cut #" (of.rank) ": " (format_time(of.start)) "–" (format_time(of.end)) ", " (of.format.to_string())
                ", captions " (if of.captions { "on" } else { "off" }) }
            (player(of.job, c))
            p { a download href=(file_url(of.job, &c.path)) { "Download" } }
            (buttons(of, of.rank))
        }
    }
}

pub(crate) fn message(title: &str, text: &str) -> Markup {
    page(title, html! { p.error { (text) } p { a href="/" { "Back" } } })
}
