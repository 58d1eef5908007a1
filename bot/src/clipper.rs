//! The engine behind a trait, so the bot's logic is testable and the model can be switched live.

use crate::error::Result;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;
use viralclip_engine::device::{self, DeviceChoice, Precision};
use viralclip_engine::model::artifact;
use viralclip_engine::pipeline::{ClipRequest, Engine, Progress, Recut};
use viralclip_engine::report::{ClipFacts, Report};
use viralclip_engine::scorer::BertScorer;
use viralclip_engine::whisper_model::WhisperModel;

/// Runs clip jobs. Implementations are shared by all workers.
pub trait Clipper: Send + Sync + 'static {
    fn clip(&self, req: &ClipRequest, progress: Progress, cancel: Arc<AtomicBool>) -> Result<Report>;
    /// Switches to the model in `dir` for the jobs that start after this returns.
    fn switch_model(&self, dir: &Path) -> Result<()>;
    /// The model directory in use.
    fn model_dir(&self) -> PathBuf;
    /// Cuts one moment of an earlier job again ([`Engine::recut`]): no transcription, no scoring.
    fn recut(&self, input: &Path, out_dir: &Path, report: &Report, r: &Recut) -> Result<ClipFacts> {
        let _ = (input, out_dir, report, r);
        Err(crate::error::Error::Job("this clipper cannot re-cut".into()))
    }
}

/// The real engine: a pool of loaded engines (one per concurrent job), rebuilt on a model switch.
pub struct EngineClipper {
    model: RwLock<(PathBuf, u64)>,
    encoder: Option<PathBuf>,
    whisper: Option<WhisperModel>,
    /// The face model that frames shaped clips (loaded with each engine; `None`: centre crops).
    #[cfg_attr(not(feature = "faces"), allow(dead_code))]
    faces: Option<PathBuf>,
    device: DeviceChoice,
    precision: Precision,
    pool: Mutex<Vec<(u64, Engine)>>,
}

impl EngineClipper {
    /// Loads one engine at once, with its Whisper model, so a missing or broken model fails at
    /// start-up rather than in a job. `whisper: None` transcribes nothing (subtitles only).
    pub fn new(
        model: PathBuf,
        encoder: Option<PathBuf>,
        whisper: Option<WhisperModel>,
        faces: Option<PathBuf>,
        device: DeviceChoice,
        precision: Precision,
    ) -> Result<Self> {
        let c = EngineClipper {
            model: RwLock::new((model, 0)),
            encoder,
            whisper,
            faces,
            device,
            precision,
            pool: Mutex::new(Vec::new()),
        };
        let e = c.build(&c.model_dir())?;
        c.pool.lock().expect("pool").push((0, e));
        Ok(c)
    }

    fn build(&self, dir: &Path) -> Result<Engine> {
        let (dev, note) = device::open(self.device)?;
        if let Some(n) = note {
            tracing::warn!("{n}");
        }
        let dtype = self.precision.dtype(&dev);
        self.precision.configure(&dev);
        let t = Instant::now();
        let loaded = artifact::load(dir, self.encoder.as_deref(), &dev, dtype)?;
        let mut e = Engine::new(Box::new(BertScorer::new(loaded))).with_whisper(self.whisper.clone());
        if self.whisper.is_some() {
            e.load_transcriber()?;
        }
        #[cfg(feature = "faces")]
        if let Some(f) = &self.faces {
            e = e.with_faces(viralclip_engine::faces::load(f)?);
        }
        e.model_load_secs = t.elapsed().as_secs_f64();
        Ok(e)
    }
}

impl Clipper for EngineClipper {
    fn clip(&self, req: &ClipRequest, progress: Progress, cancel: Arc<AtomicBool>) -> Result<Report> {
        let (dir, generation) = self.model.read().expect("model lock").clone();
        let taken = {
            let mut pool = self.pool.lock().expect("pool");
            pool.retain(|(g, _)| *g == generation);
            pool.pop()
        };
        let mut engine = match taken {
            Some((_, e)) => e,
            None => self.build(&dir)?,
        };
        let r = engine.run(req, progress, cancel);
        self.pool.lock().expect("pool").push((generation, engine));
        Ok(r?)
    }

    fn switch_model(&self, dir: &Path) -> Result<()> {
        let engine = self.build(dir)?; // fails before anything changes
        let mut m = self.model.write().expect("model lock");
        m.0 = dir.to_path_buf();
        m.1 += 1;
        let mut pool = self.pool.lock().expect("pool");
        pool.clear();
        pool.push((m.1, engine));
        Ok(())
    }

    fn model_dir(&self) -> PathBuf {
        self.model.read().expect("model lock").0.clone()
    }

    fn recut(&self, input: &Path, out_dir: &Path, report: &Report, r: &Recut) -> Result<ClipFacts> {
        // Any engine cuts (the model is not used); it goes back with the generation it had.
        let taken = self.pool.lock().expect("pool").pop();
        let (generation, engine) = match taken {
            Some(t) => t,
            None => {
                let (dir, g) = self.model.read().expect("model lock").clone();
                (g, self.build(&dir)?)
            }
        };
        let made = engine.recut(input, out_dir, report, r);
        self.pool.lock().expect("pool").push((generation, engine));
        Ok(made?)
    }
}
