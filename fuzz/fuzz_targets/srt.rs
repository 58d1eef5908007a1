//! SRT: any text through the SRT parser and the repair, as `viralclip clip x.srt` and the bot
//! read a user's file.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| viralclip_fuzz::subtitles::srt(text));
