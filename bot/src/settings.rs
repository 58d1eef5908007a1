//! Per-chat settings (kept in the job store, so they survive restarts) and the `/settings` inline
//! keyboard's actions.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use viralclip_engine::captions::Captions;
use viralclip_engine::format::Format;
use viralclip_engine::media::CutMode;
use viralclip_engine::pipeline::{ClipRequest, ShapeRequest};

/// What a chat wants from its jobs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Clips per video.
    pub count: usize,
    pub min_secs: f64,
    pub max_secs: f64,
    /// Keyframe stream copy instead of frame-exact re-encoding.
    pub fast: bool,
    /// Whisper language code, or `auto`.
    pub language: String,
    /// The clips' shape: 9:16 by default (Shorts, Reels, TikTok).
    pub format: Format,
    /// Burned-in captions.
    pub captions: Captions,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            count: 3,
            min_secs: 15.0,
            max_secs: 60.0,
            fast: false,
            language: "auto".into(),
            format: Format::Vertical,
            captions: Captions::Words,
        }
    }
}

pub const MAX_CLIPS: usize = 10;

impl Settings {
    pub fn validate(&self) -> Result<(), String> {
        if self.count == 0 || self.count > MAX_CLIPS {
            return Err(format!("clip count must be 1 to {MAX_CLIPS}"));
        }
        if !(self.min_secs >= 3.0 && self.min_secs <= self.max_secs && self.max_secs <= 180.0) {
            return Err("clip length must be MIN-MAX seconds with 3 ≤ MIN ≤ MAX ≤ 180".into());
        }
        Ok(())
    }

    /// The engine's request for a job with these settings, within the service's limits (the
    /// longest video, the largest subtitle file).
    pub fn request(
        &self,
        input: &Path,
        subs: Option<PathBuf>,
        out: &Path,
        max_duration_secs: f64,
        max_subtitle_bytes: u64,
    ) -> ClipRequest {
        let mut req = ClipRequest::new(input, out);
        req.subs = subs;
        req.select.count = self.count;
        req.select.min_secs = self.min_secs;
        req.select.max_secs = self.max_secs;
        req.language = Some(self.language.clone()).filter(|l| l != "auto");
        req.mode = if self.fast {
            CutMode::Fast
        } else {
            CutMode::Precise
        };
        req.limits.max_duration_secs = max_duration_secs;
        req.limits.max_subtitle_bytes = max_subtitle_bytes;
        req.shape = ShapeRequest {
            format: self.format,
            captions: self.captions,
            caption_style: Default::default(),
        };
        req
    }

    /// One line for `/settings` and `/status`.
    pub fn summary(&self) -> String {
        format!(
            "{} clips of {:.0}–{:.0} s, {}, captions {}, {} cutting, language {}",
            self.count,
            self.min_secs,
            self.max_secs,
            self.format,
            self.captions,
            if self.fast { "fast" } else { "precise" },
            self.language
        )
    }

    /// Applies an inline-keyboard action (callback data `set:<action>`); `None` if unknown.
    pub fn apply(&self, action: &str) -> Option<Settings> {
        let mut s = self.clone();
        match action {
            "count+" => s.count = (s.count + 1).min(MAX_CLIPS),
            "count-" => s.count = s.count.saturating_sub(1).max(1),
            "len:short" => (s.min_secs, s.max_secs) = (10.0, 30.0),
            "len:medium" => (s.min_secs, s.max_secs) = (15.0, 60.0),
            "len:long" => (s.min_secs, s.max_secs) = (30.0, 90.0),
            "mode" => s.fast = !s.fast,
            "format" => {
                let all = Format::ALL;
                let i = all.iter().position(|f| *f == s.format).unwrap_or(0);
                s.format = all[(i + 1) % all.len()];
            }
            "captions" => {
                s.captions = match s.captions {
                    Captions::Words => Captions::Lines,
                    Captions::Lines => Captions::Off,
                    Captions::Off => Captions::Words,
                }
            }
            "lang:auto" | "lang:ru" | "lang:en" => s.language = action[5..].to_string(),
            _ => return None,
        }
        Some(s)
    }

    /// The keyboard: rows of (label, callback data).
    pub fn keyboard(&self) -> Vec<Vec<(String, String)>> {
        let b = |l: &str, d: &str| (l.to_string(), format!("set:{d}"));
        vec![
            vec![
                b("− clip", "count-"),
                b(&format!("{} clips", self.count), "noop"),
                b("+ clip", "count+"),
            ],
            vec![
                b("10–30 s", "len:short"),
                b("15–60 s", "len:medium"),
                b("30–90 s", "len:long"),
            ],
            vec![
                b(&format!("format: {}", self.format), "format"),
                b(&format!("captions: {}", self.captions), "captions"),
            ],
            vec![b(if self.fast { "mode: fast" } else { "mode: precise" }, "mode")],
            vec![b("auto", "lang:auto"), b("ru", "lang:ru"), b("en", "lang:en")],
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyboard_actions_change_settings_within_bounds() {
        let s = Settings::default();
        let s = s.apply("count+").unwrap();
        assert_eq!(s.count, 4);
        let mut t = s.clone();
        for _ in 0..20 {
            t = t.apply("count+").unwrap();
        }
        assert_eq!(t.count, MAX_CLIPS);
        let s = s
            .apply("len:long")
            .unwrap()
            .apply("mode")
            .unwrap()
            .apply("lang:ru")
            .unwrap();
        assert_eq!(
            (s.min_secs, s.max_secs, s.fast, s.language.as_str()),
            (30.0, 90.0, true, "ru")
        );
        assert!(s.validate().is_ok());
        assert!(s.apply("bogus").is_none());
        // The format cycles through every shape and back; captions through their three modes.
        let mut f = Settings::default();
        assert_eq!((f.format, f.captions), (Format::Vertical, Captions::Words));
        let mut seen = vec![f.format];
        for _ in 0..Format::ALL.len() {
            f = f.apply("format").unwrap();
            seen.push(f.format);
        }
        assert_eq!(seen.first(), seen.last());
        assert!(seen.contains(&Format::Original) && seen.contains(&Format::Square));
        let c = Settings::default()
            .apply("captions")
            .unwrap()
            .apply("captions")
            .unwrap();
        assert_eq!(c.captions, Captions::Off);
        assert!(
            c.summary().contains("captions off") && c.summary().contains("9:16"),
            "{}",
            c.summary()
        );
        // Settings stored before formats existed read as the defaults.
        let old: Settings =
            serde_json::from_str(r#"{"count":2,"min_secs":10,"max_secs":20,"fast":false,"language":"ru"}"#)
                .unwrap();
        assert_eq!(
            (old.count, old.format, old.captions),
            (2, Format::Vertical, Captions::Words)
        );
        // Every button's action is known (or the no-op label).
        for row in s.keyboard() {
            for (_, data) in row {
                let a = data.strip_prefix("set:").unwrap();
                assert!(a == "noop" || s.apply(a).is_some(), "{a}");
            }
        }
    }
}
