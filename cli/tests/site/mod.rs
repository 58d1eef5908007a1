//! A small web site on 127.0.0.1 for the link tests (the cli's and the bot's): the demo video as
//! a direct file, a page with it in a `<video>` and the site's own Russian subtitles in a
//! `<track>`, a page whose JSON-LD says the video is 3 h 05 min long, and 404 for anything else.
//! It counts the requests for each path, so a test can tell that a refused link fetched nothing.
//! Also: where yt-dlp is (scripts/setup.sh's venv, or `VIRALCLIP_YT_DLP`).

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub struct Site {
    pub port: u16,
    hits: Arc<Mutex<HashMap<String, usize>>>,
}

impl Site {
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
    /// Requests for `path` so far.
    pub fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
    /// Requests for any path so far.
    pub fn total_hits(&self) -> usize {
        self.hits.lock().unwrap().values().sum()
    }
}

/// The demo script's lines as WebVTT, 5 s apart.
pub fn demo_vtt(repo: &Path) -> String {
    let script = std::fs::read_to_string(repo.join("assets/demo/script.ru.txt")).unwrap();
    let mut s = String::from("WEBVTT\n\n");
    for (i, line) in script.lines().filter(|l| !l.trim().is_empty()).enumerate() {
        let (a, b) = ((i * 5).min(59), (i * 5 + 5).min(59));
        if a < b {
            s.push_str(&format!(
                "00:00:{a:02}.000 --> 00:00:{b:02}.000\n{}\n\n",
                line.trim()
            ));
        }
    }
    s
}

/// Starts the site; it serves until the test process ends.
pub fn start(repo: &Path) -> Site {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(Mutex::new(HashMap::new()));
    let video = std::fs::read(repo.join("assets/demo/demo.mp4")).unwrap();
    let vtt = demo_vtt(repo);
    let page = "<html><head><title>Демо: погода</title></head><body>\
         <video controls src=\"/demo.mp4\"><track kind=\"subtitles\" srclang=\"ru\" label=\"Русский\" src=\"/demo.ru.vtt\"></video>\
         </body></html>"
        .to_string();
    let long = format!(
        "<html><head><title>Long talk</title><script type=\"application/ld+json\">\
         {{\"@context\":\"https://schema.org\",\"@type\":\"VideoObject\",\"name\":\"Long talk\",\"description\":\"a long one\",\
         \"duration\":\"PT3H5M\",\"contentUrl\":\"http://127.0.0.1:{port}/demo.mp4\",\"uploadDate\":\"2024-01-01\",\
         \"thumbnailUrl\":\"http://127.0.0.1:{port}/t.jpg\"}}</script></head><body></body></html>"
    );
    let files: Arc<HashMap<&'static str, (&'static str, Vec<u8>)>> = Arc::new(HashMap::from([
        ("/demo.mp4", ("video/mp4", video)),
        ("/demo.ru.vtt", ("text/vtt; charset=utf-8", vtt.into_bytes())),
        ("/page.html", ("text/html; charset=utf-8", page.into_bytes())),
        ("/long.html", ("text/html; charset=utf-8", long.into_bytes())),
    ]));
    let h = hits.clone();
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            let (files, hits) = (files.clone(), h.clone());
            std::thread::spawn(move || {
                let _ = serve(s, &files, &hits);
            });
        }
    });
    Site { port, hits }
}

fn serve(
    s: TcpStream,
    files: &HashMap<&'static str, (&'static str, Vec<u8>)>,
    hits: &Mutex<HashMap<String, usize>>,
) -> std::io::Result<()> {
    let mut r = BufReader::new(s.try_clone()?);
    let mut w = s;
    loop {
        let mut first = String::new();
        if r.read_line(&mut first)? == 0 {
            return Ok(());
        }
        let mut range = None;
        let mut body_len = 0usize;
        loop {
            let mut l = String::new();
            r.read_line(&mut l)?;
            let l = l.trim_end();
            if l.is_empty() {
                break;
            }
            let lower = l.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("range: bytes=") {
                let (a, b) = v.split_once('-').unwrap_or((v, ""));
                range = Some((a.parse::<usize>().unwrap_or(0), b.parse::<usize>().ok()));
            }
            if let Some(v) = lower.strip_prefix("content-length: ") {
                body_len = v.parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; body_len];
        r.read_exact(&mut body)?;
        let mut parts = first.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let path = parts
            .next()
            .unwrap_or("/")
            .split('?')
            .next()
            .unwrap_or("/")
            .to_string();
        *hits.lock().unwrap().entry(path.clone()).or_default() += 1;
        let head = method == "HEAD";
        match files.get(path.as_str()) {
            Some((ty, data)) => {
                let (a, b) = match range {
                    Some((a, b)) => (
                        a.min(data.len()),
                        b.map_or(data.len(), |b| (b + 1).min(data.len())),
                    ),
                    None => (0, data.len()),
                };
                let status = if range.is_some() {
                    "206 Partial Content"
                } else {
                    "200 OK"
                };
                write!(
                    w,
                    "HTTP/1.1 {status}\r\nContent-Type: {ty}\r\nContent-Length: {}\r\nAccept-Ranges: bytes\r\n{}\r\n",
                    b - a,
                    if range.is_some() {
                        format!("Content-Range: bytes {a}-{}/{}\r\n", b.saturating_sub(1), data.len())
                    } else {
                        String::new()
                    }
                )?;
                if !head {
                    w.write_all(&data[a..b])?;
                }
            }
            None => {
                let msg = b"not found";
                write!(
                    w,
                    "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
                    msg.len()
                )?;
                if !head {
                    w.write_all(msg)?;
                }
            }
        }
        w.flush()?;
    }
}

/// yt-dlp: `VIRALCLIP_YT_DLP`, else scripts/setup.sh's venv; `None` (with a printed reason) only
/// when `VIRALCLIP_ALLOW_MISSING_FIXTURES=1`, else a loud failure.
pub fn yt_dlp() -> Option<PathBuf> {
    let p = std::env::var_os("VIRALCLIP_YT_DLP")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("VIRALCLIP_FIXTURES")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                        .join(".cache/viralclip-fixtures")
                })
                .join("yt-dlp/bin/yt-dlp")
        });
    if p.is_file() {
        Some(p)
    } else if std::env::var("VIRALCLIP_ALLOW_MISSING_FIXTURES").as_deref() == Ok("1") {
        eprintln!("SKIPPED: no yt-dlp at {} (scripts/setup.sh)", p.display());
        None
    } else {
        panic!("no yt-dlp at {}: run scripts/setup.sh", p.display())
    }
}
