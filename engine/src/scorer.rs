//! Scoring texts with the multitask model: tokenise once, sort by length, cut into batches by a
//! token budget, pad each batch only to its own longest text, run, and put the scores back in the
//! caller's order.

use crate::error::{Error, Result};
use crate::model::{LoadedModel, Manifest, Mode};
use crate::score::{ScoreWeights, TextScore};
use candle_core::{DType, Tensor};

/// Anything that turns texts into popularity and emotion probabilities.
pub trait TextScorer: Send {
    /// Emotion labels, in output order.
    fn labels(&self) -> &[String];
    /// Index of the label that never boosts virality.
    fn neutral(&self) -> Option<usize>;
    /// How popularity and emotion combine.
    fn weights(&self) -> ScoreWeights;
    /// A one-line description for reports.
    fn describe(&self) -> serde_json::Value;
    /// Scores `texts`; `progress(done, total)` is called after each batch.
    fn score(&mut self, texts: &[String], progress: &mut dyn FnMut(usize, usize)) -> Result<Vec<TextScore>>;
    /// Whether scoring runs on an accelerator, so it can overlap CPU work (transcription) without
    /// slowing it down.
    fn on_accelerator(&self) -> bool {
        false
    }
}

/// Batch shape limits.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// Texts per batch at most.
    pub max_batch: usize,
    /// Padded tokens per batch at most (batch × longest text).
    pub max_tokens: usize,
}

impl BatchLimits {
    /// Small batches suit a CPU's caches; a GPU wants thousands of tokens at once.
    pub fn for_device(device: &candle_core::Device) -> Self {
        if device.is_cuda() {
            BatchLimits {
                max_batch: 1024,
                max_tokens: 256 * 128,
            }
        } else {
            BatchLimits {
                max_batch: 32,
                max_tokens: 32 * 64,
            }
        }
    }
}

/// Token ids of one text.
pub type Ids = Vec<u32>;

/// Groups indices of `lens` (sorted by length) into batches within `limits`.
pub fn plan_batches(lens: &[usize], limits: BatchLimits) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lens.len()).collect();
    order.sort_by_key(|&i| (lens[i], i));
    let mut batches = Vec::new();
    let mut cur: Vec<usize> = Vec::new();
    for i in order {
        let longest = lens[i].max(1); // sorted ascending: the newcomer is the longest
        if !cur.is_empty() && ((cur.len() + 1) * longest > limits.max_tokens || cur.len() == limits.max_batch)
        {
            batches.push(std::mem::take(&mut cur));
        }
        cur.push(i);
    }
    if !cur.is_empty() {
        batches.push(cur);
    }
    batches
}

/// Tokenises `prefix + text` for each text (truncation as the tokenizer is set up).
pub fn tokenize(tokenizer: &tokenizers::Tokenizer, prefix: &str, texts: &[String]) -> Result<Vec<Ids>> {
    let inputs: Vec<String> = texts.iter().map(|t| format!("{prefix}{t}")).collect();
    let enc = tokenizer
        .encode_batch(inputs, true)
        .map_err(|e| Error::Tokenizer(e.to_string()))?;
    Ok(enc.into_iter().map(|e| e.get_ids().to_vec()).collect())
}

/// Pads token rows to the longest one with `pad`: ids (b, t) and a 0/1 mask (b, t).
pub fn pad_batch(
    rows: &[&Ids],
    pad: u32,
    dev: &candle_core::Device,
) -> candle_core::Result<(Tensor, Tensor)> {
    let t = rows.iter().map(|x| x.len()).max().unwrap_or(1).max(1);
    let mut ids = Vec::with_capacity(rows.len() * t);
    let mut mask = Vec::with_capacity(rows.len() * t);
    for x in rows {
        ids.extend_from_slice(x);
        ids.extend(std::iter::repeat_n(pad, t - x.len()));
        mask.extend(std::iter::repeat_n(1u32, x.len()));
        mask.extend(std::iter::repeat_n(0u32, t - x.len()));
    }
    Ok((
        Tensor::from_vec(ids, (rows.len(), t), dev)?,
        Tensor::from_vec(mask, (rows.len(), t), dev)?,
    ))
}

/// The candle multitask BERT behind [`TextScorer`].
pub struct BertScorer {
    pub loaded: LoadedModel,
    pub limits: BatchLimits,
    pad_id: u32,
}

impl BertScorer {
    pub fn new(loaded: LoadedModel) -> Self {
        let limits = BatchLimits::for_device(&loaded.device);
        let pad_id = loaded
            .tokenizer
            .get_padding()
            .map(|p| p.pad_id)
            .unwrap_or(loaded.encoder.config.pad_token_id as u32);
        BertScorer {
            loaded,
            limits,
            pad_id,
        }
    }

    pub fn manifest(&self) -> &Manifest {
        &self.loaded.manifest
    }

    /// Tokenises texts (with the manifest's prefix), truncated to the manifest's max length.
    pub fn tokenize(&self, texts: &[String]) -> Result<Vec<Ids>> {
        tokenize(&self.loaded.tokenizer, &self.loaded.manifest.text_prefix, texts)
    }

    /// Pads `batch` to its longest member: ids (b, t) and a 0/1 mask (b, t).
    pub fn pad(&self, batch: &[&Ids]) -> Result<(Tensor, Tensor)> {
        Ok(pad_batch(batch, self.pad_id, &self.loaded.device)?)
    }

    /// Runs one padded batch; returns (popularity probs, emotion probs) on the CPU.
    pub fn run(&self, ids: &Tensor, mask: &Tensor) -> Result<(Vec<f32>, Vec<Vec<f32>>)> {
        let (pop, emo) = self.launch(ids, mask)?;
        Ok((pop.to_vec1::<f32>()?, emo.to_vec2::<f32>()?))
    }

    /// Queues one padded batch on the model's device: f32 probabilities, not yet read back (on a
    /// GPU the work runs while the host goes on).
    fn launch(&self, ids: &Tensor, mask: &Tensor) -> Result<(Tensor, Tensor)> {
        let logits = self.loaded.model.forward(ids, mask, Mode::Inference)?;
        let pop = candle_nn::ops::sigmoid(&logits.popularity.to_dtype(DType::F32)?)?;
        let emo = candle_nn::ops::sigmoid(&logits.emotions.to_dtype(DType::F32)?)?;
        Ok((pop, emo))
    }

    /// Scores pre-tokenised texts. One batch ahead: batch k+1 is padded, copied and queued before
    /// batch k's results are read back, so a GPU never waits for the host between batches.
    pub fn score_ids(&self, ids: &[Ids], progress: &mut dyn FnMut(usize, usize)) -> Result<Vec<TextScore>> {
        let lens: Vec<usize> = ids.iter().map(Vec::len).collect();
        let mut out: Vec<Option<TextScore>> = vec![None; ids.len()];
        let mut done = 0;
        let mut read_back = |batch: Vec<usize>, pop: Tensor, emo: Tensor| -> Result<()> {
            let (pop, emo) = (pop.to_vec1::<f32>()?, emo.to_vec2::<f32>()?);
            for ((&i, p), e) in batch.iter().zip(pop).zip(emo) {
                out[i] = Some(TextScore {
                    popularity: p,
                    emotions: e,
                });
            }
            done += batch.len();
            progress(done, ids.len());
            Ok(())
        };
        let mut queued: Option<(Vec<usize>, Tensor, Tensor)> = None;
        for batch in plan_batches(&lens, self.limits) {
            let members: Vec<&Ids> = batch.iter().map(|&i| &ids[i]).collect();
            let (t_ids, t_mask) = self.pad(&members)?;
            let (pop, emo) = self.launch(&t_ids, &t_mask)?;
            if let Some((b, p, e)) = queued.replace((batch, pop, emo)) {
                read_back(b, p, e)?;
            }
        }
        if let Some((b, p, e)) = queued {
            read_back(b, p, e)?;
        }
        Ok(out
            .into_iter()
            .map(|s| s.expect("every index is in one batch"))
            .collect())
    }
}

impl TextScorer for BertScorer {
    fn labels(&self) -> &[String] {
        &self.loaded.manifest.labels
    }
    fn neutral(&self) -> Option<usize> {
        self.loaded.manifest.neutral()
    }
    fn weights(&self) -> ScoreWeights {
        self.loaded.manifest.score_weights
    }
    fn describe(&self) -> serde_json::Value {
        let m = &self.loaded.manifest;
        serde_json::json!({
            "name": m.name,
            "base_encoder": m.base_encoder.repo,
            "encoder_dir": self.loaded.encoder.dir,
            "layers": self.loaded.encoder.config.num_hidden_layers,
            "hidden_size": self.loaded.encoder.config.hidden_size,
            "device": crate::device::name(&self.loaded.device),
            "dtype": format!("{:?}", self.loaded.dtype).to_lowercase(),
            "max_length": m.max_length,
            "notes": m.notes,
        })
    }
    fn on_accelerator(&self) -> bool {
        !self.loaded.device.is_cpu()
    }
    fn score(&mut self, texts: &[String], progress: &mut dyn FnMut(usize, usize)) -> Result<Vec<TextScore>> {
        let ids = self.tokenize(texts)?;
        self.score_ids(&ids, progress)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_respect_limits_and_cover_everything() {
        let lens = [5, 120, 7, 7, 64, 3, 128, 10];
        let limits = BatchLimits {
            max_batch: 3,
            max_tokens: 256,
        };
        let b = plan_batches(&lens, limits);
        let mut seen: Vec<usize> = b.iter().flatten().copied().collect();
        seen.sort();
        assert_eq!(seen, (0..lens.len()).collect::<Vec<_>>());
        for batch in &b {
            let longest = batch.iter().map(|&i| lens[i]).max().unwrap();
            assert!(batch.len() <= 3 && batch.len() * longest <= 256, "{batch:?}");
        }
        // Sorted by length: short texts are never padded to the long ones.
        assert_eq!(b[0], [5, 0, 2]);
    }
}
