//! `viralclip clip LINK` against a web site on 127.0.0.1 (tests/site): a page yt-dlp's generic
//! extractor reads, whose own subtitles replace Whisper; a direct mp4; a 404; a video whose page
//! says it is too long (refused before a byte of it is fetched); the private-address refusal
//! without `--allow-private-links`; a host off the allow-list; no yt-dlp.

mod site;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn e5() -> Option<PathBuf> {
    let p = std::env::var_os("VIRALCLIP_ENCODER_MULTILINGUAL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/viralclip-fixtures/encoders/multilingual-e5-small")
        });
    if p.exists() {
        Some(p)
    } else if std::env::var("VIRALCLIP_ALLOW_MISSING_FIXTURES").as_deref() == Ok("1") {
        eprintln!("SKIPPED: no e5 fixture at {} (scripts/setup.sh)", p.display());
        None
    } else {
        panic!("no e5 fixture at {}: run scripts/setup.sh", p.display())
    }
}

/// `viralclip clip LINK` with the default model over e5, original framing (no face model), one
/// fast clip, yt-dlp from the fixtures, the site's host allowed; `extra` on top.
fn clip(link: &str, out: &Path, yt_dlp: &Path, e5: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_viralclip"))
        .arg("clip")
        .arg(link)
        .arg("--model")
        .arg(repo().join("assets/model"))
        .arg("--encoder")
        .arg(e5)
        .arg("--yt-dlp")
        .arg(yt_dlp)
        .args([
            "--device", "cpu", "--format", "original", "--count", "1", "--fast", "--quiet",
        ])
        .args([
            "--min-secs",
            "10",
            "--max-secs",
            "30",
            "--link-hosts",
            "127.0.0.1",
        ])
        .arg("--out")
        .arg(out)
        .args(extra)
        .env_remove("VIRALCLIP_LINK_HOSTS")
        .env_remove("VIRALCLIP_ALLOW_PRIVATE_LINKS")
        .output()
        .unwrap()
}

fn one_line(o: &Output) -> String {
    let s = String::from_utf8_lossy(&o.stderr).trim().to_string();
    assert_eq!(s.lines().count(), 1, "one line expected: {s}");
    assert!(!s.contains("panicked"), "{s}");
    s
}

fn report(out: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap()
}

#[test]
fn a_page_is_clipped_from_the_sites_own_subtitles_and_a_direct_mp4_too() {
    let (Some(y), Some(e5)) = (site::yt_dlp(), e5()) else {
        return;
    };
    let site = site::start(&repo());
    let tmp = tempfile::tempdir().unwrap();

    // The page: yt-dlp's generic extractor finds the <video> and its <track>; the Russian
    // subtitles are used instead of Whisper (this run has no Whisper model to fall back on).
    let out = tmp.path().join("page");
    let o = clip(
        &site.url("/page.html"),
        &out,
        &y,
        &e5,
        &["--allow-private-links", "--whisper", "/nonexistent/whisper.bin"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r = report(&out);
    let src = &r["input"]["source"];
    assert_eq!(src["url"], site.url("/page.html"));
    assert_eq!(src["subtitles"], "ru", "{src}");
    assert!(
        src["title"].as_str().unwrap().starts_with("Демо: погода"),
        "{src}"
    );
    let version = std::process::Command::new(&y).arg("--version").output().unwrap();
    assert_eq!(
        src["yt_dlp_version"].as_str().unwrap(),
        String::from_utf8_lossy(&version.stdout).trim()
    );
    assert_eq!(
        src["downloaded_bytes"].as_u64().unwrap(),
        std::fs::metadata(repo().join("assets/demo/demo.mp4"))
            .unwrap()
            .len()
    );
    assert_eq!(
        r["transcript"]["source"]["kind"], "subtitle_file",
        "{}",
        r["transcript"]
    );
    assert!(r["input"]["subtitles"].as_str().unwrap().ends_with(".ru.vtt"));
    let made = r["moments"][0]["clip"]["path"].as_str().expect("a clip");
    assert!(out.join(made).is_file());
    assert!(site.hits("/demo.mp4") >= 1 && site.hits("/demo.ru.vtt") >= 1);
    // Everything fetched is inside --out.
    assert!(out.join("source").is_dir());

    // A direct mp4 with the user's own subtitles (they win over any the site has).
    let out = tmp.path().join("direct");
    let srt = tmp.path().join("mine.vtt");
    std::fs::write(&srt, site::demo_vtt(&repo())).unwrap();
    let o = clip(
        &site.url("/demo.mp4"),
        &out,
        &y,
        &e5,
        &["--allow-private-links", "--subs", srt.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r = report(&out);
    assert_eq!(r["input"]["source"]["extractor"], "generic");
    assert_eq!(r["input"]["subtitles"].as_str().unwrap(), srt.to_str().unwrap());
    assert_eq!(r["moments"].as_array().unwrap().len(), 1);
}

#[test]
fn dead_long_private_and_unlisted_links_each_get_their_own_answer() {
    let (Some(y), Some(e5)) = (site::yt_dlp(), e5()) else {
        return;
    };
    let site = site::start(&repo());
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let private = ["--allow-private-links"];

    let o = clip(&site.url("/gone.mp4"), &out, &y, &e5, &private);
    assert_eq!(o.status.code(), Some(2));
    let line = one_line(&o);
    assert!(
        line.contains("leads nowhere") && line.contains("/gone.mp4"),
        "{line}"
    );

    // Refused from the probe: the page says 3 h 05 min; nothing of the video is downloaded (the
    // probe only opens its URL to read its type).
    let o = clip(
        &site.url("/long.html"),
        &out,
        &y,
        &e5,
        &["--allow-private-links", "--max-duration-mins", "60"],
    );
    assert_eq!(o.status.code(), Some(2));
    let line = one_line(&o);
    assert!(
        line.contains("3 h 05 min") && line.contains("1 h 00 min"),
        "{line}"
    );
    let fetched: Vec<_> = std::fs::read_dir(out.join("source"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("source."))
        .collect();
    assert!(fetched.is_empty(), "downloaded: {fetched:?}");

    // Without the flag a loopback address is refused before anything is asked of it.
    let before = site.total_hits();
    let o = clip(&site.url("/page.html"), &out, &y, &e5, &[]);
    assert_eq!(o.status.code(), Some(2));
    let line = one_line(&o);
    assert!(line.contains("private or local address (127.0.0.1)"), "{line}");
    let o = clip(
        &format!("http://localhost:{}/page.html", site.port),
        &out,
        &y,
        &e5,
        &["--link-hosts", "localhost"],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(one_line(&o).contains("private or local address"));
    assert_eq!(site.total_hits(), before, "a refused address was fetched");

    // A host off the list.
    let o = clip("https://example.org/v.mp4", &out, &y, &e5, &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(one_line(&o).contains("links from example.org are not taken here"));

    // No yt-dlp: the installation's fault (exit 3), said with what to do.
    let o = clip(
        &site.url("/demo.mp4"),
        &out,
        Path::new("/nonexistent/yt-dlp"),
        &e5,
        &private,
    );
    assert_eq!(o.status.code(), Some(3));
    assert!(one_line(&o).contains("install yt-dlp"));
    assert!(!out.join("report.json").exists());
}
