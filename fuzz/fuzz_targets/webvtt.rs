//! WebVTT: any text through the WebVTT parser and the repair.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| viralclip_fuzz::subtitles::webvtt(text));
