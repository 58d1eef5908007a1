//! The admins' commands: `/train` (a run behind [`crate::training::Trainer`], then the switch
//! decision: a new model no worse than the current one in emotion macro-F1 and popularity ROC-AUC
//! replaces it, `/train force` whatever it measures), `/rollback` and `/data`.

use crate::app::App;
use crate::commands::Command;
use crate::error::{joined, Error, Result};
use crate::job::{ext_of, TRAIN_EXTS};
use crate::telegram::{redact, retrying};
use crate::training::TrainRequest;
use crate::worker::Status;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use teloxide::prelude::*;
use teloxide::types::{ChatKind, InputFile};

/// `/train`, `/rollback` and `/data`: for the bot's admins, sent directly in a private chat.
pub(crate) async fn command(app: &Arc<App>, msg: &Message, command: Command) -> Result<()> {
    let cmd = command.name();
    let private = matches!(msg.chat.kind, ChatKind::Private(_));
    if !private {
        app.say(msg, format!("/{cmd} works only in a private chat with me."))
            .await?;
        return Ok(());
    }
    if msg.forward_origin().is_some() || msg.sender_chat.is_some() {
        app.say(
            msg,
            format!("/{cmd} must be sent by an admin directly, not forwarded."),
        )
        .await?;
        return Ok(());
    }
    if !app.is_admin(msg) {
        app.say(msg, format!("/{cmd} is for the bot's admins.")).await?;
        return Ok(());
    }
    match command {
        Command::Data => {
            let Some(doc) = msg
                .reply_to_message()
                .and_then(|m| m.document())
                .or(msg.document())
            else {
                app.say(msg, "Reply /data to a training file (.csv, .tsv, .txt, .gz).")
                    .await?;
                return Ok(());
            };
            let Some(ext) = ext_of(doc.file_name.as_deref(), TRAIN_EXTS) else {
                app.say(msg, "Training files are .csv, .tsv, .txt or .txt.gz.")
                    .await?;
                return Ok(());
            };
            let dir = app.config.data_dir.join("train-data");
            std::fs::create_dir_all(&dir).map_err(|e| Error::file(&dir, e))?;
            let n = std::fs::read_dir(&dir).map_err(|e| Error::file(&dir, e))?.count();
            let ext = if ext == "gz" { "txt.gz" } else { ext };
            let dest = dir.join(format!("upload-{n:03}.{ext}"));
            app.download(&doc.file.id.to_string(), &dest).await?;
            app.say(msg, format!("Saved for the next /train as {}.", dest.display()))
                .await?;
        }
        Command::Rollback => {
            let prev = std::fs::read_to_string(app.config.data_dir.join("previous-model")).ok();
            let Some(prev) = prev.map(|s| PathBuf::from(s.trim())) else {
                app.say(msg, "No earlier model to roll back to.").await?;
                return Ok(());
            };
            switch_model(app, &prev).await?;
            app.say(msg, format!("Rolled back to {}.", prev.display()))
                .await?;
        }
        Command::Train(args) => train(app, msg, args.split_whitespace().any(|a| a == "force")).await?,
        _ => {}
    }
    Ok(())
}

/// Switches the engine to the model in `dir`, remembering the one before for /rollback.
async fn switch_model(app: &Arc<App>, dir: &Path) -> Result<()> {
    let old = app.clipper.model_dir();
    let c = app.clipper.clone();
    let d = dir.to_path_buf();
    joined(
        tokio::task::spawn_blocking(move || c.switch_model(&d)).await,
        "the model switch",
    )??;
    std::fs::write(
        app.config.data_dir.join("previous-model"),
        old.to_string_lossy().as_bytes(),
    )?;
    std::fs::write(
        app.config.data_dir.join("current-model"),
        dir.to_string_lossy().as_bytes(),
    )?;
    Ok(())
}

/// The numbers a new model must not be worse in: emotion macro-F1 (tuned) and popularity ROC-AUC
/// on validation, from a manifest's `metrics`.
fn key_metrics(metrics: &serde_json::Value) -> (Option<f64>, Option<f64>) {
    let v = metrics.get("validation").unwrap_or(metrics);
    (
        v.pointer("/emotions_tuned/macro_f1").and_then(|x| x.as_f64()),
        v.pointer("/popularity/roc_auc").and_then(|x| x.as_f64()),
    )
}

async fn train(app: &Arc<App>, msg: &Message, force: bool) -> Result<()> {
    let Ok(_guard) = app.training.try_lock() else {
        app.say(msg, "A training run is already going; one at a time.")
            .await?;
        return Ok(());
    };
    let mut sources: Vec<String> = app.config.train_data.clone();
    if let Ok(rd) = std::fs::read_dir(app.config.data_dir.join("train-data")) {
        let mut files: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        sources.extend(files.iter().map(|p| p.to_string_lossy().into_owned()));
    }
    if sources.is_empty() {
        app.say(
            msg,
            "No training data: configure --train-data or send files with /data.",
        )
        .await?;
        return Ok(());
    }
    let Some(encoder) = app.config.engine.encoder.clone() else {
        app.say(
            msg,
            "Training needs the base encoder's directory (--encoder / VIRALCLIP_ENCODER).",
        )
        .await?;
        return Ok(());
    };
    let stamp = chrono::Utc::now().format("%Y%m%d-%H%M%S").to_string();
    let out = app.config.data_dir.join("models").join(&stamp);
    let req = TrainRequest {
        encoder,
        out: out.clone(),
        data: sources.clone(),
        test: app.config.train_test.clone(),
        unfrozen_epochs: app.config.train_unfrozen_epochs,
        device: app.config.engine.device,
    };
    let (gpu, note) = app.trainer.device_note(app.config.engine.device)?;
    let mut head = String::new();
    if let Some(n) = note {
        head = format!("{n}\n");
    }
    if !gpu {
        head.push_str("⚠️ No GPU: training on the CPU, which is slow.\n");
    }
    let status = app
        .say(
            msg,
            format!("{head}Training started ({} sources).", sources.len()),
        )
        .await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let cancel = Arc::new(AtomicBool::new(false));
    let c2 = cancel.clone();
    let trainer = app.trainer.clone();
    let mut work = tokio::task::spawn_blocking(move || {
        let mut progress = |line: String| {
            let _ = tx.send(line);
        };
        trainer.train(&req, &mut progress, &c2)
    });
    let mut st = Status {
        bot: app.bot.clone(),
        chat: msg.chat.id,
        message: Some(status.id),
        last: None,
    };
    let report = loop {
        tokio::select! {
            r = &mut work => break r,
            Some(line) = rx.recv() => st.set(format!("{head}⏳ {line}"), false).await,
        }
    };
    let report = match report {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            app.say(msg, format!("Training failed: {}", redact(&e.to_string())))
                .await?;
            return Ok(());
        }
        Err(e) => {
            app.say(msg, format!("Training crashed: {e}")).await?;
            return Ok(());
        }
    };
    let new = key_metrics(&report.validation);
    let current = viralclip_engine::model::Manifest::read(&app.clipper.model_dir())
        .map(|m| key_metrics(&m.metrics))
        .unwrap_or((None, None));
    let no_worse = |n: Option<f64>, c: Option<f64>| match (n, c) {
        (Some(n), Some(c)) => n + 1e-9 >= c,
        _ => true,
    };
    let better = no_worse(new.0, current.0) && no_worse(new.1, current.1);
    let fmt = |x: Option<f64>| x.map_or("-".into(), |v| format!("{v:.3}"));
    let mut text = format!(
        "Training done in {:.0} s (best epoch {}). Validation: emotion macro-F1 {} (current model {}), popularity ROC-AUC {} (current {}).",
        report.wall_secs,
        report.best_epoch + 1,
        fmt(new.0),
        fmt(current.0),
        fmt(new.1),
        fmt(current.1)
    );
    if better || force {
        switch_model(app, &out).await?;
        text.push_str(&format!(
            "\nSwitched to the new model{}. /rollback undoes it.",
            if better { "" } else { " (forced)" }
        ));
    } else {
        text.push_str(&format!(
            "\nKept the current model: the new one is worse. It is saved at {}; /train force switches anyway.",
            out.display()
        ));
    }
    app.say(msg, text).await?;
    let png = out.join("train-curves.png");
    if png.is_file() {
        let _ = retrying(3, || {
            app.bot.send_photo(msg.chat.id, InputFile::file(&png)).send()
        })
        .await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_comparison_reads_validation_numbers() {
        let m = serde_json::json!({"validation": {"emotions_tuned": {"macro_f1": 0.4}, "popularity": {"roc_auc": 0.99}}});
        assert_eq!(key_metrics(&m), (Some(0.4), Some(0.99)));
        assert_eq!(key_metrics(&serde_json::Value::Null), (None, None));
    }
}
