//! The bot under faults, against the fake Bot API: a panic and a hostile subtitle file reach the
//! user as one short line (not retried); a file that holds more than its header says, and jobs
//! past their time or memory budget, fail with a reason and free the worker; and `kill -9` at
//! 20+ points of real jobs never sends a confirmed clip twice, and every resumed job ends with a
//! status message.

mod common;

use common::*;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use viralclip_bot::clipper::Clipper;
use viralclip_bot::failure::CRASHED;
use viralclip_engine::pipeline::{ClipRequest, Progress};
use viralclip_engine::report::Report;

const USER: i64 = 100;
const ADMIN: i64 = 7;

/// An engine that panics the way a parser bug does.
#[derive(Default)]
struct Panicking {
    calls: AtomicUsize,
}

impl Clipper for Panicking {
    fn clip(&self, _: &ClipRequest, _: Progress, _: Arc<AtomicBool>) -> viralclip_bot::Result<Report> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        panic!("byte index 3 is not a char boundary; it is inside 'ё' (bytes 2..4) of `ёё0`");
    }
    fn switch_model(&self, _: &Path) -> viralclip_bot::Result<()> {
        Ok(())
    }
    fn model_dir(&self) -> PathBuf {
        repo().join("assets/model")
    }
}

/// The first message to the user that starts with "Job #`id` failed".
fn failure(calls: &[Call], id: u32) -> Option<String> {
    calls
        .iter()
        .find(|c| {
            c.method == "sendMessage"
                && in_chat(c, USER)
                && c.text().starts_with(&format!("Job #{id} failed"))
        })
        .map(|c| c.text().to_string())
}

async fn wait_failure(f: &Fake, id: u32) -> String {
    f.wait_for(240, &format!("job #{id}'s failure"), |c| failure(c, id).is_some())
        .await;
    failure(&f.calls.lock().unwrap(), id).unwrap()
}

fn subtitle_doc(f: &Fake, dir: &Path, msg: i64, name: &str, text: &str) -> serde_json::Value {
    let p = dir.join(format!("{msg}-{name}"));
    std::fs::write(&p, text).unwrap();
    let id = format!("doc{msg}");
    f.add_file(&id, &p, text.len() as u64);
    update(document_message(msg, USER, USER, &id, name, text.len() as u64))
}

fn attempts(data: &Path, id: i64) -> u32 {
    rusqlite::Connection::open(data.join("jobs.sqlite"))
        .unwrap()
        .query_row("SELECT attempts FROM jobs WHERE id = ?1", [id], |r| r.get(0))
        .unwrap()
}

/// A panic in the engine: the user reads one short line in their terms (no source location, no
/// byte index), the admins get the panic's text, and the job is not retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_panic_reaches_the_user_as_one_short_line_and_the_admins_in_full() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start().await;
    let f = srv.fake.clone();
    let data = dir.path().join("data");
    let mut cfg = config(&srv.url, &data, &repo());
    cfg.max_attempts = 3;
    let engine = Arc::new(Panicking::default());
    let _bot = start_bot(cfg, engine.clone());
    f.push_update(subtitle_doc(
        &f,
        dir.path(),
        20,
        "a.srt",
        "1\n00:00:01,000 --> 00:00:02,000\nПривет\n",
    ));
    let failed = wait_failure(&f, 1).await;
    assert!(failed.contains(CRASHED), "{failed}");
    for raw in ["byte index", "panicked", ".rs:", "char boundary"] {
        assert!(!failed.contains(raw), "the user sees no {raw:?}: {failed}");
    }
    f.wait_for(30, "the admin's message", |c| {
        c.iter()
            .any(|c| in_chat(c, ADMIN) && c.text().contains("char boundary"))
    })
    .await;
    assert_eq!(engine.calls.load(Ordering::SeqCst), 1, "a panic is not retried");
    assert_eq!(attempts(&data, 1), 1);
    let told = f
        .calls("sendMessage")
        .iter()
        .filter(|c| c.text().starts_with("Job #1 failed"))
        .count();
    assert_eq!(told, 1, "told once");
}

/// The subtitle file that once made the parser panic (a multibyte time fraction) now gets a
/// short reason that names the line, at once (no retries).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_subtitle_file_that_made_the_parser_panic_gets_a_short_reason() {
    let Some(e5) = e5() else { return };
    let dir = tempfile::tempdir().unwrap();
    let srv = start().await;
    let f = srv.fake.clone();
    let data = dir.path().join("data");
    let mut cfg = config(&srv.url, &data, &e5);
    cfg.max_attempts = 3;
    let _bot = start_bot(cfg, engine_clipper(&e5, None));
    f.push_update(subtitle_doc(
        &f,
        dir.path(),
        20,
        "bad.srt",
        "1\n00:00:01,ёё --> 00:00:02,000\nтекст\n",
    ));
    let failed = wait_failure(&f, 1).await;
    assert!(failed.contains("subtitles, line"), "{failed}");
    assert!(
        !failed.contains("panicked") && !failed.contains(".rs:"),
        "{failed}"
    );
    assert_eq!(attempts(&data, 1), 1, "bad input is not retried");
}

/// Budgets, each in a bot of its own over one loaded engine, with one worker: a file whose header
/// says 20 s but which holds 10 min of audio, under a 1-minute limit, is stopped while decoding;
/// under a 3-second time budget and under a 20 MB memory budget the same file's job stops with
/// that reason. After each, a subtitle job finishes: the worker is free. None is retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn budgets_stop_jobs_with_a_reason_and_free_the_worker() {
    let Some(e5) = e5() else { return };
    let Some(whisper) = whisper_tiny_en() else { return };
    let dir = tempfile::tempdir().unwrap();
    let liar = lying_mkv(dir.path(), 600);
    let engine = engine_clipper(&e5, Some(&whisper));
    type Tweak = fn(&mut viralclip_bot::BotConfig);
    let cases: [(&str, Tweak, &[&str]); 3] = [
        (
            "duration",
            |c| c.max_duration_mins = 1.0,
            &[
                "over the limits",
                "more than 60 s of audio (its header says 20 s)",
            ],
        ),
        (
            "time",
            |c| c.job_minutes = 0.05,
            &["took longer than this bot's limit of 3 s"],
        ),
        (
            "memory",
            |c| c.job_memory_mb = 20,
            &["more memory than this bot's limit of 20 MB"],
        ),
    ];
    for (name, tweak, expect) in cases {
        let srv = start().await;
        let f = srv.fake.clone();
        let data = dir.path().join(format!("data-{name}"));
        let mut cfg = config(&srv.url, &data, &e5);
        cfg.max_attempts = 3;
        tweak(&mut cfg);
        let bot = start_bot(cfg, engine.clone());
        f.add_file("liar", &liar, std::fs::metadata(&liar).unwrap().len());
        f.push_update(update(document_message(30, USER, USER, "liar", "talk.mkv", 4000)));
        let t = Instant::now();
        let failed = wait_failure(&f, 1).await;
        for e in expect {
            assert!(failed.contains(e), "{name}: {e:?} in {failed:?}");
        }
        eprintln!(
            "{name}: failed after {:.1} s: {failed}",
            t.elapsed().as_secs_f64()
        );
        assert_eq!(attempts(&data, 1), 1, "{name}: not retried");
        // The worker is free: the next job (subtitles alone) gets its moments.
        f.push_update(subtitle_doc(
            &f,
            dir.path(),
            31,
            "ok.srt",
            &std::fs::read_to_string(demo_srt(dir.path())).unwrap(),
        ));
        f.wait_for(120, "the next job's moments", |c| {
            c.iter()
                .any(|c| c.method == "sendMessage" && c.text().contains("moments from"))
                && c.iter()
                    .any(|c| c.method == "editMessageText" && c.text().starts_with("✅ done"))
        })
        .await;
        drop(bot);
    }
}

/// One kill point: SIGKILL at the `nth` call of `method` (whose text holds `needle`) after the
/// bot starts, before answering it (`after_ms: None`) or that long after.
#[derive(Debug, Clone, Copy)]
struct Point {
    method: &'static str,
    needle: &'static str,
    nth: usize,
    after_ms: Option<u64>,
}

const fn at(method: &'static str, nth: usize, after_ms: Option<u64>) -> Point {
    Point {
        method,
        needle: "",
        nth,
        after_ms,
    }
}

const fn at_text(method: &'static str, needle: &'static str, after_ms: Option<u64>) -> Point {
    Point {
        method,
        needle,
        nth: 1,
        after_ms,
    }
}

/// A kill at which the bot had not read Telegram's answer yet: the call was in flight.
fn in_flight(after: Option<Duration>) -> bool {
    after.is_none_or(|d| d < Duration::from_millis(100))
}

/// kill -9 at 23 points of two jobs (3 clips each, and the timeline), restarting the bot after
/// each: every clip and the timeline arrive; a call Telegram had answered 250 ms before the kill
/// is never made again; a call in flight at the kill is made again at most once per kill; a job
/// whose "Queued" reply was lost gets a fresh status message; each job ends with "✅ done".
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_matrix_no_confirmed_clip_twice() {
    let Some(e5) = e5() else { return };
    let Some(whisper) = whisper_tiny_en() else { return };
    let dir = tempfile::tempdir().unwrap();
    let srv = start().await;
    let f = srv.fake.clone();
    let demo = repo().join("assets/demo/demo.mp4");
    f.add_file("vid", &demo, 1_300_000);
    f.add_file("subs", &demo_srt(dir.path()), 900);
    let data = dir.path().join("data");
    let db = data.join("jobs.sqlite");
    let env = [("VIRALCLIP_MAX_ATTEMPTS", "1000")];
    // Each point is reached whatever the points before it did (a kill just after an answer may
    // or may not let that step count): the first job's points walk through the download, the
    // stages and the uploads; the second's through the uploads at 20 ms.
    let jobs: [&[Point]; 2] = [
        &[
            at("sendMessage", 1, None), // the "Queued" reply in flight
            at("getFile", 1, None),
            at("getFile", 1, Some(0)),
            at("editMessageText", 1, None),
            at("editMessageText", 2, Some(0)),
            at("editMessageText", 3, None),
            at("editMessageText", 2, Some(250)),
            at("sendVideo", 1, None),
            at("sendVideo", 1, Some(0)),
            at("sendVideo", 1, None),
            at("sendVideo", 1, Some(250)),
            at("sendPhoto", 1, None),
            at("sendPhoto", 1, Some(0)),
            at_text("editMessageText", "✅ done", None),
        ],
        &[
            at("sendMessage", 1, Some(0)),
            at("editMessageText", 1, Some(20)),
            at("editMessageText", 2, None),
            at("sendVideo", 1, Some(20)),
            at("sendVideo", 1, None),
            at("sendVideo", 1, Some(0)),
            at("sendVideo", 1, Some(20)),
            at("sendPhoto", 1, Some(20)),
            at_text("editMessageText", "✅ done", Some(0)),
        ],
    ];
    let state = |id: i64| -> Option<String> {
        let c = rusqlite::Connection::open(&db).ok()?;
        c.query_row("SELECT state FROM jobs WHERE id = ?1", [id], |r| r.get(0))
            .ok()
    };
    let mut fired = 0;
    let mut total_dups = 0;
    let mut summary = Vec::new();
    for (j, points) in jobs.iter().enumerate() {
        let id = j as i64 + 1;
        let first_call = f.calls.lock().unwrap().len();
        let first_kill = f.kills.lock().unwrap().len();
        let mut video = video_message(40 + 2 * id, USER, USER, "vid", 1_300_000);
        video["caption"] = json!("3 fast");
        let mut subs = document_message(41 + 2 * id, USER, USER, "subs", "a.srt", 900);
        subs["reply_to_message"] = video;
        f.push_update(update(subs));
        // Each point, then a last run with no kill that ends the job.
        for p in points.iter().map(Some).chain([None]) {
            f.clear_rules();
            if let Some(p) = p {
                f.rule(Rule::Kill {
                    method: p.method.into(),
                    needle: p.needle.into(),
                    nth: p.nth,
                    after: p.after_ms.map(Duration::from_millis),
                });
            }
            let kills_before = f.kills.lock().unwrap().len();
            let mut child = spawn_bot(&srv.url, &data, &e5, &whisper, &env);
            f.set_pid(child.id());
            let t = Instant::now();
            loop {
                if child.try_wait().unwrap().is_some() {
                    assert!(
                        f.kills.lock().unwrap().len() > kills_before,
                        "the bot died on its own"
                    );
                    fired += 1;
                    break;
                }
                let done = state(id).as_deref() == Some("done")
                    && f.calls.lock().unwrap()[first_call..]
                        .iter()
                        .any(|c| c.method == "editMessageText" && c.text().starts_with("✅ done"));
                if done {
                    // The job ended before this point was reached (or this is the last run).
                    if let Some(p) = p {
                        eprintln!("kill matrix: job {id}: {p:?} not reached (the job ended first)");
                    }
                    child.kill().unwrap();
                    child.wait().unwrap();
                    break;
                }
                if t.elapsed() > Duration::from_secs(240) {
                    child.kill().unwrap();
                    let calls: Vec<String> = f.calls.lock().unwrap()[first_call..]
                        .iter()
                        .map(|c| format!("{} {:?}", c.method, c.text()))
                        .collect();
                    panic!("job {id}, point {p:?}: neither killed nor done in 240 s; calls {calls:#?}");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let calls = f.calls.lock().unwrap()[first_call..].to_vec();
        let kills: Vec<Kill> = f.kills.lock().unwrap()[first_kill..]
            .iter()
            .map(|k| Kill {
                call: k.call - first_call,
                ..k.clone()
            })
            .collect();
        // What each upload was: a clip's caption starts "#k of 3"; the timeline is a photo.
        let what = |c: &Call| -> Option<String> {
            match c.method.as_str() {
                "sendVideo" => Some(c.text().split_whitespace().take(3).collect::<Vec<_>>().join(" ")),
                "sendPhoto" => Some("timeline".into()),
                _ => None,
            }
        };
        let uploads: Vec<(usize, String)> = calls
            .iter()
            .enumerate()
            .filter_map(|(i, c)| what(c).map(|w| (i, w)))
            .collect();
        let mut expected: Vec<String> = (1..=3).map(|k| format!("#{k} of 3")).collect();
        expected.push("timeline".into());
        let mut dups = 0;
        for w in &expected {
            let sent = uploads.iter().filter(|(_, u)| u == w).count();
            assert!(sent >= 1, "job {id}: {w} never arrived; {uploads:?}");
            let killed_in_flight = kills
                .iter()
                .filter(|k| in_flight(k.after) && what(&calls[k.call]).as_deref() == Some(w.as_str()))
                .count();
            assert!(
                sent <= 1 + killed_in_flight,
                "job {id}: {w} sent {sent} times with {killed_in_flight} kills while it was in flight; {uploads:?}; kills {kills:?}"
            );
            dups += sent - 1;
        }
        for k in kills.iter().filter(|k| !in_flight(k.after)) {
            if let Some(w) = what(&calls[k.call]) {
                let again = uploads.iter().filter(|(i, u)| *i > k.call && *u == w).count();
                assert_eq!(
                    again, 0,
                    "job {id}: {w} was confirmed before the kill {k:?} and sent again"
                );
            }
        }
        let queued = calls
            .iter()
            .filter(|c| c.method == "sendMessage" && c.text().starts_with("Queued"))
            .count();
        assert!(
            queued <= 1 + kills.iter().filter(|k| k.method == "sendMessage").count(),
            "job {id}: queued {queued} times"
        );
        if kills
            .iter()
            .any(|k| k.method == "sendMessage" && k.after.is_none())
        {
            assert!(
                calls
                    .iter()
                    .any(|c| c.method == "sendMessage" && c.text().starts_with("⏳ working on job")),
                "job {id}: the lost 'Queued' reply was replaced by a fresh status message"
            );
        }
        assert!(
            calls
                .iter()
                .any(|c| c.method == "editMessageText" && c.text().starts_with("✅ done")),
            "job {id} ends with its status message"
        );
        // Per class of kill: how many fired, how many hit an upload, and after how many of those
        // that upload was made again.
        let resent = |k: &Kill| {
            what(&calls[k.call]).is_some_and(|w| uploads.iter().any(|(i, u)| *i > k.call && *u == w))
        };
        let mut classes = Vec::new();
        for (name, after) in [
            ("before the answer", None),
            ("0 ms after", Some(0)),
            ("20 ms after", Some(20)),
            ("250 ms after", Some(250)),
        ] {
            let of: Vec<&Kill> = kills
                .iter()
                .filter(|k| k.after == after.map(Duration::from_millis))
                .collect();
            let on_uploads = of.iter().filter(|k| what(&calls[k.call]).is_some()).count();
            let again = of.iter().filter(|k| resent(k)).count();
            classes.push(format!(
                "{name}: {} kills, {on_uploads} on uploads, {again} sent again",
                of.len()
            ));
        }
        summary.push(format!(
            "job {id}: {} kills ({}); {} uploads for {} distinct",
            kills.len(),
            classes.join("; "),
            uploads.len(),
            expected.len(),
        ));
        total_dups += dups;
    }
    for s in &summary {
        eprintln!("kill matrix: {s}");
    }
    eprintln!("kill matrix: {fired} kills in all, {total_dups} duplicate uploads, each after a kill with that upload in flight");
    assert!(fired >= 20, "{fired} kills fired; the matrix needs at least 20");
}
