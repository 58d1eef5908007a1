//! `viralclip`: the command line. `clip` turns a video (or subtitles) into clips of its best
//! moments; `score` prints the model's probabilities for texts; `model` creates or imports model
//! artifacts. Errors are one line on stderr with a non-zero exit code, never a panic.

mod args;
mod bench;
mod eval;
mod train;

use anyhow::{Context, Result};
use args::{Cli, ClipArgs, Command, ModelArgs, ModelCommand, ModelOpts, ScoreArgs};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;
use viralclip_engine::pipeline::{ClipRequest, Engine, Progress, Stage};
use viralclip_engine::scorer::{BertScorer, TextScorer};
use viralclip_engine::{device, model, Error};

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let res = match cli.command {
        Command::Clip(a) => clip(a),
        Command::Score(a) => score(a),
        Command::Model(a) => model_cmd(a),
        Command::Bench(a) => bench::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Train(a) => train::run(a),
        Command::Bot(c) => bot(c),
        Command::Serve(c) => serve(c),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("viralclip: error: {}", one_line(&format!("{e:#}")));
            ExitCode::from(exit_code(&e))
        }
    }
}

/// `text` on one line: control characters (a newline in a file's name) written as escapes,
/// so an error is always the one line scripts and the bot's logs expect.
fn one_line(text: &str) -> String {
    text.chars()
        .flat_map(|c| match c.is_control() {
            true => c.escape_default().collect::<Vec<char>>(),
            false => vec![c],
        })
        .collect()
}

/// 2: the input is bad; 3: the model or Whisper is missing or broken; 1: anything else.
fn exit_code(e: &anyhow::Error) -> u8 {
    match e.downcast_ref::<Error>() {
        Some(e) if e.is_bad_input() => 2,
        Some(e) if e.is_config() => 3,
        Some(Error::Transcription(_)) => 3,
        _ => 1,
    }
}

/// Where the default model lives: $VIRALCLIP_MODEL, ./assets/model, or assets/model of the
/// checkout the binary was built in.
fn default_model() -> Option<PathBuf> {
    let mut candidates = vec![PathBuf::from("assets/model")];
    if let Ok(exe) = std::env::current_exe() {
        // target/{debug,release}/viralclip → the checkout's assets/model
        if let Some(root) = exe.parent().and_then(Path::parent).and_then(Path::parent) {
            candidates.push(root.join("assets/model"));
        }
    }
    candidates
        .into_iter()
        .find(|p| p.join(model::artifact::MANIFEST_FILE).is_file())
}

fn load_scorer(opts: &ModelOpts) -> Result<(BertScorer, f64)> {
    let dir = match &opts.model {
        Some(d) => d.clone(),
        None => default_model().ok_or_else(|| {
            Error::Model(
                "no model given and no default model in assets/model: pass --model DIR (or set VIRALCLIP_MODEL)".into(),
            )
        })?,
    };
    let (dev, note) = device::open(opts.device)?;
    if let Some(n) = note {
        eprintln!("viralclip: {n}");
    }
    let dtype = opts.precision.dtype(&dev);
    opts.precision.configure(&dev);
    let t = Instant::now();
    let loaded = model::artifact::load(&dir, opts.encoder.as_deref(), &dev, dtype)?;
    Ok((BertScorer::new(loaded), t.elapsed().as_secs_f64()))
}

fn progress_bar(quiet: bool) -> (ProgressBar, Progress) {
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(1000)
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg:20} [{bar:30}] {percent:>3}% {elapsed}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let b = bar.clone();
    let progress: Progress = Arc::new(move |stage: Stage, f: f32| {
        b.set_message(stage.label());
        b.set_position((f.clamp(0.0, 1.0) * 1000.0) as u64);
    });
    (bar, progress)
}

fn bot(c: viralclip_bot::BotConfig) -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(viralclip_bot::run(c))
        // The engine's errors keep their type (for the exit code; they never hold the token).
        .map_err(|e| match e {
            viralclip_bot::Error::Engine(engine) => engine.into(),
            e => anyhow::anyhow!(viralclip_bot::telegram::redact(&format!("{e:#}"))),
        })
}

fn serve(c: viralclip_web::WebConfig) -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(viralclip_web::serve(c))
        .map_err(|e| match e {
            viralclip_web::Error::Bot(viralclip_bot::Error::Engine(engine)) => engine.into(),
            e => anyhow::anyhow!("{e}"),
        })
}

fn clip(a: ClipArgs) -> Result<()> {
    // A link is fetched first (into OUT/source/), checked against the limits before any byte of
    // video comes; the site's subtitles are used unless --subs gives others.
    let link = a.input.to_str().filter(|s| viralclip_engine::link::is_link(s));
    let (input_path, site_subs, source) = match link {
        Some(link) => {
            let policy = a
                .links
                .policy(a.max_duration_mins * 60.0, a.lang.clone().filter(|l| l != "auto"));
            let (bar, progress) = progress_bar(a.quiet);
            let fetched = viralclip_engine::link::ytdlp::fetch(
                link,
                &policy,
                &a.out.join("source"),
                &|f| progress(Stage::Download, f),
                &AtomicBool::new(false),
            );
            bar.finish_and_clear();
            let f = fetched?;
            (f.video, f.subs, Some(f.source))
        }
        None => (a.input.clone(), None, None),
    };
    if !input_path.exists() {
        return Err(Error::NotFound(input_path).into());
    }
    let mut req = ClipRequest::new(&input_path, &a.out);
    req.subs = a.subs.clone().or(site_subs);
    req.source = source;
    req.select.count = a.count;
    req.select.min_secs = a.min_secs;
    req.select.max_secs = a.max_secs;
    req.select.skip_formulas = !a.keep_formulas;
    req.cut_jobs = a.cut_jobs;
    req.overlap = match a.overlap.as_str() {
        "on" => Some(true),
        "off" => Some(false),
        _ => None,
    };
    req.select.validate()?;
    req.mode = if a.fast {
        viralclip_engine::media::CutMode::Fast
    } else {
        viralclip_engine::media::CutMode::Precise
    };
    req.limits.max_duration_secs = a.max_duration_mins * 60.0;
    req.limits.max_subtitle_bytes = a.max_subs_mb << 20;
    req.shape = viralclip_engine::pipeline::ShapeRequest {
        format: a.format,
        captions: a.captions,
        caption_style: a.caption_style,
    };
    req.language = a.lang.clone().filter(|l| l != "auto");
    // The input is checked before any model loads: a bad file is refused in milliseconds.
    let input = viralclip_engine::pipeline::inspect(&req, viralclip_engine::media::built_in().as_ref())?;
    let (scorer, load_secs) = load_scorer(&a.model)?;
    let mut engine = Engine::new(Box::new(scorer)).with_whisper(Some(a.whisper.clone()));
    engine.model_load_secs = load_secs;
    // Shaped clips of a video are framed by faces: the detector loads now, so a missing model is
    // said before any work.
    #[cfg(all(feature = "media", feature = "faces"))]
    if a.format != viralclip_engine::format::Format::Original
        && !viralclip_engine::pipeline::is_subtitle_file(&input_path)
    {
        let path = viralclip_engine::faces::resolve_model(a.face_model.as_deref())?;
        engine = engine.with_faces(viralclip_engine::faces::load(&path)?);
    }
    let (bar, progress) = progress_bar(a.quiet);
    let report = engine.run_inspected(&req, input, progress, Arc::new(AtomicBool::new(false)));
    bar.finish_and_clear();
    let report = report?;
    let mut out = std::io::stdout().lock();
    let t = &report.transcript;
    writeln!(
        out,
        "{} cues, {} words ({}); {} windows scored in {:.1} s",
        t.cues,
        t.words,
        serde_json::to_string(&t.source)?,
        report.timings.windows_scored,
        report.timings.score
    )?;
    for m in &report.moments {
        let emos: Vec<String> = m
            .emotions
            .iter()
            .map(|e| format!("{} {:.2}", e.label, e.p))
            .collect();
        writeln!(
            out,
            "#{} {}–{} ({:.1} s) virality {:.2} popularity {:.2} [{}]",
            m.rank,
            viralclip_engine::cue::format_time(m.start),
            viralclip_engine::cue::format_time(m.end),
            m.duration,
            m.virality,
            m.popularity,
            emos.join(", ")
        )?;
        if !m.title.is_empty() {
            writeln!(out, "   {}", m.title)?;
        }
        writeln!(out, "   «{}»", viralclip_engine::pipeline::short(&m.quote, 100))?;
        if !m.hashtags.is_empty() {
            writeln!(out, "   {}", m.hashtags.join(" "))?;
        }
        if let Some(c) = &m.clip {
            writeln!(
                out,
                "   {} ({}x{}, {:.2} s, {} kB)",
                a.out.join(&c.path).display(),
                c.width,
                c.height,
                c.duration,
                c.size_bytes / 1024
            )?;
        }
    }
    writeln!(out, "report: {}", a.out.join("report.json").display())?;
    Ok(())
}

fn score(a: ScoreArgs) -> Result<()> {
    let texts: Vec<String> = match &a.csv {
        Some(path) => {
            let mut rd = csv::ReaderBuilder::new()
                .flexible(true)
                .from_path(path)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            let headers = rd
                .headers()
                .with_context(|| format!("{}: no header row", path.display()))?
                .clone();
            let col = headers.iter().position(|h| h == a.column).ok_or_else(|| {
                Error::Invalid(format!(
                    "{}: no column {:?} (columns: {})",
                    path.display(),
                    a.column,
                    headers.iter().collect::<Vec<_>>().join(", ")
                ))
            })?;
            let mut v = Vec::new();
            for (i, r) in rd.records().enumerate() {
                let r = r.with_context(|| format!("{}: row {}", path.display(), i + 2))?;
                v.push(r.get(col).unwrap_or("").to_string());
            }
            v
        }
        None => std::io::stdin()
            .lock()
            .lines()
            .collect::<std::io::Result<Vec<_>>>()?,
    };
    let texts: Vec<String> = texts
        .into_iter()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect();
    if texts.is_empty() {
        return Err(Error::Invalid("no texts to score (give lines on stdin or --csv FILE)".into()).into());
    }
    let (mut scorer, _) = load_scorer(&a.model)?;
    let bar = if a.quiet || texts.len() < 64 {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(texts.len() as u64)
    };
    let scores = scorer.score(&texts, &mut |done, _| bar.set_position(done as u64))?;
    bar.finish_and_clear();
    let (labels, w, neutral) = (scorer.labels().to_vec(), scorer.weights(), scorer.neutral());
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for (text, s) in texts.iter().zip(&scores) {
        let emotions: serde_json::Map<String, serde_json::Value> = labels
            .iter()
            .zip(&s.emotions)
            .map(|(l, p)| (l.clone(), serde_json::json!(round(*p))))
            .collect();
        let line = serde_json::json!({
            "text": text,
            "virality": round(s.virality(w, neutral)),
            "popularity": round(s.popularity),
            "top_emotions": s.top_emotions(&labels, 3).into_iter().map(|(l, _)| l).collect::<Vec<_>>(),
            "emotions": emotions,
        });
        writeln!(out, "{line}")?;
    }
    Ok(())
}

fn round(x: f32) -> f64 {
    (x as f64 * 10_000.0).round() / 10_000.0
}

fn model_cmd(a: ModelArgs) -> Result<()> {
    match a.command {
        ModelCommand::Init {
            encoder,
            repo,
            out,
            seed,
        } => {
            let m = model::artifact::init(&encoder, &repo, &out, seed)?;
            println!("{}: {} ({} labels)", out.display(), m.name, m.labels.len());
        }
        ModelCommand::Eval {
            model,
            encoder,
            test,
            tune_thresholds,
        } => {
            let (ev, stats, thr) = viralclip_trainer::train::evaluate_model(
                &model,
                encoder.as_deref(),
                &test,
                &candle_core::Device::Cpu,
                tune_thresholds,
            )?;
            if tune_thresholds {
                let mut m = model::Manifest::read(&model)?;
                m.thresholds.emotions = thr;
                m.write(&model)?;
                eprintln!("thresholds tuned and written to {}", model.display());
            }
            println!("{}", serde_json::json!({"sources": stats, "evaluation": ev}));
        }
        ModelCommand::Average { models, out } => {
            let dirs: Vec<&std::path::Path> = models.iter().map(|p| p.as_path()).collect();
            let m = model::artifact::average(&dirs, &out)?;
            println!("{}: {}", out.display(), m.name);
        }
        #[cfg(feature = "whisper")]
        ModelCommand::WhisperQuantize { whisper, out, quant } => {
            let input = whisper.resolve()?;
            let t0 = std::time::Instant::now();
            let q = viralclip_engine::whisper_quant::quantize(&input, &out, quant)?;
            println!(
                "{}: {quant}, {} of {} tensors quantized, {:.1} MB → {:.1} MB in {:.1} s",
                out.display(),
                q.quantized,
                q.tensors,
                q.bytes_in as f64 / 1e6,
                q.bytes_out as f64 / 1e6,
                t0.elapsed().as_secs_f64()
            );
        }
        ModelCommand::Curves { report, out } => {
            let text = std::fs::read_to_string(&report).with_context(|| format!("{}", report.display()))?;
            let r: viralclip_trainer::TrainReport = serde_json::from_str(&text)
                .with_context(|| format!("{}: not a training report", report.display()))?;
            viralclip_trainer::plot::learning_curves(&r, &out)?;
            println!("{}", out.display());
        }
        ModelCommand::ImportPth {
            pth,
            base_repo,
            base_dir,
            out,
        } => {
            let base = model::BaseEncoder {
                repo: base_repo,
                revision: None,
                path: base_dir.map(|d| std::path::absolute(&d)).transpose()?,
            };
            let m = model::artifact::import_pth(&pth, base, &out)?;
            println!(
                "{}: {} (encoder layers {:?})",
                out.display(),
                m.name,
                m.fine_tuned_layers
            );
        }
    }
    Ok(())
}
