//! 16 kHz mono audio for Whisper: the whole file's, bounded while decoding, or one clip's.

use super::*;

/// The best audio stream of `ictx` (the file at `path`): its index, time base, a decoder, and
/// the graph that makes 16 kHz mono f32 of it.
fn audio_16k(
    ictx: &format::context::Input,
    path: &Path,
) -> Result<(usize, Rational, codec::decoder::Audio, filter::Graph)> {
    let st = ictx
        .streams()
        .best(media::Type::Audio)
        .ok_or_else(|| Error::NoAudio(path.into()))?;
    let (idx, tb) = (st.index(), st.time_base());
    let mut cctx =
        codec::context::Context::from_parameters(st.parameters()).map_err(media_err("audio decoder"))?;
    threading(&mut cctx);
    let dec = cctx.decoder().audio().map_err(media_err("audio decoder"))?;
    let graph = audio_graph(
        &dec,
        tb,
        "aresample=16000,aformat=sample_fmts=flt:channel_layouts=mono",
        None,
    )?;
    Ok((idx, tb, dec, graph))
}

/// One decoded frame through the 16 kHz graph of [`audio_16k`], its samples onto `out`.
fn feed_16k(
    graph: &mut filter::Graph,
    decoded: &frame::Audio,
    filtered: &mut frame::Audio,
    out: &mut Vec<f32>,
) -> Result<()> {
    graph
        .get("in")
        .expect("in")
        .source()
        .add(decoded)
        .map_err(media_err("audio filter"))?;
    while graph.get("out").expect("out").sink().frame(filtered).is_ok() {
        out.extend_from_slice(&filtered.plane::<f32>(0)[..filtered.samples()]);
    }
    Ok(())
}

/// Decodes the best audio stream to 16 kHz mono f32 for Whisper. `progress` gets 0..=1.
///
/// `max_secs` bounds what decoding produces, not what the header claims: a file whose header
/// says one minute but holds ten hours stops with [`Error::TooLarge`] once the decoded audio
/// passes the limit, so memory stays within `max_secs` × 64 kB; the wall clock of `budget`
/// bounds its time.
pub fn decode_audio_16k(
    path: &Path,
    max_secs: f64,
    progress: &dyn Fn(f32),
    cancel: &AtomicBool,
    budget: &DecodeBudget,
) -> Result<Vec<f32>> {
    let meter = Meter::new(*budget, path);
    let mut ictx = open_input(path)?;
    let duration = (ictx.duration().max(1) as f64) / f64::from(ff::ffi::AV_TIME_BASE);
    let max_samples = (max_secs.max(0.0) * 16000.0) as usize;
    let too_long = |got: usize| Error::TooLarge {
        path: path.into(),
        limit: format!(
            "it holds more than {} of audio (its header says {}), the limit is {}",
            span(got as f64 / 16000.0),
            span(duration),
            span(max_secs)
        ),
    };
    let (idx, _, mut dec, mut graph) = audio_16k(&ictx, path)?;
    let mut out: Vec<f32> =
        Vec::with_capacity(((duration * 16000.0) as usize + 16000).min(max_samples.saturating_add(16000)));
    let mut decoded = frame::Audio::empty();
    let mut filtered = frame::Audio::empty();
    let mut last_report = 0.0;
    for (s, packet) in ictx.packets() {
        meter.tick()?;
        if s.index() != idx {
            continue;
        }
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        if dec.send_packet(&packet).is_err() {
            continue; // a damaged packet: skip it, as players do
        }
        while dec.receive_frame(&mut decoded).is_ok() {
            feed_16k(&mut graph, &decoded, &mut filtered, &mut out)?;
            if out.len() > max_samples {
                return Err(too_long(out.len()));
            }
        }
        let done = out.len() as f64 / 16000.0 / duration;
        if done - last_report > 0.02 {
            last_report = done;
            progress(done.min(1.0) as f32);
        }
    }
    let _ = dec.send_eof();
    while dec.receive_frame(&mut decoded).is_ok() {
        feed_16k(&mut graph, &decoded, &mut filtered, &mut out)?;
    }
    let _ = graph.get("in").expect("in").source().flush();
    while graph.get("out").expect("out").sink().frame(&mut filtered).is_ok() {
        out.extend_from_slice(&filtered.plane::<f32>(0)[..filtered.samples()]);
    }
    if out.len() > max_samples {
        return Err(too_long(out.len()));
    }
    progress(1.0);
    if out.is_empty() {
        return Err(Error::NoAudio(path.into()));
    }
    Ok(out)
}

/// The sound of `[start, end)` seconds of `path` at 16 kHz mono, for the framing's loudness: the
/// first sample is at `start` (silence where the stream starts later). Decodes from the packet
/// before `start` to `end` only, so a clip's sound costs what the clip's length does. A file with
/// no audio stream gives [`Error::NoAudio`]. The wall clock of `budget` bounds it.
pub fn decode_audio_span(path: &Path, start: f64, end: f64, budget: &DecodeBudget) -> Result<Vec<f32>> {
    let meter = Meter::new(*budget, path);
    let mut ictx = open_input(path)?;
    let t0 = container_start(&ictx);
    let (idx, tb, mut dec, mut graph) = audio_16k(&ictx, path)?;
    let seek_to = ((start + t0 - 1.0).max(0.0) * f64::from(ff::ffi::AV_TIME_BASE)) as i64;
    if seek_to > 0 {
        ictx.seek(seek_to, ..seek_to).map_err(media_err("seek"))?;
    }
    let want = ((end - start).max(0.0) * 16000.0).ceil() as usize;
    // Samples from `first` (source seconds, the first decoded frame's time) on.
    let (mut first, mut got): (Option<f64>, Vec<f32>) = (None, Vec::new());
    let mut decoded = frame::Audio::empty();
    let mut filtered = frame::Audio::empty();
    let full = |first: Option<f64>, got: &Vec<f32>| {
        first.is_some_and(|f| f + got.len() as f64 / 16000.0 >= end + t0)
    };
    for (s, packet) in ictx.packets() {
        meter.tick()?;
        if s.index() != idx || dec.send_packet(&packet).is_err() {
            continue;
        }
        while dec.receive_frame(&mut decoded).is_ok() {
            if first.is_none() {
                first = Some(decoded.timestamp().map_or(t0, |ts| stream_secs(ts, tb)));
            }
            feed_16k(&mut graph, &decoded, &mut filtered, &mut got)?;
        }
        if full(first, &got) {
            break;
        }
    }
    let Some(first) = first else {
        return Err(Error::NoAudio(path.into()));
    };
    // Shift so that sample 0 is `start`.
    let lead = ((start + t0 - first) * 16000.0).round() as i64;
    let mut out = if lead >= 0 {
        got.get(lead as usize..).unwrap_or_default().to_vec()
    } else {
        let mut v = vec![0.0; (-lead) as usize];
        v.extend_from_slice(&got);
        v
    };
    out.truncate(want);
    Ok(out)
}
