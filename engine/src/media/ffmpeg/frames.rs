//! Frames out of a video: samples for the framing analysis, and JPEG thumbnails.

use super::*;

/// An untrusted input opened for its best video stream, with that stream's decoder.
struct VideoInput {
    ictx: format::context::Input,
    /// The container's start time, seconds.
    t0: f64,
    vidx: usize,
    vtb: Rational,
    dec: codec::decoder::Video,
}

impl VideoInput {
    fn parts(
        self,
    ) -> (
        format::context::Input,
        f64,
        usize,
        Rational,
        codec::decoder::Video,
    ) {
        (self.ictx, self.t0, self.vidx, self.vtb, self.dec)
    }
}

fn open_video(src: &Path, threaded: bool, budget: &DecodeBudget) -> Result<VideoInput> {
    let ictx = open_input(src)?;
    let t0 = container_start(&ictx);
    let vst = ictx
        .streams()
        .best(media::Type::Video)
        .ok_or_else(|| Error::NotAVideo {
            path: src.into(),
            reason: "no video stream".into(),
        })?;
    let (vidx, vtb) = (vst.index(), vst.time_base());
    let dec = video_decoder(vst.parameters(), threaded, budget)?;
    Ok(VideoInput {
        ictx,
        t0,
        vidx,
        vtb,
        dec,
    })
}

/// Frames of `src` between `start` and `end` seconds, `per_sec` of them a second (the first at
/// or after `start`, then the next one due), scaled to at most `max_edge` px on the long side, as
/// packed RGB: `each(t, rgb, w, h)` with `t` from `start`. Returns the source's size. Decoding
/// stops at `end`, or with the budget's error; `each` may stop it early with an error (e.g.
/// [`Error::Cancelled`]).
pub fn sample_frames(
    src: &Path,
    (start, end): (f64, f64),
    per_sec: f64,
    max_edge: u32,
    budget: &DecodeBudget,
    mut each: impl FnMut(f64, &[u8], u32, u32) -> Result<()>,
) -> Result<(u32, u32)> {
    let (mut ictx, t0, vidx, vtb, mut dec) = open_video(src, true, budget)?.parts();
    let mut meter = Meter::new(*budget, src);
    let (src_w, src_h) = (dec.width(), dec.height());
    let (w, h) = output_size(src_w, src_h, max_edge);
    let mut graph = video_graph(&dec, vtb, &format!("scale={w}:{h}:flags=area,format=rgb24"))?;
    let (abs_s, abs_e) = (start + t0, end + t0);
    let seek_to = ((abs_s - 2.0).max(0.0) * f64::from(ff::ffi::AV_TIME_BASE)) as i64;
    if seek_to > 0 {
        ictx.seek(seek_to, ..seek_to).map_err(media_err("seek"))?;
    }
    let step = 1.0 / per_sec.max(0.1);
    let mut next = abs_s;
    let mut decoded = frame::Video::empty();
    let mut rgb = frame::Video::empty();
    let mut packed: Vec<u8> = Vec::with_capacity((w * h * 3) as usize);
    let mut take = |f: &mut frame::Video, next: &mut f64| -> Result<bool> {
        let Some(ts) = f.timestamp() else { return Ok(false) };
        let t = stream_secs(ts, vtb);
        if t >= abs_e {
            return Ok(true);
        }
        if t + 1e-6 < *next {
            return Ok(false);
        }
        while *next <= t + 1e-6 {
            *next += step;
        }
        f.set_pts(Some(ts));
        graph
            .get("in")
            .expect("in")
            .source()
            .add(f)
            .map_err(media_err("sample filter"))?;
        graph
            .get("out")
            .expect("out")
            .sink()
            .frame(&mut rgb)
            .map_err(media_err("sample filter"))?;
        packed.clear();
        let stride = rgb.stride(0);
        for row in 0..h as usize {
            packed.extend_from_slice(&rgb.data(0)[row * stride..row * stride + w as usize * 3]);
        }
        each(t - abs_s, &packed, w, h)?;
        Ok(false)
    };
    'read: for (s, packet) in ictx.packets() {
        meter.tick()?;
        if s.index() != vidx {
            continue;
        }
        send_video(&mut dec, &packet, &mut meter)?;
        while receive_video(&mut dec, &mut decoded, vtb, &mut meter)? {
            if take(&mut decoded, &mut next)? {
                break 'read;
            }
        }
    }
    let _ = dec.send_eof();
    while receive_video(&mut dec, &mut decoded, vtb, &mut meter)? {
        if take(&mut decoded, &mut next)? {
            break;
        }
    }
    Ok((src_w, src_h))
}

/// Writes a JPEG of the frame at `at` seconds of `src` (a clip), at most `max_edge` px on its
/// long side, decoding within `budget`.
pub fn thumbnail(src: &Path, at: f64, max_edge: u32, out: &Path, budget: &DecodeBudget) -> Result<Thumbnail> {
    let (mut ictx, t0, vidx, vtb, mut dec) = open_video(src, false, budget)?.parts();
    let mut meter = Meter::new(*budget, src);
    let (w, h) = output_size(dec.width(), dec.height(), max_edge);
    let mut graph = video_graph(&dec, vtb, &format!("scale={w}:{h},format=yuvj420p"))?;
    let target = at + t0;
    let seek_to = (target.max(0.0) * f64::from(ff::ffi::AV_TIME_BASE)) as i64;
    if seek_to > 0 {
        ictx.seek(seek_to, ..seek_to).map_err(media_err("seek"))?;
    }
    let mut decoded = frame::Video::empty();
    let mut picked: Option<frame::Video> = None;
    'read: for (s, packet) in ictx.packets() {
        meter.tick()?;
        if s.index() != vidx {
            continue;
        }
        send_video(&mut dec, &packet, &mut meter)?;
        while receive_video(&mut dec, &mut decoded, vtb, &mut meter)? {
            let t = decoded.timestamp().map(|t| stream_secs(t, vtb)).unwrap_or(target);
            picked = Some(decoded.clone());
            if t >= target {
                break 'read;
            }
        }
    }
    if picked.is_none() {
        let _ = dec.send_eof();
        while receive_video(&mut dec, &mut decoded, vtb, &mut meter)? {
            picked = Some(decoded.clone());
        }
    }
    let mut f = picked.ok_or_else(|| {
        Error::Media(format!(
            "{}: no video frame to take a thumbnail from",
            src.display()
        ))
    })?;
    f.set_pts(Some(0));
    graph
        .get("in")
        .expect("in")
        .source()
        .add(&f)
        .map_err(media_err("thumbnail filter"))?;
    let mut scaled = frame::Video::empty();
    graph
        .get("out")
        .expect("out")
        .sink()
        .frame(&mut scaled)
        .map_err(media_err("thumbnail filter"))?;
    let mjpeg =
        codec::encoder::find(codec::Id::MJPEG).ok_or_else(|| Error::Media("no MJPEG encoder".into()))?;
    let mut ectx = codec::context::Context::new_with_codec(mjpeg)
        .encoder()
        .video()
        .map_err(media_err("JPEG encoder"))?;
    ectx.set_width(w);
    ectx.set_height(h);
    ectx.set_format(format::Pixel::YUVJ420P);
    ectx.set_time_base(Rational(1, 25));
    let mut opts = Dictionary::new();
    opts.set("flags", "+qscale");
    opts.set("global_quality", &(4 * 118).to_string());
    let mut enc = ectx
        .open_as_with(mjpeg, opts)
        .map_err(media_err("JPEG encoder"))?;
    scaled.set_pts(Some(0));
    enc.send_frame(&scaled).map_err(media_err("JPEG encoder"))?;
    let _ = enc.send_eof();
    let mut p = Packet::empty();
    enc.receive_packet(&mut p).map_err(media_err("JPEG encoder"))?;
    let data = p.data().ok_or_else(|| Error::Media("empty JPEG".into()))?;
    std::fs::write(out, data).map_err(|e| Error::io(out, e))?;
    Ok(Thumbnail {
        path: out.to_path_buf(),
        width: w,
        height: h,
        size_bytes: data.len() as u64,
    })
}
