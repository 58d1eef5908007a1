//! Where a vertical (or square) crop goes over time: faces found a few times a second become
//! tracks, the speaker is picked by mouth motion while there is sound, and the crop follows them
//! smoothly, cuts to a new speaker instead of panning across the room, and falls back to the whole
//! frame on a blurred copy of itself (no face) or a split screen (two people too far apart for one
//! crop, nobody clearly speaking). Pure: detections in, a [`Plan`] out; the detector
//! ([`crate::faces`]) and the renderer ([`crate::media`]) are elsewhere.
//!
//! The crop is the largest window of the target shape ([`crate::format::Geometry`]), so it spans
//! the whole source along one axis and moves along the other only: everything here is 1-D, along
//! [`Axis`].
//!
//! Invariants (tests below):
//! - Inside a tracked segment the crop's centre moves at most [`Reframe::max_speed`] crop widths
//!   per second, and not at all while its target stays inside the dead zone.
//! - A speaker change or a scene cut is a cut (a new segment), never a pan.
//! - The tracked face is whole inside the crop whenever it fits at all.

use serde::{Deserialize, Serialize};

/// One face as the detector gives it, in source pixels.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Face {
    /// Left, top, width, height.
    pub bbox: [f32; 4],
    /// YuNet's five points: right eye, left eye, nose tip, right and left mouth corners.
    pub landmarks: [[f32; 2]; 5],
    pub score: f32,
}

impl Face {
    pub fn center(&self) -> (f32, f32) {
        (
            self.bbox[0] + self.bbox[2] / 2.0,
            self.bbox[1] + self.bbox[3] / 2.0,
        )
    }

    /// How the lower face is set, in eye distances (which speech does not change, unlike the
    /// box, whose bottom follows the chin): the nose tip to the mouth corners' midpoint, the
    /// mouth's width, and the box's height (the jaw dropping). Speech moves all three.
    fn mouth(&self) -> (f32, f32, f32) {
        let [re, le, nose, mr, ml] = self.landmarks;
        let eyes = ((re[0] - le[0]).powi(2) + (re[1] - le[1]).powi(2))
            .sqrt()
            .max(self.bbox[3] * 0.2)
            .max(1.0);
        let mid = ((mr[0] + ml[0]) / 2.0, (mr[1] + ml[1]) / 2.0);
        let open = ((mid.0 - nose[0]).powi(2) + (mid.1 - nose[1]).powi(2)).sqrt() / eyes;
        let width = ((mr[0] - ml[0]).powi(2) + (mr[1] - ml[1]).powi(2)).sqrt() / eyes;
        (open, width, self.bbox[3] / eyes)
    }

    /// Intersection over union of the two boxes.
    pub fn iou(&self, o: &Face) -> f32 {
        let [ax, ay, aw, ah] = self.bbox;
        let [bx, by, bw, bh] = o.bbox;
        let iw = ((ax + aw).min(bx + bw) - ax.max(bx)).max(0.0);
        let ih = ((ay + ah).min(by + bh) - ay.max(by)).max(0.0);
        let inter = iw * ih;
        let union = aw * ah + bw * bh - inter;
        if union > 0.0 {
            inter / union
        } else {
            0.0
        }
    }
}

/// What was seen at one moment of the clip (seconds from the clip's start).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub t: f64,
    pub faces: Vec<Face>,
    /// The audio's loudness around `t`, 0..1 (RMS of the samples, full scale = 1).
    pub loudness: f32,
}

/// The axis the crop moves along.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Axis {
    X,
    Y,
}

/// How one stretch of the clip is framed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Layout {
    /// The crop, its centre along the axis at each sample time (source pixels).
    Track(Vec<(f64, f32)>),
    /// Two crops, one above the other: the centres of the left (or upper) and the other person.
    Split([f32; 2]),
    /// The whole frame scaled onto a blurred copy of itself.
    Fill,
}

/// A stretch `[start, end)` of the clip and its layout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    pub start: f64,
    pub end: f64,
    pub layout: Layout,
}

/// The framing of a whole clip.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub axis: Axis,
    /// The crop's extent along the axis, and the source's.
    pub crop: f32,
    pub extent: f32,
    pub segments: Vec<Segment>,
}

impl Plan {
    /// The layout at `t`: the segment holding it (the last one past the end).
    pub fn segment_at(&self, t: f64) -> Option<&Segment> {
        self.segments.iter().find(|s| t < s.end).or(self.segments.last())
    }

    /// The crop's left (or top) edge at `t` for a tracked stretch, interpolated between samples;
    /// `None` where the layout is a split or a fill.
    pub fn crop_start_at(&self, t: f64) -> Option<f32> {
        let Layout::Track(path) = &self.segment_at(t)?.layout else {
            return None;
        };
        let c = interpolate(path, t);
        Some((c - self.crop / 2.0).clamp(0.0, (self.extent - self.crop).max(0.0)))
    }
}

fn interpolate(path: &[(f64, f32)], t: f64) -> f32 {
    match path.iter().position(|&(pt, _)| pt > t) {
        None => path.last().map(|p| p.1).unwrap_or(0.0),
        Some(0) => path[0].1,
        Some(i) => {
            let (t0, x0) = path[i - 1];
            let (t1, x1) = path[i];
            let a = ((t - t0) / (t1 - t0).max(1e-9)) as f32;
            x0 + (x1 - x0) * a
        }
    }
}

/// The planner's settings; the defaults are what the tests hold it to.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Reframe {
    /// The target may drift this far from the crop's centre (crop widths) before the crop moves.
    pub dead_zone: f32,
    /// Once moving, the crop re-centres until the target is this close (crop widths).
    pub settle: f32,
    /// The fastest the crop moves, crop widths per second.
    pub max_speed: f32,
    /// How quickly it closes the gap, per second (a fraction of the gap).
    pub gain: f32,
    /// Faces the detector is less sure of are ignored.
    pub min_score: f32,
    /// Detections in two samples with this overlap are the same person.
    pub min_iou: f32,
    /// Or when the new one is within this many face sizes of where the track's speed predicts.
    pub max_jump: f32,
    /// A new speaker must lead for this long before the crop cuts to them (seconds).
    pub switch_hold: f64,
    /// Audio quieter than this is silence: mouth motion then says nothing about who speaks.
    pub min_loudness: f32,
    /// Mouth motion (eye distances per second, smoothed) above which someone is speaking.
    pub min_activity: f32,
    /// How long mouth motion is averaged over (seconds).
    pub activity_window: f64,
}

impl Default for Reframe {
    fn default() -> Self {
        Reframe {
            dead_zone: 0.10,
            settle: 0.03,
            max_speed: 0.6,
            gain: 4.0,
            min_score: 0.6,
            min_iou: 0.2,
            max_jump: 0.8,
            switch_hold: 1.0,
            min_loudness: 0.01,
            min_activity: 0.15,
            activity_window: 0.8,
        }
    }
}

/// A face followed across samples.
#[derive(Debug, Clone)]
struct Track {
    id: usize,
    last: Face,
    last_t: f64,
    /// Its centre's speed, px per second.
    velocity: (f32, f32),
    mouth: Option<(f32, f32, f32)>,
    activity: f32,
}

/// Per sample: the tracks seen there (id, face, activity).
type Seen = Vec<(usize, Face, f32)>;

impl Reframe {
    /// Plans the framing of a clip from its samples (sorted by time), the scene cuts (seconds),
    /// the source size and the crop size from [`crate::format::Geometry`].
    pub fn plan(
        &self,
        samples: &[Sample],
        scene_cuts: &[f64],
        (src_w, src_h): (u32, u32),
        (crop_w, crop_h): (u32, u32),
        duration: f64,
    ) -> Plan {
        let axis = if crop_w + 2 < src_w || crop_h + 2 >= src_h {
            Axis::X
        } else {
            Axis::Y
        };
        let (crop, extent) = match axis {
            Axis::X => (crop_w as f32, src_w as f32),
            Axis::Y => (crop_h as f32, src_h as f32),
        };
        let seen = self.track(samples, scene_cuts);
        let along = |f: &Face| match axis {
            Axis::X => (f.bbox[0], f.bbox[0] + f.bbox[2]),
            Axis::Y => (f.bbox[1], f.bbox[1] + f.bbox[3]),
        };
        let cut_before = |i: usize| {
            i > 0
                && scene_cuts
                    .iter()
                    .any(|&c| samples[i - 1].t < c && c <= samples[i].t)
        };

        // What each sample wants: a target (track id + centre), a split, or a fill.
        #[derive(Clone, Copy, PartialEq)]
        enum Want {
            Follow(usize, f32),
            Split(usize, usize),
            Fill,
        }
        let mut wants = Vec::with_capacity(samples.len());
        let mut speaker: Option<usize> = None;
        let mut challenger: Option<(usize, f64)> = None;
        for (i, s) in samples.iter().enumerate() {
            if cut_before(i) {
                speaker = None;
                challenger = None;
            }
            let faces = &seen[i];
            if faces.is_empty() {
                wants.push(Want::Fill);
                continue;
            }
            // Who speaks: the most active face, when there is sound and motion enough; the
            // current speaker keeps the crop until a challenger has led for `switch_hold`.
            let loud = s.loudness >= self.min_loudness;
            let lead = faces
                .iter()
                .filter(|f| loud && f.2 >= self.min_activity)
                .max_by(|a, b| a.2.total_cmp(&b.2))
                .map(|f| f.0);
            let present = |id: usize| faces.iter().any(|f| f.0 == id);
            if speaker.is_some_and(|sp| !present(sp)) {
                speaker = None;
            }
            match (speaker, lead) {
                (None, Some(l)) => {
                    speaker = Some(l);
                    challenger = None;
                }
                (Some(sp), Some(l)) if l != sp => match challenger {
                    Some((c, since)) if c == l => {
                        if s.t - since >= self.switch_hold {
                            speaker = Some(l);
                            challenger = None;
                        }
                    }
                    _ => challenger = Some((l, s.t)),
                },
                _ => challenger = None,
            }
            let (lo, hi) = faces.iter().fold((f32::MAX, f32::MIN), |(lo, hi), f| {
                let (a, b) = along(&f.1);
                (lo.min(a), hi.max(b))
            });
            let fits_all = hi - lo <= crop * 0.95;
            let want = if faces.len() == 1 {
                Want::Follow(faces[0].0, self.frame_one(&faces[0].1, faces, crop, &along))
            } else if let Some(sp) = speaker {
                let f = faces.iter().find(|f| f.0 == sp).expect("present");
                Want::Follow(sp, self.frame_one(&f.1, faces, crop, &along))
            } else if fits_all {
                // Everyone fits and nobody leads: frame the group (its first id stands for it).
                let id = faces.iter().map(|f| f.0).min().unwrap_or(0);
                Want::Follow(usize::MAX - id, (lo + hi) / 2.0)
            } else if faces.len() == 2 {
                let (a, b) = (faces[0], faces[1]);
                let (l, r) = if along(&a.1).0 <= along(&b.1).0 {
                    (a, b)
                } else {
                    (b, a)
                };
                Want::Split(l.0, r.0)
            } else {
                Want::Fill
            };
            wants.push(want);
        }

        // A stretch too short to watch (under `switch_hold`) that the next one's person is in
        // already follows that person: no split or group shot flashing up before a speaker is
        // known.
        let mut i = 0;
        while i < wants.len() {
            let mut j = i + 1;
            let same_kind = |a: &Want, b: &Want| match (a, b) {
                (Want::Follow(x, _), Want::Follow(y, _)) => x == y,
                _ => a == b,
            };
            while j < wants.len() && same_kind(&wants[j], &wants[i]) && !cut_before(j) {
                j += 1;
            }
            let short = samples[j.min(samples.len() - 1)].t - samples[i].t < self.switch_hold;
            if j < wants.len() && short && !cut_before(j) {
                if let Want::Follow(next, _) = wants[j] {
                    if next < usize::MAX / 2 && (i..j).all(|k| seen[k].iter().any(|f| f.0 == next)) {
                        for k in i..j {
                            let f = seen[k].iter().find(|f| f.0 == next).expect("checked");
                            wants[k] = Want::Follow(next, self.frame_one(&f.1, &seen[k], crop, &along));
                        }
                    }
                }
            }
            i = j;
        }

        // Runs of the same want become segments; a face tracked in a run is followed smoothly.
        let mut segments: Vec<Segment> = Vec::new();
        let mut i = 0;
        while i < samples.len() {
            let key = |w: &Want| match *w {
                Want::Follow(id, _) => (0, id, 0),
                Want::Split(a, b) => (1, a, b),
                Want::Fill => (2, 0, 0),
            };
            let k = key(&wants[i]);
            let mut j = i + 1;
            while j < samples.len() && key(&wants[j]) == k && !cut_before(j) {
                j += 1;
            }
            let start = if segments.is_empty() { 0.0 } else { samples[i].t };
            let end = if j < samples.len() {
                samples[j].t
            } else {
                duration.max(samples[j - 1].t)
            };
            let layout = match wants[i] {
                Want::Fill => Layout::Fill,
                Want::Split(a, b) => {
                    let centre = |id: usize| {
                        let (sum, n) = (i..j)
                            .flat_map(|k| seen[k].iter().filter(move |f| f.0 == id))
                            .fold((0.0, 0.0), |(s, n), f| {
                                let (a, b) = along(&f.1);
                                (s + (a + b) / 2.0, n + 1.0)
                            });
                        sum / n
                    };
                    Layout::Split([centre(a), centre(b)])
                }
                Want::Follow(..) => {
                    let targets: Vec<(f64, f32)> = (i..j)
                        .map(|k| match wants[k] {
                            Want::Follow(_, c) => (samples[k].t, c),
                            _ => unreachable!("a run holds one kind"),
                        })
                        .collect();
                    Layout::Track(self.smooth(&targets, crop, extent))
                }
            };
            segments.push(Segment { start, end, layout });
            i = j;
        }
        if segments.is_empty() {
            segments.push(Segment {
                start: 0.0,
                end: duration,
                layout: Layout::Fill,
            });
        }
        Plan {
            axis,
            crop,
            extent,
            segments,
        }
    }

    /// Faces → tracks: each detection joins the track it overlaps most from the sample before
    /// (scene cuts end every track), and carries that track's smoothed mouth motion.
    fn track(&self, samples: &[Sample], scene_cuts: &[f64]) -> Vec<Seen> {
        let mut tracks: Vec<Track> = Vec::new();
        let mut next_id = 0;
        let mut out = Vec::with_capacity(samples.len());
        let mut prev_t: Option<f64> = None;
        for s in samples {
            if let Some(p) = prev_t {
                if scene_cuts.iter().any(|&c| p < c && c <= s.t) {
                    tracks.clear();
                }
            }
            // Tracks not seen for a second are gone.
            tracks.retain(|t| s.t - t.last_t <= 1.0);
            let dt = prev_t.map(|p| (s.t - p).max(1e-3)).unwrap_or(0.2) as f32;
            prev_t = Some(s.t);
            let mut taken = vec![false; tracks.len()];
            let mut seen = Seen::new();
            let mut faces: Vec<&Face> = s.faces.iter().filter(|f| f.score >= self.min_score).collect();
            faces.sort_by(|a, b| b.score.total_cmp(&a.score));
            for f in faces {
                // The same person: overlapping the last box, or near where the track's speed
                // puts it now (a face crossing the frame moves more than its width a second).
                let (fx, fy) = f.center();
                let best = tracks
                    .iter()
                    .enumerate()
                    .filter(|(k, _)| !taken[*k])
                    .filter_map(|(k, t)| {
                        let (lx, ly) = t.last.center();
                        let ahead = (s.t - t.last_t) as f32;
                        let (px, py) = (lx + t.velocity.0 * ahead, ly + t.velocity.1 * ahead);
                        let size = t.last.bbox[2].max(t.last.bbox[3]).max(1.0);
                        let dist = ((fx - px).powi(2) + (fy - py).powi(2)).sqrt() / size;
                        let near = dist <= self.max_jump;
                        let close_size = (f.bbox[2] / t.last.bbox[2].max(1.0)).clamp(0.0, 10.0);
                        let same_size = (0.6..=1.6).contains(&close_size);
                        (t.last.iou(f) >= self.min_iou || (near && same_size)).then_some((k, dist))
                    })
                    .min_by(|a, b| a.1.total_cmp(&b.1));
                let k = match best {
                    Some((k, _)) => k,
                    None => {
                        tracks.push(Track {
                            id: next_id,
                            last: *f,
                            last_t: s.t,
                            velocity: (0.0, 0.0),
                            mouth: None,
                            activity: 0.0,
                        });
                        taken.push(false);
                        next_id += 1;
                        tracks.len() - 1
                    }
                };
                taken[k] = true;
                let t = &mut tracks[k];
                let m = f.mouth();
                if let Some(pm) = t.mouth {
                    let motion = ((m.0 - pm.0).abs() + (m.1 - pm.1).abs() + (m.2 - pm.2).abs()) / dt;
                    let a = (dt / self.activity_window as f32).min(1.0);
                    // Silence says nothing: activity holds while nobody makes a sound.
                    if s.loudness >= self.min_loudness {
                        t.activity += (motion - t.activity) * a;
                    }
                }
                t.mouth = Some(m);
                if s.t > t.last_t {
                    let ((ax, ay), (bx, by)) = (t.last.center(), f.center());
                    let dt = (s.t - t.last_t) as f32;
                    let v = ((bx - ax) / dt, (by - ay) / dt);
                    // Smoothed, so one noisy box does not send the prediction off.
                    t.velocity = (t.velocity.0 * 0.5 + v.0 * 0.5, t.velocity.1 * 0.5 + v.1 * 0.5);
                }
                t.last = *f;
                t.last_t = s.t;
                seen.push((t.id, *f, t.activity));
            }
            seen.sort_by_key(|f| f.0);
            out.push(seen);
        }
        out
    }

    /// Where the crop's centre should be to frame `f`: on it, nudged so that no other face is cut
    /// in half by an edge (left out whole, or taken in whole) while `f` stays inside.
    fn frame_one(&self, f: &Face, faces: &Seen, crop: f32, along: &dyn Fn(&Face) -> (f32, f32)) -> f32 {
        let (a, b) = along(f);
        let mut c = (a + b) / 2.0;
        for (_, o, _) in faces {
            if o == f {
                continue;
            }
            let (oa, ob) = along(o);
            let (lo, hi) = (c - crop / 2.0, c + crop / 2.0);
            let cut = (oa < lo && ob > lo) || (oa < hi && ob > hi);
            if !cut {
                continue;
            }
            // Leave it out: move away from it as far as keeping `f` whole allows.
            let out = if (oa + ob) / 2.0 < c {
                ob + crop / 2.0
            } else {
                oa - crop / 2.0
            };
            let keeps_f = out - crop / 2.0 <= a && b <= out + crop / 2.0;
            // Or take it in whole.
            let inn = if (oa + ob) / 2.0 < c {
                oa + crop / 2.0
            } else {
                ob - crop / 2.0
            };
            let keeps_f_in = inn - crop / 2.0 <= a && b <= inn + crop / 2.0;
            if keeps_f {
                c = out;
            } else if keeps_f_in {
                c = inn;
            }
        }
        c
    }

    /// A dead zone and a bounded, eased speed: the crop holds still while its target stays near
    /// its centre, then re-centres on it no faster than `max_speed`.
    fn smooth(&self, targets: &[(f64, f32)], crop: f32, extent: f32) -> Vec<(f64, f32)> {
        let clamp = |c: f32| c.clamp(crop / 2.0, (extent - crop / 2.0).max(crop / 2.0));
        let mut out = Vec::with_capacity(targets.len());
        let Some(&(t0, c0)) = targets.first() else {
            return out;
        };
        let mut x = clamp(c0);
        let mut moving = false;
        let mut last_t = t0;
        out.push((t0, x));
        for &(t, c) in &targets[1..] {
            let dt = (t - last_t).max(0.0) as f32;
            last_t = t;
            let c = clamp(c);
            let gap = c - x;
            if gap.abs() > self.dead_zone * crop {
                moving = true;
            } else if gap.abs() <= self.settle * crop {
                moving = false;
            }
            if moving {
                let step = (gap.abs() * (self.gain * dt).min(1.0))
                    .max((self.settle * crop).min(gap.abs()))
                    .min(self.max_speed * crop * dt);
                x += step * gap.signum();
            }
            out.push((t, x));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: (u32, u32) = (1280, 720);
    const CROP: (u32, u32) = (404, 720);

    /// A face of 160 px centred at (cx, 300), its mouth `open` (0 closed .. 1 wide).
    fn face(cx: f32, open: f32) -> Face {
        let (w, h) = (160.0, 200.0);
        let (x, y) = (cx - w / 2.0, 200.0);
        let nose = [cx, y + 110.0];
        let my = y + 150.0 + 25.0 * open;
        Face {
            bbox: [x, y, w, h],
            landmarks: [
                [cx - 35.0, y + 70.0],
                [cx + 35.0, y + 70.0],
                nose,
                [cx - 30.0, my],
                [cx + 30.0, my],
            ],
            score: 0.9,
        }
    }

    fn samples(secs: f64, fps: f64, mut at: impl FnMut(f64, usize) -> (Vec<Face>, f32)) -> Vec<Sample> {
        (0..(secs * fps) as usize)
            .map(|i| {
                let t = i as f64 / fps;
                let (faces, loudness) = at(t, i);
                Sample { t, faces, loudness }
            })
            .collect()
    }

    fn centres(plan: &Plan, secs: f64) -> Vec<(f64, Option<f32>)> {
        (0..(secs * 25.0) as usize)
            .map(|i| {
                let t = i as f64 / 25.0;
                (t, plan.crop_start_at(t).map(|s| s + plan.crop / 2.0))
            })
            .collect()
    }

    #[test]
    fn a_face_moving_across_the_frame_stays_in_the_middle_third_and_the_crop_moves_smoothly() {
        let secs = 12.0;
        // Left to right and back at up to ~200 px/s, talking.
        let cx = |t: f64| (640.0 + 440.0 * (t * std::f64::consts::PI / 6.0).sin()) as f32;
        let s = samples(secs, 5.0, |t, i| (vec![face(cx(t), (i % 2) as f32)], 0.2));
        let plan = Reframe::default().plan(&s, &[], SRC, CROP, secs);
        assert_eq!(plan.axis, Axis::X);
        assert_eq!(plan.segments.len(), 1, "{:?}", plan.segments);
        let c = centres(&plan, secs);
        let inside = c
            .iter()
            .filter(|(t, x)| {
                let x = x.unwrap();
                (cx(*t) - x).abs() <= CROP.0 as f32 / 6.0
            })
            .count();
        assert!(inside as f64 >= 0.95 * c.len() as f64, "{inside}/{}", c.len());
        let max_step = c
            .windows(2)
            .map(|w| (w[1].1.unwrap() - w[0].1.unwrap()).abs())
            .fold(0.0, f32::max);
        // 0.6 crop widths a second at 25 fps.
        assert!(max_step <= 0.6 * CROP.0 as f32 / 25.0 + 0.5, "{max_step}");
    }

    #[test]
    fn a_still_speaker_with_jittery_detections_gets_a_still_crop() {
        let secs = 8.0;
        let mut k = 0u32;
        let s = samples(secs, 5.0, |_, i| {
            k = k.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let jitter = (k >> 16) as f32 / 65_536.0 * 24.0 - 12.0;
            (vec![face(500.0 + jitter, (i % 2) as f32)], 0.2)
        });
        let plan = Reframe::default().plan(&s, &[], SRC, CROP, secs);
        let c = centres(&plan, secs);
        let first = c[0].1.unwrap();
        assert!(c.iter().all(|(_, x)| (x.unwrap() - first).abs() < 0.01), "{c:?}");
    }

    #[test]
    fn two_people_taking_turns_get_cuts_never_a_crop_between_them() {
        let secs = 12.0;
        // Left speaks for 4 s, then right for 4 s, then left again; they are 800 px apart.
        let s = samples(secs, 5.0, |t, i| {
            let left_speaks = !(4.0..8.0).contains(&t);
            let flap = (i % 2) as f32;
            let (l, r) = if left_speaks { (flap, 0.0) } else { (0.0, flap) };
            (vec![face(240.0, l), face(1040.0, r)], 0.2)
        });
        let plan = Reframe::default().plan(&s, &[], SRC, CROP, secs);
        let tracked: Vec<_> = plan
            .segments
            .iter()
            .filter(|s| matches!(s.layout, Layout::Track(_)))
            .collect();
        assert!(tracked.len() >= 3, "{:?}", plan.segments);
        for (t, x) in centres(&plan, secs) {
            let Some(x) = x else { continue };
            let (lo, hi) = (x - CROP.0 as f32 / 2.0, x + CROP.0 as f32 / 2.0);
            let whole = |c: f32| lo <= c - 80.0 && c + 80.0 <= hi;
            assert!(
                whole(240.0) || whole(1040.0),
                "t={t}: the crop {lo}..{hi} holds neither face"
            );
        }
        // The crop is on the right person in the middle of their turn, and back on the left.
        let on = |t: f64| plan.crop_start_at(t).unwrap() + plan.crop / 2.0;
        assert!((on(2.0) - 240.0).abs() < 70.0, "{}", on(2.0));
        assert!((on(6.5) - 1040.0).abs() < 70.0, "{}", on(6.5));
        assert!((on(10.5) - 240.0).abs() < 70.0, "{}", on(10.5));
    }

    #[test]
    fn two_silent_people_far_apart_get_a_split_and_no_face_gets_the_blurred_fill() {
        let s = samples(4.0, 5.0, |_, _| (vec![face(200.0, 0.0), face(1080.0, 0.0)], 0.0));
        let plan = Reframe::default().plan(&s, &[], SRC, CROP, 4.0);
        assert_eq!(plan.segments.len(), 1);
        match plan.segments[0].layout {
            Layout::Split([a, b]) => assert!((a - 200.0).abs() < 1.0 && (b - 1080.0).abs() < 1.0),
            ref other => panic!("{other:?}"),
        }
        let s = samples(4.0, 5.0, |_, _| (vec![], 0.3));
        let plan = Reframe::default().plan(&s, &[], SRC, CROP, 4.0);
        assert_eq!(
            plan.segments,
            vec![Segment {
                start: 0.0,
                end: 4.0,
                layout: Layout::Fill
            }]
        );
        assert_eq!(plan.crop_start_at(1.0), None);
    }

    #[test]
    fn a_scene_cut_cuts_the_crop_instead_of_panning() {
        // A face on the left, then after a cut at 3 s a face on the right.
        let s = samples(6.0, 5.0, |t, i| {
            let cx = if t < 3.0 { 250.0 } else { 1000.0 };
            (vec![face(cx, (i % 2) as f32)], 0.2)
        });
        let plan = Reframe::default().plan(&s, &[3.0], SRC, CROP, 6.0);
        assert_eq!(plan.segments.len(), 2, "{:?}", plan.segments);
        assert_eq!(plan.segments[1].start, 3.0);
        let after = plan.crop_start_at(3.0).unwrap() + plan.crop / 2.0;
        assert!((after - 1000.0).abs() < 1.0, "{after}");
    }

    #[test]
    fn a_neighbour_at_the_crop_edge_is_left_out_whole_not_cut_in_half() {
        // Two faces 300 px apart do not fit one 404 px crop with margin... they do fit: 300+160
        // > 404, so the speaker is framed and the other is pushed out of the frame whole.
        let s = samples(4.0, 5.0, |_, i| {
            (vec![face(500.0, (i % 2) as f32), face(800.0, 0.0)], 0.2)
        });
        let plan = Reframe::default().plan(&s, &[], SRC, CROP, 4.0);
        for (t, x) in centres(&plan, 4.0) {
            let x = x.unwrap();
            let (lo, hi) = (x - CROP.0 as f32 / 2.0, x + CROP.0 as f32 / 2.0);
            let (a, b) = (720.0, 880.0);
            assert!(
                b <= lo || a >= hi || (lo <= a && b <= hi),
                "t={t}: {lo}..{hi} cuts the face {a}..{b}"
            );
            assert!(
                lo <= 420.0 && 580.0 <= hi,
                "t={t}: the speaker is not whole in {lo}..{hi}"
            );
        }
    }
}
