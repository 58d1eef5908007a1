//! Moving a delivered clip's edges after the fact: by a few seconds or by a line of the
//! transcript. Pure: the cues, the clip's range and the source's end in, the new range out (or
//! `None` when the move is impossible: past the source, or a clip shorter than [`MIN_SECS`] or
//! longer than [`MAX_SECS`]).

use crate::cue::Cue;
use serde::{Deserialize, Serialize};

/// The shortest and longest clip a move may leave.
pub const MIN_SECS: f64 = 3.0;
pub const MAX_SECS: f64 = 180.0;

/// How far an edge moves.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Step {
    Seconds(f64),
    /// To the next line boundary of the transcript (a cue's start for the start, its end for the
    /// end).
    Line,
}

/// Which edge, which way.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Move {
    StartEarlier(Step),
    StartLater(Step),
    EndEarlier(Step),
    EndLater(Step),
}

/// Boundaries closer than this to an edge are the edge itself.
const SAME: f64 = 0.05;

/// The range after `m`, within `[0, media_end]`.
pub fn adjust(cues: &[Cue], (start, end): (f64, f64), m: Move, media_end: f64) -> Option<(f64, f64)> {
    let starts = cues.iter().map(|c| c.start);
    let ends = cues.iter().map(|c| c.end);
    let (s, e) = match m {
        Move::StartEarlier(Step::Seconds(d)) => ((start - d).max(0.0), end),
        Move::StartLater(Step::Seconds(d)) => (start + d, end),
        Move::EndEarlier(Step::Seconds(d)) => (start, end - d),
        Move::EndLater(Step::Seconds(d)) => (start, (end + d).min(media_end)),
        Move::StartEarlier(Step::Line) => (last_before(starts, start)?, end),
        Move::StartLater(Step::Line) => (first_after(starts, start)?, end),
        Move::EndEarlier(Step::Line) => (start, last_before(ends, end)?),
        Move::EndLater(Step::Line) => (start, first_after(ends, end)?.min(media_end)),
    };
    let len = e - s;
    let moved = (s - start).abs() > 1e-6 || (e - end).abs() > 1e-6;
    (moved && s >= 0.0 && e <= media_end + 1e-6 && (MIN_SECS - 1e-6..=MAX_SECS + 1e-6).contains(&len))
        .then_some((s, e))
}

fn last_before(v: impl Iterator<Item = f64>, t: f64) -> Option<f64> {
    v.filter(|x| *x < t - SAME)
        .fold(None, |a: Option<f64>, x| Some(a.map_or(x, |a| a.max(x))))
}

fn first_after(v: impl Iterator<Item = f64>, t: f64) -> Option<f64> {
    v.filter(|x| *x > t + SAME)
        .fold(None, |a: Option<f64>, x| Some(a.map_or(x, |a| a.min(x))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cues() -> Vec<Cue> {
        (0..10)
            .map(|i| Cue::new(i as f64 * 5.0, i as f64 * 5.0 + 4.0, format!("line {i}")))
            .collect()
    }

    #[test]
    fn edges_move_by_seconds_and_by_lines_within_the_source() {
        let c = cues();
        let r = (10.0, 24.0);
        assert_eq!(
            adjust(&c, r, Move::StartEarlier(Step::Seconds(3.0)), 50.0),
            Some((7.0, 24.0))
        );
        assert_eq!(
            adjust(&c, r, Move::EndLater(Step::Seconds(3.0)), 50.0),
            Some((10.0, 27.0))
        );
        assert_eq!(
            adjust(&c, r, Move::StartEarlier(Step::Line), 50.0),
            Some((5.0, 24.0))
        );
        assert_eq!(
            adjust(&c, r, Move::StartLater(Step::Line), 50.0),
            Some((15.0, 24.0))
        );
        assert_eq!(
            adjust(&c, r, Move::EndEarlier(Step::Line), 50.0),
            Some((10.0, 19.0))
        );
        assert_eq!(
            adjust(&c, r, Move::EndLater(Step::Line), 50.0),
            Some((10.0, 29.0))
        );
        // The start stops at 0, the end at the source's end; nothing to move is no move.
        assert_eq!(
            adjust(&c, (1.0, 9.0), Move::StartEarlier(Step::Seconds(5.0)), 50.0),
            Some((0.0, 9.0))
        );
        assert_eq!(
            adjust(&c, (0.0, 9.0), Move::StartEarlier(Step::Seconds(5.0)), 50.0),
            None
        );
        assert_eq!(adjust(&c, (0.0, 9.0), Move::StartEarlier(Step::Line), 50.0), None);
        assert_eq!(adjust(&c, (40.0, 49.0), Move::EndLater(Step::Line), 47.0), None);
        assert_eq!(
            adjust(&c, (40.0, 46.0), Move::EndLater(Step::Seconds(5.0)), 47.0),
            Some((40.0, 47.0))
        );
        // Never shorter than 3 s.
        assert_eq!(
            adjust(&c, (10.0, 14.0), Move::StartLater(Step::Seconds(2.0)), 50.0),
            None
        );
        assert_eq!(adjust(&c, (10.0, 17.0), Move::StartLater(Step::Line), 50.0), None);
    }
}
