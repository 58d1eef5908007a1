//! Links instead of uploads: a video page or a direct file URL, fetched with yt-dlp (run as a
//! subprocess, [`ytdlp`]). What is checked here is pure and fast to test: the URL (scheme, the
//! host allow-list, the addresses its name resolves to), the probe's answer (`yt-dlp -J`:
//! duration, size, live or not, the subtitles the site has) against the limits, and yt-dlp's
//! error lines turned into one answer a user understands.
//!
//! Order of a fetch: [`check_url`] → probe → [`Probe::check`] (refused before any byte of video is
//! downloaded) → download with progress, its size watched while it runs → the subtitles the site
//! has in the asked language, when they parse.

pub mod ytdlp;

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, ToSocketAddrs};
use std::path::PathBuf;

/// Hosts links are taken from by default (a host matches an entry or any subdomain of it).
pub const DEFAULT_HOSTS: &[&str] = &[
    "youtube.com",
    "youtu.be",
    "vimeo.com",
    "rutube.ru",
    "vk.com",
    "vkvideo.ru",
    "ok.ru",
    "dzen.ru",
    "twitch.tv",
    "tiktok.com",
    "instagram.com",
    "x.com",
    "twitter.com",
    "facebook.com",
    "dailymotion.com",
];

/// What links may be fetched and how.
#[derive(Debug, Clone)]
pub struct LinkPolicy {
    /// Allowed hosts (`*`: any); a host matches an entry or a subdomain of it.
    pub hosts: Vec<String>,
    /// Take links whose host resolves to a private, loopback or link-local address (a bot on a
    /// server should not fetch its own network's pages for strangers; tests serve on 127.0.0.1).
    pub allow_private: bool,
    /// A Netscape cookies file for sites that demand a login (passed to yt-dlp, never logged).
    pub cookies: Option<PathBuf>,
    /// The yt-dlp program.
    pub program: PathBuf,
    /// Largest download, bytes.
    pub max_bytes: u64,
    /// Longest video, seconds.
    pub max_duration_secs: f64,
    /// Subtitle language wanted (`None`: the video's own language, when the site says it).
    pub language: Option<String>,
    /// The video height aimed at (the nearest at or below it is taken).
    pub max_height: u32,
}

impl Default for LinkPolicy {
    fn default() -> Self {
        LinkPolicy {
            hosts: DEFAULT_HOSTS.iter().map(|h| h.to_string()).collect(),
            allow_private: false,
            cookies: None,
            program: PathBuf::from("yt-dlp"),
            max_bytes: 2_000_000_000,
            max_duration_secs: 4.0 * 3600.0,
            language: None,
            max_height: 1080,
        }
    }
}

/// The first http(s) link in a message's text, if any (the text around it is left alone).
pub fn find_link(text: &str) -> Option<&str> {
    text.split_whitespace()
        .map(|w| w.trim_matches(|c: char| matches!(c, '<' | '>' | '(' | ')' | '"' | '\'' | ',')))
        .find(|w| {
            let l = w.get(..8).unwrap_or(w).to_ascii_lowercase();
            (l.starts_with("http://") || l.starts_with("https://")) && w.len() > 8
        })
}

/// Whether `text` is a link rather than a path (the command line takes either).
pub fn is_link(text: &str) -> bool {
    find_link(text) == Some(text)
}

fn refused(url: &str, reason: impl Into<String>) -> Error {
    Error::Link {
        url: url.to_string(),
        reason: reason.into(),
    }
}

/// Checks a link before anything is fetched: http or https, a host on the allow-list, and (unless
/// the policy allows it) every address the host resolves to is public. Returns the parsed URL.
pub fn check_url(link: &str, policy: &LinkPolicy) -> Result<url::Url> {
    let u = url::Url::parse(link).map_err(|e| refused(link, format!("not a link that can be read ({e})")))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(refused(link, "only http and https links are taken"));
    }
    let host = u
        .host_str()
        .ok_or_else(|| refused(link, "the link has no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    if !host_allowed(&host, &policy.hosts) {
        return Err(refused(
            link,
            format!(
                "links from {host} are not taken here (allowed: {})",
                policy.hosts.join(", ")
            ),
        ));
    }
    if !policy.allow_private {
        let port = u.port_or_known_default().unwrap_or(443);
        let addrs: Vec<IpAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => (host.as_str(), port)
                .to_socket_addrs()
                .map_err(|e| Error::LinkNetwork(format!("{host}: the name does not resolve ({e})")))?
                .map(|a| a.ip())
                .collect(),
        };
        if let Some(ip) = addrs.iter().find(|ip| !is_public(**ip)) {
            return Err(refused(
                link,
                format!("{host} is a private or local address ({ip}); such links are not fetched"),
            ));
        }
    }
    Ok(u)
}

/// Whether `host` is on the allow-list: an entry itself or a subdomain of one; `*` allows any.
pub fn host_allowed(host: &str, hosts: &[String]) -> bool {
    hosts.iter().any(|h| {
        let h = h.trim().trim_start_matches("*.").to_ascii_lowercase();
        h == "*" || host == h || host.strip_suffix(&h).is_some_and(|rest| rest.ends_with('.'))
    })
}

/// Whether an address is on the public internet: not loopback, private (RFC 1918, unique local),
/// link-local, carrier-grade NAT, unspecified, multicast, broadcast, documentation or reserved.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.is_multicast()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64.0.0/10
                || (o[0] == 192 && o[1] == 0 && o[2] == 0) // 192.0.0.0/24
                || (o[0] == 198 && (o[1] & 0xfe) == 18) // 198.18.0.0/15
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link-local
                || (s[0] == 0x2001 && s[1] == 0xdb8)) // documentation
        }
    }
}

/// What the probe (`yt-dlp -J`) says about a link, as far as the limits care.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    pub title: String,
    pub extractor: String,
    pub webpage_url: String,
    /// Seconds, when the site says.
    pub duration: Option<f64>,
    /// Bytes of the chosen format(s), exact or estimated, when known.
    pub size: Option<u64>,
    /// `is_live`, `is_upcoming`, or `None` for a recording.
    pub live: Option<String>,
    /// A playlist or channel rather than one video.
    pub playlist: bool,
    /// Hosts the chosen formats are downloaded from (checked like the link's own).
    pub media_hosts: Vec<String>,
    /// The site's subtitles: (language key, automatic?) for every language it has.
    pub subtitles: Vec<(String, bool)>,
    /// The video's own language, when the site says.
    pub language: Option<String>,
}

impl Probe {
    /// Reads yt-dlp's `-J` JSON.
    pub fn parse(json: &serde_json::Value) -> Probe {
        let s = |k: &str| json.get(k).and_then(|v| v.as_str()).map(str::to_string);
        let f = |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_f64());
        let chosen: Vec<&serde_json::Value> = match json.get("requested_formats").and_then(|v| v.as_array()) {
            Some(a) if !a.is_empty() => a.iter().collect(),
            _ => vec![json],
        };
        let size = chosen
            .iter()
            .map(|c| f(c, "filesize").or_else(|| f(c, "filesize_approx")))
            .sum::<Option<f64>>()
            .or_else(|| f(json, "filesize_approx"))
            .map(|b| b as u64);
        let live = match s("live_status").as_deref() {
            Some(l @ ("is_live" | "is_upcoming")) => Some(l.to_string()),
            _ if json.get("is_live").and_then(|v| v.as_bool()) == Some(true) => Some("is_live".into()),
            _ => None,
        };
        let mut media_hosts: Vec<String> = chosen
            .iter()
            .filter_map(|c| c.get("url").and_then(|u| u.as_str()))
            .filter_map(|u| {
                url::Url::parse(u)
                    .ok()?
                    .host_str()
                    .map(|h| h.to_ascii_lowercase())
            })
            .collect();
        media_hosts.dedup();
        let mut subtitles = Vec::new();
        for (key, auto) in [("subtitles", false), ("automatic_captions", true)] {
            if let Some(m) = json.get(key).and_then(|v| v.as_object()) {
                for (lang, list) in m {
                    if lang != "live_chat" && list.as_array().is_some_and(|a| !a.is_empty()) {
                        subtitles.push((lang.clone(), auto));
                    }
                }
            }
        }
        Probe {
            title: s("title").unwrap_or_default(),
            extractor: s("extractor").unwrap_or_default(),
            webpage_url: s("webpage_url").unwrap_or_default(),
            duration: f(json, "duration").filter(|d| d.is_finite() && *d > 0.0),
            size,
            live,
            playlist: matches!(s("_type").as_deref(), Some("playlist" | "multi_video")),
            media_hosts,
            subtitles,
            language: s("language"),
        }
    }

    /// Refuses, before downloading, what breaks the limits: a playlist, a live or upcoming
    /// stream, a known duration or size over the limit, media served from a private address.
    pub fn check(&self, link: &str, policy: &LinkPolicy) -> Result<()> {
        if self.playlist {
            return Err(refused(
                link,
                "this link is a playlist or a channel; send the link of one video",
            ));
        }
        match self.live.as_deref() {
            Some("is_live") => {
                return Err(refused(
                    link,
                    "this is a live stream; send the link again when it has ended and its recording is up",
                ))
            }
            Some(_) => return Err(refused(link, "this stream has not started yet")),
            None => {}
        }
        if let Some(d) = self.duration {
            if d > policy.max_duration_secs {
                return Err(refused(
                    link,
                    format!(
                        "the video is {} long; the limit here is {}",
                        crate::link::clock(d),
                        crate::link::clock(policy.max_duration_secs)
                    ),
                ));
            }
        }
        if let Some(b) = self.size {
            if b > policy.max_bytes {
                return Err(refused(
                    link,
                    format!(
                        "the video is about {} MB; the limit here is {} MB",
                        b / 1_000_000,
                        policy.max_bytes / 1_000_000
                    ),
                ));
            }
        }
        if !policy.allow_private {
            for h in &self.media_hosts {
                if let Ok(ip) = h.trim_matches(|c| c == '[' || c == ']').parse::<IpAddr>() {
                    if !is_public(ip) {
                        return Err(refused(
                            link,
                            format!("the video is served from a private address ({ip})"),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// The subtitles to fetch: in `language` (else the video's own), the site's own ones before
    /// automatic captions. `(key, automatic)`.
    pub fn subtitle_choice(&self, language: Option<&str>) -> Option<(String, bool)> {
        let want = language.map(str::to_string).or_else(|| self.language.clone());
        let base = |k: &str| k.split(['-', '_']).next().unwrap_or(k).to_ascii_lowercase();
        let rank = |(k, auto): &(String, bool)| -> Option<u8> {
            let w = want.as_deref();
            let exact = w.is_some_and(|w| k.eq_ignore_ascii_case(w));
            let same = w.is_some_and(|w| base(k) == base(w));
            let orig = k.ends_with("-orig");
            match (auto, exact || same, orig) {
                (false, true, _) => Some(if exact { 0 } else { 1 }),
                (true, true, true) => Some(2),
                (true, true, false) => Some(if exact { 3 } else { 4 }),
                // No language asked and none known: the original language's automatic captions.
                (true, false, true) if w.is_none() => Some(5),
                _ => None,
            }
        };
        let mut manual_only: Vec<&(String, bool)> = self.subtitles.iter().filter(|(_, a)| !a).collect();
        if want.is_none() && manual_only.len() == 1 {
            return manual_only.pop().cloned();
        }
        self.subtitles
            .iter()
            .filter_map(|s| rank(s).map(|r| (r, s)))
            .min_by_key(|(r, _)| *r)
            .map(|(_, s)| s.clone())
    }
}

/// `1 h 05 min`, `3 min 20 s`.
pub fn clock(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, s) => format!("{s} s"),
        (0, m, s) => format!("{m} min {s:02} s"),
        (h, m, _) => format!("{h} h {m:02} min"),
    }
}

/// yt-dlp's failure, from its error lines, as the answer its user gets (the link's own fault:
/// [`Error::Link`]) or a passing failure (the network: [`Error::LinkNetwork`], retried).
pub fn failure(link: &str, stderr: &str) -> Error {
    let line = stderr
        .lines()
        .rev()
        .find(|l| l.starts_with("ERROR:"))
        .unwrap_or_else(|| stderr.lines().last().unwrap_or(""))
        .trim_start_matches("ERROR:")
        .trim();
    let l = line.to_ascii_lowercase();
    let has = |words: &[&str]| words.iter().any(|w| l.contains(w));
    let why = if has(&["private video", "video is private", "this video is private"]) {
        "this video is private".to_string()
    } else if has(&["confirm you're not a bot", "confirm you’re not a bot"]) {
        "the site asks this server to prove it is not a bot; the bot's admin can give yt-dlp a cookies file (--cookies)".into()
    } else if has(&[
        "sign in",
        "log in",
        "login",
        "members-only",
        "join this channel",
        "age-restricted",
        "--cookies",
    ]) {
        "the site wants a login to show this video; the bot's admin can give a cookies file (--cookies)"
            .into()
    } else if has(&[
        "live event will begin",
        "premieres in",
        "is_upcoming",
        "will begin in",
    ]) {
        "this stream has not started yet".into()
    } else if has(&[
        "http error 404",
        "http error 410",
        "video unavailable",
        "not available",
        "does not exist",
        "has been removed",
        "no longer available",
    ]) {
        "the link leads nowhere: the page or the video is gone (HTTP 404 or removed)".into()
    } else if has(&[
        "unsupported url",
        "no video formats found",
        "no video could be found",
    ]) {
        "no video was found at this link".into()
    } else if has(&["http error 403", "geo", "not available in your country"]) {
        "the site refuses to give this video to this server (forbidden or not available in its country)"
            .into()
    } else if has(&[
        "timed out",
        "connection refused",
        "connection reset",
        "name or service not known",
        "temporary failure",
        "network is unreachable",
        "http error 5",
        "unable to connect",
        "eof occurred",
    ]) {
        return Error::LinkNetwork(format!("{link}: {}", short(line)));
    } else {
        format!("the video could not be fetched ({})", short(line))
    };
    refused(link, why)
}

/// At most 200 characters of a line (by characters, never inside one).
fn short(line: &str) -> String {
    let mut s: String = line.chars().take(200).collect();
    if s.len() < line.len() {
        s.push('…');
    }
    s
}

/// Where a fetched video came from, for the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceFacts {
    pub url: String,
    pub webpage_url: String,
    pub title: String,
    pub extractor: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_secs: Option<f64>,
    pub downloaded_bytes: u64,
    /// The site's subtitles used instead of Whisper: `ru`, `ru-orig (automatic)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subtitles: Option<String>,
    pub yt_dlp_version: String,
    pub fetch_secs: f64,
}

/// A fetched link: the video, the site's subtitles when usable, and where it came from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fetched {
    pub video: PathBuf,
    pub subs: Option<PathBuf>,
    pub source: SourceFacts,
}

#[cfg(test)]
mod tests;
