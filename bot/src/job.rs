//! What a job is made of: its stored payload (everything needed to run it again after a restart)
//! and the files in a message the bot can work on, by extensions from fixed lists.

use crate::settings::Settings;
use serde::{Deserialize, Serialize};
use teloxide::types::Message;

/// What kind of input a job has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputKind {
    Video,
    Subtitles,
}

/// A job as stored: everything needed to run it again after a restart.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Payload {
    pub kind: InputKind,
    pub file_id: String,
    pub file_size: u64,
    /// Extension from a fixed list (never from the user's file name).
    pub ext: String,
    #[serde(default)]
    pub subs_file_id: Option<String>,
    #[serde(default)]
    pub subs_ext: Option<String>,
    pub settings: Settings,
    #[serde(default)]
    pub thread_id: Option<i32>,
    #[serde(default)]
    pub reply_to: Option<i32>,
    #[serde(default)]
    pub status_message: Option<i32>,
    /// The album (Telegram media group) the input came in: a video and its subtitles sent
    /// together become one job.
    #[serde(default)]
    pub media_group: Option<String>,
    /// A link to fetch (yt-dlp) instead of a Telegram file (`file_id` is empty then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// A folder holding the input already (a web upload: `input.<ext>`, `subs.<ext>`), written
    /// whole before the job was stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload: Option<std::path::PathBuf>,
    /// A re-cut of a delivered clip (a button under it): the clip as it is to be cut again from
    /// job `recut.job`'s files. Only the cut runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recut: Option<crate::recut::ClipState>,
}

/// A link's video (and the site's subtitles) in `into`: fetched by yt-dlp with `links`, the
/// longest video and the job's language (`auto`: the video's own), unless an earlier attempt
/// did (`fetched.json`, written once the fetch is whole).
pub fn link_input(
    links: &crate::config::LinkArgs,
    max_duration_secs: f64,
    language: &str,
    url: &str,
    into: &std::path::Path,
    progress: &dyn Fn(f32),
    cancel: &std::sync::atomic::AtomicBool,
) -> crate::Result<viralclip_engine::link::Fetched> {
    let record = into.join("fetched.json");
    if let Some(f) = std::fs::read(&record)
        .ok()
        .and_then(|b| serde_json::from_slice::<viralclip_engine::link::Fetched>(&b).ok())
        .filter(|f| f.video.is_file())
    {
        return Ok(f);
    }
    let language = Some(language.to_string()).filter(|l| l != "auto");
    let policy = links.policy(max_duration_secs, language);
    let f = viralclip_engine::link::ytdlp::fetch(url, &policy, into, progress, cancel)?;
    std::fs::write(&record, serde_json::to_vec(&f)?).map_err(|e| crate::Error::file(&record, e))?;
    Ok(f)
}

/// How long a job from an album waits for the album's other files before a worker may take it.
pub(crate) const ALBUM_WAIT_SECS: u32 = 3;

pub const VIDEO_EXTS: &[&str] = &["mp4", "mkv", "webm", "mov", "avi", "m4v"];
pub const SUB_EXTS: &[&str] = &["srt", "vtt"];
pub(crate) const TRAIN_EXTS: &[&str] = &["csv", "tsv", "txt", "gz"];

/// A file in a message that the bot can work on.
#[derive(Debug, Clone)]
pub(crate) struct Media {
    pub(crate) kind: InputKind,
    pub(crate) file_id: String,
    pub(crate) size: u64,
    pub(crate) ext: &'static str,
}

impl Media {
    /// A link's video, as a job's input (fetched by the worker, not by Telegram).
    pub(crate) fn link() -> Media {
        Media {
            kind: InputKind::Video,
            file_id: String::new(),
            size: 0,
            ext: "mp4",
        }
    }
}

/// The allowed extension `name` ends with (any case), from `allowed`.
pub fn ext_of(name: Option<&str>, allowed: &[&'static str]) -> Option<&'static str> {
    let lower = name?.rsplit('.').next()?.to_ascii_lowercase();
    allowed.iter().copied().find(|e| *e == lower)
}

/// The video or subtitle file of a message: a video, or a document with an allowed extension (or a
/// video MIME type).
pub(crate) fn media_of(msg: &Message) -> Option<Media> {
    if let Some(v) = msg.video() {
        return Some(Media {
            kind: InputKind::Video,
            file_id: v.file.id.to_string(),
            size: v.file.size as u64,
            ext: "mp4",
        });
    }
    let d = msg.document()?;
    let name = d.file_name.as_deref();
    let mime = d
        .mime_type
        .as_ref()
        .map(|m| m.essence_str().to_string())
        .unwrap_or_default();
    if let Some(ext) = ext_of(name, SUB_EXTS) {
        return Some(Media {
            kind: InputKind::Subtitles,
            file_id: d.file.id.to_string(),
            size: d.file.size as u64,
            ext,
        });
    }
    let ext = ext_of(name, VIDEO_EXTS).or(mime.starts_with("video/").then_some("mp4"))?;
    Some(Media {
        kind: InputKind::Video,
        file_id: d.file.id.to_string(),
        size: d.file.size as u64,
        ext,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_extensions_come_from_the_allow_list() {
        assert_eq!(ext_of(Some("../../etc/passwd.SRT"), SUB_EXTS), Some("srt"));
        assert_eq!(ext_of(Some("x.mp4.exe"), VIDEO_EXTS), None);
        assert_eq!(ext_of(None, VIDEO_EXTS), None);
    }
}
