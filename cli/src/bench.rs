//! `viralclip bench`: throughput of the scoring model (texts/s) at fixed batch × token shapes,
//! and optionally cutting and transcription speed on a real video. One JSON line per case.

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use viralclip_engine::device::{self, DeviceChoice, Precision};
use viralclip_engine::model::{artifact, BertConfig, Mode, MultiTask};

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
    /// A Whisper model: real-time factor on --video's audio.
    #[arg(long)]
    pub whisper: Option<PathBuf>,
    #[arg(long)]
    pub lang: Option<String>,
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
    Ok(MultiTask::load(vb, config, 28)?)
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
                    })
                );
            }
        }
    }
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
        if let Some(w) = &a.whisper {
            use viralclip_engine::transcribe::Transcriber;
            let t = Instant::now();
            let samples = viralclip_engine::media::decode_audio_16k(video, &|_| {}, &Default::default())?;
            let decode = t.elapsed().as_secs_f64();
            let mut whisper = viralclip_engine::transcribe::Whisper::load(w)?;
            let t = Instant::now();
            let speech = whisper.transcribe(
                &samples,
                a.lang.as_deref(),
                std::sync::Arc::new(|_| {}),
                Default::default(),
            )?;
            let secs = t.elapsed().as_secs_f64();
            let audio = samples.len() as f64 / 16000.0;
            println!(
                "{}",
                serde_json::json!({
                    "case": "whisper", "model": whisper.name(), "audio_s": (audio * 10.0).round() / 10.0,
                    "decode_s": (decode * 100.0).round() / 100.0, "transcribe_s": (secs * 100.0).round() / 100.0,
                    "real_time_factor": (secs / audio * 1000.0).round() / 1000.0, "cues": speech.cues.len(),
                    "language": speech.language,
                })
            );
        }
    }
    Ok(())
}
