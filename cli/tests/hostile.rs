//! The malformed-media corpus (scripts/hostile-media.sh) through `viralclip clip`, as an attacker
//! would send it: each case answers with an allowed exit code; a refusal is one line that names
//! the file and the reason; nothing panics or hangs; memory stays bounded; no file appears outside the output
//! directory; nothing connects to the canary server the playlists point at.

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A case's time bound (a hang is a failure, not a wait) and its memory bound: the model and the
/// encoder take about 1 GB of it; the decoding budget keeps the rest small.
const MAX_SECS: f64 = 180.0;
const MAX_RSS_MB: f64 = 2500.0;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn fixture(var: &str, default_rel: &str) -> PathBuf {
    let p = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
            .join(".cache/viralclip-fixtures")
            .join(default_rel)
    });
    assert!(
        p.exists(),
        "{var}: no fixture at {}: run scripts/setup.sh",
        p.display()
    );
    p
}

/// Every file under `dir` (not following links), relative to it.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                todo.push(e.path());
            }
            out.push(e.path().strip_prefix(dir).unwrap().to_path_buf());
        }
    }
    out.sort();
    out
}

/// The exit code, peak resident memory (MB) and wall time of `cmd`, killed past [`MAX_SECS`].
/// The child is reaped by `wait4` (which also gives its peak memory), not `Child::wait`.
#[allow(clippy::zombie_processes)]
fn run_bounded(cmd: &mut Command) -> (Option<i32>, f64, f64, String) {
    let t = Instant::now();
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let pid = child.id() as libc::pid_t;
    let (status, rss_kb) = loop {
        let mut status = 0;
        // SAFETY: plain syscall on our own child, with out-parameters we own.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if r == pid {
            break (status, usage.ru_maxrss);
        }
        if t.elapsed().as_secs_f64() > MAX_SECS {
            let _ = child.kill();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    let err = reader.join().unwrap();
    (code, rss_kb as f64 / 1024.0, t.elapsed().as_secs_f64(), err)
}

#[test]
fn the_malformed_media_corpus_is_refused_cleanly() {
    for tool in ["ffmpeg", "python3", "mkfifo"] {
        let ok = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .status()
            .unwrap()
            .success();
        assert!(ok, "{tool} is not installed: scripts/setup.sh installs it");
    }
    let work = tempfile::tempdir().unwrap();
    // The canary: playlists in the corpus point here; any connection is a failure.
    let canary = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = canary.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    {
        let hits = hits.clone();
        std::thread::spawn(move || {
            for _ in canary.incoming() {
                hits.fetch_add(1, Ordering::SeqCst);
            }
        });
    }
    let corpus = work.path().join("corpus");
    let st = Command::new(repo().join("scripts/hostile-media.sh"))
        .arg(&corpus)
        .arg(port.to_string())
        .status()
        .unwrap();
    assert!(st.success(), "scripts/hostile-media.sh failed");
    let cases = std::fs::read_to_string(corpus.join("cases.tsv")).unwrap();
    let before = files(&corpus);
    let model = repo().join("assets/model");
    let encoder = fixture("VIRALCLIP_ENCODER_MULTILINGUAL", "encoders/multilingual-e5-small");
    let yunet = fixture("VIRALCLIP_FACE_MODEL", "faces/face_detection_yunet_2023mar.onnx");

    let mut failures = Vec::new();
    let mut n = 0;
    let (mut peak, mut slowest) = (0f64, 0f64);
    for line in cases.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        let [name, input, subs, allowed] = f[..] else {
            panic!("cases.tsv: {line:?}")
        };
        n += 1;
        let input = input.replace("\\n", "\n");
        let sandbox = work.path().join("runs").join(name);
        let tmp = sandbox.join("tmp");
        std::fs::create_dir_all(&tmp).unwrap();
        let out = sandbox.join("out");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_viralclip"));
        cmd.current_dir(&corpus)
            .env("TMPDIR", &tmp)
            .env_remove("RUST_LOG")
            .args(["clip", "-q", "--count", "1", "--min-secs", "3", "--max-secs", "5"])
            .arg("--model")
            .arg(&model)
            .arg("--encoder")
            .arg(&encoder)
            .arg("--face-model")
            .arg(&yunet)
            .arg("--out")
            .arg(&out);
        if subs != "-" {
            cmd.arg("--subs").arg(subs);
        }
        cmd.arg("--").arg(&input);
        let (code, rss, secs, err) = run_bounded(&mut cmd);
        peak = peak.max(rss);
        slowest = slowest.max(secs);
        let err = err.trim_end();
        println!(
            "{name:<26} exit {:>4} {secs:>6.1} s {rss:>6.0} MB  {}",
            code.map_or("kill".into(), |c| c.to_string()),
            err.lines()
                .next()
                .unwrap_or("")
                .chars()
                .take(110)
                .collect::<String>()
        );
        let mut why = Vec::new();
        let allowed: Vec<i32> = allowed.split(',').map(|c| c.parse().unwrap()).collect();
        match code {
            Some(c) if allowed.contains(&c) => {}
            other => why.push(format!("exit {other:?}, allowed {allowed:?}")),
        }
        if code != Some(0) && (err.lines().count() != 1 || !err.starts_with("viralclip: error: ")) {
            why.push(format!("not one error line: {err:?}"));
        }
        // A refusal names the file it is about (the input or its subtitles), escaped as the
        // one line writes it.
        let named = |p: &str| {
            let name = Path::new(p).file_name().map(|n| n.to_string_lossy().into_owned());
            name.is_some_and(|n| err.contains(&n.replace('\n', "\\n")))
        };
        if code == Some(2) && !named(&input) && !named(subs) {
            why.push(format!(
                "the refusal names neither {input:?} nor {subs:?}: {err:?}"
            ));
        }
        if err.contains("panicked") || code == Some(101) {
            why.push("a panic".into());
        }
        if secs > MAX_SECS {
            why.push(format!("ran {secs:.0} s"));
        }
        if rss > MAX_RSS_MB {
            why.push(format!("peak memory {rss:.0} MB"));
        }
        let left: Vec<PathBuf> = files(&tmp);
        if !left.is_empty() {
            why.push(format!("left files in TMPDIR: {left:?}"));
        }
        let now = files(&corpus);
        if now != before {
            let new: Vec<_> = now.iter().filter(|p| !before.contains(p)).collect();
            why.push(format!("files appeared beside the input: {new:?}"));
        }
        if !why.is_empty() {
            failures.push(format!("{name}: {}", why.join("; ")));
        }
    }
    let connections = hits.load(Ordering::SeqCst);
    println!(
        "{n} cases, {} failed, peak memory {peak:.0} MB, slowest {slowest:.1} s, {connections} connections to the canary",
        failures.len()
    );
    assert!(n >= 30, "only {n} cases in the corpus");
    assert_eq!(connections, 0, "something opened the canary server's address");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
