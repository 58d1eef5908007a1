//! Renders a clip in its [`Shape`] ([`crate::format::Format`]): every decoded frame goes to the
//! layout its moment has in the [`crate::reframe::Plan`]:
//! - a tracked crop: FFmpeg's `crop` (its `x`/`y` set per frame by a graph command) and `scale`;
//! - the fill: the whole frame fitted onto a blurred, zoomed copy of itself;
//! - the split: two crops, one above the other;
//!
//! then, with captions, through libass (FFmpeg's `ass` filter) on the finished frame. The fill and
//! the split come out of their graphs as two pictures each, put together here (plane copies), so
//! every graph has one frame out for each frame in and frames leave in the order they came: the
//! layouts can change from one frame to the next.

use std::ffi::CString;
use std::path::PathBuf;

use ff::{filter, format, frame, Rational};
use ffmpeg_next as ff;

use crate::error::{Error, Result};
use crate::format::even;
use crate::reframe::{Axis, Layout};
use crate::shape::Shape;

fn err(what: &'static str) -> impl Fn(ff::Error) -> Error {
    move |e| Error::Media(format!("{what}: {e}"))
}

/// The source's frames as a `buffer` filter's arguments.
#[derive(Debug, Clone)]
pub(crate) struct Source {
    pub width: u32,
    pub height: u32,
    pub pix_fmt: format::Pixel,
    pub time_base: Rational,
    pub sar: Rational,
}

impl Source {
    fn args(&self) -> String {
        format!(
            "video_size={}x{}:pix_fmt={}:time_base={}/{}:pixel_aspect={}/{}",
            self.width,
            self.height,
            ff::ffi::AVPixelFormat::from(self.pix_fmt) as i32,
            self.time_base.numerator(),
            self.time_base.denominator(),
            self.sar.numerator().max(1),
            self.sar.denominator().max(1)
        )
    }
}

/// `[in]` → `spec` → one sink per name in `sinks` (the spec labels its ends with them).
fn graph(args: &str, spec: &str, sinks: &[&str], what: &'static str) -> Result<filter::Graph> {
    let e = err(what);
    let mut g = filter::Graph::new();
    g.add(&filter::find("buffer").expect("built-in filter"), "in", args)
        .map_err(&e)?;
    for s in sinks {
        g.add(&filter::find("buffersink").expect("built-in filter"), s, "")
            .map_err(&e)?;
    }
    let mut p = g.output("in", 0).map_err(&e)?;
    for s in sinks {
        p = p.input(s, 0).map_err(&e)?;
    }
    p.parse(spec).map_err(&e)?;
    g.validate().map_err(&e)?;
    Ok(g)
}

/// A path as a filter-graph option value, quoted; `None` for a path with a character that means
/// something to the graph parser (the caller copies the file somewhere plain first).
fn filter_path(p: &std::path::Path) -> Option<String> {
    let s = p.to_str()?;
    let plain = s
        .chars()
        .all(|c| c.is_alphanumeric() || matches!(c, '/' | '.' | '_' | '-' | '+' | ' '));
    plain.then(|| format!("'{s}'"))
}

/// A copy of `p` under a plain name in the temporary directory, removed when dropped.
struct PlainCopy(PathBuf);

impl PlainCopy {
    fn of(p: &std::path::Path) -> Result<PlainCopy> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "viralclip-{}-{}.{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            p.extension()
                .and_then(|e| e.to_str())
                .filter(|e| e.chars().all(char::is_alphanumeric))
                .unwrap_or("tmp")
        );
        let to = std::env::temp_dir().join(name);
        std::fs::copy(p, &to).map_err(|source| Error::Io {
            path: p.to_path_buf(),
            source,
        })?;
        Ok(PlainCopy(to))
    }
}

impl Drop for PlainCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Frames in, shaped frames out, one for one.
pub(crate) struct Shaper {
    shape: Shape,
    src: Source,
    /// Seconds of the source at which the clip starts.
    start: f64,
    crop: filter::Graph,
    fill: filter::Graph,
    split: filter::Graph,
    post: Option<filter::Graph>,
    /// The fill's foreground size and offset in the output.
    fg: (u32, u32, u32, u32),
    /// The split's window size in the source.
    split_win: (u32, u32),
    last_cmd: Option<(usize, String)>,
    /// The least pts the next shaped frame may have: pts strictly increase, whatever rounding a
    /// coarse time base (AVI's 1/25) or a stream's own disorder gives.
    next_pts: i64,
    /// Seconds of the source at which it ends.
    end: f64,
    /// The captions under a plain name, while the graph reads them.
    _plain_copy: Option<PlainCopy>,
}

impl Shaper {
    pub(crate) fn new(shape: Shape, src: Source, start: f64, end: f64) -> Result<Shaper> {
        let g = shape.geometry;
        let (ow, oh) = (g.out_w, g.out_h);
        let args = src.args();
        let (cw, ch) = (g.crop_w.min(src.width), g.crop_h.min(src.height));
        let crop = graph(
            &args,
            &format!(
                "[in]crop@c=w={cw}:h={ch}:x={}:y={}:exact=1,scale={ow}:{oh}:flags=bicubic,setsar=1,format=yuv420p[out]",
                (src.width - cw) / 2,
                (src.height - ch) / 2
            ),
            &["out"],
            "crop filter",
        )?;
        // The whole frame fitted inside the output, on a blurred copy zoomed to fill it.
        let fit = (ow as f64 / src.width as f64).min(oh as f64 / src.height as f64);
        let (fw, fh) = (
            even(src.width as f64 * fit).min(ow),
            even(src.height as f64 * fit).min(oh),
        );
        let (fx, fy) = (((ow - fw) / 2) & !1, ((oh - fh) / 2) & !1);
        let (bw, bh) = (even(ow as f64 / 8.0), even(oh as f64 / 8.0));
        let fill = graph(
            &args,
            &format!(
                "[in]split[a][b];\
                 [a]scale={bw}:{bh}:force_original_aspect_ratio=increase,crop={bw}:{bh},boxblur=6:2,\
                 scale={ow}:{oh}:flags=bilinear,setsar=1,format=yuv420p[bg];\
                 [b]scale={fw}:{fh}:flags=bicubic,setsar=1,format=yuv420p[fg]"
            ),
            &["bg", "fg"],
            "fill filter",
        )?;
        // Two windows of the half-output's shape, each at most half the source wide.
        let half_h = (oh / 2) & !1;
        let ratio = ow as f64 / half_h as f64;
        let sh = (src.height as f64).min(src.width as f64 / 2.0 / ratio);
        let (sw, sh) = (even(sh * ratio).min(src.width), even(sh).min(src.height));
        let split = graph(
            &args,
            &format!(
                "[in]split[a][b];\
                 [a]crop@top=w={sw}:h={sh}:x=0:y={y}:exact=1,scale={ow}:{half_h}:flags=bicubic,setsar=1,format=yuv420p[top];\
                 [b]crop@bot=w={sw}:h={sh}:x={x2}:y={y}:exact=1,scale={ow}:{half_h}:flags=bicubic,setsar=1,format=yuv420p[bot]",
                y = (src.height - sh) / 2,
                x2 = src.width - sw,
            ),
            &["top", "bot"],
            "split filter",
        )?;
        let mut plain_copy = None;
        let post = match &shape.captions {
            None => None,
            Some(ass) => {
                let out = Source {
                    width: ow,
                    height: oh,
                    pix_fmt: format::Pixel::YUV420P,
                    time_base: src.time_base,
                    sar: Rational(1, 1),
                };
                let fonts = match &shape.fonts_dir {
                    None => String::new(),
                    Some(d) => match filter_path(d) {
                        Some(q) => format!(":fontsdir={q}"),
                        None => {
                            tracing::warn!(dir = %d.display(), "fonts directory with an odd name: left out");
                            String::new()
                        }
                    },
                };
                let (path, copy) = match filter_path(ass) {
                    Some(q) => (q, None),
                    None => {
                        let c = PlainCopy::of(ass)?;
                        (filter_path(&c.0).expect("a plain name"), Some(c))
                    }
                };
                plain_copy = copy;
                Some(graph(
                    &out.args(),
                    &format!("[in]ass=filename={path}{fonts},format=yuv420p[out]"),
                    &["out"],
                    "captions filter (libass)",
                )?)
            }
        };
        Ok(Shaper {
            shape,
            src,
            start,
            crop,
            fill,
            split,
            post,
            fg: (fw, fh, fx, fy),
            split_win: (sw, sh),
            last_cmd: None,
            next_pts: 0,
            end,
            _plain_copy: plain_copy,
        })
    }

    fn command(g: &mut filter::Graph, target: &str, cmd: &str, arg: &str) -> Result<()> {
        let (t, c, a) = (
            CString::new(target).expect("no NUL"),
            CString::new(cmd).expect("no NUL"),
            CString::new(arg).expect("no NUL"),
        );
        let rc = unsafe {
            ff::ffi::avfilter_graph_send_command(
                g.as_mut_ptr(),
                t.as_ptr(),
                c.as_ptr(),
                a.as_ptr(),
                std::ptr::null_mut(),
                0,
                0,
            )
        };
        if rc < 0 {
            return Err(Error::Media(format!(
                "{target} {cmd} {arg}: {}",
                ff::Error::from(rc)
            )));
        }
        Ok(())
    }

    /// One decoded frame (its pts in the source's time base) → the shaped frame, or `None` for a
    /// frame outside the clip.
    pub(crate) fn push(&mut self, f: &frame::Video) -> Result<Option<frame::Video>> {
        let tb = self.src.time_base;
        let Some(ts) = f.timestamp().or(f.pts()) else {
            return Ok(None);
        };
        let secs = ts as f64 * f64::from(tb);
        let t = secs - self.start;
        if t < -1e-6 || secs >= self.end - 1e-6 {
            return Ok(None);
        }
        let t = t.max(0.0);
        let mut input = f.clone();
        // Two frames may round to one tick in a coarse time base (a start half a frame off the
        // grid): the muxer refuses equal timestamps ("non monotonically increasing dts").
        let pts = ((t / f64::from(tb)).round() as i64).max(self.next_pts);
        self.next_pts = pts + 1;
        input.set_pts(Some(pts));
        let plan = &self.shape.plan;
        let layout = plan.segment_at(t).map(|s| &s.layout).unwrap_or(&Layout::Fill);
        let mut shaped = match layout {
            Layout::Track(_) => {
                let edge = plan.crop_start_at(t).unwrap_or(0.0).round().max(0.0) as u32;
                let (what, max) = match plan.axis {
                    Axis::X => ("x", self.src.width.saturating_sub(self.shape.geometry.crop_w)),
                    Axis::Y => ("y", self.src.height.saturating_sub(self.shape.geometry.crop_h)),
                };
                let v = (edge.min(max) & !1).to_string();
                if self.last_cmd.as_ref() != Some(&(0, v.clone())) {
                    Self::command(&mut self.crop, "crop@c", what, &v)?;
                    self.last_cmd = Some((0, v));
                }
                run(&mut self.crop, &input, &["out"])?.pop().expect("one sink")
            }
            Layout::Fill => {
                let mut out = run(&mut self.fill, &input, &["bg", "fg"])?;
                let fg = out.pop().expect("fg");
                let mut bg = out.pop().expect("bg");
                let (_, _, fx, fy) = self.fg;
                paste(&mut bg, &fg, fx, fy);
                bg
            }
            Layout::Split([a, b]) => {
                let (sw, _) = self.split_win;
                let left =
                    |c: f32| ((c - sw as f32 / 2.0).round().max(0.0) as u32).min(self.src.width - sw) & !1;
                let (xa, xb) = (left(*a).to_string(), left(*b).to_string());
                Self::command(&mut self.split, "crop@top", "x", &xa)?;
                Self::command(&mut self.split, "crop@bot", "x", &xb)?;
                self.last_cmd = None;
                let mut out = run(&mut self.split, &input, &["top", "bot"])?;
                let bot = out.pop().expect("bot");
                let top = out.pop().expect("top");
                let g = self.shape.geometry;
                let mut frame = frame::Video::new(format::Pixel::YUV420P, g.out_w, g.out_h);
                blank(&mut frame);
                paste(&mut frame, &top, 0, 0);
                paste(&mut frame, &bot, 0, g.out_h - bot.height());
                frame
            }
        };
        shaped.set_pts(Some(pts));
        if let Some(post) = self.post.as_mut() {
            shaped = run(post, &shaped, &["out"])?.pop().expect("one sink");
            shaped.set_pts(Some(pts));
        }
        Ok(Some(shaped))
    }
}

/// Pushes one frame through `g` and takes the one frame each sink gives for it.
fn run(g: &mut filter::Graph, f: &frame::Video, sinks: &[&str]) -> Result<Vec<frame::Video>> {
    g.get("in")
        .expect("in")
        .source()
        .add(f)
        .map_err(err("shape filter"))?;
    let mut out = Vec::with_capacity(sinks.len());
    for s in sinks {
        let mut got = frame::Video::empty();
        g.get(s)
            .expect("sink")
            .sink()
            .frame(&mut got)
            .map_err(|e| Error::Media(format!("shape filter ({s}): no frame out: {e}")))?;
        out.push(got);
    }
    Ok(out)
}

/// Copies `src` (yuv420p) into `dst` (yuv420p) with its top-left at (`x`, `y`), both even.
fn paste(dst: &mut frame::Video, src: &frame::Video, x: u32, y: u32) {
    for plane in 0..3 {
        let shift = u32::from(plane > 0);
        let (px, py) = ((x >> shift) as usize, (y >> shift) as usize);
        let w = ((src.width() >> shift) as usize).min(((dst.width() >> shift) as usize).saturating_sub(px));
        let h = ((src.height() >> shift) as usize).min(((dst.height() >> shift) as usize).saturating_sub(py));
        let (ss, ds) = (src.stride(plane), dst.stride(plane));
        let sdata = src.data(plane);
        let ddata = dst.data_mut(plane);
        for row in 0..h {
            let s = &sdata[row * ss..row * ss + w];
            let d0 = (py + row) * ds + px;
            ddata[d0..d0 + w].copy_from_slice(s);
        }
    }
}

/// Black, in yuv420p.
fn blank(f: &mut frame::Video) {
    for plane in 0..3 {
        let v = if plane == 0 { 16 } else { 128 };
        f.data_mut(plane).fill(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_paths_go_into_the_filter_graph() {
        assert_eq!(
            filter_path(std::path::Path::new("/tmp/a b/c.ass")).as_deref(),
            Some("'/tmp/a b/c.ass'")
        );
        for odd in [
            "/tmp/it's.ass",
            "/tmp/a:b.ass",
            "/tmp/a,b.ass",
            "/tmp/[x].ass",
            "/tmp/a\\b.ass",
            "/tmp/a;b",
        ] {
            assert_eq!(filter_path(std::path::Path::new(odd)), None, "{odd}");
        }
        let dir = std::env::temp_dir().join(format!("viralclip-shape-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let odd = dir.join("it's: [odd].ass");
        std::fs::write(&odd, "x").unwrap();
        let copy = PlainCopy::of(&odd).unwrap();
        assert!(filter_path(&copy.0).is_some());
        assert_eq!(std::fs::read_to_string(&copy.0).unwrap(), "x");
        let kept = copy.0.clone();
        drop(copy);
        assert!(!kept.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
