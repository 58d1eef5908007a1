//! Subtitle files: bytes in any of the encodings people actually send (UTF-8 with or without BOM,
//! UTF-16 with BOM, Windows-1251), any line ending, SRT (read with `srtparse`) or WebVTT, out come
//! [`Cue`]s. Pure code: no IO beyond the bytes handed in.

use crate::cue::{Cue, CueSource, Transcript};
use crate::error::{Error, Result};

/// A subtitle format we read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Srt,
    WebVtt,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Srt => "srt",
            Format::WebVtt => "webvtt",
        }
    }
}

/// Decodes subtitle bytes to text with `\n` line endings; returns the text and the encoding found.
pub fn decode(bytes: &[u8]) -> (String, &'static str) {
    let (text, encoding) = if let Some(rest) = bytes.strip_prefix(&[0xEF, 0xBB, 0xBF]) {
        (String::from_utf8_lossy(rest).into_owned(), "utf-8-bom")
    } else if bytes.starts_with(&[0xFF, 0xFE]) {
        let (t, _, _) = encoding_rs::UTF_16LE.decode(bytes);
        (t.into_owned(), "utf-16le")
    } else if bytes.starts_with(&[0xFE, 0xFF]) {
        let (t, _, _) = encoding_rs::UTF_16BE.decode(bytes);
        (t.into_owned(), "utf-16be")
    } else if let Ok(t) = std::str::from_utf8(bytes) {
        (t.to_owned(), "utf-8")
    } else if looks_like_cp1251(bytes) {
        let (t, _) = encoding_rs::WINDOWS_1251.decode_without_bom_handling(bytes);
        (t.into_owned(), "windows-1251")
    } else {
        let (t, _) = encoding_rs::WINDOWS_1252.decode_without_bom_handling(bytes);
        (t.into_owned(), "windows-1252")
    };
    // NULs out before the BOM is trimmed: NULs ahead of a BOM once left it in, and the format
    // was then guessed wrong (found by the encoding fuzz target).
    let text = text.replace('\0', "");
    let text = text.trim_start_matches('\u{feff}');
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    (text, encoding)
}

/// Windows-1251 puts Cyrillic letters at 0xC0-0xFF (and Ё/ё at 0xA8/0xB8); Latin-1 text uses
/// those bytes far more rarely than it uses 0x80-0xBF punctuation.
fn looks_like_cp1251(bytes: &[u8]) -> bool {
    let high = bytes.iter().filter(|&&b| b >= 0x80).count();
    let cyr = bytes
        .iter()
        .filter(|&&b| b >= 0xC0 || b == 0xA8 || b == 0xB8)
        .count();
    high > 0 && cyr * 10 >= high * 7
}

/// Guesses the format from the text itself (a WebVTT file starts with `WEBVTT`).
pub fn sniff(text: &str) -> Format {
    if text.trim_start().starts_with("WEBVTT") {
        Format::WebVtt
    } else {
        Format::Srt
    }
}

/// Parses subtitle bytes into a repaired transcript.
pub fn parse_bytes(bytes: &[u8]) -> Result<Transcript> {
    let (text, encoding) = decode(bytes);
    let format = sniff(&text);
    let cues = match format {
        Format::Srt => parse_srt(&text)?,
        Format::WebVtt => parse_vtt(&text)?,
    };
    if cues.is_empty() {
        return Err(Error::EmptyTranscript("the subtitle file has no cues".into()));
    }
    let source = CueSource::SubtitleFile {
        format: format.name().into(),
        encoding: encoding.into(),
    };
    let t = Transcript::repair(cues, source);
    if t.cues.is_empty() {
        return Err(Error::EmptyTranscript(
            "every cue in the subtitle file is empty".into(),
        ));
    }
    Ok(t)
}

/// The largest subtitle file read (an hour of dense speech is well under 1 MB).
pub const MAX_BYTES: u64 = 20 << 20;

/// Reads a subtitle file from disk: a regular file only (not a FIFO or a device, which could
/// block or never end) of at most [`MAX_BYTES`], counted while reading, not only on the header.
pub fn read_file(path: &std::path::Path) -> Result<Transcript> {
    read_file_within(path, MAX_BYTES)
}

/// [`read_file`] with another size cap.
pub fn read_file_within(path: &std::path::Path, max_bytes: u64) -> Result<Transcript> {
    use std::io::Read;
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    let too_large = || Error::TooLarge {
        path: path.into(),
        limit: format!("subtitles over {} MB", max_bytes >> 20),
    };
    if !meta.is_file() {
        return Err(Error::Invalid(format!(
            "{}: subtitles must be a regular file",
            path.display()
        )));
    }
    if meta.len() > max_bytes {
        return Err(too_large());
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    std::fs::File::open(path)
        .and_then(|f| f.take(max_bytes + 1).read_to_end(&mut bytes))
        .map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > max_bytes {
        return Err(too_large());
    }
    if bytes.is_empty() {
        return Err(Error::EmptyTranscript(format!("{} is empty", path.display())));
    }
    parse_bytes(&bytes).map_err(|e| match e {
        Error::Subtitle { line, message, .. } => Error::Subtitle {
            path: Some(path.into()),
            line,
            message,
        },
        Error::EmptyTranscript(why) => Error::EmptyTranscript(format!("{}: {why}", path.display())),
        e => e,
    })
}

/// SRT through `srtparse`, after normalising what it is strict about: runs of blank lines, blank
/// lines before the first cue, `.` as the millisecond separator, cues whose text is empty.
/// Errors name the line in `text`.
pub fn parse_srt(text: &str) -> Result<Vec<Cue>> {
    // Split into blocks ourselves only to keep line numbers; srtparse does the parsing.
    let mut blocks: Vec<(usize, Vec<&str>)> = Vec::new();
    let mut current: Option<(usize, Vec<&str>)> = None;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            if let Some(b) = current.take() {
                blocks.push(b);
            }
        } else {
            current
                .get_or_insert_with(|| (i + 1, Vec::new()))
                .1
                .push(line.trim_end());
        }
    }
    blocks.extend(current);
    let mut cues = Vec::with_capacity(blocks.len());
    for (first_line, lines) in &blocks {
        let is_timing = |l: &str| l.contains("-->");
        let mut lines: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        // A block with only a number and a time line has no text: give it an empty marker that
        // the repair step drops and counts.
        if lines.len() == 2 && is_timing(&lines[1]) {
            lines.push(String::from("<>"));
        }
        if let Some(t) = lines.get_mut(1).filter(|l| is_timing(l)) {
            *t = normalize_srt_timing(t);
        }
        let block = lines.join("\n");
        // Each block on its own, so an error names its line.
        match srtparse::from_str(block.as_bytes()) {
            Ok(items) if items.len() == 1 => {
                let item = &items[0];
                // srtparse's own Duration conversion multiplies without checking: a user's
                // `100000000000:00:01,000` would overflow it, so the seconds are counted here.
                let (Some(start), Some(end)) = (srt_secs(item.start_time), srt_secs(item.end_time)) else {
                    return Err(Error::Subtitle {
                        path: None,
                        line: *first_line + 1,
                        message: format!(
                            "a cue time past {MAX_CUE_HOURS} hours: {:?}",
                            lines.get(1).map(String::as_str).unwrap_or("")
                        ),
                    });
                };
                cues.push(Cue::new(start, end, item.text.clone()));
            }
            other => {
                let why = match other {
                    Err(e) => e.to_string(),
                    Ok(_) => "not one cue".into(),
                };
                let shown: String = lines.join(" / ").chars().take(60).collect();
                return Err(Error::Subtitle {
                        path: None,
                    line: *first_line,
                    message: format!(
                        "not an SRT cue ({why}): {shown:?}; expected a number, then `00:00:01,000 --> 00:00:02,000`, then text"
                    ),
                });
            }
        }
    }
    Ok(cues)
}

/// The latest time a cue may carry; later ones are refused as a broken file, not read.
const MAX_CUE_HOURS: u64 = 1000;

/// A cue time in seconds, or `None` past [`MAX_CUE_HOURS`] (checked, so no field can overflow).
fn srt_secs(t: srtparse::Time) -> Option<f64> {
    let ms = t
        .hours
        .checked_mul(60)?
        .checked_add(t.minutes)?
        .checked_mul(60)?
        .checked_add(t.seconds)?
        .checked_mul(1000)?
        .checked_add(t.milliseconds)?;
    (ms <= MAX_CUE_HOURS * 3_600_000).then_some(ms as f64 / 1000.0)
}

fn normalize_srt_timing(line: &str) -> String {
    let mut parts = line.splitn(2, "-->");
    let a = parts.next().unwrap_or("").trim();
    let b = parts.next().unwrap_or("").split_whitespace().next().unwrap_or("");
    format!("{} --> {}", fix_srt_time(a), fix_srt_time(b))
}

/// `00:01.5` or `0:00:01.500` → `0:00:01,500`; leaves anything else for srtparse to reject.
fn fix_srt_time(t: &str) -> String {
    let t = t.replace('.', ",");
    let (hms, ms) = t.split_once(',').unwrap_or((&t, "0"));
    // Characters, not bytes: the fraction may hold anything a user typed.
    let ms: String = format!("{:0<3}", ms).chars().take(3).collect();
    let hms = if hms.matches(':').count() == 1 {
        format!("0:{hms}")
    } else {
        hms.to_string()
    };
    format!("{hms},{ms}")
}

/// WebVTT: header, optional NOTE/STYLE/REGION blocks, cues with optional identifiers and settings.
pub fn parse_vtt(text: &str) -> Result<Vec<Cue>> {
    let lines: Vec<&str> = text.lines().collect();
    let mut cues = Vec::new();
    let mut i = 0;
    if !lines
        .first()
        .is_some_and(|l| l.trim_start().starts_with("WEBVTT"))
    {
        return Err(Error::Subtitle {
            path: None,
            line: 1,
            message: "a WebVTT file must start with WEBVTT".into(),
        });
    }
    // Skip the header block.
    while i < lines.len() && !lines[i].trim().is_empty() {
        i += 1;
    }
    while i < lines.len() {
        while i < lines.len() && lines[i].trim().is_empty() {
            i += 1;
        }
        if i >= lines.len() {
            break;
        }
        let block_start = i;
        let mut block = Vec::new();
        while i < lines.len() && !lines[i].trim().is_empty() {
            block.push(lines[i]);
            i += 1;
        }
        let first = block[0].trim_start();
        if first.starts_with("NOTE") || first.starts_with("STYLE") || first.starts_with("REGION") {
            continue;
        }
        let Some(t) = block.iter().position(|l| l.contains("-->")) else {
            return Err(Error::Subtitle {
                path: None,
                line: block_start + 1,
                message: format!(
                    "expected a cue timing `00:01.000 --> 00:02.000`, found {:?}",
                    block[0]
                ),
            });
        };
        if t > 1 {
            return Err(Error::Subtitle {
                path: None,
                line: block_start + t + 1,
                message: "a cue may have one identifier line before its timing".into(),
            });
        }
        let timing = block[t];
        let (a, rest) = timing.split_once("-->").expect("contains -->");
        let b = rest.split_whitespace().next().unwrap_or("");
        let line = block_start + t + 1;
        let start = parse_vtt_time(a.trim()).ok_or_else(|| Error::Subtitle {
            path: None,
            line,
            message: format!("bad start time {:?}", a.trim()),
        })?;
        let end = parse_vtt_time(b).ok_or_else(|| Error::Subtitle {
            path: None,
            line,
            message: format!("bad end time {b:?}"),
        })?;
        cues.push(Cue::new(start, end, block[t + 1..].join("\n")));
    }
    Ok(cues)
}

/// `hh:mm:ss.ttt` or `mm:ss.ttt`.
fn parse_vtt_time(t: &str) -> Option<f64> {
    let (hms, frac) = t.split_once('.')?;
    if frac.len() != 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let parts: Vec<&str> = hms.split(':').collect();
    let nums: Option<Vec<u64>> = parts.iter().map(|p| p.parse().ok()).collect();
    let nums = nums?;
    // Checked: a user's `099999999999999999999:00.000` must not overflow (found by the webvtt
    // fuzz target); past MAX_CUE_HOURS it is refused as SRT's are.
    let secs = match nums.as_slice() {
        [m, s] if *s < 60 => m.checked_mul(60)?.checked_add(*s)?,
        [h, m, s] if *m < 60 && *s < 60 => h.checked_mul(3600)?.checked_add(m * 60 + s)?,
        _ => return None,
    };
    if secs > MAX_CUE_HOURS * 3600 {
        return None;
    }
    Some(secs as f64 + frac.parse::<f64>().ok()? / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_within_the_cap_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.srt");
        std::fs::write(&p, "1\n00:00:01,000 --> 00:00:02,000\nПривет\n").unwrap();
        assert_eq!(read_file(&p).unwrap().cues.len(), 1);
        let big = read_file_within(&p, 10).unwrap_err();
        assert!(matches!(big, Error::TooLarge { .. }), "{big}");
        // A directory, and on Unix a device that never ends: refused before a byte is read.
        let d = read_file(dir.path()).unwrap_err();
        assert!(d.to_string().contains("regular file"), "{d}");
        #[cfg(unix)]
        {
            let z = read_file(std::path::Path::new("/dev/zero")).unwrap_err();
            assert!(z.to_string().contains("regular file"), "{z}");
        }
    }

    const SRT: &str = "1\n00:00:01,000 --> 00:00:03,500\nПривет, мир!\n\n2\n00:00:04,000 --> 00:00:06,000\n<i>Это</i> тест.\nВторая строка\n\n3\n00:00:06,500 --> 00:00:09,000\nЁлки-палки…\n";

    fn expected() -> Vec<Cue> {
        vec![
            Cue::new(1.0, 3.5, "Привет, мир!"),
            Cue::new(4.0, 6.0, "Это тест. Вторая строка"),
            Cue::new(6.5, 9.0, "Ёлки-палки…"),
        ]
    }

    fn encodings() -> Vec<(&'static str, Vec<u8>)> {
        let mut out = Vec::new();
        for (eol_name, eol) in [("lf", "\n"), ("crlf", "\r\n"), ("cr", "\r")] {
            let text = SRT.replace('\n', eol);
            out.push((eol_name, text.as_bytes().to_vec()));
            let mut bom = vec![0xEF, 0xBB, 0xBF];
            bom.extend_from_slice(text.as_bytes());
            out.push((eol_name, bom));
            let mut u16 = vec![0xFF, 0xFE];
            for unit in text.encode_utf16() {
                u16.extend_from_slice(&unit.to_le_bytes());
            }
            out.push((eol_name, u16));
            let mut u16be = vec![0xFE, 0xFF];
            for unit in text.encode_utf16() {
                u16be.extend_from_slice(&unit.to_be_bytes());
            }
            out.push((eol_name, u16be));
            let (cp, _, bad) = encoding_rs::WINDOWS_1251.encode(&text);
            assert!(!bad);
            out.push((eol_name, cp.into_owned()));
        }
        out
    }

    #[test]
    fn every_encoding_and_line_ending_gives_the_same_cues() {
        for (eol, bytes) in encodings() {
            let t = parse_bytes(&bytes).unwrap_or_else(|e| panic!("{eol}: {e}"));
            assert_eq!(
                t.cues,
                expected(),
                "line ending {eol}, first bytes {:?}",
                &bytes[..4]
            );
        }
    }

    #[test]
    fn encodings_are_detected() {
        let names: Vec<&str> = encodings()
            .iter()
            .filter(|(eol, _)| *eol == "lf")
            .map(|(_, b)| decode(b).1)
            .collect();
        assert_eq!(
            names,
            ["utf-8", "utf-8-bom", "utf-16le", "utf-16be", "windows-1251"]
        );
    }

    #[test]
    fn webvtt_gives_the_same_cues() {
        let vtt = "WEBVTT - demo\nKind: captions\n\nNOTE a comment\nspanning lines\n\nintro\n00:01.000 --> 00:03.500 align:start\nПривет, мир!\n\n00:00:04.000 --> 00:00:06.000\n<v Бob><i>Это</i> тест.\nВторая строка\n\n00:06.500 --> 00:09.000\nЁлки-палки…\n";
        for eol in ["\n", "\r\n"] {
            let t = parse_bytes(vtt.replace('\n', eol).as_bytes()).unwrap();
            assert_eq!(t.cues, expected());
            assert_eq!(
                t.source,
                CueSource::SubtitleFile {
                    format: "webvtt".into(),
                    encoding: "utf-8".into()
                }
            );
        }
    }

    #[test]
    fn sloppy_srt_still_parses() {
        let srt = "\n\n1\n00:00:01.000 --> 00:00:03.500\nПривет, мир!\n\n\n\n2\n00:00:04,000 --> 00:00:06,000 X1:0\n<i>Это</i> тест.\nВторая строка\n\n3\n00:00:06,500 --> 00:00:07,000\n\n4\n00:00:06,500 --> 00:00:09,000\nЁлки-палки…";
        let t = parse_bytes(srt.as_bytes()).unwrap();
        assert_eq!(t.cues, expected());
        assert_eq!(t.repairs.empty_dropped, 1);
    }

    #[test]
    fn overlapping_and_reversed_cues_are_repaired_and_counted() {
        let srt = "1\n00:00:04,000 --> 00:00:06,000\nb\n\n2\n00:00:03,000 --> 00:00:01,000\na\n\n3\n00:00:05,500 --> 00:00:08,000\nc\n";
        let t = parse_bytes(srt.as_bytes()).unwrap();
        let spans: Vec<(f64, f64)> = t.cues.iter().map(|c| (c.start, c.end)).collect();
        assert_eq!(spans, [(1.0, 3.0), (4.0, 5.5), (5.5, 8.0)]);
        assert_eq!(
            (
                t.repairs.reversed,
                t.repairs.reordered,
                t.repairs.overlaps_trimmed
            ),
            (1, 1, 1)
        );
    }

    #[test]
    fn garbage_names_the_line() {
        let srt = "1\n00:00:01,000 --> 00:00:02,000\nok\n\n2\nnot a time\nfoo\n";
        match parse_bytes(srt.as_bytes()) {
            Err(Error::Subtitle { line, message, .. }) => {
                assert_eq!(line, 5, "{message}");
                assert!(message.contains("not a time"), "{message}");
            }
            other => panic!("expected a subtitle error, got {other:?}"),
        }
        let bin: Vec<u8> = (0..200u8).collect();
        assert!(matches!(parse_bytes(&bin), Err(Error::Subtitle { .. })));
        let vtt = "WEBVTT\n\n00:01.000 --> 00:0x.000\nhi\n";
        match parse_bytes(vtt.as_bytes()) {
            Err(Error::Subtitle { line, .. }) => assert_eq!(line, 3),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn empty_files_are_errors() {
        assert!(matches!(
            parse_bytes(b"WEBVTT\n\n"),
            Err(Error::EmptyTranscript(_))
        ));
        assert!(matches!(parse_bytes(b"\n\n"), Err(Error::EmptyTranscript(_))));
    }

    /// The file a user once sent that made the parser panic (a multibyte fraction sliced at a
    /// byte offset): now a named error.
    #[test]
    fn a_multibyte_time_fraction_is_an_error_not_a_panic() {
        let srt = "1\n00:00:01,ёё --> 00:00:02,000\nтекст\n";
        assert!(matches!(parse_bytes(srt.as_bytes()), Err(Error::Subtitle { .. })));
    }

    #[test]
    fn a_time_too_large_to_count_is_an_error_not_a_panic() {
        // Found by a proptest (now engine/tests/fuzz_corpus.rs): srtparse's own conversion
        // overflowed on this.
        let srt = "1\n10000000000000:00:01,000 --> 00:00:02,000\ntext\n";
        match parse_bytes(srt.as_bytes()) {
            Err(Error::Subtitle { line: 2, message, .. }) => {
                assert!(message.contains("past 1000 hours"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        // A long but real film still parses.
        let srt = "1\n99:59:59,500 --> 100:00:00,000\ntext\n";
        let t = parse_bytes(srt.as_bytes()).unwrap();
        assert_eq!(t.cues[0].start, 359_999.5);
    }

    /// The input the webvtt fuzz target found: an hour count that overflowed `u64` arithmetic
    /// (a panic in a debug build, a wrong time in a release one). Now a named error.
    #[test]
    fn a_vtt_time_too_large_to_count_is_an_error_not_a_panic() {
        let vtt = "WEBVTT\n\n0999999999999999999999:00.000 -->EB\u{bf}\n";
        assert!(matches!(parse_bytes(vtt.as_bytes()), Err(Error::Subtitle { .. })));
        let vtt = "WEBVTT\n\n1000000:00:00.000 --> 1000000:00:01.000\nx\n";
        assert!(matches!(parse_bytes(vtt.as_bytes()), Err(Error::Subtitle { .. })));
        let vtt = "WEBVTT\n\n99:59:59.500 --> 100:00:00.000\nx\n";
        assert_eq!(parse_bytes(vtt.as_bytes()).unwrap().cues[0].start, 359_999.5);
    }

    /// The input the encoding fuzz target found: NULs ahead of a BOM ahead of `WEBVTT`.
    #[test]
    fn nuls_before_a_bom_do_not_hide_the_format() {
        let mut bytes = vec![0u8; 11];
        bytes.extend_from_slice(&[0xEF, 0xBB, 0xBF]);
        bytes.extend_from_slice(b"WEBVTT\n\n00:01.000 --> 00:02.000\nx\n");
        let (text, _) = decode(&bytes);
        assert!(text.starts_with("WEBVTT"), "{text:?}");
        assert_eq!(parse_bytes(&bytes).unwrap().cues.len(), 1);
    }
}
