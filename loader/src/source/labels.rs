//! Labels for flat datasets (ImageNet val): which class each image file is.
//!
//! Accepted label files, told apart by their content:
//! - `ILSVRC2012_validation_ground_truth.txt` (devkit): line i holds the ILSVRC2012_ID of
//!   `ILSVRC2012_val_{i:08}`. Those ids are the devkit's (`meta.mat`) numbering, not sorted-synset
//!   indices, so a synset list giving each id's synset is required.
//! - `LOC_val_solution.csv`: header `ImageId,PredictionString`; the first token of the prediction string
//!   is the synset.
//! - `filename synset` lines, separated by a tab or spaces.
//!
//! Synset lists: `map_clsloc.txt` lines `n02119789 1 kit_fox` (explicit ids), or one synset first on each
//! line (`LOC_synset_mapping.txt`, a `classes.txt`), where the id is the line number.
//!
//! Images are matched by base name without an image extension, so `val/ILSVRC2012_val_00000001.JPEG`,
//! `ILSVRC2012_val_00000001.JPEG` and `ILSVRC2012_val_00000001` are the same key.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use super::{FileKind, OpenReport, ext_kind, push_limited, split_dir};
use crate::error::{Error, Result};

/// Label of every image key, and the class table.
#[derive(Debug)]
pub(crate) struct LabelSet {
    pub path: PathBuf,
    /// Sorted synsets (or class names): those of the synset list, else those of every row.
    classes: Vec<String>,
    /// Whether `classes` came from a synset list (and is therefore the dataset's whole class table).
    from_list: bool,
    /// Label (index into `classes`) and line of each image key.
    by_key: HashMap<String, (u32, usize)>,
    unknown: Vec<String>,
    unknown_count: usize,
}

/// How many rows for absent images a warning names before it only counts.
const UNUSED_NAMED: usize = 3;

/// The key an image or a label line is matched by.
pub(crate) fn key_of(name: &str) -> &str {
    let base = split_dir(name).1;
    match base.rsplit_once('.') {
        Some((stem, ext)) if ext_kind(ext) != FileKind::Other => stem,
        _ => base,
    }
}

/// The file as text, without a leading byte order mark: Excel and Windows editors save CSV and text as
/// UTF-8 with one, and left in place it would glue itself to the first header or file name.
fn read_text(path: &Path) -> Result<String> {
    let bytes = super::file::read_regular(path)?;
    let mut text = String::from_utf8(bytes).map_err(|e| Error::LabelsFile {
        path: path.to_owned(),
        line: 0,
        reason: format!("not UTF-8 text ({e})"),
    })?;
    if text.starts_with('\u{feff}') {
        text.drain(..'\u{feff}'.len_utf8());
    }
    Ok(text)
}

fn bad(path: &Path, line: usize, reason: impl Into<String>) -> Error {
    Error::LabelsFile {
        path: path.to_owned(),
        line,
        reason: reason.into(),
    }
}

/// Lines with their 1-based numbers; blank lines are skipped only at the end of the file.
fn lines<'t>(path: &Path, text: &'t str) -> Result<Vec<(usize, &'t str)>> {
    let mut out: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .collect();
    while out.last().is_some_and(|(_, l)| l.is_empty()) {
        out.pop();
    }
    if let Some((n, _)) = out.iter().find(|(_, l)| l.is_empty()) {
        return Err(bad(path, *n, "empty line"));
    }
    Ok(out)
}

/// A synset list: `(synset, devkit id)` pairs.
fn synset_list(path: &Path) -> Result<(Vec<(String, u32)>, bool)> {
    let text = read_text(path)?;
    let rows = lines(path, &text)?;
    if rows.is_empty() {
        return Err(bad(path, 0, "empty synset list"));
    }
    let explicit = rows.iter().all(|(_, l)| {
        let mut t = l.split_whitespace();
        t.next().is_some() && t.next().is_some_and(|id| id.parse::<u32>().is_ok())
    });
    let mut out = Vec::with_capacity(rows.len());
    let mut seen_synset = HashMap::new();
    let mut seen_id = HashMap::new();
    for (i, (n, l)) in rows.iter().enumerate() {
        let mut t = l.split_whitespace();
        let synset = t.next().unwrap_or_default().to_owned();
        let id = if explicit {
            t.next().and_then(|id| id.parse().ok()).unwrap_or(0)
        } else {
            i as u32 + 1
        };
        if let Some(prev) = seen_synset.insert(synset.clone(), *n) {
            return Err(bad(
                path,
                *n,
                format!("synset `{synset}` already on line {prev}"),
            ));
        }
        if let Some(prev) = seen_id.insert(id, *n) {
            return Err(bad(path, *n, format!("id {id} already on line {prev}")));
        }
        out.push((synset, id));
    }
    Ok((out, explicit))
}

enum Format {
    GroundTruth,
    LocCsv,
    Pairs,
}

fn detect(rows: &[(usize, &str)]) -> Format {
    if rows.first().is_some_and(|(_, l)| {
        l.replace(' ', "")
            .eq_ignore_ascii_case("ImageId,PredictionString")
    }) {
        Format::LocCsv
    } else if !rows.is_empty() && rows.iter().all(|(_, l)| l.parse::<u32>().is_ok()) {
        Format::GroundTruth
    } else {
        Format::Pairs
    }
}

impl LabelSet {
    /// Reads a labels file, with an optional synset list (required for the devkit ground truth).
    pub(crate) fn load(labels: &Path, synsets: Option<&Path>) -> Result<LabelSet> {
        let text = read_text(labels)?;
        let rows = lines(labels, &text)?;
        if rows.is_empty() {
            return Err(bad(labels, 0, "empty labels file"));
        }
        let list = synsets.map(synset_list).transpose()?;
        // (key, synset, line) triples.
        let mut entries: Vec<(String, String, usize)> = Vec::with_capacity(rows.len());
        let mut unknown = Vec::new();
        let mut unknown_count = 0;
        match detect(&rows) {
            Format::GroundTruth => {
                let Some((list, explicit)) = &list else {
                    return Err(bad(
                        labels,
                        0,
                        "this is a devkit ground truth (one ILSVRC2012_ID per line); those ids are the devkit's \
                         numbering, not sorted class indices: also pass the devkit's synset list \
                         (OpenOptions::synsets / --synsets: map_clsloc.txt, `n02119789 1 kit_fox` lines)",
                    ));
                };
                let synsets = synsets.unwrap_or(Path::new(""));
                // Devkit id 1 is n02119789 (kit fox), so a list in sorted order cannot be in devkit order:
                // taking line numbers as ids would label every image wrongly without a word.
                if !*explicit && list.len() > 1 && list.windows(2).all(|w| w[0].0 < w[1].0) {
                    return Err(bad(
                        synsets,
                        0,
                        "this synset list is in sorted order (like LOC_synset_mapping.txt), but \
                         ILSVRC2012_validation_ground_truth.txt holds devkit ILSVRC2012_IDs (1 = n02119789); pass \
                         map_clsloc.txt (`n02119789 1 kit_fox` lines) or a list in devkit order",
                    ));
                }
                let by_id: HashMap<u32, &str> =
                    list.iter().map(|(s, id)| (*id, s.as_str())).collect();
                for (n, l) in &rows {
                    let key = format!("ILSVRC2012_val_{n:08}");
                    let id: u32 = l.parse().unwrap_or(0);
                    match by_id.get(&id) {
                        Some(s) => entries.push((key, s.to_string(), *n)),
                        None => push_limited(&mut unknown, &mut unknown_count, || {
                            format!("{key}: id {id}")
                        }),
                    }
                }
            }
            Format::LocCsv => {
                for (n, l) in &rows[1..] {
                    let (id, pred) = l
                        .split_once(',')
                        .ok_or_else(|| bad(labels, *n, "expected `ImageId,PredictionString`"))?;
                    let synset = pred
                        .split_whitespace()
                        .next()
                        .ok_or_else(|| bad(labels, *n, "empty PredictionString"))?;
                    entries.push((key_of(id.trim()).to_owned(), synset.to_owned(), *n));
                }
            }
            Format::Pairs => {
                for (n, l) in &rows {
                    let mut t = l.split_whitespace();
                    let (Some(file), Some(label), None) = (t.next(), t.next(), t.next()) else {
                        return Err(bad(
                            labels,
                            *n,
                            "expected `filename synset` (two fields, tab or space separated)",
                        ));
                    };
                    entries.push((key_of(file).to_owned(), label.to_owned(), *n));
                }
            }
        }
        let classes: Vec<String> = match &list {
            Some((list, _)) => list
                .iter()
                .map(|(s, _)| s.clone())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect(),
            None => entries
                .iter()
                .map(|(_, s, _)| s.clone())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect(),
        };
        let index: HashMap<&str, u32> = classes
            .iter()
            .enumerate()
            .map(|(i, c)| (c.as_str(), i as u32))
            .collect();
        let mut by_key: HashMap<String, (u32, usize)> = HashMap::with_capacity(entries.len());
        for (key, synset, n) in entries {
            let Some(&label) = index.get(synset.as_str()) else {
                push_limited(&mut unknown, &mut unknown_count, || {
                    format!("{key}: {synset}")
                });
                continue;
            };
            if let Some(&(prev, prev_line)) = by_key.get(&key)
                && prev != label
            {
                return Err(bad(
                    labels,
                    n,
                    format!(
                        "`{key}` labelled `{synset}` here but `{}` on line {prev_line}",
                        classes[prev as usize]
                    ),
                ));
            }
            by_key.insert(key, (label, n));
        }
        Ok(LabelSet {
            path: labels.to_owned(),
            classes,
            from_list: list.is_some(),
            by_key,
            unknown,
            unknown_count,
        })
    }

    /// Labels the images found (`names`: any paths, matched by [`key_of`]), returning the label of each,
    /// in the order given, and the class table. Fails listing the images without a label and the rows
    /// naming a class the synset list lacks, if any.
    ///
    /// The classes are the synset list's when one was given (it is the whole class table, the train set's
    /// too). Without one they are the synsets of the images found, never those of rows for images the
    /// dataset lacks: `LOC_val_solution.csv` lists all 50,000 val images, and a class only absent images
    /// have would shift every label after it and no longer match the train set's classes. Such rows are
    /// counted in [`OpenReport::unused_labels`] and named in a warning.
    pub(crate) fn assign<I>(
        self,
        names: I,
        report: &mut OpenReport,
    ) -> Result<(Vec<u32>, Vec<String>)>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let mut labels = Vec::new();
        let (mut missing, mut missing_count) = (Vec::new(), 0);
        let mut used: HashSet<&str> = HashSet::new();
        for name in names {
            let name = name.as_ref();
            match self.by_key.get_key_value(key_of(name)) {
                Some((key, &(label, _))) => {
                    used.insert(key);
                    labels.push(label);
                }
                None => push_limited(&mut missing, &mut missing_count, || name.to_owned()),
            }
        }
        if missing_count > 0 || self.unknown_count > 0 {
            return Err(Error::Labels {
                path: self.path.clone(),
                missing,
                missing_count,
                unknown: self.unknown.clone(),
                unknown_count: self.unknown_count,
            });
        }
        let mut unused: Vec<(usize, &str)> = self
            .by_key
            .iter()
            .filter(|(k, _)| !used.contains(k.as_str()))
            .map(|(k, &(_, line))| (line, k.as_str()))
            .collect();
        if !unused.is_empty() {
            unused.sort_unstable();
            let named: Vec<&str> = unused.iter().take(UNUSED_NAMED).map(|u| u.1).collect();
            let more = unused.len().saturating_sub(UNUSED_NAMED);
            report.unused_labels += unused.len() as u64;
            report.warnings.push(format!(
                "{}: {} row(s) label images the dataset does not have; ignored, they make no class \
                 (first: {}{})",
                self.path.display(),
                unused.len(),
                named.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                },
            ));
        }
        if self.from_list {
            return Ok((labels, self.classes));
        }
        // Renumber over the classes that have images, keeping their sorted order.
        let mut present = vec![false; self.classes.len()];
        for &l in &labels {
            present[l as usize] = true;
        }
        let mut renumber = vec![u32::MAX; self.classes.len()];
        let mut classes = Vec::new();
        for (old, class) in self.classes.into_iter().enumerate() {
            if present[old] {
                renumber[old] = classes.len() as u32;
                classes.push(class);
            }
        }
        for l in &mut labels {
            *l = renumber[*l as usize];
        }
        Ok((labels, classes))
    }
}
