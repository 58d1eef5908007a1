//! The bot under load, against the fake Bot API: 100 users send 3 videos each within a minute
//! (and every tenth user 4 at once, the 4th over the per-user queue). Every message gets an answer: a job
//! that ends with its clips, or a refusal with its reason; the per-user and global caps hold;
//! every 429 is waited out before the same call goes again; the bot's memory stays bounded.
//!
//! The clips are real (the engine cuts the demo once, before the load); each job then copies
//! them after a short sleep, so 300 jobs test the bot (its queue, store, workers, uploads), not
//! the CPU's speed at cutting.

mod common;

use common::*;
use serde_json::json;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use viralclip_bot::clipper::Clipper;
use viralclip_engine::pipeline::{ClipRequest, Progress, Stage};
use viralclip_engine::report::Report;

const USERS: i64 = 100;
const FIRST_USER: i64 = 1000;
const WORKERS: usize = 4;

/// Real clips made once, handed out to every job after `work` of pretend work; each job's span
/// of time is recorded (which job, from when to when).
struct Replaying {
    made: PathBuf,
    report: Report,
    work: Duration,
    spans: Mutex<Vec<(PathBuf, Instant, Instant)>>,
    model: PathBuf,
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

impl Clipper for Replaying {
    fn clip(
        &self,
        req: &ClipRequest,
        progress: Progress,
        _: Arc<AtomicBool>,
    ) -> viralclip_bot::Result<Report> {
        let start = Instant::now();
        progress(Stage::Score, 0.5);
        std::thread::sleep(self.work);
        copy_tree(&self.made, &req.out_dir);
        self.spans
            .lock()
            .unwrap()
            .push((req.out_dir.clone(), start, Instant::now()));
        Ok(self.report.clone())
    }
    fn switch_model(&self, _: &Path) -> viralclip_bot::Result<()> {
        Ok(())
    }
    fn model_dir(&self) -> PathBuf {
        self.model.clone()
    }
}

/// The job id in a job's output directory (`DATA/jobs/ID/...`).
fn job_of(out: &Path) -> i64 {
    let parts: Vec<_> = out
        .components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect();
    let i = parts.iter().position(|p| p == "jobs").expect("a job directory");
    parts[i + 1].parse().unwrap()
}

/// The most spans open at once, over `spans`.
fn most_at_once(spans: &[(Instant, Instant)]) -> usize {
    let mut edges: Vec<(Instant, i32)> = spans.iter().flat_map(|&(a, b)| [(a, 1), (b, -1)]).collect();
    // An end before a start at the same instant: touching spans do not overlap.
    edges.sort_by(|x, y| x.0.cmp(&y.0).then(x.1.cmp(&y.1)));
    let (mut now, mut most) = (0i32, 0i32);
    for (_, d) in edges {
        now += d;
        most = most.max(now);
    }
    most as usize
}

fn rss_mb() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: f64 = s
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap();
    kb / 1024.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_users_sending_three_videos_each_within_a_minute() {
    let Some(e5) = e5() else { return };
    let dir = tempfile::tempdir().unwrap();
    // The clips every job hands back: the demo with its subtitles, cut once by the real engine.
    let made = dir.path().join("made");
    let mut req = ClipRequest::new(repo().join("assets/demo/demo.mp4"), &made);
    req.subs = Some(demo_srt(dir.path()));
    req.select.count = 2;
    let report = engine_clipper(&e5, None)
        .clip(&req, Arc::new(|_, _| {}), Arc::new(AtomicBool::new(false)))
        .expect("the demo's clips");
    let clips_per_job = report.moments.iter().filter(|m| m.clip.is_some()).count();
    assert!(clips_per_job > 0, "the demo gives clips");
    let engine = Arc::new(Replaying {
        made: made.clone(),
        report,
        work: Duration::from_millis(100),
        spans: Mutex::new(Vec::new()),
        model: repo().join("assets/model"),
    });

    let srv = start().await;
    let f = srv.fake.clone();
    let data = dir.path().join("data");
    let mut cfg = config(&srv.url, &data, &e5);
    cfg.workers = WORKERS;
    cfg.per_user_running = 1;
    cfg.per_user_queue = 3;
    // Flood control on every kind of call the jobs make, more than once.
    for (method, secs, n) in [
        ("sendVideo", 2, 6),
        ("sendMessage", 1, 6),
        ("editMessageText", 1, 6),
    ] {
        f.rule(Rule::RetryAfter {
            method: method.into(),
            secs,
            n,
        });
    }
    let demo = repo().join("assets/demo/demo.mp4");
    let size = std::fs::metadata(&demo).unwrap().len();
    f.add_file("vid", &demo, size);
    let rss_before = rss_mb();
    let _bot = start_bot(cfg, engine.clone());
    let peak = Arc::new(Mutex::new(rss_before));
    {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                let now = rss_mb();
                {
                    let mut p = peak.lock().unwrap();
                    *p = p.max(now);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }

    // 100 users, 3 videos each in three rounds over 30 s; every tenth user sends 4 at once at
    // the start instead: the 4th is over the per-user queue (3) while the first still runs.
    f.forget_files.store(true, Ordering::SeqCst);
    let sent_at = Instant::now();
    let mut msg = 1i64;
    let mut sent: HashMap<i64, Vec<i64>> = HashMap::new();
    let heavy = |u: i64| u % 10 == 0;
    for round in 0..3 {
        for u in 0..USERS {
            let burst = match (heavy(u), round) {
                (true, 0) => 4,
                (true, _) => 0,
                (false, _) => 1,
            };
            let user = FIRST_USER + u;
            for _ in 0..burst {
                let mut v = video_message(msg, user, user, "vid", size);
                v["caption"] = json!("1");
                f.push_update(update(v));
                sent.entry(user).or_default().push(msg);
                msg += 1;
            }
            if u % 25 == 24 {
                tokio::time::sleep(Duration::from_millis(2500)).await;
            }
        }
    }
    let sending = sent_at.elapsed().as_secs_f64();
    assert!(sending < 60.0, "sending took {sending:.0} s");
    let total: usize = sent.values().map(Vec::len).sum();
    assert_eq!(total, 310);

    // Every message answered: queued (then done) or refused. A call answered 429 did not
    // happen: only the calls Telegram carried out count.
    let refused = |c: &Call| c.method == "sendMessage" && c.text().contains("jobs waiting; send this again");
    let queued = |c: &Call| c.method == "sendMessage" && c.text().starts_with("Queued as job #");
    let carried = |f: &Fake| -> Vec<Call> {
        let throttled: Vec<usize> = f.throttled.lock().unwrap().iter().map(|t| t.0).collect();
        let calls = f.calls.lock().unwrap();
        calls
            .iter()
            .enumerate()
            .filter(|(i, _)| !throttled.contains(i))
            .map(|(_, c)| c.clone())
            .collect()
    };
    let answered = |f: &Fake| carried(f).iter().filter(|c| refused(c) || queued(c)).count();
    let t = Instant::now();
    while answered(&f) < total && t.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(answered(&f), total, "an answer to every video");
    let jobs = carried(&f).iter().filter(|c| queued(c)).count();
    // Progress every 15 s (the jobs done), then the wait's own verdict.
    let done = |calls: &[Call]| {
        calls
            .iter()
            .filter(|c| c.method == "editMessageText" && c.text().starts_with("✅ done"))
            .count()
    };
    for _ in 0..60 {
        let n = done(&carried(&f));
        eprintln!(
            "load: {n} of {jobs} jobs done at {:.0} s",
            sent_at.elapsed().as_secs_f64()
        );
        if n >= jobs {
            break;
        }
        tokio::time::sleep(Duration::from_secs(15)).await;
    }
    assert_eq!(done(&carried(&f)), jobs, "every accepted job done");
    let took = sent_at.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(3)).await;

    let calls = f.calls.lock().unwrap().clone();
    let done_calls = carried(&f);
    let refusals: Vec<&Call> = done_calls.iter().filter(|c| refused(c)).collect();
    let accepted = done_calls.iter().filter(|c| queued(c)).count();
    // Each user: answers to all its messages, at most 3 accepted while any is pending, and a
    // refusal only for a user who sent more than 3.
    for (user, msgs) in &sent {
        let answers = done_calls
            .iter()
            .filter(|c| in_chat(c, *user) && (refused(c) || queued(c)))
            .count();
        assert_eq!(answers, msgs.len(), "user {user}: one answer a message");
        let no = refusals.iter().filter(|c| in_chat(c, *user)).count();
        let want = usize::from(heavy(user - FIRST_USER));
        assert_eq!(no, want, "user {user}: refusals (sent {})", msgs.len());
    }
    assert_eq!(accepted + refusals.len(), total);
    // Clips: every accepted job's, each sent once (the 429'd sends again, later).
    let throttled = f.throttled.lock().unwrap().clone();
    let videos = done_calls.iter().filter(|c| c.method == "sendVideo").count();
    assert_eq!(videos, accepted * clips_per_job, "clips delivered");
    // Every 429 waited out: the same call again, no sooner than retry_after.
    assert!(throttled.len() >= 18, "429s answered: {}", throttled.len());
    for &(i, secs) in &throttled {
        let c = &calls[i];
        let again = calls[i + 1..]
            .iter()
            .find(|d| {
                d.method == c.method
                    && d.fields.get("chat_id") == c.fields.get("chat_id")
                    && d.text() == c.text()
            })
            .unwrap_or_else(|| panic!("a {} answered 429 never went again: {:?}", c.method, c.text()));
        let waited = again.at.duration_since(c.at).as_secs_f64();
        assert!(
            waited >= secs as f64 - 0.05,
            "{} again after {waited:.2} s, asked {secs} s",
            c.method
        );
    }
    // Caps: at most WORKERS jobs at once, at most one per user.
    let spans = engine.spans.lock().unwrap().clone();
    assert_eq!(spans.len(), accepted, "every accepted job ran once");
    let db = rusqlite::Connection::open(data.join("jobs.sqlite")).unwrap();
    let mut by_user: HashMap<i64, Vec<(Instant, Instant)>> = HashMap::new();
    for (out, a, b) in &spans {
        let user: i64 = db
            .query_row("SELECT user_id FROM jobs WHERE id = ?1", [job_of(out)], |r| {
                r.get(0)
            })
            .unwrap();
        by_user.entry(user).or_default().push((*a, *b));
    }
    let all: Vec<(Instant, Instant)> = spans.iter().map(|&(_, a, b)| (a, b)).collect();
    let global = most_at_once(&all);
    let per_user = by_user.values().map(|s| most_at_once(s)).max().unwrap_or(0);
    assert!(global <= WORKERS, "{global} jobs at once");
    assert_eq!(per_user, 1, "one running job per user");
    let peak = *peak.lock().unwrap();
    eprintln!(
        "load: {total} videos from {} users in {sending:.0} s; {accepted} jobs, {} refused (queue full), \
         all done {took:.0} s after the first; {} 429s waited out; at most {global} jobs at once, \
         {per_user} per user; RSS {rss_before:.0} MB before, peak {peak:.0} MB",
        sent.len(),
        refusals.len(),
        throttled.len()
    );
    assert!(
        peak - rss_before < 400.0,
        "memory grew {:.0} MB",
        peak - rss_before
    );
}
