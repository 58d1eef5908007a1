//! `viralclip train`: flags → [`viralclip_trainer::TrainConfig`], a progress bar, a summary.

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use viralclip_engine::device::{self, DeviceChoice};
use viralclip_trainer::data::Source;
use viralclip_trainer::{Event, TrainConfig};

#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// Base encoder directory (config.json, tokenizer.json, model.safetensors).
    #[arg(long, env = "VIRALCLIP_ENCODER")]
    pub encoder: PathBuf,
    /// The encoder's Hugging Face name (recorded in the model; e5 models get the "query: " prefix).
    #[arg(long, default_value = "intfloat/multilingual-e5-small")]
    pub base_repo: String,
    /// Training data: PATH[#kind=K][#label=0|1][#part=LO-HI]; repeat for several sources.
    #[arg(long, required = true)]
    pub data: Vec<Source>,
    /// Held-out data measured once on the saved model (same syntax).
    #[arg(long)]
    pub test: Vec<Source>,
    /// Output model directory.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 0.1)]
    pub val_fraction: f64,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 128)]
    pub max_length: usize,
    /// Encoder learning rate (before --unfrozen-lr-mult).
    #[arg(long, default_value_t = 2e-5)]
    pub lr: f64,
    /// Heads' learning rate (default: --lr).
    #[arg(long)]
    pub head_lr: Option<f64>,
    #[arg(long, default_value_t = 0.1)]
    pub unfrozen_lr_mult: f64,
    #[arg(long, default_value_t = 0.01)]
    pub weight_decay: f64,
    #[arg(long, default_value_t = 500)]
    pub warmup_steps: usize,
    /// Epochs training the heads only.
    #[arg(long, default_value_t = 2)]
    pub frozen_epochs: usize,
    /// Epochs training the heads and the top --unfreeze-layers layers.
    #[arg(long, default_value_t = 3)]
    pub unfrozen_epochs: usize,
    #[arg(long, default_value_t = 2)]
    pub unfreeze_layers: usize,
    /// Sum the task gradients instead of PCGrad (for comparison).
    #[arg(long)]
    pub no_pcgrad: bool,
    #[arg(long, default_value_t = 1.0)]
    pub clip_norm: f64,
    #[arg(long, default_value_t = 2)]
    pub patience: usize,
    /// Use at most this many training examples.
    #[arg(long)]
    pub max_train: Option<usize>,
    /// Continue from the checkpoint in --out.
    #[arg(long)]
    pub resume: bool,
    /// Store fine-tuned encoder matrices in fp16: half the artifact's size (the reloaded
    /// validation metrics in the report describe the stored model).
    #[arg(long)]
    pub f16_layers: bool,
    /// Start from this model (heads and fine-tuned layers) instead of fresh heads.
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// What picks the kept epoch and drives early stopping: loss or macro-f1 (emotions, tuned).
    #[arg(long, default_value = "loss")]
    pub select_by: viralclip_trainer::SelectBy,
    /// Weight of the translation alignment (0: off): in the epochs that train layers, rows that
    /// come with the text they were translated from (ru_go_emotions' `text` beside `ru_text`)
    /// pull their sentence vector ([CLS] or the mean, per --pooling) toward the model's vector of
    /// the original.
    #[arg(long, default_value_t = 0.0)]
    pub align: f64,
    /// What the heads read off the encoder: cls (the seed's) or mean (the tokens' mean, how e5
    /// and other sentence encoders were trained).
    #[arg(long, default_value = "cls")]
    pub pooling: viralclip_engine::model::Pooling,
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    #[arg(long, short)]
    pub quiet: bool,
}

pub fn run(a: TrainArgs) -> Result<()> {
    let mut cfg = TrainConfig::new(a.encoder, a.out.clone(), a.data);
    cfg.base_repo = a.base_repo;
    cfg.test = a.test;
    cfg.val_fraction = a.val_fraction;
    cfg.seed = a.seed;
    cfg.batch_size = a.batch_size;
    cfg.max_length = a.max_length;
    cfg.lr = a.lr;
    cfg.head_lr = a.head_lr;
    cfg.unfrozen_lr_mult = a.unfrozen_lr_mult;
    cfg.weight_decay = a.weight_decay;
    cfg.warmup_steps = a.warmup_steps;
    cfg.frozen_epochs = a.frozen_epochs;
    cfg.unfrozen_epochs = a.unfrozen_epochs;
    cfg.unfreeze_layers = a.unfreeze_layers;
    cfg.pcgrad = !a.no_pcgrad;
    cfg.clip_norm = a.clip_norm;
    cfg.patience = a.patience;
    cfg.max_train = a.max_train;
    cfg.resume = a.resume;
    cfg.f16_layers = a.f16_layers;
    cfg.init = a.init;
    cfg.select_by = a.select_by;
    cfg.align = a.align;
    cfg.pooling = a.pooling;
    let (dev, note) = device::open(a.device)?;
    if let Some(n) = note {
        eprintln!("viralclip: {n}");
    }
    if !dev.is_cuda() {
        eprintln!("viralclip: training on the CPU");
    }
    let bar = if a.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(1)
    };
    bar.set_style(
        ProgressStyle::with_template("{msg:40} [{bar:30}] {pos}/{len} {elapsed}")
            .expect("template")
            .progress_chars("=> "),
    );
    // Without a terminal (a log file, a container) the bar is hidden: print a line a minute.
    let plain = !a.quiet && !std::io::stderr().is_terminal();
    let mut last_line = std::time::Instant::now();
    let mut log_line = move |e: &Event| {
        if plain && last_line.elapsed().as_secs() >= 60 {
            last_line = std::time::Instant::now();
            eprintln!("{e}");
        }
    };
    let mut on_event = |e: Event| match e {
        Event::Loaded { .. } => eprintln!("{e}"),
        Event::Caching { done, total } => {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
            bar.set_message("caching frozen layers");
            log_line(&e);
        }
        Event::Step {
            epoch,
            step,
            steps,
            loss,
            examples_per_s,
        } => {
            bar.set_length(steps as u64);
            bar.set_position(step as u64);
            bar.set_message(format!(
                "epoch {} loss {loss:.4} {examples_per_s:.0} ex/s",
                epoch + 1
            ));
            log_line(&e);
        }
        Event::Epoch(r) => {
            bar.suspend(|| {
                let pop = r.val.popularity.as_ref();
                let emo = r.val.emotions_tuned.as_ref();
                eprintln!(
                    "epoch {} ({}): train loss {:.4}, val loss {:.4}, pop acc {} auc {}, emo macro-F1 {} (0.5: {}), {:.0} ex/s{}",
                    r.epoch + 1,
                    r.stage,
                    r.train_loss,
                    r.val.loss(),
                    pop.map_or("-".into(), |p| format!("{:.3}", p.accuracy)),
                    pop.and_then(|p| p.roc_auc).map_or("-".into(), |x| format!("{x:.3}")),
                    emo.map_or("-".into(), |m| format!("{:.3}", m.macro_f1)),
                    r.val.emotions_at_half.as_ref().map_or("-".into(), |m| format!("{:.3}", m.macro_f1)),
                    r.examples_per_s,
                    r.align_loss.map_or(String::new(), |a| format!(", align {a:.4}"))
                );
            });
        }
    };
    let report = viralclip_trainer::train(&cfg, &dev, &mut on_event, &AtomicBool::new(false));
    bar.finish_and_clear();
    let report = report?;
    println!(
        "model: {} (best epoch {})",
        a.out.display(),
        report.best_epoch + 1
    );
    if let Some(t) = &report.test {
        println!("test: {}", serde_json::to_string(t)?);
    }
    println!(
        "report: {}",
        viralclip_trainer::train::report_path(&a.out).display()
    );
    Ok(())
}
