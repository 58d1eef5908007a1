//! A fake Telegram Bot API server on 127.0.0.1 (the bot's API URL points at it): it serves
//! queued updates through getUpdates, files through getFile and /file/bot<token>/..., records every
//! call (JSON or multipart), and can answer with 429 `retry_after` or hold a call to stage a crash.
#![allow(dead_code)]

use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Path as UrlPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const TOKEN: &str = "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw_x";
pub const BOT_USERNAME: &str = "vc_bot";

#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    pub fields: HashMap<String, String>,
    /// Uploaded files: field name -> (file name, bytes).
    pub files: HashMap<String, (String, Vec<u8>)>,
    pub at: Instant,
}

impl Call {
    /// An uploaded file by field name, following `attach://` references.
    pub fn file(&self, field: &str) -> &[u8] {
        if let Some(f) = self.files.get(field) {
            return &f.1;
        }
        let name = self
            .fields
            .get(field)
            .and_then(|v| v.strip_prefix("attach://"))
            .unwrap_or("");
        &self
            .files
            .get(name)
            .unwrap_or_else(|| panic!("no file {field} in {:?}", self.fields))
            .1
    }

    pub fn text(&self) -> &str {
        self.fields
            .get("text")
            .or(self.fields.get("caption"))
            .map(String::as_str)
            .unwrap_or("")
    }
}

#[derive(Clone)]
pub enum Rule {
    /// Answer the next `n` calls of `method` with 429 and this retry_after.
    RetryAfter { method: String, secs: u64, n: usize },
    /// Never answer a call of `method` whose text contains `needle` (the bot is killed meanwhile).
    Hold { method: String, needle: String },
    /// SIGKILL the bot process ([`Fake::set_pid`]) at the `nth` call of `method` whose text
    /// contains `needle`, counted from when the rule was set: before answering it (`after: None`:
    /// the call is recorded, as a request Telegram may have carried out) or `after` this long
    /// after answering it. Once. Between the answer and the kill the server takes no other call
    /// (they wait, unrecorded): the bot has `after` for its own work, such as recording the
    /// answer, and cannot run ahead of the kill.
    Kill {
        method: String,
        needle: String,
        nth: usize,
        after: Option<Duration>,
    },
}

/// A kill the fake carried out: the call that triggered it (an index into [`Fake::calls`]).
#[derive(Debug, Clone)]
pub struct Kill {
    pub call: usize,
    pub method: String,
    pub after: Option<Duration>,
}

#[derive(Default)]
pub struct Fake {
    pub calls: Mutex<Vec<Call>>,
    updates: Mutex<Vec<Value>>,
    next_update: AtomicI64,
    next_message: AtomicI64,
    /// file_id -> (path on disk, reported size, file_path the server hands out)
    files: Mutex<HashMap<String, (PathBuf, u64, String)>>,
    rules: Mutex<Vec<Rule>>,
    pub local_mode: Mutex<bool>,
    pid: Mutex<Option<u32>>,
    pub kills: Mutex<Vec<Kill>>,
    /// Uploaded files are not kept (their bytes dropped once read), so a load test measures the
    /// bot's memory, not the fake's record of 600 clips.
    pub forget_files: std::sync::atomic::AtomicBool,
    /// The calls answered with 429 (indexes into [`Fake::calls`]) and their retry_after.
    pub throttled: Mutex<Vec<(usize, u64)>>,
    /// Set between a [`Rule::Kill`]'s answer and its kill: calls wait.
    frozen: std::sync::atomic::AtomicBool,
}

pub struct Server {
    pub fake: Arc<Fake>,
    pub url: String,
}

pub async fn start() -> Server {
    let fake = Arc::new(Fake {
        next_update: AtomicI64::new(1),
        next_message: AtomicI64::new(1000),
        ..Default::default()
    });
    let app = Router::new()
        .route("/{bot}/{method}", post(api).get(api))
        .route("/file/{bot}/{*path}", get(file))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Server { fake, url }
}

impl Fake {
    pub fn push_update(&self, mut u: Value) {
        u["update_id"] = json!(self.next_update.fetch_add(1, Ordering::SeqCst));
        self.updates.lock().unwrap().push(u);
    }

    /// Registers a file the bot may fetch; `size` is what Telegram reports.
    pub fn add_file(&self, id: &str, path: &Path, size: u64) {
        self.files
            .lock()
            .unwrap()
            .insert(id.into(), (path.to_path_buf(), size, format!("documents/{id}")));
    }

    pub fn rule(&self, r: Rule) {
        self.rules.lock().unwrap().push(r);
    }

    /// The bot process that [`Rule::Kill`] kills.
    pub fn set_pid(&self, pid: u32) {
        *self.pid.lock().unwrap() = Some(pid);
        self.frozen.store(false, Ordering::SeqCst);
    }

    pub fn clear_rules(&self) {
        self.rules.lock().unwrap().clear();
    }

    pub fn calls(&self, method: &str) -> Vec<Call> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.method == method)
            .cloned()
            .collect()
    }

    /// Waits until `pred` holds over the calls (or panics after `secs`, listing them).
    pub async fn wait_for(&self, secs: u64, what: &str, pred: impl Fn(&[Call]) -> bool) {
        let start = Instant::now();
        loop {
            if pred(&self.calls.lock().unwrap()) {
                return;
            }
            if start.elapsed() > Duration::from_secs(secs) {
                let calls = self.calls.lock().unwrap();
                let list: Vec<String> = calls
                    .iter()
                    .map(|c| format!("{} {:?}", c.method, c.text()))
                    .collect();
                panic!("timed out after {secs} s waiting for {what}; calls: {list:#?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn sigkill(pid: u32) {
    // SAFETY: kill(2) with a pid this test spawned; no memory is shared.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
}

fn message(id: i64, chat: i64, text: &str) -> Value {
    json!({
        "message_id": id, "date": 0,
        "chat": {"id": chat, "type": if chat < 0 { "supergroup" } else { "private" }, "first_name": "u", "title": "g"},
        "text": text,
    })
}

async fn file(State(f): State<Arc<Fake>>, UrlPath((_bot, path)): UrlPath<(String, String)>) -> Bytes {
    let files = f.files.lock().unwrap().clone();
    let hit = files
        .values()
        .find(|(_, _, p)| *p == path)
        .map(|(d, _, _)| d.clone());
    Bytes::from(std::fs::read(hit.expect("known file")).unwrap())
}

async fn api(
    State(f): State<Arc<Fake>>,
    UrlPath((bot, method)): UrlPath<(String, String)>,
    req: Request,
) -> Json<Value> {
    assert_eq!(bot, format!("bot{TOKEN}"), "token in the URL");
    if f.frozen.load(Ordering::SeqCst) {
        // A kill is on its way: this call never reaches "Telegram".
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    // Bot API method names are case-insensitive (teloxide sends "GetMe"): use Telegram's spelling.
    let mut cs = method.chars();
    let method: String = cs
        .next()
        .map(|c| c.to_ascii_lowercase())
        .into_iter()
        .chain(cs)
        .collect();
    let ct = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let mut fields = HashMap::new();
    let mut files = HashMap::new();
    if ct.starts_with("multipart/") {
        let mut mp = Multipart::from_request(req, &()).await.unwrap();
        // A body cut short (the bot was killed mid-upload) ends the call: nothing is recorded.
        while let Some(field) = mp.next_field().await.unwrap_or(None) {
            let name = field.name().unwrap_or("").to_string();
            let file_name = field.file_name().map(str::to_string);
            let Ok(data) = field.bytes().await.map(|b| b.to_vec()) else {
                return Json(json!({"ok": false, "error_code": 400, "description": "cut short"}));
            };
            match file_name {
                Some(n) => {
                    let data = match f.forget_files.load(Ordering::SeqCst) {
                        true => Vec::new(),
                        false => data,
                    };
                    files.insert(name, (n, data));
                }
                None => {
                    fields.insert(name, String::from_utf8_lossy(&data).into_owned());
                }
            }
        }
    } else {
        let body = axum::body::to_bytes(req.into_body(), 1 << 20).await.unwrap();
        if let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(&body) {
            for (k, v) in m {
                fields.insert(k, v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()));
            }
        }
    }
    if method == "getUpdates" {
        let offset: i64 = fields.get("offset").and_then(|s| s.parse().ok()).unwrap_or(0);
        // As Telegram does: asking from `offset` confirms (forgets) every earlier update.
        f.updates
            .lock()
            .unwrap()
            .retain(|u| u["update_id"].as_i64().unwrap() >= offset);
        for _ in 0..10 {
            let ups: Vec<Value> = f
                .updates
                .lock()
                .unwrap()
                .iter()
                .filter(|u| u["update_id"].as_i64().unwrap() >= offset)
                .cloned()
                .collect();
            if !ups.is_empty() {
                return Json(json!({"ok": true, "result": ups}));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        return Json(json!({"ok": true, "result": []}));
    }
    let call = Call {
        method: method.clone(),
        fields: fields.clone(),
        files,
        at: Instant::now(),
    };
    let index = {
        let mut calls = f.calls.lock().unwrap();
        calls.push(call.clone());
        calls.len() - 1
    };
    // Rules: 429s and held calls.
    let rule = {
        let mut rules = f.rules.lock().unwrap();
        let mut hit = None;
        for r in rules.iter_mut() {
            match r {
                Rule::RetryAfter { method: m, secs, n } if *m == method && *n > 0 => {
                    *n -= 1;
                    hit = Some(Rule::RetryAfter {
                        method: m.clone(),
                        secs: *secs,
                        n: 0,
                    });
                    break;
                }
                Rule::Hold { method: m, needle } if *m == method && call.text().contains(needle.as_str()) => {
                    hit = Some(r.clone());
                    break;
                }
                Rule::Kill {
                    method: m,
                    needle,
                    nth,
                    ..
                } if *m == method && *nth > 0 && call.text().contains(needle.as_str()) => {
                    *nth -= 1;
                    if *nth == 0 {
                        hit = Some(r.clone());
                        break;
                    }
                }
                _ => {}
            }
        }
        hit
    };
    match rule {
        Some(Rule::RetryAfter { secs, .. }) => {
            f.throttled.lock().unwrap().push((index, secs));
            return Json(json!({"ok": false, "error_code": 429,
                "description": format!("Too Many Requests: retry after {secs}"),
                "parameters": {"retry_after": secs}}));
        }
        Some(Rule::Hold { .. }) => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        Some(Rule::Kill { after, .. }) => {
            let pid = f.pid.lock().unwrap().expect("Rule::Kill needs Fake::set_pid");
            f.kills.lock().unwrap().push(Kill {
                call: index,
                method: method.clone(),
                after,
            });
            match after {
                None => {
                    sigkill(pid);
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
                Some(d) => {
                    f.frozen.store(true, Ordering::SeqCst);
                    tokio::spawn(async move {
                        tokio::time::sleep(d).await;
                        sigkill(pid);
                    });
                }
            }
        }
        None => {}
    }
    let chat: i64 = fields.get("chat_id").and_then(|s| s.parse().ok()).unwrap_or(1);
    let result = match method.as_str() {
        "getMe" => json!({"id": 42, "is_bot": true, "first_name": "viralclip", "username": BOT_USERNAME,
            "can_join_groups": true, "can_read_all_group_messages": false, "supports_inline_queries": false,
            "has_main_web_app": false}),
        "getWebhookInfo" => json!({"url": "", "has_custom_certificate": false, "pending_update_count": 0}),
        "getFile" => {
            let id = fields.get("file_id").cloned().unwrap_or_default();
            let (path, size, rel) = f.files.lock().unwrap().get(&id).cloned().expect("known file id");
            let fp = if *f.local_mode.lock().unwrap() {
                path.to_string_lossy().into_owned()
            } else {
                rel
            };
            json!({"file_id": id, "file_unique_id": format!("u{id}"), "file_size": size, "file_path": fp})
        }
        "sendMessage" | "sendVideo" | "sendPhoto" | "sendDocument" | "editMessageText" => {
            let id = if method == "editMessageText" {
                fields.get("message_id").and_then(|s| s.parse().ok()).unwrap_or(1)
            } else {
                f.next_message.fetch_add(1, Ordering::SeqCst)
            };
            message(id, chat, call.text())
        }
        _ => json!(true),
    };
    Json(json!({"ok": true, "result": result}))
}

// ---- updates ------------------------------------------------------------------------------

pub fn user(id: i64) -> Value {
    json!({"id": id, "is_bot": false, "first_name": format!("user{id}")})
}

pub fn chat(id: i64) -> Value {
    if id < 0 {
        json!({"id": id, "type": "supergroup", "title": "group"})
    } else {
        json!({"id": id, "type": "private", "first_name": "u"})
    }
}

pub fn video_message(id: i64, chat_id: i64, from: i64, file_id: &str, size: u64) -> Value {
    json!({"message_id": id, "date": 0, "chat": chat(chat_id), "from": user(from),
        "video": {"file_id": file_id, "file_unique_id": format!("u{file_id}"), "width": 1280, "height": 720,
                  "duration": 65, "file_size": size, "mime_type": "video/mp4"}})
}

pub fn document_message(id: i64, chat_id: i64, from: i64, file_id: &str, name: &str, size: u64) -> Value {
    json!({"message_id": id, "date": 0, "chat": chat(chat_id), "from": user(from),
        "document": {"file_id": file_id, "file_unique_id": format!("u{file_id}"), "file_name": name, "file_size": size}})
}

pub fn text_message(id: i64, chat_id: i64, from: i64, text: &str) -> Value {
    let mut m = json!({"message_id": id, "date": 0, "chat": chat(chat_id), "from": user(from), "text": text});
    if text.starts_with('/') {
        let len = text.split_whitespace().next().unwrap().encode_utf16().count();
        m["entities"] = json!([{"type": "bot_command", "offset": 0, "length": len}]);
    }
    m
}

pub fn update(message: Value) -> Value {
    json!({"message": message})
}

/// A press of the inline button with `data` under the bot's message `message_id` in `chat`.
pub fn button_press(id: &str, from: i64, chat_id: i64, message_id: i64, data: &str) -> Value {
    json!({"callback_query": {
        "id": id, "from": user(from), "chat_instance": "ci", "data": data,
        "message": {"message_id": message_id, "date": 1, "chat": chat(chat_id), "text": "clip"},
    }})
}

/// The callback data of the button labelled `label` in a sent message's `reply_markup`.
pub fn button_data(call: &Call, label: &str) -> String {
    let markup: Value = serde_json::from_str(&call.fields["reply_markup"]).expect("a keyboard");
    markup["inline_keyboard"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row.as_array().unwrap().iter())
        .find(|b| b["text"] == label)
        .unwrap_or_else(|| panic!("no button {label:?} in {markup}"))["callback_data"]
        .as_str()
        .unwrap()
        .to_string()
}

// ---- fixtures -----------------------------------------------------------------------------

// The fixture helpers are the engine tests' own (fail with instructions, or skip loudly).
#[path = "../../../engine/tests/common/mod.rs"]
mod fixtures;
#[allow(unused_imports)]
pub use fixtures::{e5, fixture, lying_mkv, repo, whisper_tiny_en, yunet};

/// Registers the demo video ("vid") and subtitles for it ("subs") with the fake server, and returns
/// the update of a subtitle file sent as a reply to that video (whose caption is `caption`).
pub fn video_with_subtitles(f: &Fake, dir: &Path, caption: &str) -> Value {
    let demo = repo().join("assets/demo/demo.mp4");
    f.add_file("vid", &demo, 1_300_000);
    f.add_file("subs", &demo_srt(dir), 900);
    let mut video = video_message(10, 100, 100, "vid", 1_300_000);
    video["caption"] = json!(caption);
    let mut subs = document_message(11, 100, 100, "subs", "a.srt", 900);
    subs["reply_to_message"] = video;
    update(subs)
}

/// Subtitles for the demo video: its script's lines, 5 s apart.
pub fn demo_srt(dir: &Path) -> PathBuf {
    let script = std::fs::read_to_string(repo().join("assets/demo/script.ru.txt")).unwrap();
    let mut s = String::new();
    for (i, line) in script.lines().filter(|l| !l.trim().is_empty()).enumerate() {
        let (a, b) = (i * 5, i * 5 + 5);
        s.push_str(&format!(
            "{}\n00:00:{:02},000 --> 00:00:{:02},000\n{}\n\n",
            i + 1,
            a.min(59),
            b.min(59),
            line.trim()
        ));
    }
    let p = dir.join("demo.srt");
    std::fs::write(&p, s).unwrap();
    p
}

/// Starts the `viralclip-bot` binary against the fake at `url`, on the CPU, with the e5 fixture,
/// a local Whisper model and `env` on top.
pub fn spawn_bot(
    url: &str,
    data: &Path,
    e5: &Path,
    whisper: &Path,
    env: &[(&str, &str)],
) -> std::process::Child {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_viralclip-bot"));
    c.current_dir(repo())
        .env("TELOXIDE_TOKEN", TOKEN)
        .env("VIRALCLIP_API_URL", url)
        .env("VIRALCLIP_DATA_DIR", data)
        .env("VIRALCLIP_ENCODER", e5)
        .env("VIRALCLIP_WHISPER", whisper)
        .env("VIRALCLIP_DEVICE", "cpu")
        .env("RUST_LOG", "warn");
    if let Some(face) = yunet() {
        c.env("VIRALCLIP_FACE_MODEL", face);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c.spawn().unwrap()
}

/// The real engine (assets/model over the e5 fixture) on the CPU; `whisper`: a local model for
/// videos without subtitles.
pub fn engine_clipper(e5: &Path, whisper: Option<&Path>) -> Arc<dyn viralclip_bot::clipper::Clipper> {
    model_clipper(&repo().join("assets/model"), e5, whisper)
}

/// [`engine_clipper`] with the model in `model`.
pub fn model_clipper(
    model: &Path,
    e5: &Path,
    whisper: Option<&Path>,
) -> Arc<dyn viralclip_bot::clipper::Clipper> {
    Arc::new(
        viralclip_bot::clipper::EngineClipper::new(
            model.to_path_buf(),
            Some(e5.to_path_buf()),
            whisper.map(|w| viralclip_engine::whisper_model::WhisperModel::File(w.to_path_buf())),
            yunet(),
            viralclip_engine::device::DeviceChoice::Cpu,
            viralclip_engine::device::Precision::F32,
        )
        .unwrap(),
    )
}

/// The bot running in this process (stopped when dropped).
pub struct Running {
    task: tokio::task::JoinHandle<viralclip_bot::Result<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn start_bot(cfg: viralclip_bot::BotConfig, c: Arc<dyn viralclip_bot::clipper::Clipper>) -> Running {
    Running {
        task: tokio::spawn(viralclip_bot::app::run_with(cfg, c)),
    }
}

/// [`start_bot`] with a given trainer behind /train.
pub fn start_bot_with(
    cfg: viralclip_bot::BotConfig,
    c: Arc<dyn viralclip_bot::clipper::Clipper>,
    trainer: Arc<dyn viralclip_bot::training::Trainer>,
) -> Running {
    Running {
        task: tokio::spawn(viralclip_bot::app::run_with_trainer(cfg, c, trainer)),
    }
}

pub fn in_chat(c: &Call, chat: i64) -> bool {
    c.fields.get("chat_id").is_some_and(|id| *id == chat.to_string())
}

pub fn config(url: &str, data: &Path, e5: &Path) -> viralclip_bot::BotConfig {
    use clap::Parser;
    #[derive(Parser)]
    struct C {
        #[command(flatten)]
        c: viralclip_bot::BotConfig,
    }
    let model = repo().join("assets/model");
    let mut c = C::parse_from([
        "t",
        "--token",
        TOKEN,
        "--api-url",
        url,
        "--data-dir",
        data.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--encoder",
        e5.to_str().unwrap(),
        "--device",
        "cpu",
        "--admins",
        "7",
    ])
    .c;
    c.max_attempts = 2;
    c
}
