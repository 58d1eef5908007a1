//! Quantizing a Whisper model file: whisper.cpp's ggml `.bin` (f16 or f32) → the same file with
//! its weight matrices in q8_0, q5_1, q5_0 or q4_0, the formats whisper.cpp loads and runs with its
//! integer dot products (`viralclip model whisper-quantize`). The blocks themselves are made by
//! ggml's own `ggml_quantize_chunk` (linked through whisper-rs-sys), so the result is exactly what
//! whisper.cpp's `quantize` tool writes; this module only walks the file.
//!
//! Which tensors: every 2-D tensor that whisper.cpp creates with the model's weight type, which
//! is all of them but the positional embeddings and the convolutions' biases (stored as 1 × n).
//! The convolutions (3-D) stay f16, the norms and biases (1-D) f32, as whisper.cpp expects.
//! The header's `ftype` becomes the quantized one plus ggml's quantization version × 1000.

use crate::error::{Error, Result};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

/// The ggml file magic, `ggml` as a little-endian u32.
const MAGIC: u32 = 0x6767_6d6c;
/// ggml's quantization format version and the factor it is stored with in `ftype`.
const QNT_VERSION: i32 = 2;
const QNT_VERSION_FACTOR: i32 = 1000;
/// Tensors kept as they are although they are 2-D (whisper.cpp creates them as f32).
const KEEP: &[&str] = &[
    "encoder.positional_embedding",
    "decoder.positional_embedding",
    "encoder.conv1.bias",
    "encoder.conv2.bias",
];

/// A quantized format whisper.cpp loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quant {
    Q8_0,
    Q5_1,
    Q5_0,
    Q4_0,
}

impl Quant {
    /// ggml's tensor type number (`enum ggml_type`).
    pub fn tensor_type(self) -> i32 {
        match self {
            Quant::Q4_0 => 2,
            Quant::Q5_0 => 6,
            Quant::Q5_1 => 7,
            Quant::Q8_0 => 8,
        }
    }
    /// The file type number (`enum ggml_ftype`, "mostly" this type).
    fn file_type(self) -> i32 {
        match self {
            Quant::Q4_0 => 2,
            Quant::Q8_0 => 7,
            Quant::Q5_0 => 8,
            Quant::Q5_1 => 9,
        }
    }
    /// Bytes of one block of 32 values.
    pub fn block_bytes(self) -> usize {
        match self {
            Quant::Q4_0 => 18,
            Quant::Q5_0 => 22,
            Quant::Q5_1 => 24,
            Quant::Q8_0 => 34,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Quant::Q4_0 => "q4_0",
            Quant::Q5_0 => "q5_0",
            Quant::Q5_1 => "q5_1",
            Quant::Q8_0 => "q8_0",
        }
    }
}

impl std::str::FromStr for Quant {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "q8_0" => Ok(Quant::Q8_0),
            "q5_1" => Ok(Quant::Q5_1),
            "q5_0" => Ok(Quant::Q5_0),
            "q4_0" => Ok(Quant::Q4_0),
            _ => Err(Error::WhisperModel(format!(
                "{s}: not a quantization whisper.cpp loads (q8_0, q5_1, q5_0 or q4_0)"
            ))),
        }
    }
}

impl std::fmt::Display for Quant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What [`quantize`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct Quantized {
    pub tensors: usize,
    /// How many of them were quantized.
    pub quantized: usize,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// One tensor's header in the file.
#[derive(Debug, Clone)]
struct TensorHead {
    ttype: i32,
    dims: Vec<i32>,
    name: String,
}

impl TensorHead {
    fn elements(&self) -> usize {
        self.dims.iter().map(|&d| d as usize).product()
    }
}

/// Whether whisper.cpp gives this tensor the model's weight type (then it is quantized).
fn takes_weight_type(t: &TensorHead) -> bool {
    t.dims.len() == 2 && !KEEP.contains(&t.name.as_str())
}

fn bad(what: impl std::fmt::Display) -> Error {
    Error::WhisperModel(format!("not a whisper.cpp model file: {what}"))
}

fn read_i32(r: &mut impl Read) -> std::io::Result<i32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(i32::from_le_bytes(b))
}

/// Reads `n` bytes (bounded: a corrupt length fails instead of allocating it).
fn read_vec(r: &mut impl Read, n: usize) -> Result<Vec<u8>> {
    let mut v = Vec::new();
    r.take(n as u64).read_to_end(&mut v).map_err(bad)?;
    if v.len() != n {
        return Err(bad("the file ends early"));
    }
    Ok(v)
}

/// The next tensor's header, or `None` at the end of the file.
fn read_head(r: &mut impl Read) -> Result<Option<TensorHead>> {
    let mut first = [0u8; 4];
    match r.read(&mut first).map_err(bad)? {
        0 => return Ok(None),
        4 => {}
        n => {
            r.read_exact(&mut first[n..]).map_err(bad)?;
        }
    }
    let n_dims = i32::from_le_bytes(first);
    let name_len = read_i32(r).map_err(bad)?;
    let ttype = read_i32(r).map_err(bad)?;
    if !(1..=4).contains(&n_dims) || !(1..=256).contains(&name_len) {
        return Err(bad(format!(
            "a tensor with {n_dims} dimensions and a {name_len}-byte name"
        )));
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    for _ in 0..n_dims {
        let d = read_i32(r).map_err(bad)?;
        if !(1..=1 << 20).contains(&d) {
            return Err(bad(format!("a dimension of {d}")));
        }
        dims.push(d);
    }
    let name = String::from_utf8(read_vec(r, name_len as usize)?)
        .map_err(|_| bad("a tensor name that is not UTF-8"))?;
    Ok(Some(TensorHead { ttype, dims, name }))
}

fn write_head(w: &mut impl Write, t: &TensorHead, ttype: i32) -> std::io::Result<()> {
    w.write_all(&(t.dims.len() as i32).to_le_bytes())?;
    w.write_all(&(t.name.len() as i32).to_le_bytes())?;
    w.write_all(&ttype.to_le_bytes())?;
    for d in &t.dims {
        w.write_all(&d.to_le_bytes())?;
    }
    w.write_all(t.name.as_bytes())
}

/// The data's values as f32 (the source is f32 or f16).
fn to_f32(ttype: i32, data: &[u8]) -> Vec<f32> {
    match ttype {
        0 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        _ => {
            let halves: Vec<u16> = data
                .chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
                .collect();
            let mut out = vec![0f32; halves.len()];
            // SAFETY: ggml_fp16_t is a u16; both buffers hold `halves.len()` values.
            unsafe {
                whisper_rs::whisper_rs_sys::ggml_fp16_to_fp32_row(
                    halves.as_ptr(),
                    out.as_mut_ptr(),
                    halves.len() as i64,
                )
            };
            out
        }
    }
}

/// Rows of `n_per_row` f32 values → `quant`'s blocks, by ggml's own quantizer.
fn quantize_rows(quant: Quant, values: &[f32], n_per_row: usize) -> Vec<u8> {
    let rows = values.len() / n_per_row;
    let mut out = vec![0u8; rows * n_per_row / 32 * quant.block_bytes()];
    // SAFETY: `values` holds rows × n_per_row f32s; `out` is exactly the size ggml writes for them
    // (n_per_row is a multiple of 32, checked by the caller); no importance matrix.
    let written = unsafe {
        whisper_rs::whisper_rs_sys::ggml_quantize_chunk(
            quant.tensor_type() as _,
            values.as_ptr(),
            out.as_mut_ptr().cast(),
            0,
            rows as i64,
            n_per_row as i64,
            std::ptr::null(),
        )
    };
    assert_eq!(
        written,
        out.len(),
        "ggml wrote another size than its block size says"
    );
    out
}

/// Writes `input`'s model with its weight matrices in `quant` to `output` (through a temporary
/// file beside it, renamed at the end: a failure leaves no half-written model).
pub fn quantize(input: &Path, output: &Path, quant: Quant) -> Result<Quantized> {
    if input == output {
        return Err(Error::WhisperModel(
            "write the quantized model to another file".into(),
        ));
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    let f = std::fs::File::open(input).map_err(io(input))?;
    let bytes_in = f.metadata().map_err(io(input))?.len();
    let tmp = output.with_extension("part");
    let out = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    let result = convert(&mut BufReader::new(f), &mut BufWriter::new(out), quant);
    match result {
        Ok(mut done) => {
            std::fs::rename(&tmp, output).map_err(io(output))?;
            done.bytes_in = bytes_in;
            done.bytes_out = std::fs::metadata(output).map_err(io(output))?.len();
            Ok(done)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// The file walk: header, mel filters and vocabulary copied (the file type changed), then each
/// tensor copied or quantized.
fn convert<R: Read, W: Write>(r: &mut R, w: &mut W, quant: Quant) -> Result<Quantized> {
    let wr = |e: std::io::Error| Error::WhisperModel(format!("writing the quantized model: {e}"));
    let magic = read_i32(r).map_err(bad)? as u32;
    if magic != MAGIC {
        return Err(bad("no ggml magic at its start"));
    }
    w.write_all(&magic.to_le_bytes()).map_err(wr)?;
    // n_vocab, n_audio_ctx, n_audio_state, n_audio_head, n_audio_layer, n_text_ctx,
    // n_text_state, n_text_head, n_text_layer, n_mels, then ftype.
    for _ in 0..10 {
        let v = read_i32(r).map_err(bad)?;
        w.write_all(&v.to_le_bytes()).map_err(wr)?;
    }
    let ftype = read_i32(r).map_err(bad)? % QNT_VERSION_FACTOR;
    if ftype != 0 && ftype != 1 {
        return Err(Error::WhisperModel(format!(
            "this model is already quantized (file type {ftype}): quantize its f16 or f32 file"
        )));
    }
    let ftype_out = quant.file_type() + QNT_VERSION * QNT_VERSION_FACTOR;
    w.write_all(&ftype_out.to_le_bytes()).map_err(wr)?;
    // Mel filters: n_mel, n_fft, then n_mel × n_fft f32.
    let n_mel = read_i32(r).map_err(bad)?;
    let n_fft = read_i32(r).map_err(bad)?;
    if !(1..=512).contains(&n_mel) || !(1..=4096).contains(&n_fft) {
        return Err(bad(format!("mel filters of {n_mel} × {n_fft}")));
    }
    let filters = read_vec(r, n_mel as usize * n_fft as usize * 4)?;
    for v in [n_mel, n_fft] {
        w.write_all(&v.to_le_bytes()).map_err(wr)?;
    }
    w.write_all(&filters).map_err(wr)?;
    // Vocabulary: n, then n × (u32 length, bytes).
    let n_vocab = read_i32(r).map_err(bad)?;
    if !(0..=1 << 20).contains(&n_vocab) {
        return Err(bad(format!("a vocabulary of {n_vocab} tokens")));
    }
    w.write_all(&n_vocab.to_le_bytes()).map_err(wr)?;
    for _ in 0..n_vocab {
        let len = read_i32(r).map_err(bad)?;
        if !(0..=1024).contains(&len) {
            return Err(bad(format!("a {len}-byte token")));
        }
        let tok = read_vec(r, len as usize)?;
        w.write_all(&len.to_le_bytes()).map_err(wr)?;
        w.write_all(&tok).map_err(wr)?;
    }
    let mut done = Quantized {
        tensors: 0,
        quantized: 0,
        bytes_in: 0,
        bytes_out: 0,
    };
    while let Some(t) = read_head(r)? {
        let size = match t.ttype {
            0 => 4,
            1 => 2,
            other => {
                return Err(bad(format!(
                    "tensor {} of type {other}, neither f32 nor f16",
                    t.name
                )))
            }
        };
        let data = read_vec(r, t.elements() * size)?;
        done.tensors += 1;
        let n_per_row = t.dims[0] as usize;
        if takes_weight_type(&t) && n_per_row.is_multiple_of(32) {
            let q = quantize_rows(quant, &to_f32(t.ttype, &data), n_per_row);
            write_head(w, &t, quant.tensor_type()).map_err(wr)?;
            w.write_all(&q).map_err(wr)?;
            done.quantized += 1;
        } else if takes_weight_type(&t) {
            // whisper.cpp would create it quantized, and it cannot be: rows must be whole blocks.
            return Err(Error::WhisperModel(format!(
                "tensor {} has rows of {n_per_row} values, not a multiple of 32: this model cannot be quantized",
                t.name
            )));
        } else {
            write_head(w, &t, t.ttype).map_err(wr)?;
            w.write_all(&data).map_err(wr)?;
        }
    }
    if done.quantized == 0 {
        return Err(bad("no weight matrices in it"));
    }
    w.flush().map_err(wr)?;
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A miniature model file: the header, 2 × 3 mel filters, 2 tokens, then the tensors given.
    fn file(ftype: i32, tensors: &[(&str, i32, &[i32])]) -> Vec<u8> {
        let mut f = Vec::new();
        let i = |f: &mut Vec<u8>, v: i32| f.extend_from_slice(&v.to_le_bytes());
        i(&mut f, MAGIC as i32);
        for v in [2, 1500, 64, 1, 1, 448, 64, 1, 1, 2] {
            i(&mut f, v);
        }
        i(&mut f, ftype);
        i(&mut f, 2);
        i(&mut f, 3);
        for k in 0..6 {
            f.extend_from_slice(&(k as f32).to_le_bytes());
        }
        i(&mut f, 2);
        for tok in ["a", "бв"] {
            i(&mut f, tok.len() as i32);
            f.extend_from_slice(tok.as_bytes());
        }
        for &(name, ttype, dims) in tensors {
            let t = TensorHead {
                ttype,
                dims: dims.to_vec(),
                name: name.into(),
            };
            write_head(&mut f, &t, ttype).unwrap();
            for k in 0..t.elements() {
                let v = ((k % 17) as f32 - 8.0) / 8.0;
                if ttype == 0 {
                    f.extend_from_slice(&v.to_le_bytes());
                } else {
                    // f16 of v: exact for these eighths.
                    f.extend_from_slice(&half_bits(v).to_le_bytes());
                }
            }
        }
        f
    }

    /// f16 bits of a small multiple of 1/8 (|v| ≤ 1), by hand: sign, exponent, mantissa.
    fn half_bits(v: f32) -> u16 {
        if v == 0.0 {
            return 0;
        }
        let b = v.to_bits();
        let sign = ((b >> 16) & 0x8000) as u16;
        let exp = (((b >> 23) & 0xff) as i32 - 127 + 15) as u16;
        let man = ((b >> 13) & 0x3ff) as u16;
        sign | (exp << 10) | man
    }

    #[test]
    fn weight_matrices_are_quantized_and_the_rest_is_copied() {
        let src = file(
            1,
            &[
                ("encoder.positional_embedding", 0, &[64, 4]),
                ("encoder.conv1.weight", 1, &[3, 2, 64]),
                ("encoder.conv1.bias", 0, &[1, 64]),
                ("encoder.blocks.0.attn.query.weight", 1, &[64, 64]),
                ("encoder.blocks.0.attn.query.bias", 0, &[64]),
                ("decoder.token_embedding.weight", 1, &[64, 2]),
            ],
        );
        let mut out = Vec::new();
        let done = convert(&mut &src[..], &mut out, Quant::Q8_0).unwrap();
        assert_eq!((done.tensors, done.quantized), (6, 2));
        // The header: the same hparams, the file type q8_0 with the quantization version.
        assert_eq!(out[..44], src[..44]);
        assert_eq!(i32::from_le_bytes(out[44..48].try_into().unwrap()), 2007);
        // Walk the result: types and sizes as whisper.cpp will check them.
        let mut r = &out[48..];
        let skip = |n: usize, r: &mut &[u8]| *r = &r[n..];
        skip(8 + 6 * 4, &mut r);
        skip(4 + 4 + 1 + 4 + "бв".len(), &mut r);
        let mut seen = Vec::new();
        while let Some(t) = read_head(&mut r).unwrap() {
            let n = t.elements();
            let bytes = match t.ttype {
                0 => n * 4,
                1 => n * 2,
                8 => n / 32 * 34,
                other => panic!("type {other}"),
            };
            seen.push((t.name.clone(), t.ttype));
            if t.ttype == 8 {
                // The first block: its scale (f16 of 1/127) and values that come back to within
                // one step of the originals.
                let d = half_scale(&r[..2]);
                assert!((d - 1.0 / 127.0).abs() < 1e-4, "scale {d}");
                for k in 0..32 {
                    let q = r[2 + k] as i8 as f32 * d;
                    let v = ((k % 17) as f32 - 8.0) / 8.0;
                    assert!((q - v).abs() <= d, "value {k}: {q} for {v}");
                }
            }
            skip(bytes, &mut r);
        }
        assert!(r.is_empty());
        assert_eq!(
            seen,
            [
                ("encoder.positional_embedding".to_string(), 0),
                ("encoder.conv1.weight".into(), 1),
                ("encoder.conv1.bias".into(), 0),
                ("encoder.blocks.0.attn.query.weight".into(), 8),
                ("encoder.blocks.0.attn.query.bias".into(), 0),
                ("decoder.token_embedding.weight".into(), 8),
            ]
        );
    }

    /// f16 bits → f32 (normal numbers only: the scales here).
    fn half_scale(b: &[u8]) -> f32 {
        let h = u16::from_le_bytes([b[0], b[1]]);
        let exp = ((h >> 10) & 0x1f) as i32 - 15;
        let man = (h & 0x3ff) as f32 / 1024.0;
        (1.0 + man) * 2f32.powi(exp)
    }

    #[test]
    fn quantized_files_odd_rows_and_other_files_are_refused() {
        let mut out = Vec::new();
        let q = file(7 + 2000, &[("decoder.token_embedding.weight", 8, &[64, 2])]);
        let e = convert(&mut &q[..], &mut out, Quant::Q5_1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("already quantized"), "{e}");
        let odd = file(1, &[("encoder.blocks.0.mlp.0.weight", 1, &[48, 2])]);
        let e = convert(&mut &odd[..], &mut Vec::new(), Quant::Q8_0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a multiple of 32"), "{e}");
        let e = convert(&mut &b"GIF89a.........."[..], &mut Vec::new(), Quant::Q8_0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no ggml magic"), "{e}");
        let mut cut = file(1, &[("encoder.blocks.0.attn.key.weight", 1, &[64, 64])]);
        cut.truncate(cut.len() - 10);
        let e = convert(&mut &cut[..], &mut Vec::new(), Quant::Q8_0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("ends early"), "{e}");
        assert_eq!("Q5_1".parse::<Quant>().unwrap(), Quant::Q5_1);
        assert!("q3_k".parse::<Quant>().is_err());
    }
}
