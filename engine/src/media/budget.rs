//! What decoding an untrusted input may cost, counted while it decodes: a [`DecodeBudget`] and
//! the [`Meter`] one decoding pass (a cut, a sampling, a thumbnail, a clip's sound) keeps.
//!
//! A header can lie: a file that says 64×64 and one minute may hold 16384×8192 frames, or a
//! thousand frames a second. The probe checks the header ([`super::Limits`]); the meter checks
//! the frames that really come out, so memory is bounded by the largest frame the budget allows
//! (FFmpeg's decoders refuse a bigger one before allocating it) and time by the frame rate and a
//! wall clock.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Bounds on the work one decoding pass does, whatever the header says.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DecodeBudget {
    /// The largest picture a decoder may produce, in pixels (width × height). FFmpeg's decoders
    /// are given it too (`max_pixels`), so a bigger frame is refused before it is allocated.
    pub max_pixels: u64,
    /// The most frames decoded per second of the stream's own timeline.
    pub max_fps: f64,
    /// Wall-clock seconds one pass may take.
    pub max_secs: f64,
    /// Frames that fail to decode before the input is refused (a few are tolerated, as players
    /// do; a stream of them is a stream the decoder will not produce).
    pub max_broken: u32,
}

impl Default for DecodeBudget {
    /// 8K (the probe's default resolution limit), 240 frames a second (phones' slow motion),
    /// 20 minutes a pass, 32 broken frames.
    fn default() -> Self {
        DecodeBudget {
            max_pixels: 7680 * 4320,
            max_fps: 240.0,
            max_secs: 1200.0,
            max_broken: 32,
        }
    }
}

/// The count one decoding pass of `path` keeps against its [`DecodeBudget`].
#[derive(Debug)]
pub struct Meter {
    budget: DecodeBudget,
    path: PathBuf,
    started: Instant,
    frames: u64,
    /// The earliest and latest frame time seen, seconds.
    first: Option<f64>,
    last: f64,
    broken: u32,
}

impl Meter {
    pub fn new(budget: DecodeBudget, path: &Path) -> Self {
        Meter {
            budget,
            path: path.into(),
            started: Instant::now(),
            frames: 0,
            first: None,
            last: f64::NEG_INFINITY,
            broken: 0,
        }
    }

    /// Frames decoded so far.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// The wall clock: called for every packet read, so a pass that reads without decoding
    /// anything still stops.
    pub fn tick(&self) -> Result<()> {
        let secs = self.started.elapsed().as_secs_f64();
        if secs > self.budget.max_secs {
            return Err(self.over(format!(
                "decoding it took more than {:.0} s, the limit for one pass",
                self.budget.max_secs
            )));
        }
        Ok(())
    }

    /// One decoded frame of `w`×`h` at `t` seconds (its timestamp, if it has one).
    pub fn frame(&mut self, t: Option<f64>, w: u32, h: u32) -> Result<()> {
        let pixels = u64::from(w) * u64::from(h);
        if pixels > self.budget.max_pixels {
            return Err(self.over(format!(
                "it decodes into frames of {w}×{h}, over the limit of {:.1} megapixels",
                self.budget.max_pixels as f64 / 1e6
            )));
        }
        self.frames += 1;
        if let Some(t) = t.filter(|t| t.is_finite()) {
            let first = *self.first.get_or_insert(t);
            self.first = Some(first.min(t));
            self.last = self.last.max(t);
        }
        // A second of slack: the first frames of a pass, and streams that start with a burst.
        let timeline = self.first.map_or(0.0, |f| (self.last - f).max(0.0));
        if self.frames as f64 > (timeline + 1.0) * self.budget.max_fps {
            return Err(self.over(format!(
                "it decodes into {} frames in {timeline:.1} s of video, more than {:.0} a second",
                self.frames, self.budget.max_fps
            )));
        }
        self.tick()
    }

    /// A frame the decoder failed on (`why`, FFmpeg's words): refused past the budget's count.
    pub fn broken(&mut self, why: &dyn std::fmt::Display) -> Result<()> {
        self.broken += 1;
        if self.broken > self.budget.max_broken {
            return Err(Error::NotAVideo {
                path: self.path.clone(),
                reason: format!(
                    "{} frames would not decode ({why}); frames over {:.1} megapixels are refused",
                    self.broken,
                    self.budget.max_pixels as f64 / 1e6
                ),
            });
        }
        Ok(())
    }

    fn over(&self, limit: String) -> Error {
        Error::TooLarge {
            path: self.path.clone(),
            limit,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meter(budget: DecodeBudget) -> Meter {
        Meter::new(budget, Path::new("bomb.mkv"))
    }

    #[test]
    fn a_normal_stream_stays_within_the_budget() {
        let mut m = meter(DecodeBudget::default());
        // Ten minutes of 4K at 60 frames a second.
        for n in 0..36_000u32 {
            m.frame(Some(f64::from(n) / 60.0), 3840, 2160).unwrap();
        }
        assert_eq!(m.frames(), 36_000);
    }

    #[test]
    fn frames_bigger_than_the_budget_are_refused_with_their_size() {
        let mut m = meter(DecodeBudget::default());
        m.frame(Some(0.0), 64, 64).unwrap();
        let e = m.frame(Some(0.04), 16384, 8192).unwrap_err();
        assert!(matches!(e, Error::TooLarge { .. }) && e.is_bad_input(), "{e}");
        let text = e.to_string();
        assert!(
            text.starts_with("bomb.mkv: ") && text.contains("16384×8192"),
            "{text}"
        );
    }

    #[test]
    fn more_frames_than_the_timeline_allows_are_refused() {
        // A thousand frames a second: stopped within the first second and a half.
        let mut m = meter(DecodeBudget::default());
        let stopped = (0..60_000u32)
            .position(|n| m.frame(Some(f64::from(n) / 1000.0), 64, 64).is_err())
            .expect("refused");
        assert!((240..400).contains(&stopped), "refused at frame {stopped}");
        // Frames that all claim the same time, or none.
        for t in [Some(5.0), None] {
            let mut m = meter(DecodeBudget::default());
            let stopped = (0..10_000).position(|_| m.frame(t, 64, 64).is_err());
            assert_eq!(stopped, Some(240), "{t:?}");
        }
    }

    #[test]
    fn the_wall_clock_stops_a_pass() {
        let m = meter(DecodeBudget {
            max_secs: 0.0,
            ..Default::default()
        });
        std::thread::sleep(std::time::Duration::from_millis(2));
        let e = m.tick().unwrap_err();
        assert!(e.to_string().contains("took more than 0 s"), "{e}");
    }

    #[test]
    fn a_few_broken_frames_pass_and_a_stream_of_them_does_not() {
        let mut m = meter(DecodeBudget::default());
        for _ in 0..32 {
            m.broken(&"Invalid data").unwrap();
        }
        let e = m.broken(&"Invalid data").unwrap_err();
        assert!(matches!(e, Error::NotAVideo { .. }), "{e}");
        assert!(e.to_string().contains("33 frames would not decode"), "{e}");
    }
}
