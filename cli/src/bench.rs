//! `viralclip bench`: throughput of the scoring model (texts/s) at fixed batch × token shapes,
//! and optionally cutting and transcription speed on a real video. One JSON line per case.

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use viralclip_engine::device::{self, DeviceChoice, Precision};
use viralclip_engine::model::ops::{attention, ffn, layout, norm, softmax, switches};
use viralclip_engine::model::{artifact, checks, BertConfig, Mode, MultiTask};

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Encoder directories to measure (e.g. the multilingual-e5-small fixture).
    #[arg(long)]
    pub encoder: Vec<PathBuf>,
    /// Also measure the ruBert-base shape (12 × 768, vocab 120,138) with random weights.
    #[arg(long)]
    pub rubert_shape: bool,
    /// Shapes as BATCHxTOKENS.
    #[arg(long, value_delimiter = ',', default_value = "1x128,8x128,32x32,32x128")]
    pub shapes: Vec<String>,
    /// Precisions to run (f32, bf16, f16).
    #[arg(long, value_delimiter = ',', default_value = "f32")]
    pub precision: Vec<Precision>,
    #[arg(long, default_value = "cpu")]
    pub device: DeviceChoice,
    /// Seconds to spend per case (at least 2 runs).
    #[arg(long, default_value_t = 3.0)]
    pub secs: f64,
    /// A video: time cutting a 30 s clip in each mode.
    #[arg(long)]
    pub video: Option<PathBuf>,
    /// With --video: also time the shorts path on the same 30 s clip: the framing analysis (YuNet
    /// on 5 sampled frames a second) and the captioned 9:16 encode, and YuNet alone per frame.
    /// The face model's file; default: fetched from the hub once.
    #[arg(long, env = "VIRALCLIP_FACE_MODEL")]
    pub face_model: Option<PathBuf>,
    /// With --video: caption the 9:16 clip with these subtitles' words (default: a Russian
    /// sentence repeated at 2.5 words a second, what speech gives).
    #[arg(long)]
    pub subs: Option<PathBuf>,
    /// Keep the shorts case's clip and its clip.ass here (default: a temporary directory).
    #[arg(long)]
    pub shorts_out: Option<PathBuf>,
    /// Skip the shorts cases (--video then times the 16:9 cuts and Whisper only).
    #[arg(long)]
    pub no_shorts: bool,
    /// A Whisper model (a ggml file or a model name): real-time factor on --video's audio.
    #[arg(long)]
    pub whisper: Option<viralclip_engine::whisper_model::WhisperModel>,
    #[arg(long)]
    pub lang: Option<String>,
    /// Also time training steps of the seed's stages (heads only; top 2 layers with PCGrad) at
    /// batch 16 × 128 tokens, fp32 master weights (TF32 products on CUDA).
    #[arg(long)]
    pub train_steps: bool,
    /// With --train-steps: also estimate the schedule on these rows' real lengths (the trainer
    /// pads each batch to its own longest text; the seed padded all to 128), tokenised by the
    /// first --encoder. Same syntax as `train --data`.
    #[arg(long)]
    pub train_data: Vec<viralclip_trainer::data::Source>,
    /// Also break one encoder layer down by operation at this BATCHxTOKENS shape (per precision).
    #[arg(long)]
    pub profile: Option<String>,
    /// Skip the scoring-throughput cases.
    #[arg(long)]
    pub no_score: bool,
}

fn parse_shape(s: &str) -> Result<(usize, usize)> {
    let (b, t) = s
        .split_once('x')
        .ok_or_else(|| anyhow::anyhow!("shape {s:?} is not BATCHxTOKENS"))?;
    Ok((b.parse()?, t.parse()?))
}

fn random_model(config: &BertConfig, dev: &Device, dtype: DType) -> Result<MultiTask> {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, dtype, dev);
    let mut m = MultiTask::load(vb, config, 28)?;
    m.prepare_inference()?;
    Ok(m)
}

fn encoder_model(dir: &std::path::Path, dev: &Device, dtype: DType) -> Result<(MultiTask, BertConfig)> {
    // Untrained heads over the encoder: speed does not depend on the head weights.
    let tmp = tempfile::tempdir()?;
    artifact::init(dir, "bench", tmp.path(), 0)?;
    let loaded = artifact::load(tmp.path(), Some(dir), dev, dtype)?;
    Ok((loaded.model, loaded.encoder.config))
}

fn time_case(
    model: &MultiTask,
    vocab: usize,
    b: usize,
    t: usize,
    dev: &Device,
    budget: f64,
) -> Result<(f64, usize)> {
    let mut seed = 12345u64;
    let ids: Vec<u32> = (0..b * t)
        .map(|_| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 33) as usize % (vocab - 10) + 5) as u32
        })
        .collect();
    let ids = Tensor::from_vec(ids, (b, t), dev)?;
    let mask = Tensor::ones((b, t), DType::U32, dev)?;
    let run = || -> Result<()> {
        let out = model.forward(&ids, &mask, Mode::Inference)?;
        out.emotions.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()?;
        Ok(())
    };
    run()?; // warm-up
    let start = Instant::now();
    let mut runs = 0;
    while runs < 2 || start.elapsed() < Duration::from_secs_f64(budget) {
        run()?;
        runs += 1;
    }
    Ok((start.elapsed().as_secs_f64() / runs as f64, runs))
}

pub fn run(a: BenchArgs) -> Result<()> {
    let (dev, note) = device::open(a.device)?;
    if let Some(n) = note {
        eprintln!("viralclip: {n}");
    }
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let shapes: Vec<(usize, usize)> = a.shapes.iter().map(|s| parse_shape(s)).collect::<Result<_>>()?;
    let mut models: Vec<(String, Option<PathBuf>)> = a
        .encoder
        .iter()
        .map(|p| {
            (
                p.file_name().unwrap_or_default().to_string_lossy().into_owned(),
                Some(p.clone()),
            )
        })
        .collect();
    if a.rubert_shape {
        models.push(("rubert-base-shape".into(), None));
    }
    let mut checked = std::collections::HashSet::new();
    for (name, path) in &models {
        for prec in &a.precision {
            let dtype = prec.dtype(&dev);
            prec.configure(&dev);
            let (model, config) = match path {
                Some(p) => encoder_model(p, &dev, dtype)?,
                None => {
                    let c = BertConfig::rubert_base();
                    (random_model(&c, &dev, dtype)?, c)
                }
            };
            if checked.insert(dtype) {
                // The experimental fused passes against candle's operations, in this dtype.
                // A failing check is reported, not fatal: the cases after it still run.
                for (case, check) in [
                    ("attention_check", checks::check_attention(&dev, dtype)),
                    ("gemm_gelu_check", checks::check_gemm_gelu(&dev, dtype)),
                    (
                        "packed_attention_check",
                        checks::check_packed_attention(&dev, dtype),
                    ),
                ] {
                    let mut line = serde_json::json!({
                        "case": case, "device": device::name(&dev),
                        "dtype": format!("{prec:?}").to_lowercase(),
                    });
                    match check {
                        Ok((diff, fused)) => {
                            line["fused"] = fused.into();
                            line["max_rel_diff"] = diff.into();
                        }
                        Err(e) => line["error"] = e.to_string().into(),
                    }
                    println!("{line}");
                }
            }
            if let Some(shape) = &a.profile {
                let (b, t) = parse_shape(shape)?;
                profile_layer(name, &config, &dev, dtype, b, t)?;
            }
            if a.no_score {
                continue;
            }
            for &(b, t) in &shapes {
                let (secs, runs) = time_case(&model, config.vocab_size, b, t, &dev, a.secs)?;
                println!(
                    "{}",
                    serde_json::json!({
                        "case": "score", "engine": "viralclip", "model": name,
                        "device": device::name(&dev), "threads": threads,
                        "dtype": format!("{prec:?}").to_lowercase(), "batch": b, "tokens": t,
                        "texts_per_s": (b as f64 / secs * 10.0).round() / 10.0,
                        "ms_per_batch": (secs * 1e5).round() / 100.0, "runs": runs,
                        "passes": switches::scoring_passes(&dev, dtype),
                    })
                );
            }
        }
    }
    // Token lengths of the --train-data rows, as the trainer would cut them (at most 128).
    let data_lens: Option<Vec<usize>> = if a.train_steps && !a.train_data.is_empty() {
        let dir = a
            .encoder
            .first()
            .ok_or_else(|| anyhow::anyhow!("--train-data needs an --encoder to tokenise with"))?;
        let files = viralclip_engine::model::EncoderFiles::open(dir)?;
        let tok = files.tokenizer(128)?;
        let prefix = artifact::Manifest::text_prefix_for(&dir.to_string_lossy());
        let mut texts = Vec::new();
        for src in &a.train_data {
            let (rows, _) = viralclip_trainer::data::load(src)?;
            texts.extend(rows.into_iter().map(|r| r.text));
        }
        let ids = viralclip_engine::scorer::tokenize(&tok, &prefix, &texts)?;
        Some(ids.iter().map(Vec::len).collect())
    } else {
        None
    };
    if a.train_steps {
        // The optimiser's in-place passes against candle's operations, on this device.
        let (diff, in_place) = viralclip_trainer::optim::AdamW::check_in_place(&dev)?;
        println!(
            "{}",
            serde_json::json!({
                "case": "adamw_check", "device": device::name(&dev), "in_place": in_place,
                "max_diff": diff, "fused_cuda": switches::fused_cuda(),
            })
        );
        // The training path's fused passes against candle's operations, on this device, in f32
        // (no TF32 products): the optimiser's one-pass step (PCGrad, clipping, AdamW over all
        // tensors); the layers' operations with their backward passes (gradients of every
        // parameter of a small model); and training by hand as the trainer runs it (the layers'
        // and heads' taped passes, the split backward pass). A check that fails to run says so
        // in its line and the timings go on.
        Precision::F32.configure(&dev);
        use viralclip_engine::model::checks::Check;
        let step = viralclip_trainer::train::check_fused_step(&dev).map(|(max_diff, fused)| Check {
            max_diff,
            worst: String::new(),
            fused,
        });
        for (case, check) in [
            ("fused_step_check", step.map_err(anyhow::Error::from)),
            (
                "train_ops_check",
                checks::training_ops(&dev).map_err(anyhow::Error::from),
            ),
            (
                "by_hand_check",
                checks::training_by_hand(&dev).map_err(anyhow::Error::from),
            ),
        ] {
            let mut line = serde_json::json!({
                "case": case, "device": device::name(&dev),
                "fused_cuda": switches::fused_cuda(), "fused_train_cuda": switches::fused_train_cuda(),
            });
            match check {
                Ok(c) => {
                    line["fused"] = c.fused.into();
                    line["max_diff"] = c.max_diff.into();
                    if !c.worst.is_empty() {
                        line["worst"] = c.worst.into();
                    }
                }
                Err(e) => line["error"] = format!("{e:#}").into(),
            }
            println!("{line}");
        }
        for (name, path) in &models {
            let config = match path {
                Some(p) => viralclip_engine::model::EncoderFiles::open(p)?.config,
                None => BertConfig::rubert_base(),
            };
            let t = Instant::now();
            let steps = viralclip_trainer::bench::step_times(&config, &dev, 16, 128, 2, a.secs)?;
            let ms = |steps: &[viralclip_trainer::bench::StepTiming], stage: &str| {
                steps
                    .iter()
                    .find(|s| s.stage == stage)
                    .map_or(0.0, |s| s.ms_per_step)
            };
            // The seed's schedule: 2 epochs heads-only + 3 epochs top-2 with PCGrad, 3,067 steps each.
            let per_epoch = 3067.0;
            let ours = ms(&steps, "cache") * per_epoch / 1e3
                + (2.0 * ms(&steps, "heads") + 3.0 * ms(&steps, "top2+pcgrad")) * per_epoch / 1e3;
            let seed_like = (2.0 * (ms(&steps, "heads") + ms(&steps, "cache"))
                + 3.0 * ms(&steps, "top2+pcgrad+frozen-forward"))
                * per_epoch
                / 1e3;
            let print_steps = |tokens: usize, steps: &[viralclip_trainer::bench::StepTiming]| {
                for s in steps {
                    println!(
                        "{}",
                        serde_json::json!({
                            "case": "train_step", "engine": "viralclip", "model": name, "device": device::name(&dev),
                            "threads": threads, "dtype": "f32 (tf32 on cuda)", "batch": 16, "tokens": tokens,
                            "stage": s.stage, "ms_per_step": (s.ms_per_step * 100.0).round() / 100.0, "runs": s.steps,
                            "tensors_per_step": s.tensors_per_step.round(),
                        })
                    );
                }
            };
            print_steps(128, &steps);
            println!(
                "{}",
                serde_json::json!({
                    "case": "train_schedule", "engine": "viralclip", "model": name, "device": device::name(&dev),
                    "steps_per_epoch": per_epoch, "epochs": "2 heads + 3 top-2 with PCGrad",
                    "estimate_s_cached": (ours * 10.0).round() / 10.0,
                    "estimate_s_seed_loop": (seed_like * 10.0).round() / 10.0,
                    "bench_wall_s": (t.elapsed().as_secs_f64() * 10.0).round() / 10.0,
                })
            );
            if let Some(lens) = &data_lens {
                // The same schedule (3,067 batches of 16 an epoch) on batches shaped like the
                // data's: step times measured at a few lengths, interpolated for each batch.
                let batches = viralclip_trainer::bench::batch_lengths(lens, 16);
                let mut at = vec![(128, steps.clone())];
                for g in [16, 32, 64] {
                    at.push((
                        g,
                        viralclip_trainer::bench::step_times(&config, &dev, 16, g, 2, a.secs)?,
                    ));
                }
                let epoch = |stage: &str| {
                    let pts: Vec<(usize, f64)> = at.iter().map(|(l, s)| (*l, ms(s, stage))).collect();
                    let total: f64 = batches
                        .iter()
                        .map(|&l| viralclip_trainer::bench::time_at(&pts, l))
                        .sum();
                    total / batches.len() as f64 * per_epoch / 1e3
                };
                let dynamic = epoch("cache") + 2.0 * epoch("heads") + 3.0 * epoch("top2+pcgrad");
                let dynamic_ops =
                    epoch("cache") + 2.0 * epoch("heads") + 3.0 * epoch("top2+pcgrad/candle-ops");
                let mean_tokens = batches.iter().sum::<usize>() as f64 / batches.len() as f64;
                for (l, s) in &at[1..] {
                    print_steps(*l, s);
                }
                println!(
                    "{}",
                    serde_json::json!({
                        "case": "train_schedule_on_data", "engine": "viralclip", "model": name, "device": device::name(&dev),
                        "rows": lens.len(), "mean_padded_tokens": (mean_tokens * 10.0).round() / 10.0,
                        "steps_per_epoch": per_epoch, "epochs": "2 heads + 3 top-2 with PCGrad",
                        "estimate_s_cached": (dynamic * 10.0).round() / 10.0,
                        "estimate_s_cached_candle_ops": (dynamic_ops * 10.0).round() / 10.0,
                        "estimate_s_seed_padding": (ours * 10.0).round() / 10.0,
                    })
                );
            }
        }
    }
    #[cfg(feature = "media")]
    if let Some(video) = &a.video {
        let info = viralclip_engine::media::probe(video, &Default::default())?;
        let (s, e) = (
            info.duration * 0.3,
            info.duration * 0.3 + 30.0f64.min(info.duration * 0.5),
        );
        let tmp = tempfile::tempdir()?;
        for mode in [
            viralclip_engine::media::CutMode::Precise,
            viralclip_engine::media::CutMode::Fast,
        ] {
            let t = Instant::now();
            let c = viralclip_engine::media::cut(video, s, e, mode, &tmp.path().join("c.mp4"))?;
            let v = info.video.as_ref();
            println!(
                "{}",
                serde_json::json!({
                    "case": "cut", "mode": mode, "clip_secs": (c.duration * 100.0).round() / 100.0,
                    "source": format!("{}x{}", v.map_or(0, |v| v.width), v.map_or(0, |v| v.height)),
                    "wall_s": (t.elapsed().as_secs_f64() * 100.0).round() / 100.0,
                })
            );
        }
        #[cfg(feature = "faces")]
        if !a.no_shorts {
            shorts(
                video,
                &info,
                (s, e),
                a.face_model.as_deref(),
                a.subs.as_deref(),
                a.shorts_out.as_deref(),
            )?;
        }
        #[cfg(feature = "whisper")]
        if let Some(w) = &a.whisper {
            use viralclip_engine::transcribe::Transcriber;
            let t = Instant::now();
            let samples = viralclip_engine::media::decode_audio_16k(
                video,
                f64::INFINITY,
                &|_| {},
                &Default::default(),
                &Default::default(),
            )?;
            let decode = t.elapsed().as_secs_f64();
            let mut whisper = viralclip_engine::transcribe::Whisper::load(&w.resolve()?)?;
            let t = Instant::now();
            let speech = whisper.transcribe(
                &samples,
                a.lang.as_deref(),
                std::sync::Arc::new(|_| {}),
                Default::default(),
                None,
            )?;
            let secs = t.elapsed().as_secs_f64();
            let audio = samples.len() as f64 / 16000.0;
            println!(
                "{}",
                serde_json::json!({
                    "case": "whisper", "model": whisper.name(), "audio_s": (audio * 10.0).round() / 10.0,
                    "decode_s": (decode * 100.0).round() / 100.0, "transcribe_s": (secs * 100.0).round() / 100.0,
                    "real_time_factor": (secs / audio * 1000.0).round() / 1000.0, "cues": speech.cues.len(),
                    "language": speech.language, "threads": whisper.threads(), "gpu": whisper.gpu(),
                    // For the word error beside faster-whisper's (bench/whisper_bench.py).
                    "text": speech.cues.iter().map(|c| c.text.as_str()).collect::<Vec<_>>().join(" "),
                })
            );
        }
    }
    Ok(())
}

/// The shorts path on the clip `(s, e)` of `video`, each stage alone as the pipeline runs it: the
/// framing analysis (sampling, YuNet, the plan), the captioned 9:16 encode along that plan, and
/// YuNet per frame on one 640-px sample (the figure to set beside ONNX Runtime's,
/// `bench/yunet_ort.py`). One JSON line each, with the share of the clip's duration.
#[cfg(all(feature = "media", feature = "faces"))]
fn shorts(
    video: &std::path::Path,
    info: &viralclip_engine::media::MediaInfo,
    (s, e): (f64, f64),
    face_model: Option<&std::path::Path>,
    subs: Option<&std::path::Path>,
    keep: Option<&std::path::Path>,
) -> Result<()> {
    use viralclip_engine::captions::{self, CaptionStyle, Captions};
    use viralclip_engine::format::Format;
    use viralclip_engine::media::{self, CutMode};
    let Some(v) = info.video.as_ref() else {
        anyhow::bail!("{}: no video stream for the shorts cases", video.display());
    };
    let model = viralclip_engine::faces::resolve_model(face_model)?;
    let mut det = viralclip_engine::faces::load(&model)?;
    let g = Format::Vertical.geometry(v.width, v.height);
    let clip = e - s;
    let round = |x: f64| (x * 100.0).round() / 100.0;
    let line = |case: &str, secs: f64, extra: serde_json::Value| {
        let mut j = serde_json::json!({
            "case": case, "engine": "viralclip", "source": format!("{}x{}", v.width, v.height),
            "clip_secs": round(clip), "wall_s": round(secs), "share_of_clip": (secs / clip * 1000.0).round() / 1000.0,
        });
        if let (Some(j), serde_json::Value::Object(x)) = (j.as_object_mut(), extra) {
            j.extend(x);
        }
        println!("{j}");
    };

    let t = Instant::now();
    let plan = viralclip_engine::framing::plan_clip(
        &media::Ffmpeg::default(),
        video,
        (s, e),
        info.audio.is_some(),
        g,
        det.as_mut(),
        &viralclip_engine::reframe::Reframe::default(),
    )?;
    line(
        "framing",
        t.elapsed().as_secs_f64(),
        serde_json::json!({ "samples_per_sec": viralclip_engine::framing::SAMPLES_PER_SEC, "segments": plan.segments.len(), "detector": det.engine() }),
    );

    let words = match subs {
        Some(p) => captions::spread_words(&viralclip_engine::subtitle::read_file(p)?.cues, s, e),
        None => {
            let text = "Сегодня мы поговорим о том, что случилось на самом деле, и это невероятно.";
            let per = 0.4;
            text.split_whitespace()
                .cycle()
                .take((clip / per) as usize)
                .enumerate()
                .map(|(i, w)| captions::Word {
                    text: w.into(),
                    start: i as f64 * per,
                    end: i as f64 * per + per * 0.9,
                })
                .collect()
        }
    };
    let tmp = tempfile::tempdir()?;
    let dir = match keep {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d
        }
        None => tmp.path(),
    };
    let ass = dir.join("clip.ass");
    std::fs::write(
        &ass,
        captions::ass(
            &words,
            Captions::Words,
            CaptionStyle::Bold,
            (g.out_w, g.out_h),
            viralclip_engine::pipeline::CAPTION_FONT,
        ),
    )?;
    let shape = viralclip_engine::shape::Shape {
        geometry: g,
        plan,
        captions: Some(ass),
        fonts_dir: None,
    };
    let t = Instant::now();
    let c = media::cut_shaped(
        video,
        (s, e),
        CutMode::Precise,
        Some(shape),
        &dir.join("clip.mp4"),
        &Default::default(),
    )?;
    line(
        "shorts_encode",
        t.elapsed().as_secs_f64(),
        serde_json::json!({ "format": "9:16", "out": format!("{}x{}", c.width, c.height), "captions": "words", "words": words.len() }),
    );

    // YuNet alone: one sampled frame, the same size the framing gives it, over and over.
    let mut frame: Option<(Vec<u8>, u32, u32)> = None;
    media::sample_frames(
        video,
        (s + clip / 2.0, e),
        1.0,
        viralclip_engine::framing::SAMPLE_EDGE,
        &Default::default(),
        |_, rgb, w, h| {
            if frame.is_none() {
                frame = Some((rgb.to_vec(), w, h));
            }
            Ok(())
        },
    )?;
    let Some((rgb, w, h)) = frame else {
        anyhow::bail!("{}: no frame to time the face detector on", video.display());
    };
    det.detect(&rgb, w, h)?; // warm-up
    let (t, mut n) = (Instant::now(), 0u32);
    while n < 5 || t.elapsed() < Duration::from_secs(3) {
        det.detect(&rgb, w, h)?;
        n += 1;
    }
    let ms = t.elapsed().as_secs_f64() * 1000.0 / f64::from(n);
    println!(
        "{}",
        serde_json::json!({
            "case": "face_detect", "engine": format!("viralclip ({})", det.engine()), "model": model.file_name().map(|f| f.to_string_lossy().into_owned()),
            "frame": format!("{w}x{h}"), "input": format!("{0}x{0}", viralclip_engine::faces::YUNET_SIDE),
            "ms_per_frame": (ms * 100.0).round() / 100.0, "runs": n,
        })
    );
    Ok(())
}

/// Times each operation of one encoder layer's scoring path at `b` × `t` (random activations,
/// the layer's real shapes), synchronising the device after each: where the time goes.
fn profile_layer(name: &str, c: &BertConfig, dev: &Device, dtype: DType, b: usize, t: usize) -> Result<()> {
    let (h, heads, inter) = (c.hidden_size, c.num_attention_heads, c.intermediate_size);
    let d = h / heads;
    let r =
        |shape: &[usize]| -> Result<Tensor> { Ok(Tensor::randn(0f32, 0.5, shape, dev)?.to_dtype(dtype)?) };
    let x = r(&[b * t, h])?;
    let w_qkv = r(&[3 * h, h])?;
    let b_qkv = r(&[3 * h])?;
    let w_o = r(&[h, h])?;
    let b_h = r(&[h])?;
    let w_i = r(&[inter, h])?;
    let b_i = r(&[inter])?;
    let w_2 = r(&[h, inter])?;
    let ln_w = r(&[h])?;
    let qkv = x.matmul(&w_qkv.t()?)?;
    let qkv_b = qkv.broadcast_add(&b_qkv)?;
    let split = qkv_b
        .reshape((b, t, 3, heads, d))?
        .permute((2, 0, 3, 1, 4))?
        .contiguous()?;
    let (q, k, v) = (split.get(0)?, split.get(1)?, split.get(2)?);
    let mask = Tensor::zeros((b, 1, 1, t), dtype, dev)?;
    let scores = q.matmul(&k.t()?)?;
    let masked = scores.broadcast_add(&mask)?;
    let probs = candle_nn::ops::softmax_last_dim(&masked)?;
    let ctx = probs.matmul(&v)?;
    let ctx2 = ctx.transpose(1, 2)?.contiguous()?.reshape((b * t, h))?;
    let inner = x.matmul(&w_i.t()?)?;
    let inner_b = inner.broadcast_add(&b_i)?;
    let gelu = inner_b.gelu_erf()?;
    // The scoring path's fused passes (model::ops), timed beside the ops they replace.
    let mask2 = Tensor::zeros((b, t), dtype, dev)?;
    let packed = norm::pack_add_norm(&b_h, &ln_w, &b_h)?;
    type Op<'a> = (&'a str, Box<dyn Fn() -> candle_core::Result<Tensor> + 'a>);
    let ops: Vec<Op> = vec![
        ("qkv_gemm", Box::new(|| x.matmul(&w_qkv.t()?))),
        ("qkv_bias", Box::new(|| qkv.broadcast_add(&b_qkv))),
        (
            "qkv_split_copy",
            Box::new(|| {
                qkv_b
                    .reshape((b, t, 3, heads, d))?
                    .permute((2, 0, 3, 1, 4))?
                    .contiguous()
            }),
        ),
        ("scores_gemm", Box::new(|| q.matmul(&k.t()?))),
        ("mask_add", Box::new(|| scores.broadcast_add(&mask))),
        ("softmax", Box::new(|| candle_nn::ops::softmax_last_dim(&masked))),
        ("context_gemm", Box::new(|| probs.matmul(&v))),
        (
            "context_merge_copy",
            Box::new(|| ctx.transpose(1, 2)?.contiguous()),
        ),
        ("out_gemm", Box::new(|| ctx2.matmul(&w_o.t()?))),
        ("bias_residual_add", Box::new(|| x.broadcast_add(&b_h)? + &x)),
        (
            "layer_norm",
            Box::new(|| candle_nn::ops::layer_norm(&x, &ln_w, &b_h, 1e-12)),
        ),
        ("ffn_in_gemm", Box::new(|| x.matmul(&w_i.t()?))),
        ("ffn_bias", Box::new(|| inner.broadcast_add(&b_i))),
        ("gelu", Box::new(|| inner_b.gelu_erf())),
        ("ffn_out_gemm", Box::new(|| gelu.matmul(&w_2.t()?))),
        ("bias_residual_add", Box::new(|| x.broadcast_add(&b_h)? + &x)),
        (
            "layer_norm",
            Box::new(|| candle_nn::ops::layer_norm(&x, &ln_w, &b_h, 1e-12)),
        ),
        (
            "fused_qkv_bias_split",
            Box::new(|| layout::qkv_split(&qkv, &b_qkv, b, t, heads, d)),
        ),
        (
            "fused_mask_softmax",
            Box::new(|| softmax::mask_softmax(&scores, &mask2)),
        ),
        ("fused_merge_heads", Box::new(|| layout::merge_heads(&ctx))),
        ("fused_bias_gelu", Box::new(|| ffn::bias_gelu(&inner, &b_i))),
        (
            "fused_bias_residual_norm",
            Box::new(|| norm::add_norm(&x, &x, &packed, 1e-12)),
        ),
    ];
    // The one-kernel attention (where it runs: bf16/f16 on a recent GPU, VIRALCLIP_FUSED_ATTN=1),
    // replacing the QKV split, both attention products, the softmax and the merge.
    // And the FFN's first GEMM with cuBLASLt's bias + GELU epilogue (VIRALCLIP_GEMM_GELU=1),
    // replacing the plain GEMM and the fused bias + GELU.
    let mut ops = ops;
    // A 16-bit model's scores in f32 (attention::attention_probs): their GEMM and the softmax,
    // instead of scores_gemm and fused_mask_softmax.
    if switches::scores_in_f32(dtype) {
        ops.push((
            "fused_scores_softmax",
            Box::new(|| attention::attention_probs(&q, &k, &mask2)),
        ));
    }
    let fused_attn = attention::attention_fits(&qkv, t, d);
    if fused_attn {
        ops.push((
            "fused_attention",
            Box::new(|| attention::attention(&qkv, &b_qkv, &mask2, b, t, t, heads, d)),
        ));
    }
    // Attention read in place from the packed projection (16-bit with f32 scores, CUDA): the
    // projection with its bias in the GEMM's epilogue, then both products through pointer tables.
    if !fused_attn && attention::packed_attention_fits(&x) {
        ops.push((
            "fused_packed_attention",
            Box::new(|| {
                let qkv = ffn::gemm_bias(&x, &w_qkv, &b_qkv)?;
                attention::packed_attention(&qkv, &mask2, b, t, t, heads, d)
            }),
        ));
    }
    let gemm_gelu = ffn::gemm_gelu_fits(&x);
    if gemm_gelu {
        ops.push(("fused_gemm_gelu", Box::new(|| ffn::gemm_gelu(&x, &w_i, &b_i))));
    }
    let mut rows = Vec::new();
    for (op, f) in &ops {
        // An experimental pass that fails is reported and left out of the totals.
        let first = f().and_then(|_| dev.synchronize());
        if let (Err(e), "fused_attention" | "fused_gemm_gelu" | "fused_packed_attention") = (&first, *op) {
            println!(
                "{}",
                serde_json::json!({"case": "profile_layer", "model": name, "op": op, "error": e.to_string()})
            );
            continue;
        }
        first?;
        let start = Instant::now();
        let mut n = 0;
        while n < 5 || start.elapsed().as_secs_f64() < 0.2 {
            f()?;
            n += 1;
        }
        dev.synchronize()?;
        rows.push((*op, start.elapsed().as_secs_f64() * 1e6 / n as f64));
    }
    // The total is the unfused layer; the fused_* rows are what replaces parts of it.
    let total: f64 = rows
        .iter()
        .filter(|r| !r.0.starts_with("fused_"))
        .map(|r| r.1)
        .sum();
    // The layer as the scoring path runs it: the fused passes instead of what they replace
    // (bias+residual+norm twice a layer).
    let replaced = [
        "qkv_bias",
        "qkv_split_copy",
        "mask_add",
        "softmax",
        "context_merge_copy",
        "ffn_bias",
        "gelu",
        "bias_residual_add",
        "layer_norm",
    ];
    let f32_scores = rows.iter().any(|r| r.0 == "fused_scores_softmax");
    let fused_total: f64 = rows
        .iter()
        .map(|(op, us)| match *op {
            "fused_bias_residual_norm" => 2.0 * us,
            "fused_attention" | "fused_gemm_gelu" | "fused_packed_attention" => 0.0,
            "scores_gemm" | "fused_mask_softmax" if f32_scores => 0.0,
            op if replaced.contains(&op) => 0.0,
            _ => *us,
        })
        .sum();
    // The same with the passes that ran instead of what they replace ("experimental" in the JSON
    // line: the packed attention and the GEMM + GELU epilogue, on by default on CUDA, and the
    // opt-in one-kernel attention). `fused_us` is the fused kernels' layer without them.
    let us = |name: &str| rows.iter().find(|r| r.0 == name).map_or(0.0, |r| r.1);
    let mut experimental = Vec::new();
    let mut experimental_total = fused_total;
    let ran = |name: &str| rows.iter().any(|r| r.0 == name);
    if ran("fused_attention") {
        experimental.push("fused_attention");
        let replaced = [
            "fused_qkv_bias_split",
            if f32_scores {
                "fused_scores_softmax"
            } else {
                "scores_gemm"
            },
            if f32_scores { "" } else { "fused_mask_softmax" },
            "context_gemm",
            "fused_merge_heads",
        ];
        experimental_total += us("fused_attention") - replaced.iter().map(|op| us(op)).sum::<f64>();
    }
    if ran("fused_packed_attention") {
        experimental.push("fused_packed_attention");
        let replaced = [
            "qkv_gemm",
            "fused_qkv_bias_split",
            "fused_scores_softmax",
            "context_gemm",
            "fused_merge_heads",
        ];
        experimental_total += us("fused_packed_attention") - replaced.iter().map(|op| us(op)).sum::<f64>();
    }
    if ran("fused_gemm_gelu") {
        experimental.push("fused_gemm_gelu");
        experimental_total += us("fused_gemm_gelu") - us("ffn_in_gemm") - us("fused_bias_gelu");
    }
    let experimental_total = (!experimental.is_empty()).then_some(experimental_total);
    for (op, us) in &rows {
        println!(
            "{}",
            serde_json::json!({
                "case": "profile_layer", "model": name, "device": device::name(dev),
                "dtype": format!("{dtype:?}").to_lowercase(), "batch": b, "tokens": t, "op": op,
                "us": (us * 10.0).round() / 10.0, "share": (us / total * 1000.0).round() / 1000.0,
            })
        );
    }
    println!(
        "{}",
        serde_json::json!({
            "case": "profile_layer_total", "model": name, "device": device::name(dev),
            "dtype": format!("{dtype:?}").to_lowercase(), "batch": b, "tokens": t,
            "us": total.round(), "layers": c.num_hidden_layers,
            "texts_per_s_if_serial": (b as f64 / (total * c.num_hidden_layers as f64 / 1e6)).round(),
            "fused_us": fused_total.round(),
            "fused_texts_per_s_if_serial": (b as f64 / (fused_total * c.num_hidden_layers as f64 / 1e6)).round(),
            "experimental": experimental,
            "passes": switches::scoring_passes(dev, dtype),
            "experimental_us": experimental_total.map(f64::round),
            "experimental_texts_per_s_if_serial":
                experimental_total.map(|us| (b as f64 / (us * c.num_hidden_layers as f64 / 1e6)).round()),
        })
    );
    Ok(())
}
