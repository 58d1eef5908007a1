//! yt-dlp as a subprocess: `--version`, the probe (`-J`), the download (`--load-info-json`, so
//! the site is asked once and the format chosen in the probe is the one fetched) with its
//! progress lines read as they come, its size watched and a cancel flag obeyed (the process is
//! killed). Its environment loses the bot's token; its config files are ignored.

use super::{check_url, failure, Fetched, LinkPolicy, Probe, SourceFacts};
use crate::error::{Error, Result};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The format sort: the height nearest `max_height` at or below it, H.264 and AAC first, mp4.
fn format_args(policy: &LinkPolicy) -> Vec<String> {
    vec![
        "-f".into(),
        "bv*+ba/b".into(),
        "-S".into(),
        format!("res:{},vcodec:h264,acodec:aac,ext:mp4:m4a", policy.max_height),
        "--merge-output-format".into(),
        "mp4".into(),
    ]
}

/// yt-dlp with the options every call shares.
fn command(policy: &LinkPolicy) -> Command {
    let mut c = Command::new(&policy.program);
    c.args([
        "--ignore-config",
        "--no-playlist",
        "--no-warnings",
        "--socket-timeout",
        "30",
        "--retries",
        "3",
    ]);
    if let Some(cookies) = &policy.cookies {
        c.arg("--cookies").arg(cookies);
    }
    // YouTube's player needs a JavaScript runtime now (yt-dlp-ejs); Node.js where there is one.
    if which("node").is_some() {
        c.args(["--js-runtimes", "node"]);
    }
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("TELOXIDE_") || k.starts_with("VIRALCLIP_") {
            c.env_remove(k.as_ref());
        }
    }
    c.stdin(Stdio::null());
    c
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(program))
            .find(|f| f.is_file())
    })
}

fn missing(policy: &LinkPolicy, e: std::io::Error) -> Error {
    Error::Downloader(format!(
        "{} could not be run ({e}); install yt-dlp (pip install yt-dlp) or name it with --yt-dlp / VIRALCLIP_YT_DLP",
        policy.program.display()
    ))
}

/// `yt-dlp --version`.
pub fn version(policy: &LinkPolicy) -> Result<String> {
    let o = Command::new(&policy.program)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| missing(policy, e))?;
    if !o.status.success() {
        return Err(Error::Downloader(format!(
            "{} --version failed: {}",
            policy.program.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// Runs `c` to its end (or until `cancel`), giving each stdout line to `line` (false: stop it
/// now). Returns whether it succeeded and its stderr (the last 64 KB).
fn run(
    mut c: Command,
    policy: &LinkPolicy,
    cancel: &AtomicBool,
    mut line: impl FnMut(&str) -> bool,
) -> Result<(bool, String)> {
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child: Child = c.spawn().map_err(|e| missing(policy, e))?;
    let (tx, rx) = mpsc::channel::<String>();
    let out = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(std::result::Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let mut err = child.stderr.take().expect("piped");
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        while let Ok(n) = err.read(&mut chunk) {
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.len() > 65536 {
                buf.drain(..buf.len() - 65536);
            }
        }
        String::from_utf8_lossy(&buf).into_owned()
    });
    let mut stopped = false;
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(l) => {
                if !line(&l) {
                    stopped = true;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if stopped || cancel.load(Ordering::SeqCst) {
            let _ = child.kill();
            stopped = true;
            break;
        }
    }
    let status = child.wait().map_err(|e| missing(policy, e))?;
    let _ = reader.join();
    let stderr = err_reader.join().unwrap_or_default();
    if cancel.load(Ordering::SeqCst) {
        return Err(Error::Cancelled);
    }
    Ok((status.success() && !stopped, stderr))
}

/// The probe: yt-dlp's JSON for the link, with the format it would pick.
pub fn probe(link: &str, policy: &LinkPolicy, cancel: &AtomicBool) -> Result<(serde_json::Value, Probe)> {
    let mut c = command(policy);
    c.arg("-J").args(format_args(policy)).arg("--").arg(link);
    let mut json = String::new();
    let (ok, stderr) = run(c, policy, cancel, |l| {
        json.push_str(l);
        json.push('\n');
        json.len() < 64 << 20
    })?;
    if !ok {
        return Err(failure(link, &stderr));
    }
    let v: serde_json::Value = serde_json::from_str(&json)
        .map_err(|e| Error::Downloader(format!("yt-dlp's probe of {link} is not JSON ({e})")))?;
    let p = Probe::parse(&v);
    Ok((v, p))
}

/// Progress lines of ours: `VCDL <downloaded> <total> <estimate>` (`NA` where unknown).
const PROGRESS: &str =
    "download:VCDL %(progress.downloaded_bytes)s %(progress.total_bytes)s %(progress.total_bytes_estimate)s";

/// Bytes done and expected, from one of our progress lines.
fn progress_of(line: &str) -> Option<(u64, Option<u64>)> {
    let mut w = line.strip_prefix("VCDL ")?.split_whitespace();
    let num = |s: Option<&str>| s.and_then(|s| s.parse::<f64>().ok()).map(|v| v as u64);
    let done = num(w.next())?;
    let total = num(w.next());
    let estimate = num(w.next());
    Some((done, total.or(estimate)))
}

/// Fetches `link` into `dir`: the URL checked, probed, the limits checked, then downloaded (the
/// video as `source.<ext>`, the site's subtitles as `source.<lang>.<ext>` when it has some in the
/// policy's language). `progress` gets 0..=1 as bytes arrive. Parts of a stopped download are
/// left in `dir` (yt-dlp resumes them on the next attempt).
pub fn fetch(
    link: &str,
    policy: &LinkPolicy,
    dir: &Path,
    progress: &dyn Fn(f32),
    cancel: &AtomicBool,
) -> Result<Fetched> {
    let t = Instant::now();
    check_url(link, policy)?;
    let version = version(policy)?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let (json, probe) = probe(link, policy, cancel)?;
    probe.check(link, policy)?;
    let info = dir.join("probe.json");
    std::fs::write(&info, serde_json::to_vec(&json).unwrap_or_default()).map_err(|e| Error::io(&info, e))?;
    let subs = probe.subtitle_choice(policy.language.as_deref());

    let mut c = command(policy);
    c.arg("--load-info-json")
        .arg(&info)
        .args(format_args(policy))
        .args([
            "--newline",
            "--progress-template",
            PROGRESS,
            "--no-mtime",
            "--max-filesize",
        ])
        .arg(policy.max_bytes.to_string())
        .arg("-P")
        .arg(dir)
        .args(["-o", "source.%(ext)s"]);
    if let Some((lang, auto)) = &subs {
        c.arg(if *auto {
            "--write-auto-subs"
        } else {
            "--write-subs"
        })
        .args(["--sub-format", "vtt/srt/best", "--sub-langs"])
        .arg(lang);
    }
    let mut too_big = false;
    let mut got = 0u64;
    let (ok, stderr) = run(c, policy, cancel, |l| {
        if let Some((done, total)) = progress_of(l) {
            got = got.max(done);
            if done > policy.max_bytes {
                too_big = true;
                return false;
            }
            if let Some(total) = total.filter(|t| *t > 0) {
                progress((done as f32 / total as f32).min(1.0));
            }
        }
        true
    })?;
    if too_big || stderr.contains("File is larger than max-filesize") {
        return Err(Error::Link {
            url: link.into(),
            reason: format!(
                "the video is over the limit of {} MB",
                policy.max_bytes / 1_000_000
            ),
        });
    }
    if !ok {
        return Err(failure(link, &stderr));
    }
    let video = find(dir, |name| {
        name.starts_with("source.")
            && name.matches('.').count() == 1
            && !name.ends_with(".json")
            && !name.ends_with(".part")
    })
    .ok_or_else(|| Error::Downloader(format!("yt-dlp reported success for {link} but left no video")))?;
    let size = std::fs::metadata(&video).map(|m| m.len()).unwrap_or(0);
    if size > policy.max_bytes {
        let _ = std::fs::remove_file(&video);
        return Err(Error::Link {
            url: link.into(),
            reason: format!(
                "the video is over the limit of {} MB",
                policy.max_bytes / 1_000_000
            ),
        });
    }
    // The site's subtitles, used when they parse (else Whisper transcribes, as without them).
    let sub_file = subs.as_ref().and_then(|(lang, _)| {
        let prefix = format!("source.{lang}.");
        let f = find(dir, |n| {
            n.starts_with(&prefix) && (n.ends_with(".vtt") || n.ends_with(".srt"))
        })?;
        match crate::subtitle::read_file(&f) {
            Ok(t) if !t.cues.is_empty() => Some(f),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!("the site's subtitles for {link} do not parse ({e}); transcribing instead");
                None
            }
        }
    });
    progress(1.0);
    Ok(Fetched {
        video,
        source: SourceFacts {
            url: link.into(),
            webpage_url: probe.webpage_url,
            title: probe.title,
            extractor: probe.extractor,
            duration_secs: probe.duration,
            downloaded_bytes: size.max(got),
            subtitles: sub_file.as_ref().and(subs.as_ref()).map(|(l, auto)| match auto {
                true => format!("{l} (automatic)"),
                false => l.clone(),
            }),
            yt_dlp_version: version,
            fetch_secs: t.elapsed().as_secs_f64(),
        },
        subs: sub_file,
    })
}

fn find(dir: &Path, pred: impl Fn(&str) -> bool) -> Option<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(&pred))
        .collect();
    v.sort();
    v.into_iter().next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_give_bytes_done_and_expected() {
        assert_eq!(progress_of("VCDL 1024 2048 NA"), Some((1024, Some(2048))));
        assert_eq!(progress_of("VCDL 1024 NA 4096.5"), Some((1024, Some(4096))));
        assert_eq!(progress_of("VCDL 10 NA NA"), Some((10, None)));
        assert_eq!(progress_of("[download] 10%"), None);
        assert_eq!(progress_of("VCDL NA NA NA"), None);
    }
}
