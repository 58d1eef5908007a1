//! `/train`'s training run behind a trait, as the engine is behind [`crate::clipper::Clipper`]:
//! the bot decides about switching from what a run reports, so its tests can stand a fake run in
//! for the trainer.

use crate::error::{Error, Result};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use viralclip_engine::device::DeviceChoice;

/// What a `/train` run is asked: the base encoder, where the new model goes, the data sources (as
/// `viralclip train --data` takes them) and the held-out test sources.
#[derive(Debug, Clone)]
pub struct TrainRequest {
    pub encoder: PathBuf,
    pub out: PathBuf,
    pub data: Vec<String>,
    pub test: Vec<String>,
    pub unfrozen_epochs: usize,
    pub device: DeviceChoice,
}

/// What a finished run reports, for the switch decision and the admin's message.
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    pub wall_secs: f64,
    /// 0-based.
    pub best_epoch: usize,
    /// The saved model's validation metrics, as `train-report.json`'s `val_reloaded`.
    pub validation: serde_json::Value,
}

/// Trains a model. `progress` gets one line per event; `cancel` stops the run.
pub trait Trainer: Send + Sync + 'static {
    /// The device the run will use, and a note about it for the admin (a fallback, no GPU).
    fn device_note(&self, device: DeviceChoice) -> Result<(bool, Option<String>)>;
    fn train(
        &self,
        req: &TrainRequest,
        progress: &mut dyn FnMut(String),
        cancel: &AtomicBool,
    ) -> Result<TrainOutcome>;
}

/// The real run: `viralclip_trainer::train` with its defaults and the request's data.
pub struct TrainerRun;

impl Trainer for TrainerRun {
    fn device_note(&self, device: DeviceChoice) -> Result<(bool, Option<String>)> {
        let (dev, note) = viralclip_engine::device::open(device)?;
        Ok((dev.is_cuda(), note))
    }

    fn train(
        &self,
        req: &TrainRequest,
        progress: &mut dyn FnMut(String),
        cancel: &AtomicBool,
    ) -> Result<TrainOutcome> {
        let parse = |s: &String| {
            s.parse::<viralclip_trainer::data::Source>()
                .map_err(|e| Error::Config(format!("{s}: {e}")))
        };
        let data = req.data.iter().map(parse).collect::<Result<Vec<_>>>()?;
        let test = req.test.iter().map(parse).collect::<Result<Vec<_>>>()?;
        let mut cfg = viralclip_trainer::TrainConfig::new(req.encoder.clone(), req.out.clone(), data);
        cfg.test = test;
        cfg.unfrozen_epochs = req.unfrozen_epochs;
        let (dev, _) = viralclip_engine::device::open(req.device)?;
        let mut on_event = |e: viralclip_trainer::Event| progress(e.to_string());
        let report = viralclip_trainer::train(&cfg, &dev, &mut on_event, cancel)?;
        Ok(TrainOutcome {
            wall_secs: report.wall_secs,
            best_epoch: report.best_epoch,
            validation: serde_json::to_value(&report.val_reloaded)?,
        })
    }
}
