//! The buttons under a delivered clip: move its start or end (by 5 s or by a line of the
//! transcript), switch its format (the job's shape ↔ original) and its captions (on ↔ off). Pure:
//! each button's callback data carries the clip's whole state (`c:JOB:RANK:START_MS:END_MS:FC:ACT`,
//! under Telegram's 64 bytes), so a button under a re-cut clip moves that clip, not the first.

use viralclip_engine::adjust::{adjust, Move, Step};
use viralclip_engine::captions::Captions;
use viralclip_engine::cue::Cue;
use viralclip_engine::format::Format;
use viralclip_engine::report::Report;

/// Seconds one press of a "±5 s" button moves an edge.
pub const STEP_SECS: f64 = 5.0;

/// A delivered clip, as its buttons know it (and as a re-cut job stores what it is to cut).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClipState {
    pub job: i64,
    pub rank: usize,
    pub start: f64,
    pub end: f64,
    pub format: Format,
    pub captions: bool,
}

/// What a button does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `s`/`e` (start/end) by seconds, `S`/`E` by a line; `-` earlier, `+` later.
    Edge(char, char),
    Format,
    Captions,
}

impl Action {
    fn code(self) -> String {
        match self {
            Action::Edge(e, d) => format!("{e}{d}"),
            Action::Format => "f".into(),
            Action::Captions => "c".into(),
        }
    }
    fn parse(s: &str) -> Option<Action> {
        let c: Vec<char> = s.chars().collect();
        match c.as_slice() {
            ['f'] => Some(Action::Format),
            ['c'] => Some(Action::Captions),
            [e @ ('s' | 'e' | 'S' | 'E'), d @ ('-' | '+')] => Some(Action::Edge(*e, *d)),
            _ => None,
        }
    }
}

impl ClipState {
    /// The callback data of `action` on this clip.
    pub fn data(&self, action: Action) -> String {
        let f = Format::ALL.iter().position(|f| *f == self.format).unwrap_or(0);
        format!(
            "c:{}:{}:{}:{}:{f}{}:{}",
            self.job,
            self.rank,
            (self.start * 1000.0).round() as u64,
            (self.end * 1000.0).round() as u64,
            if self.captions { 'y' } else { 'n' },
            action.code()
        )
    }

    /// A button's callback data back into the clip and the action; `None` for anything else.
    pub fn parse(data: &str) -> Option<(ClipState, Action)> {
        let mut p = data.strip_prefix("c:")?.split(':');
        let job = p.next()?.parse().ok()?;
        let rank = p.next()?.parse().ok()?;
        let start = p.next()?.parse::<u64>().ok()? as f64 / 1000.0;
        let end = p.next()?.parse::<u64>().ok()? as f64 / 1000.0;
        let fc = p.next()?;
        let (f, c) = fc.split_at(fc.len().checked_sub(1)?);
        let format = *Format::ALL.get(f.parse::<usize>().ok()?)?;
        let captions = match c {
            "y" => true,
            "n" => false,
            _ => return None,
        };
        let action = Action::parse(p.next()?)?;
        if p.next().is_some() || end <= start {
            return None;
        }
        Some((
            ClipState {
                job,
                rank,
                start,
                end,
                format,
                captions,
            },
            action,
        ))
    }

    /// The clip after `action`; `None` when it cannot move that way (past the video, shorter than
    /// 3 s or longer than 180 s). `shaped`: the job's own shape, which the format button goes
    /// back to from `original`.
    pub fn after(&self, action: Action, cues: &[Cue], media_end: f64, shaped: Format) -> Option<ClipState> {
        let mut s = *self;
        match action {
            Action::Format => {
                s.format = if self.format == Format::Original {
                    if shaped == Format::Original {
                        Format::Vertical
                    } else {
                        shaped
                    }
                } else {
                    Format::Original
                }
            }
            Action::Captions => s.captions = !self.captions,
            Action::Edge(e, d) => {
                let step = if e.is_ascii_uppercase() {
                    Step::Line
                } else {
                    Step::Seconds(STEP_SECS)
                };
                let m = match (e.to_ascii_lowercase(), d) {
                    ('s', '-') => Move::StartEarlier(step),
                    ('s', _) => Move::StartLater(step),
                    ('e', '-') => Move::EndEarlier(step),
                    _ => Move::EndLater(step),
                };
                (s.start, s.end) = adjust(cues, (self.start, self.end), m, media_end)?;
            }
        }
        Some(s)
    }

    /// [`ClipState::after`] within the video `report` was made from: its transcript's lines and
    /// its end. What the bot's buttons and the web page's both call.
    pub fn after_in(&self, action: Action, report: &Report, shaped: Format) -> Option<ClipState> {
        let media_end = report
            .input
            .media
            .as_ref()
            .and_then(|m| m.get("duration"))
            .and_then(|d| d.as_f64())
            .unwrap_or(f64::MAX);
        self.after(action, &report.transcript.lines, media_end, shaped)
    }

    /// The captions this clip is cut with: `words` when on (the bot's default look).
    pub fn captions_mode(&self) -> Captions {
        if self.captions {
            Captions::Words
        } else {
            Captions::Off
        }
    }

    /// The keyboard under the clip: rows of (label, callback data).
    pub fn keyboard(&self) -> Vec<Vec<(String, String)>> {
        let b = |l: &str, a: Action| (l.to_string(), self.data(a));
        let other = if self.format == Format::Original {
            "format: shaped".to_string()
        } else {
            "format: original".to_string()
        };
        vec![
            vec![
                b("◀ start −5 s", Action::Edge('s', '-')),
                b("start +5 s", Action::Edge('s', '+')),
                b("end −5 s", Action::Edge('e', '-')),
                b("end +5 s ▶", Action::Edge('e', '+')),
            ],
            vec![
                b("◀ line before", Action::Edge('S', '-')),
                b("− first line", Action::Edge('S', '+')),
                b("− last line", Action::Edge('E', '-')),
                b("line after ▶", Action::Edge('E', '+')),
            ],
            vec![
                b(&other, Action::Format),
                b(
                    if self.captions {
                        "captions: off"
                    } else {
                        "captions: on"
                    },
                    Action::Captions,
                ),
            ],
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_button_round_trips_under_64_bytes_and_moves_the_clip() {
        let s = ClipState {
            job: 9_999_999_999,
            rank: 10,
            start: 3599.95,
            end: 3659.9,
            format: Format::Vertical,
            captions: true,
        };
        for row in s.keyboard() {
            for (_, data) in row {
                assert!(data.len() <= 64, "{data}");
                let (back, _) = ClipState::parse(&data).unwrap();
                assert_eq!(back, s);
            }
        }
        let cues: Vec<Cue> = (0..20)
            .map(|i| Cue::new(i as f64 * 5.0, i as f64 * 5.0 + 4.0, "x"))
            .collect();
        let c = ClipState {
            start: 20.0,
            end: 44.0,
            ..s
        };
        let moved = |a| c.after(a, &cues, 100.0, Format::Vertical);
        assert_eq!(moved(Action::Edge('s', '-')).map(|c| c.start), Some(15.0));
        assert_eq!(moved(Action::Edge('E', '+')).map(|c| c.end), Some(49.0));
        assert_eq!(moved(Action::Edge('S', '+')).map(|c| c.start), Some(25.0));
        assert_eq!(moved(Action::Format).map(|c| c.format), Some(Format::Original));
        let orig = moved(Action::Format).unwrap();
        assert_eq!(
            orig.after(Action::Format, &cues, 100.0, Format::Square)
                .map(|c| c.format),
            Some(Format::Square)
        );
        assert_eq!(moved(Action::Captions).map(|c| c.captions), Some(false));
        // Not past the video's end.
        assert_eq!(
            c.after(Action::Edge('e', '+'), &cues, 44.0, Format::Vertical),
            None
        );
        for bad in [
            "c:1:1:5000:1000:0y:s-",
            "c:1:1:0:1000:99y:s-",
            "c:1:1:0:1000:0y:x",
            "set:count+",
            "c:1:1:0:1000:0q:f",
        ] {
            assert!(ClipState::parse(bad).is_none(), "{bad}");
        }
    }
}
