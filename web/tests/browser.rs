//! The page in a real browser: Debian's chromium, headless, driven through chromedriver
//! (WebDriver, fantoccini). Upload the demo video with its subtitles, watch the progress arrive
//! live and reach done, see the moments, play a clip, re-cut one with a button; another browser
//! session does not see the job; beyond loopback the page needs a token.

use fantoccini::{ClientBuilder, Locator};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn fixtures() -> PathBuf {
    std::env::var_os("VIRALCLIP_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/viralclip-fixtures")
        })
}

/// A file the test needs, or `None` with a printed reason under VIRALCLIP_ALLOW_MISSING_FIXTURES=1
/// (else a loud failure).
fn needed(p: PathBuf, what: &str) -> Option<PathBuf> {
    if p.exists() {
        Some(p)
    } else if std::env::var("VIRALCLIP_ALLOW_MISSING_FIXTURES").as_deref() == Ok("1") {
        eprintln!("SKIPPED: no {what} at {} (scripts/setup.sh)", p.display());
        None
    } else {
        panic!("no {what} at {}: run scripts/setup.sh", p.display())
    }
}

fn config(data: &Path, extra: &[&str]) -> viralclip_web::WebConfig {
    use clap::Parser;
    #[derive(Parser)]
    struct C {
        #[command(flatten)]
        c: viralclip_web::WebConfig,
    }
    let model = repo().join("assets/model");
    let args = [
        &[
            "t",
            "--data-dir",
            data.to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
            "--device",
            "cpu",
        ],
        extra,
    ]
    .concat();
    C::parse_from(args).c
}

struct Driver(Child);
impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET `path` with no cookie (a browser session of its own): the status code.
fn status_without_cookie(port: u16, path: &str) -> u16 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut r = String::new();
    let _ = s.read_to_string(&mut r);
    r.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Subtitles for the demo: its script's lines, 5 s apart.
fn demo_srt(dir: &Path) -> PathBuf {
    let script = std::fs::read_to_string(repo().join("assets/demo/script.ru.txt")).unwrap();
    let mut s = String::new();
    for (i, line) in script.lines().filter(|l| !l.trim().is_empty()).enumerate() {
        let (a, b) = ((i * 5).min(59), (i * 5 + 5).min(59));
        s.push_str(&format!(
            "{}\n00:00:{a:02},000 --> 00:00:{b:02},000\n{}\n\n",
            i + 1,
            line.trim()
        ));
    }
    let p = dir.join("demo.srt");
    std::fs::write(&p, s).unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upload_watch_progress_see_moments_play_and_recut_in_chromium() {
    let Some(chromedriver) = needed(
        PathBuf::from("/usr/bin/chromedriver"),
        "chromedriver (Debian chromium-driver)",
    ) else {
        return;
    };
    let Some(e5) = needed(
        std::env::var_os("VIRALCLIP_ENCODER_MULTILINGUAL")
            .map(PathBuf::from)
            .unwrap_or_else(|| fixtures().join("encoders/multilingual-e5-small")),
        "e5 encoder fixture",
    ) else {
        return;
    };
    let Some(yunet) = needed(
        fixtures().join("faces/face_detection_yunet_2023mar.onnx"),
        "YuNet fixture",
    ) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let clipper = Arc::new(
        viralclip_bot::clipper::EngineClipper::new(
            repo().join("assets/model"),
            Some(e5),
            None,
            Some(yunet),
            viralclip_engine::device::DeviceChoice::Cpu,
            viralclip_engine::device::Precision::F32,
        )
        .unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(viralclip_web::serve_on(
        config(&data, &[]),
        clipper.clone(),
        listener,
    ));

    let dport = free_port();
    let _driver = Driver(
        Command::new(chromedriver)
            .arg(format!("--port={dport}"))
            .spawn()
            .unwrap(),
    );
    let profile = tmp.path().join("chromium-profile");
    let caps: serde_json::Map<String, serde_json::Value> = serde_json::from_value(serde_json::json!({
        "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--no-first-run", "--disable-quic", "--autoplay-policy=no-user-gesture-required",
                     "--window-size=1280,1800", format!("--user-data-dir={}", profile.display())]
        }
    }))
    .unwrap();
    let mut c = None;
    for _ in 0..50 {
        match ClientBuilder::native()
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{dport}"))
            .await
        {
            Ok(client) => {
                c = Some(client);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let c = c.expect("chromedriver starts and opens chromium");

    c.goto(&format!("http://127.0.0.1:{port}/")).await.unwrap();
    let demo = repo().join("assets/demo/demo.mp4").canonicalize().unwrap();
    c.find(Locator::Id("video"))
        .await
        .unwrap()
        .send_keys(demo.to_str().unwrap())
        .await
        .unwrap();
    let srt = demo_srt(tmp.path());
    c.find(Locator::Id("subs"))
        .await
        .unwrap()
        .send_keys(srt.to_str().unwrap())
        .await
        .unwrap();
    let count = c.find(Locator::Css("input[name=count]")).await.unwrap();
    count.clear().await.unwrap();
    count.send_keys("2").await.unwrap();
    c.find(Locator::Id("start")).await.unwrap().click().await.unwrap();

    // The job's page: its progress line changes as the events arrive, until the results come.
    let t = Instant::now();
    let mut seen = Vec::<String>::new();
    loop {
        if c.find(Locator::Id("summary")).await.is_ok() {
            break;
        }
        if let Ok(p) = c.find(Locator::Css(".progress")).await {
            if let Ok(text) = p.text().await {
                if seen.last() != Some(&text) {
                    seen.push(text);
                }
            }
        }
        if let Ok(e) = c.find(Locator::Css(".error")).await {
            panic!("the job failed: {}", e.text().await.unwrap_or_default());
        }
        assert!(
            t.elapsed() < Duration::from_secs(400),
            "no results in 400 s; progress seen: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(c.current_url().await.unwrap().path().starts_with("/jobs/1"));
    assert!(seen.iter().any(|s| s.contains('%')), "live progress: {seen:?}");
    let moments = c.find_all(Locator::Css("article.moment")).await.unwrap();
    assert_eq!(moments.len(), 2, "two moments");
    let first = moments[0].text().await.unwrap();
    assert!(first.contains("virality") && first.contains("#1"), "{first}");
    assert!(c.find(Locator::Css("img.timeline")).await.is_ok());

    // Play the first clip: its time moves (the file is served with range requests).
    let played = c
        .execute_async(
            "const done = arguments[arguments.length - 1]; const v = document.querySelector('article.moment video');
             v.muted = true; v.play().then(() => setTimeout(() => done([v.currentTime, v.videoWidth, v.videoHeight]), 1500),
             e => done(['error ' + e]));",
            vec![],
        )
        .await
        .unwrap();
    let t0 = played[0]
        .as_f64()
        .unwrap_or_else(|| panic!("the clip does not play: {played}"));
    assert!(t0 > 0.3, "played to {t0}");
    let (w, h) = (played[1].as_u64().unwrap(), played[2].as_u64().unwrap());
    assert_eq!(w * 16, h * 9, "a 9:16 clip: {w}×{h}");
    if let Some(shot) = std::env::var_os("VIRALCLIP_WEB_SCREENSHOT") {
        std::fs::write(shot, c.screenshot().await.unwrap()).unwrap();
    }

    // Another browser session sees no such job.
    assert_eq!(status_without_cookie(port, "/jobs/1"), 404);
    assert_eq!(
        status_without_cookie(port, "/jobs/1/files/out/clips/clip-01.mp4"),
        404
    );

    // The bot's re-cut buttons: "end +5 s" gives a new clip under the first moment.
    let buttons = c
        .find_all(Locator::Css("#moment-1 .adjust button"))
        .await
        .unwrap();
    let mut later = None;
    for b in buttons {
        if b.text().await.unwrap().contains("end +5 s") {
            later = Some(b);
        }
    }
    later.expect("an end +5 s button").click().await.unwrap();
    let t = Instant::now();
    while c.find(Locator::Css("#recuts-1 .recut video")).await.is_err() {
        if let Ok(e) = c.find(Locator::Css("#recuts-1 .error")).await {
            panic!("the re-cut failed: {}", e.text().await.unwrap_or_default());
        }
        assert!(t.elapsed() < Duration::from_secs(200), "no re-cut in 200 s");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let text = c
        .find(Locator::Css("#recuts-1 .recut"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("Re-cut #1"), "{text}");
    c.close().await.unwrap();
}

#[tokio::test]
async fn beyond_loopback_the_page_needs_a_token() {
    let tmp = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    struct NoClipper;
    impl viralclip_bot::clipper::Clipper for NoClipper {
        fn clip(
            &self,
            _: &viralclip_engine::pipeline::ClipRequest,
            _: viralclip_engine::pipeline::Progress,
            _: Arc<std::sync::atomic::AtomicBool>,
        ) -> viralclip_bot::Result<viralclip_engine::report::Report> {
            Err(viralclip_bot::Error::Job("not in this test".into()))
        }
        fn switch_model(&self, _: &Path) -> viralclip_bot::Result<()> {
            Ok(())
        }
        fn model_dir(&self) -> PathBuf {
            PathBuf::new()
        }
    }
    let e = viralclip_web::serve_on(config(&tmp.path().join("d"), &[]), Arc::new(NoClipper), listener)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("needs an access token"), "{e}");

    // With a token: without it 401, with it (query, then the cookie it sets) the page.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(viralclip_web::serve_on(
        config(&tmp.path().join("d2"), &["--token", "s3cret"]),
        Arc::new(NoClipper),
        listener,
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (a, b) = tokio::task::spawn_blocking(move || {
        (
            status_without_cookie(port, "/"),
            status_without_cookie(port, "/?token=s3cret"),
        )
    })
    .await
    .unwrap();
    assert_eq!((a, b), (401, 200));
}
