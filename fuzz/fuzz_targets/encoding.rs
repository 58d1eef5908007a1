//! Encoding detection: any bytes (BOMs, UTF-16, Windows-1251, broken UTF-8) decoded and parsed
//! whole, as a subtitle file arrives from a user.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| viralclip_fuzz::subtitles::encoding(bytes));
