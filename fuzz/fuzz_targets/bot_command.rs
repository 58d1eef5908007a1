//! The bot's reading of a message's text or a video's caption: the command (`/clip@bot 3 30-45`)
//! and the /clip arguments over the chat's settings.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| viralclip_fuzz::bot::message_text(text));
