//! The one font the project draws text with: DejaVu Sans (Cyrillic, Greek, Latin; a free licence
//! that allows embedding and redistribution), from Debian's fonts-dejavu-core. Captions name it
//! ([`NAME`]) and libass finds it through fontconfig; the pictures (the timeline, the learning
//! curves) read its file ([`bytes`]).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The font's family name.
pub const NAME: &str = "DejaVu Sans";

/// Where distributions install the file.
const PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// The font file: `VIRALCLIP_FONT`, else the first of the distributions' places that exists; the
/// error says what to install.
pub fn file() -> Result<PathBuf, String> {
    std::env::var("VIRALCLIP_FONT")
        .ok()
        .into_iter()
        .chain(PATHS.iter().map(|s| s.to_string()))
        .map(PathBuf::from)
        .find(|p| Path::new(p).is_file())
        .ok_or_else(|| "no DejaVuSans.ttf (install fonts-dejavu-core or set VIRALCLIP_FONT)".into())
}

/// The font file's bytes, read once and kept for the process's life (plotters keeps a reference).
pub fn bytes() -> Result<&'static [u8], String> {
    static BYTES: OnceLock<Result<&'static [u8], String>> = OnceLock::new();
    BYTES
        .get_or_init(|| {
            let path = file()?;
            let data = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            Ok(Box::leak(data.into_boxed_slice()))
        })
        .clone()
}
