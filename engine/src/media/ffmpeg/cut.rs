//! Cutting clips: a precise re-encode (shaped along a plan, captions burned in) or a fast stream
//! copy, written as fast-start MP4.

use super::*;

/// Cuts `[start, end)` seconds of `src` into an MP4 at `out` (`+faststart`).
/// Fast mode falls back to precise when the streams cannot be copied into MP4. Decodes within
/// the default [`DecodeBudget`].
pub fn cut(src: &Path, start: f64, end: f64, mode: CutMode, out: &Path) -> Result<ClipFile> {
    cut_shaped(src, (start, end), mode, None, out, &DecodeBudget::default())
}

/// [`cut`], shaped: cropped or filled into a delivery shape along a plan, captions burned in
/// ([`super::shaper`]). A shape is always re-encoded (`mode` is then precise). Decoding stops
/// with the budget's error when the input's frames cross `budget`.
pub fn cut_shaped(
    src: &Path,
    (start, end): (f64, f64),
    mode: CutMode,
    shape: Option<crate::shape::Shape>,
    out: &Path,
    budget: &DecodeBudget,
) -> Result<ClipFile> {
    if end <= start || start < 0.0 || end.is_nan() {
        return Err(Error::Invalid(format!("cannot cut {start:.3}-{end:.3} s")));
    }
    let res = match (mode, shape) {
        (_, Some(shape)) => cut_precise(src, (start, end), Some(shape), out, budget),
        (CutMode::Precise, None) => cut_precise(src, (start, end), None, out, budget),
        (CutMode::Fast, None) => match cut_fast(src, (start, end), out, budget) {
            Err(Error::Media(why)) => {
                tracing::warn!(%why, "stream copy impossible; re-encoding");
                cut_precise(src, (start, end), None, out, budget)
            }
            other => other,
        },
    };
    if res.is_err() {
        let _ = std::fs::remove_file(out);
    }
    res
}

fn mp4_output(out: &Path) -> Result<format::context::Output> {
    init();
    format::output_as(&out, "mp4").map_err(|e| Error::Media(format!("{}: {e}", out.display())))
}

fn write_header_faststart(octx: &mut format::context::Output) -> Result<()> {
    let mut opts = Dictionary::new();
    opts.set("movflags", "+faststart");
    octx.write_header_with(opts)
        .map(|_| ())
        .map_err(media_err("mp4 header"))
}

struct VideoPath {
    ist: usize,
    ist_tb: Rational,
    dec: codec::decoder::Video,
    graph: filter::Graph,
    /// Set for a shaped clip: frames go through it instead of `graph`.
    shaper: Option<super::shaper::Shaper>,
    enc: codec::encoder::video::Encoder,
    ost: usize,
    width: u32,
    height: u32,
    /// The decoding's count against the budget.
    meter: Meter,
}

struct AudioPath {
    ist: usize,
    dec: codec::decoder::Audio,
    graph: filter::Graph,
    enc: codec::encoder::audio::Encoder,
    ost: usize,
}

fn cut_precise(
    src: &Path,
    (start, end): (f64, f64),
    shape: Option<crate::shape::Shape>,
    out: &Path,
    budget: &DecodeBudget,
) -> Result<ClipFile> {
    let mut ictx = open_input(src)?;
    let t0 = container_start(&ictx);
    let (abs_s, abs_e) = (start + t0, end + t0);
    let mut octx = mp4_output(out)?;
    let global = octx.format().flags().contains(format::Flags::GLOBAL_HEADER);

    let vst = ictx
        .streams()
        .best(media::Type::Video)
        .ok_or_else(|| Error::NotAVideo {
            path: src.into(),
            reason: "no video stream".into(),
        })?;
    let vidx = vst.index();
    let vtb = vst.time_base();
    let rate = {
        let r = vst.avg_frame_rate();
        if r.numerator() > 0 && r.denominator() > 0 {
            r
        } else {
            Rational(25, 1)
        }
    };
    let vdec = video_decoder(vst.parameters(), true, budget)?;
    let (w, h) = match &shape {
        Some(s) => (s.geometry.out_w, s.geometry.out_h),
        None => output_size(vdec.width(), vdec.height(), 1920),
    };
    let vspec = format!(
        "trim=start={abs_s:.6}:end={abs_e:.6},setpts=PTS-STARTPTS,scale={w}:{h},setsar=1,format=yuv420p"
    );
    let vgraph = video_graph(&vdec, vtb, &vspec)?;
    let shaper = match shape {
        None => None,
        Some(shape) => {
            let source = super::shaper::Source {
                width: vdec.width(),
                height: vdec.height(),
                pix_fmt: vdec.format(),
                time_base: vtb,
                sar: vdec.aspect_ratio(),
            };
            Some(super::shaper::Shaper::new(shape, source, abs_s, abs_e)?)
        }
    };
    let h264 = codec::encoder::find_by_name("libx264")
        .or_else(|| codec::encoder::find(codec::Id::H264))
        .ok_or_else(|| Error::Media("no H.264 encoder in this FFmpeg".into()))?;
    let mut ost = octx.add_stream(h264).map_err(media_err("mp4 stream"))?;
    let vost = ost.index();
    let mut ectx = codec::context::Context::new_with_codec(h264)
        .encoder()
        .video()
        .map_err(media_err("H.264 encoder"))?;
    ectx.set_width(w);
    ectx.set_height(h);
    ectx.set_format(format::Pixel::YUV420P);
    ectx.set_time_base(vtb);
    ectx.set_frame_rate(Some(rate));
    ectx.set_aspect_ratio(Rational(1, 1));
    if global {
        ectx.set_flags(codec::Flags::GLOBAL_HEADER);
    }
    let mut x264 = Dictionary::new();
    x264.set("preset", "veryfast");
    x264.set("crf", "23");
    let venc = ectx
        .open_as_with(h264, x264)
        .map_err(media_err("H.264 encoder"))?;
    ost.set_parameters(&venc);
    ost.set_time_base(vtb);
    let mut video = VideoPath {
        ist: vidx,
        ist_tb: vtb,
        dec: vdec,
        graph: vgraph,
        shaper,
        enc: venc,
        ost: vost,
        width: w,
        height: h,
        meter: Meter::new(*budget, src),
    };

    let mut audio = match ictx.streams().best(media::Type::Audio) {
        None => None,
        Some(ast) => {
            let aidx = ast.index();
            let atb = ast.time_base();
            let mut actx = codec::context::Context::from_parameters(ast.parameters())
                .map_err(media_err("audio decoder"))?;
            threading(&mut actx);
            let adec = actx.decoder().audio().map_err(media_err("audio decoder"))?;
            let aac =
                codec::encoder::find(codec::Id::AAC).ok_or_else(|| Error::Media("no AAC encoder".into()))?;
            let mut ost = octx.add_stream(aac).map_err(media_err("mp4 stream"))?;
            let aost = ost.index();
            let mut ectx = codec::context::Context::new_with_codec(aac)
                .encoder()
                .audio()
                .map_err(media_err("AAC encoder"))?;
            ectx.set_rate(48000);
            ectx.set_channel_layout(ff::ChannelLayout::STEREO);
            ectx.set_format(format::Sample::F32(format::sample::Type::Planar));
            ectx.set_bit_rate(128_000);
            ectx.set_time_base(Rational(1, 48000));
            if global {
                ectx.set_flags(codec::Flags::GLOBAL_HEADER);
            }
            let aenc = ectx.open_as(aac).map_err(media_err("AAC encoder"))?;
            ost.set_parameters(&aenc);
            ost.set_time_base(Rational(1, 48000));
            let aspec = format!(
                "atrim=start={abs_s:.6}:end={abs_e:.6},asetpts=PTS-STARTPTS,aresample=48000,aformat=sample_fmts=fltp:channel_layouts=stereo"
            );
            let graph = audio_graph(&adec, atb, &aspec, Some(aenc.frame_size()))?;
            Some(AudioPath {
                ist: aidx,
                dec: adec,
                graph,
                enc: aenc,
                ost: aost,
            })
        }
    };

    write_header_faststart(&mut octx)?;
    let vost_tb = octx.stream(video.ost).expect("added").time_base();
    let aost_tb = audio
        .as_ref()
        .map(|a| octx.stream(a.ost).expect("added").time_base());

    // Seek a little before the start: the decoder lands on the keyframe before it.
    let seek_to = ((abs_s - 2.0).max(0.0) * f64::from(ff::ffi::AV_TIME_BASE)) as i64;
    if seek_to > 0 {
        ictx.seek(seek_to, ..seek_to).map_err(media_err("seek"))?;
    }
    let mut vframe = frame::Video::empty();
    let mut aframe = frame::Audio::empty();
    let mut video_done = false;
    let mut audio_done = audio.is_none();
    for (s, packet) in ictx.packets() {
        video.meter.tick()?;
        let idx = s.index();
        let secs = packet
            .pts()
            .or(packet.dts())
            .map(|t| stream_secs(t, s.time_base()));
        if idx == video.ist && !video_done {
            send_video(&mut video.dec, &packet, &mut video.meter)?;
            pump_video(&mut video, &mut vframe, &mut octx, vost_tb)?;
            if secs.is_some_and(|t| t > abs_e + 2.0) {
                video_done = true;
            }
        } else if let Some(a) = audio.as_mut().filter(|a| a.ist == idx && !audio_done) {
            if a.dec.send_packet(&packet).is_ok() {
                pump_audio(a, &mut aframe, &mut octx, aost_tb.expect("audio"))?;
            }
            if secs.is_some_and(|t| t > abs_e + 1.0) {
                audio_done = true;
            }
        }
        if video_done && audio_done {
            break;
        }
    }
    // Flush decoders, filters and encoders.
    let _ = video.dec.send_eof();
    pump_video(&mut video, &mut vframe, &mut octx, vost_tb)?;
    let _ = video.graph.get("in").expect("in").source().flush();
    drain_video(&mut video, &mut octx, vost_tb)?;
    let _ = video.enc.send_eof();
    write_packets(&mut video.enc, video.ost, video.ist_tb, vost_tb, &mut octx)?;
    if let Some(a) = audio.as_mut() {
        let _ = a.dec.send_eof();
        pump_audio(a, &mut aframe, &mut octx, aost_tb.expect("audio"))?;
        let _ = a.graph.get("in").expect("in").source().flush();
        drain_audio(a, &mut octx, aost_tb.expect("audio"))?;
        let _ = a.enc.send_eof();
        write_packets(
            &mut a.enc,
            a.ost,
            Rational(1, 48000),
            aost_tb.expect("audio"),
            &mut octx,
        )?;
    }
    octx.write_trailer().map_err(media_err("mp4 trailer"))?;
    drop(octx);
    finish_clip(out, start, CutMode::Precise, Some((video.width, video.height)))
}

fn pump_video(
    v: &mut VideoPath,
    f: &mut frame::Video,
    octx: &mut format::context::Output,
    ost_tb: Rational,
) -> Result<()> {
    while receive_video(&mut v.dec, f, v.ist_tb, &mut v.meter)? {
        let ts = f.timestamp();
        f.set_pts(ts);
        if let Some(shaper) = v.shaper.as_mut() {
            if let Some(mut shaped) = shaper.push(f)? {
                shaped.set_kind(ff::picture::Type::None);
                v.enc.send_frame(&shaped).map_err(media_err("H.264 encoder"))?;
                write_packets(&mut v.enc, v.ost, v.ist_tb, ost_tb, octx)?;
            }
            continue;
        }
        v.graph
            .get("in")
            .expect("in")
            .source()
            .add(f)
            .map_err(media_err("video filter"))?;
        drain_video(v, octx, ost_tb)?;
    }
    Ok(())
}

fn drain_video(v: &mut VideoPath, octx: &mut format::context::Output, ost_tb: Rational) -> Result<()> {
    let mut filtered = frame::Video::empty();
    while v
        .graph
        .get("out")
        .expect("out")
        .sink()
        .frame(&mut filtered)
        .is_ok()
    {
        filtered.set_kind(ff::picture::Type::None);
        v.enc.send_frame(&filtered).map_err(media_err("H.264 encoder"))?;
        write_packets(&mut v.enc, v.ost, v.ist_tb, ost_tb, octx)?;
    }
    Ok(())
}

fn pump_audio(
    a: &mut AudioPath,
    f: &mut frame::Audio,
    octx: &mut format::context::Output,
    ost_tb: Rational,
) -> Result<()> {
    while a.dec.receive_frame(f).is_ok() {
        let ts = f.timestamp();
        f.set_pts(ts);
        a.graph
            .get("in")
            .expect("in")
            .source()
            .add(f)
            .map_err(media_err("audio filter"))?;
        drain_audio(a, octx, ost_tb)?;
    }
    Ok(())
}

fn drain_audio(a: &mut AudioPath, octx: &mut format::context::Output, ost_tb: Rational) -> Result<()> {
    let mut filtered = frame::Audio::empty();
    while a
        .graph
        .get("out")
        .expect("out")
        .sink()
        .frame(&mut filtered)
        .is_ok()
    {
        a.enc.send_frame(&filtered).map_err(media_err("AAC encoder"))?;
        write_packets(&mut a.enc, a.ost, Rational(1, 48000), ost_tb, octx)?;
    }
    Ok(())
}

fn write_packets(
    enc: &mut codec::encoder::Encoder,
    ost: usize,
    enc_tb: Rational,
    ost_tb: Rational,
    octx: &mut format::context::Output,
) -> Result<()> {
    let mut p = Packet::empty();
    while enc.receive_packet(&mut p).is_ok() {
        p.set_stream(ost);
        p.rescale_ts(enc_tb, ost_tb);
        p.write_interleaved(octx).map_err(media_err("mp4 write"))?;
    }
    Ok(())
}

fn cut_fast(src: &Path, (start, end): (f64, f64), out: &Path, budget: &DecodeBudget) -> Result<ClipFile> {
    let meter = Meter::new(*budget, src);
    let mut ictx = open_input(src)?;
    let t0 = container_start(&ictx);
    let (abs_s, abs_e) = (start + t0, end + t0);
    let vst = ictx
        .streams()
        .best(media::Type::Video)
        .ok_or_else(|| Error::NotAVideo {
            path: src.into(),
            reason: "no video stream".into(),
        })?;
    let vidx = vst.index();
    let aidx = ictx.streams().best(media::Type::Audio).map(|s| s.index());
    let mut octx = mp4_output(out)?;
    let mut map: Vec<Option<usize>> = vec![None; ictx.nb_streams() as usize];
    let mut in_tbs = vec![Rational(1, 1); ictx.nb_streams() as usize];
    for s in ictx.streams() {
        if s.index() != vidx && Some(s.index()) != aidx {
            continue;
        }
        let mut ost = octx
            .add_stream(codec::encoder::find(codec::Id::None))
            .map_err(media_err("mp4 stream"))?;
        ost.set_parameters(s.parameters());
        unsafe {
            (*ost.parameters().as_mut_ptr()).codec_tag = 0;
        }
        map[s.index()] = Some(ost.index());
        in_tbs[s.index()] = s.time_base();
    }
    let (w, h) = {
        let p = vst.parameters();
        unsafe { ((*p.as_ptr()).width as u32, (*p.as_ptr()).height as u32) }
    };
    write_header_faststart(&mut octx)?;
    let out_tbs: Vec<Rational> = (0..octx.nb_streams())
        .map(|i| octx.stream(i as usize).expect("stream").time_base())
        .collect();
    let seek_to = (abs_s.max(0.0) * f64::from(ff::ffi::AV_TIME_BASE)) as i64;
    if seek_to > 0 {
        ictx.seek(seek_to, ..seek_to).map_err(media_err("seek"))?;
    }
    // The clip starts at the first video keyframe at or before the start.
    let mut base: Option<f64> = None;
    let mut done = vec![false; map.len()];
    for (s, mut packet) in ictx.packets() {
        meter.tick()?;
        let i = s.index();
        let Some(o) = map[i] else { continue };
        let tb = in_tbs[i];
        let Some(ts) = packet.dts().or(packet.pts()) else {
            continue;
        };
        let secs = stream_secs(ts, tb);
        if base.is_none() {
            if i != vidx || !packet.is_key() {
                continue;
            }
            if secs > abs_s + 0.5 && seek_to > 0 {
                // The seek overshot (no index): accept this keyframe anyway.
                tracing::debug!(secs, abs_s, "first keyframe after the requested start");
            }
            base = Some(secs);
        }
        let b = base.expect("set above");
        let pts_secs = packet.pts().map(|p| stream_secs(p, tb)).unwrap_or(secs);
        if pts_secs >= abs_e {
            done[i] = true;
            if map.iter().enumerate().all(|(k, m)| m.is_none() || done[k]) {
                break;
            }
            continue;
        }
        if pts_secs < b - 0.05 {
            continue; // audio before the keyframe
        }
        let shift = (b / f64::from(tb)).round() as i64;
        packet.set_pts(packet.pts().map(|p| p - shift));
        packet.set_dts(packet.dts().map(|d| d - shift));
        packet.rescale_ts(tb, out_tbs[o]);
        packet.set_position(-1);
        packet.set_stream(o);
        packet
            .write_interleaved(&mut octx)
            .map_err(media_err("mp4 write"))?;
    }
    let Some(b) = base else {
        return Err(Error::Media("no keyframe before the clip's end".into()));
    };
    octx.write_trailer().map_err(media_err("mp4 trailer"))?;
    drop(octx);
    finish_clip(out, b - t0, CutMode::Fast, Some((w, h)))
}

fn finish_clip(out: &Path, source_start: f64, mode: CutMode, size: Option<(u32, u32)>) -> Result<ClipFile> {
    let info = probe(out, &Limits::default())?;
    let (width, height) = info
        .video
        .as_ref()
        .map(|v| (v.width, v.height))
        .or(size)
        .unwrap_or((0, 0));
    Ok(ClipFile {
        path: out.to_path_buf(),
        width,
        height,
        duration: info.duration,
        source_start,
        size_bytes: info.size_bytes,
        mode,
    })
}
