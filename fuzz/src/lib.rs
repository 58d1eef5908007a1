//! What the fuzz targets check beyond "no panic, no hang": [`subtitles`] (SRT, WebVTT, the
//! encoding detection) and [`bot`] (commands and captions).

pub mod bot;
pub mod subtitles;
