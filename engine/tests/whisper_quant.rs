//! `whisper_quant::quantize` on the real Whisper base fixture: the q8_0 copy is whisper.cpp's size
//! for it, loads, and hears the demo's Russian as the f16 file does.
#![cfg(all(feature = "whisper", feature = "media"))]
mod common;

use std::sync::Arc;
use viralclip_engine::transcribe::{Transcriber, Whisper};
use viralclip_engine::whisper_quant::{quantize, Quant};

fn words(w: &mut Whisper, samples: &[f32]) -> Vec<String> {
    let speech = w
        .transcribe(samples, Some("ru"), Arc::new(|_| {}), Default::default(), None)
        .unwrap();
    speech
        .cues
        .iter()
        .flat_map(|c| c.text.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .map(|w| {
            w.to_lowercase()
                .trim_matches(|c: char| !c.is_alphanumeric())
                .replace('ё', "е")
        })
        .filter(|w| !w.is_empty())
        .collect()
}

#[test]
fn a_q8_0_copy_of_whisper_base_hears_the_demo_as_the_f16_file_does() {
    let Some(base) = common::whisper_base() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let q8 = dir.path().join("ggml-base-q8_0.bin");
    let done = quantize(&base, &q8, Quant::Q8_0).unwrap();
    // Every weight matrix of the 6 + 6 layers and the token embedding (whisper.cpp's own
    // ggml-base-q8_0.bin is 81.8 MB).
    assert_eq!(done.quantized, 97, "{done:?}");
    let ratio = done.bytes_out as f64 / done.bytes_in as f64;
    assert!((0.5..0.6).contains(&ratio), "{done:?}");
    assert!(!dir.path().join("ggml-base-q8_0.part").exists());
    // Quantizing it again is refused (it is no f16 file any more).
    let again = quantize(&q8, &dir.path().join("again.bin"), Quant::Q5_1).unwrap_err();
    assert!(again.to_string().contains("already quantized"), "{again}");

    let samples = viralclip_engine::media::decode_audio_16k(
        &common::repo().join("assets/demo/demo.mp4"),
        f64::INFINITY,
        &|_| {},
        &Default::default(),
        &Default::default(),
    )
    .unwrap();
    let f16 = words(&mut Whisper::load(&base).unwrap(), &samples);
    let q = words(&mut Whisper::load(&q8).unwrap(), &samples);
    let stems = common::DEMO_STEMS;
    let found = stems
        .iter()
        .filter(|s| q.iter().any(|w| w.starts_with(*s)))
        .count();
    assert!(found >= 9, "q8_0 heard only {found} of {stems:?}: {q:?}");
    // Nearly the same words as the f16 model.
    let shared = q.iter().filter(|w| f16.contains(w)).count();
    assert!(
        shared as f64 >= 0.9 * f16.len() as f64 && q.len().abs_diff(f16.len()) * 10 <= f16.len(),
        "q8_0: {q:?}\nf16: {f16:?}"
    );
}
