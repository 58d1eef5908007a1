//! Training data in the original project's formats and the public ones: the popularity CSV
//! (`text,label`), ru_go_emotions CSVs (`ru_text`/`text`, `labels` like `[ 4 27]`), the combined
//! `multitask_train.csv` (`text,label,task,emotion_labels`), GoEmotions TSV
//! (`text<TAB>2,27<TAB>id`) and one-text-per-line files (optionally .gz) labelled on the command
//! line. Rows that cannot be read are counted and reported; a file wrong as a whole is an error.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};

/// Number of emotion labels (GoEmotions).
pub const EMOTIONS: usize = 28;

/// What one example teaches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Label {
    Popularity(bool),
    Emotions(Vec<usize>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub text: String,
    pub label: Label,
    /// The text this one was translated from, where the file has both (ru_go_emotions' `text`
    /// beside `ru_text`): `train --align` pulls the two encodings together.
    pub pair: Option<String>,
}

/// The format of a data file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Decide from the extension and the header.
    Auto,
    PopularityCsv,
    EmotionsCsv,
    MultitaskCsv,
    GoEmotionsTsv,
    /// One text per line, all with the popularity label given.
    Lines,
}

/// A data source as given on the command line: `PATH[#kind=K][#label=0|1][#part=LO-HI]`.
/// `part` keeps the rows whose text hashes into LO..HI of 0..100 (a stable split of one file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Source {
    pub path: PathBuf,
    pub kind: Kind,
    pub label: Option<bool>,
    pub part: Option<(u8, u8)>,
}

impl std::str::FromStr for Source {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let mut it = s.split('#');
        let path = PathBuf::from(it.next().unwrap_or_default());
        let mut src = Source {
            path,
            kind: Kind::Auto,
            label: None,
            part: None,
        };
        for opt in it {
            let (k, v) = opt
                .split_once('=')
                .ok_or_else(|| format!("{opt:?}: expected key=value"))?;
            match k {
                "kind" => {
                    src.kind = match v {
                        "popularity" | "popularity_csv" => Kind::PopularityCsv,
                        "emotions" | "emotions_csv" => Kind::EmotionsCsv,
                        "multitask" | "multitask_csv" => Kind::MultitaskCsv,
                        "goemotions" | "goemotions_tsv" => Kind::GoEmotionsTsv,
                        "lines" => Kind::Lines,
                        _ => return Err(format!("unknown kind {v:?}")),
                    }
                }
                "label" => {
                    src.label = Some(match v {
                        "1" | "true" => true,
                        "0" | "false" => false,
                        _ => return Err(format!("label must be 0 or 1, not {v:?}")),
                    })
                }
                "part" => {
                    let (a, b) = v.split_once('-').ok_or("part is LO-HI, e.g. 0-50")?;
                    let (a, b): (u8, u8) = (
                        a.parse().map_err(|_| "bad part")?,
                        b.parse().map_err(|_| "bad part")?,
                    );
                    if a >= b || b > 100 {
                        return Err("part LO-HI needs 0 <= LO < HI <= 100".into());
                    }
                    src.part = Some((a, b));
                }
                _ => return Err(format!("unknown option {k:?} (kind, label, part)")),
            }
        }
        Ok(src)
    }
}

/// What reading one source gave.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SourceStats {
    pub path: PathBuf,
    pub kind: Option<Kind>,
    pub rows: usize,
    pub popularity: usize,
    pub emotions: usize,
    /// Rows outside `part`.
    pub excluded_by_part: usize,
    pub skipped: usize,
    /// The first few skipped rows: (line, why).
    pub skipped_examples: Vec<(usize, String)>,
}

impl SourceStats {
    fn skip(&mut self, line: usize, why: impl Into<String>) {
        self.skipped += 1;
        if self.skipped_examples.len() < 5 {
            self.skipped_examples.push((line, why.into()));
        }
    }
}

/// Stable 0..100 bucket of a text (FNV-1a).
pub fn bucket(text: &str) -> u8 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in text.as_bytes() {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    (h % 100) as u8
}

fn open(path: &Path) -> Result<Box<dyn BufRead>> {
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let r: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(flate2::read::MultiGzDecoder::new(f))
    } else {
        Box::new(f)
    };
    Ok(Box::new(std::io::BufReader::new(r)))
}

/// Parses `[ 4 27]`, `[4, 27]`, `4,27` or `4 27`.
pub fn parse_label_list(s: &str) -> std::result::Result<Vec<usize>, String> {
    let inner = s.trim().trim_start_matches('[').trim_end_matches(']');
    let mut out = Vec::new();
    for tok in inner
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|t| !t.is_empty())
    {
        let n: usize = tok
            .parse()
            .map_err(|_| format!("{tok:?} is not a label number"))?;
        if n >= EMOTIONS {
            return Err(format!("label {n} is out of range 0..{EMOTIONS}"));
        }
        if !out.contains(&n) {
            out.push(n);
        }
    }
    if out.is_empty() {
        return Err("no labels".into());
    }
    Ok(out)
}

fn detect(path: &Path) -> Result<Kind> {
    let name = path
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .to_lowercase();
    let name = name.trim_end_matches(".gz");
    if name.ends_with(".tsv") {
        return Ok(Kind::GoEmotionsTsv);
    }
    if name.ends_with(".txt") {
        return Ok(Kind::Lines);
    }
    if name.ends_with(".csv") {
        let mut first = String::new();
        open(path)?
            .read_line(&mut first)
            .map_err(|e| Error::io(path, e))?;
        let cols: Vec<String> = first
            .trim()
            .trim_start_matches('\u{feff}')
            .split(',')
            .map(|c| c.trim().to_lowercase())
            .collect();
        let has = |c: &str| cols.iter().any(|x| x == c);
        if has("task") {
            return Ok(Kind::MultitaskCsv);
        }
        if has("labels") && (has("text") || has("ru_text")) {
            return Ok(Kind::EmotionsCsv);
        }
        if has("label") && has("text") {
            return Ok(Kind::PopularityCsv);
        }
        return Err(Error::data(path, format!("a CSV with columns {cols:?}: expected text,label (popularity), ru_text/text,labels (emotions) or text,label,task,emotion_labels (multitask)")));
    }
    Err(Error::data(
        path,
        "unknown data format: use .csv, .tsv, .txt(.gz) or #kind=...",
    ))
}

/// Reads one source.
pub fn load(src: &Source) -> Result<(Vec<Example>, SourceStats)> {
    let path = &src.path;
    if !path.is_file() {
        return Err(Error::data(path, "no such file"));
    }
    let kind = if src.kind == Kind::Auto {
        detect(path)?
    } else {
        src.kind
    };
    let mut stats = SourceStats {
        path: path.clone(),
        kind: Some(kind),
        ..Default::default()
    };
    let mut out = Vec::new();
    let mut push = |text: &str, pair: Option<&str>, label: Label, stats: &mut SourceStats| {
        let text = text.trim();
        if let Some((a, b)) = src.part {
            let k = bucket(text);
            if k < a || k >= b {
                stats.excluded_by_part += 1;
                return;
            }
        }
        match label {
            Label::Popularity(_) => stats.popularity += 1,
            Label::Emotions(_) => stats.emotions += 1,
        }
        out.push(Example {
            text: text.to_string(),
            label,
            pair: pair.map(str::trim).filter(|p| !p.is_empty()).map(str::to_string),
        });
    };
    match kind {
        Kind::Lines => {
            let label = src.label.ok_or_else(|| {
                Error::data(
                    path,
                    "a one-text-per-line file needs its popularity label: PATH#label=1 or #label=0",
                )
            })?;
            for (i, line) in open(path)?.lines().enumerate() {
                match line {
                    Ok(l) if l.trim().is_empty() => {} // blank separators are not rows
                    Ok(l) => {
                        stats.rows += 1;
                        push(&l, None, Label::Popularity(label), &mut stats)
                    }
                    Err(e) => {
                        stats.rows += 1;
                        stats.skip(i + 1, format!("unreadable: {e}"))
                    }
                }
            }
        }
        Kind::GoEmotionsTsv => {
            for (i, line) in open(path)?.lines().enumerate() {
                stats.rows += 1;
                let line = match line {
                    Ok(l) => l,
                    Err(e) => {
                        stats.skip(i + 1, format!("unreadable: {e}"));
                        continue;
                    }
                };
                let mut f = line.split('\t');
                let (Some(text), Some(labels)) = (f.next(), f.next()) else {
                    stats.skip(i + 1, "expected text<TAB>labels<TAB>id");
                    continue;
                };
                match parse_label_list(labels) {
                    Ok(l) if !text.trim().is_empty() => push(text, None, Label::Emotions(l), &mut stats),
                    Ok(_) => stats.skip(i + 1, "empty text"),
                    Err(e) => stats.skip(i + 1, e),
                }
            }
        }
        Kind::PopularityCsv | Kind::EmotionsCsv | Kind::MultitaskCsv => {
            let mut rd = csv::ReaderBuilder::new().flexible(true).from_reader(open(path)?);
            let headers: Vec<String> = rd
                .headers()
                .map_err(|e| Error::data(path, format!("no header row: {e}")))?
                .iter()
                .map(|h| h.trim().trim_start_matches('\u{feff}').to_lowercase())
                .collect();
            let col = |n: &str| headers.iter().position(|h| h == n);
            let need = |n: &str| {
                col(n).ok_or_else(|| Error::data(path, format!("no column {n:?} (columns: {headers:?})")))
            };
            let text_col = match kind {
                Kind::EmotionsCsv => col("ru_text").map_or_else(|| need("text"), Ok)?,
                _ => need("text")?,
            };
            // ru_go_emotions keeps the English original beside the translation.
            let pair_col = match kind {
                Kind::EmotionsCsv => col("text").filter(|&c| c != text_col),
                _ => None,
            };
            let (label_col, task_col, emo_col) = match kind {
                Kind::PopularityCsv => (Some(need("label")?), None, None),
                Kind::EmotionsCsv => (None, None, Some(need("labels")?)),
                _ => (
                    col("label"),
                    Some(need("task")?),
                    col("emotion_labels").or(col("labels")),
                ),
            };
            for (i, rec) in rd.records().enumerate() {
                let line = i + 2;
                stats.rows += 1;
                let rec = match rec {
                    Ok(r) => r,
                    Err(e) => {
                        stats.skip(line, format!("unreadable: {e}"));
                        continue;
                    }
                };
                let text = rec.get(text_col).unwrap_or("");
                let pair = pair_col.and_then(|c| rec.get(c));
                if text.trim().is_empty() {
                    stats.skip(line, "empty text");
                    continue;
                }
                let task = task_col.map(|c| rec.get(c).unwrap_or("").trim().to_lowercase());
                let is_pop = match task.as_deref() {
                    None => kind == Kind::PopularityCsv,
                    Some("popularity" | "pop" | "viral" | "virality") => true,
                    Some("emotion" | "emotions" | "emo") => false,
                    Some(other) => {
                        stats.skip(line, format!("unknown task {other:?}"));
                        continue;
                    }
                };
                if is_pop {
                    let v = label_col.and_then(|c| rec.get(c)).unwrap_or("").trim();
                    match v.parse::<f64>() {
                        Ok(x) if x == 0.0 || x == 1.0 => {
                            push(text, pair, Label::Popularity(x == 1.0), &mut stats)
                        }
                        _ => stats.skip(line, format!("popularity label {v:?} is not 0 or 1")),
                    }
                } else {
                    match parse_label_list(emo_col.and_then(|c| rec.get(c)).unwrap_or("")) {
                        Ok(l) => push(text, pair, Label::Emotions(l), &mut stats),
                        Err(e) => stats.skip(line, e),
                    }
                }
            }
        }
        Kind::Auto => unreachable!("detected above"),
    }
    if stats.rows > 0 && stats.skipped * 2 > stats.rows {
        return Err(Error::data(
            path,
            format!(
                "{} of {} rows could not be read (first: {:?}): is it the right format?",
                stats.skipped,
                stats.rows,
                stats.skipped_examples.first()
            ),
        ));
    }
    if out.is_empty() && stats.excluded_by_part == 0 {
        return Err(Error::data(path, "no usable rows"));
    }
    Ok((out, stats))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        p
    }

    #[test]
    fn all_formats_read() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        let pop = write(
            p,
            "pop.csv",
            "text,label\nШок! Такого вы не видели,1\nСовет директоров собрался,0\nbad row,7\n",
        );
        let (ex, st) = load(&format!("{}", pop.display()).parse().unwrap()).unwrap();
        assert_eq!(ex.len(), 2);
        assert_eq!(ex[0].label, Label::Popularity(true));
        assert_eq!((st.skipped, st.skipped_examples[0].0), (1, 4));

        let ru = write(
            p,
            "ru.csv",
            "ru_text,text,labels,id\nЯ так рад!,I am so glad!,[ 4 17],e1\nНу и ладно,\"Oh well\",[27],e2\n",
        );
        let (ex, _) = load(&ru.display().to_string().parse().unwrap()).unwrap();
        assert_eq!(
            ex[0],
            Example {
                text: "Я так рад!".into(),
                label: Label::Emotions(vec![4, 17]),
                pair: Some("I am so glad!".into()),
            }
        );
        assert_eq!(ex[1].pair.as_deref(), Some("Oh well"));

        let mt = write(
            p,
            "multitask_train.csv",
            "text,label,task,emotion_labels\nВау,1,popularity,\nГрустно,,emotion,[25]\n",
        );
        let (ex, _) = load(&mt.display().to_string().parse().unwrap()).unwrap();
        assert_eq!(ex[1].label, Label::Emotions(vec![25]));
        assert!(ex.iter().all(|e| e.pair.is_none()), "one text column: no pairs");

        let tsv = write(
            p,
            "train.tsv",
            "My favourite food\t27\teebbqej\nThanks!\t15,27\tx\nbroken line\n",
        );
        let (ex, st) = load(&tsv.display().to_string().parse().unwrap()).unwrap();
        assert_eq!(ex[1].label, Label::Emotions(vec![15, 27]));
        assert_eq!(st.skipped, 1);

        let lines = write(
            p,
            "clickbait.txt",
            "You won't believe this\n\nTen tricks doctors hate\n",
        );
        let err = load(&lines.display().to_string().parse().unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("#label=1"), "{err}");
        let (ex, st) = load(&format!("{}#label=1", lines.display()).parse().unwrap()).unwrap();
        assert_eq!(ex.len(), 2);
        assert_eq!(
            (st.rows, st.skipped),
            (2, 0),
            "blank separator lines are not rows"
        );
    }

    #[test]
    fn wrong_files_are_errors() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "x.csv", "a,b\n1,2\n");
        assert!(load(&p.display().to_string().parse().unwrap())
            .unwrap_err()
            .to_string()
            .contains("columns"));
        let p = write(d.path(), "y.tsv", "no tabs here\nnor here\n");
        assert!(load(&p.display().to_string().parse().unwrap())
            .unwrap_err()
            .to_string()
            .contains("could not be read"));
        assert!("x.csv#kind=nope".parse::<Source>().is_err());
    }

    #[test]
    fn parts_split_a_file_stably() {
        let d = tempfile::tempdir().unwrap();
        let body: String = (0..200).map(|i| format!("headline number {i}\n")).collect();
        let p = write(d.path(), "h.txt", &body);
        let a = load(&format!("{}#label=1#part=0-50", p.display()).parse().unwrap())
            .unwrap()
            .0;
        let b = load(&format!("{}#label=1#part=50-100", p.display()).parse().unwrap())
            .unwrap()
            .0;
        assert_eq!(a.len() + b.len(), 200);
        assert!(a.len() > 70 && b.len() > 70);
        assert!(a.iter().all(|x| !b.contains(x)));
    }
}
