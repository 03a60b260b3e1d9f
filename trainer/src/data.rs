//! The dataset of a run: where its splits are ([`locate`]: our names, ImageNet's official tars, Kaggle's folders),
//! opening them with the labels of a flat val split ([`open_dataset`]), and [`Subset`] for `--limit-*`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use imgloader::{Layout, OpenOptions, OpenReport, Source};

use crate::error::{Result, TrainError};

/// Where the splits of a dataset are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataPaths {
    /// The training split (`None` when the run only evaluates).
    pub train: Option<PathBuf>,
    /// The validation split.
    pub val: PathBuf,
}

/// Where a split may be under the dataset folder, in order of preference: our tars, the official
/// ImageNet tars, class folders (or webdataset shard folders), Kaggle's folders. A tar wins over a
/// folder of the same split (typically its extracted copy): it is read in place through its index,
/// without a file open per image.
const TRAIN_NAMES: [&str; 4] = [
    "train.tar",
    "ILSVRC2012_img_train.tar",
    "train/",
    "ILSVRC/Data/CLS-LOC/train/",
];
const VAL_NAMES: [&str; 4] = [
    "val.tar",
    "ILSVRC2012_img_val.tar",
    "val/",
    "ILSVRC/Data/CLS-LOC/val/",
];

/// Finds the splits under `data` (see [`TRAIN_NAMES`]); when one is missing, the error lists every name
/// looked for. `need_train` is false for evaluate-only runs.
pub fn locate(data: &Path, need_train: bool) -> Result<DataPaths> {
    let err = |reason: String| TrainError::Data {
        path: data.to_owned(),
        reason,
    };
    match std::fs::metadata(data) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(err(
                "is a file; DATA is a folder holding train/ and val/ (or train.tar and val.tar, or \
                 ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar)"
                    .into(),
            ));
        }
        Err(e) => return Err(err(format!("cannot read the dataset folder: {e}"))),
    }
    let find = |names: &[&str]| -> Option<PathBuf> {
        names.iter().find_map(|name| {
            let path = data.join(name.trim_end_matches('/'));
            let found = if name.ends_with('/') {
                path.is_dir()
            } else {
                path.is_file()
            };
            found.then_some(path)
        })
    };
    let missing = |split: &str, names: &[&str]| {
        err(format!(
            "no {split} split: looked for {} (class folders or webdataset shards)",
            names.join(", ")
        ))
    };
    let train = if need_train {
        Some(find(&TRAIN_NAMES).ok_or_else(|| missing("train", &TRAIN_NAMES))?)
    } else {
        None
    };
    let val = find(&VAL_NAMES).ok_or_else(|| missing("val", &VAL_NAMES))?;
    Ok(DataPaths { train, val })
}

/// Labels of a flat validation split, as given on the command line (`--val-labels`, `--synsets`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelFiles {
    /// `LOC_val_solution.csv`, the devkit's `ILSVRC2012_validation_ground_truth.txt`, or `file synset`
    /// lines. `None`: looked for beside the val split.
    pub val_labels: Option<PathBuf>,
    /// A synset list: `map_clsloc.txt` (needed with the devkit ground truth) or `LOC_synset_mapping.txt`.
    pub synsets: Option<PathBuf>,
}

/// Labels files looked for beside a flat val split, in this order: Kaggle's CSV (it names synsets, so it
/// needs no list), then the devkit's ground truth (devkit ids: it needs `map_clsloc.txt`).
const CSV_NAME: &str = "LOC_val_solution.csv";
const CSV_SYNSETS: &str = "LOC_synset_mapping.txt";
const GROUND_TRUTH: [&str; 2] = [
    "ILSVRC2012_validation_ground_truth.txt",
    "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt",
];
const DEVKIT_SYNSETS: [&str; 2] = [
    "map_clsloc.txt",
    "ILSVRC2012_devkit_t12/data/map_clsloc.txt",
];

/// Labels files found for the val split (`given` when it names them), and every name looked for.
fn find_val_labels(
    data: &Path,
    val: &Path,
    given: &LabelFiles,
) -> Result<(Option<LabelFiles>, Vec<String>)> {
    if given.val_labels.is_some() {
        return Ok((Some(given.clone()), Vec::new()));
    }
    let found = |labels: PathBuf, synsets: Option<PathBuf>| {
        Some(LabelFiles {
            val_labels: Some(labels),
            synsets,
        })
    };
    // The dataset folder, and the folder holding the val split when that is another (Kaggle's).
    let mut dirs = vec![data.to_owned()];
    if let Some(parent) = val.parent()
        && parent != data
    {
        dirs.push(parent.to_owned());
    }
    let mut looked = Vec::new();
    let mut look = |dir: &Path, name: &str| {
        let path = dir.join(name);
        looked.push(path.display().to_string());
        path.is_file().then_some(path)
    };
    for dir in &dirs {
        if let Some(csv) = look(dir, CSV_NAME) {
            let synsets = given.synsets.clone().or_else(|| {
                let list = dir.join(CSV_SYNSETS);
                list.is_file().then_some(list)
            });
            return Ok((found(csv, synsets), looked));
        }
    }
    for dir in &dirs {
        for name in GROUND_TRUTH {
            let Some(gt) = look(dir, name) else { continue };
            if let Some(list) = &given.synsets {
                return Ok((found(gt, Some(list.clone())), looked));
            }
            let candidates: Vec<PathBuf> = DEVKIT_SYNSETS.iter().map(|n| dir.join(n)).collect();
            return match candidates.iter().find(|p| p.is_file()) {
                Some(list) => Ok((found(gt, Some(list.clone())), looked)),
                None => Err(TrainError::Data {
                    path: gt,
                    reason: format!(
                        "the devkit ground truth holds devkit ids, which need their synset list: looked for \
                         {}; pass --synsets FILE (map_clsloc.txt: `n02119789 1 kit_fox` lines)",
                        candidates
                            .iter()
                            .map(|p| p.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                }),
            };
        }
    }
    Ok((None, looked))
}

/// A split found and opened.
#[derive(Debug)]
pub struct OpenedSplit {
    /// The split's tar or folder.
    pub path: PathBuf,
    pub source: Arc<dyn Source>,
    /// What was found, for the run's log: `ILSVRC2012_img_val.tar + LOC_val_solution.csv (flat tar, 50,000
    /// images, 1,000 classes, index loaded)`.
    pub found: String,
    /// The loader's warnings (label rows for absent images, …).
    pub warnings: Vec<String>,
}

/// The splits of a run, opened, their classes checked to agree.
#[derive(Debug)]
pub struct Dataset {
    pub train: Option<OpenedSplit>,
    pub val: OpenedSplit,
}

impl Dataset {
    /// What was found, one line each: `train: …`, `val: …`, then the loader's warnings.
    pub fn log_lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for (name, split) in [("train", self.train.as_ref()), ("val", Some(&self.val))] {
            if let Some(split) = split {
                lines.push(format!("{name}: {}", split.found));
                lines.extend(split.warnings.iter().map(|w| format!("warning: {w}")));
            }
        }
        lines
    }
}

/// `1281167` as `1,281,167`.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn describe(data: &Path, path: &Path, r: &OpenReport) -> String {
    // Recorded labels paths are absolute, `data` may be relative.
    let abs_data = std::path::absolute(data).unwrap_or_else(|_| data.to_owned());
    let rel = |p: &Path| {
        p.strip_prefix(data)
            .or_else(|_| p.strip_prefix(&abs_data))
            .unwrap_or(p)
            .display()
            .to_string()
    };
    let mut what = rel(path);
    if let Some(labels) = &r.labels_file {
        what += &format!(" + {}", rel(labels));
        if let Some(synsets) = &r.synsets_file {
            what += &format!(" + {}", rel(synsets));
        }
    }
    let layout = match r.layout {
        Layout::ClassFolders => format!("{} class folders", thousands(r.classes)),
        Layout::TarClassFolders => format!("tar of {} class folders", thousands(r.classes)),
        Layout::TarOfTars => format!("tar of {} class tars", thousands(r.classes)),
        Layout::FlatTar => format!("flat tar, {} classes", thousands(r.classes)),
        Layout::FlatFolder => format!("flat folder, {} classes", thousands(r.classes)),
        _ => format!("webdataset shards, {} classes", thousands(r.classes)),
    };
    let mut details = vec![layout, format!("{} images", thousands(r.images))];
    if r.archives > 0 {
        details.push(
            if r.indexes_built > 0 {
                "index built"
            } else {
                "index loaded"
            }
            .to_owned(),
        );
    }
    if r.labels_from_index {
        details.push("labels from the index".into());
    }
    format!("{what} ({})", details.join(", "))
}

/// Finds and opens the splits under `data` (see [`locate`]). A flat val split is labelled by
/// `labels.val_labels`, else by a labels file found beside it (`LOC_val_solution.csv`, or the devkit's
/// ground truth with `map_clsloc.txt`), else by the labels its tar's index kept; found files are used only
/// if the split is flat. Class indices are the sorted synsets (torchvision `ImageFolder`'s numbering), and
/// train and val must have the same classes.
pub fn open_dataset(data: &Path, labels: &LabelFiles, need_train: bool) -> Result<Dataset> {
    let paths = locate(data, need_train)?;
    let open = |split: &'static str, path: &Path, opts: &OpenOptions| {
        imgloader::open_with_report(path, opts).map_err(|source| TrainError::Loader {
            split,
            path: path.to_owned(),
            source: Box::new(source),
        })
    };
    let train = match &paths.train {
        Some(path) => {
            let (source, report) = open("train", path, &OpenOptions::default())?;
            Some(OpenedSplit {
                path: path.clone(),
                source,
                found: describe(data, path, &report),
                warnings: report.warnings,
            })
        }
        None => None,
    };
    let (found_labels, looked) = find_val_labels(data, &paths.val, labels)?;
    let opts = match found_labels {
        Some(found) => OpenOptions {
            labels: found.val_labels,
            synsets: found.synsets,
            labels_if_flat: labels.val_labels.is_none(),
            ..OpenOptions::default()
        },
        None => OpenOptions::default(),
    };
    let (source, report) = match open("val", &paths.val, &opts) {
        Err(TrainError::Loader { source, .. })
            if matches!(*source, imgloader::Error::NeedsLabels { .. }) =>
        {
            return Err(TrainError::Data {
                path: paths.val.clone(),
                reason: format!(
                    "the val split is flat (images without class folders) and needs labels: looked for {}; \
                     pass --val-labels FILE (and --synsets FILE with the devkit ground truth)",
                    looked.join(", ")
                ),
            });
        }
        other => other?,
    };
    let val = OpenedSplit {
        path: paths.val.clone(),
        source,
        found: describe(data, &paths.val, &report),
        warnings: report.warnings,
    };
    if let Some(train) = &train {
        check_classes(train, &val)?;
    }
    Ok(Dataset { train, val })
}

/// How many synsets a mismatch message names before it only counts.
const NAMED: usize = 5;

/// Train and val must number the same synsets the same way.
fn check_classes(train: &OpenedSplit, val: &OpenedSplit) -> Result<()> {
    let (t, v) = (train.source.classes(), val.source.classes());
    if t == v {
        return Ok(());
    }
    let only = |a: &[String], b: &[String]| -> Vec<String> {
        let b: BTreeSet<&String> = b.iter().collect();
        a.iter().filter(|c| !b.contains(c)).cloned().collect()
    };
    let name = |list: &[String]| {
        let mut s = list
            .iter()
            .take(NAMED)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        if list.len() > NAMED {
            s += &format!(" and {} more", list.len() - NAMED);
        }
        s
    };
    let (only_t, only_v) = (only(t, v), only(v, t));
    let mut parts = Vec::new();
    if !only_t.is_empty() {
        parts.push(format!(
            "{} synset(s) only in train ({}): {}",
            only_t.len(),
            train.found,
            name(&only_t)
        ));
    }
    if !only_v.is_empty() {
        parts.push(format!(
            "{} synset(s) only in val ({}): {}",
            only_v.len(),
            val.found,
            name(&only_v)
        ));
    }
    if parts.is_empty() {
        let i = t.iter().zip(v).position(|(a, b)| a != b).unwrap_or(0);
        parts.push(format!(
            "the same synsets in another order: class {i} is {} in train, {} in val",
            t[i], v[i]
        ));
    }
    Err(TrainError::ClassMismatch {
        train: t.len(),
        val: v.len(),
        detail: parts.join("; "),
    })
}

/// `n` samples of a source spread evenly over it (sample `i * len / n`), keeping its classes, so that a
/// quick run over a class-ordered dataset still sees every class when `n` is at least their number.
#[derive(Debug)]
pub struct Subset {
    inner: Arc<dyn Source>,
    n: usize,
}

impl Subset {
    /// The first `n` of the evenly spaced samples; the whole source when `n >= inner.len()`.
    pub fn spread(inner: Arc<dyn Source>, n: usize) -> Arc<dyn Source> {
        if n >= inner.len() {
            return inner;
        }
        Arc::new(Subset { inner, n })
    }

    fn map(&self, index: usize) -> usize {
        assert!(
            index < self.n,
            "index {index} out of range (len {})",
            self.n
        );
        // u128: len * n may overflow usize on 32-bit targets for large datasets.
        (index as u128 * self.inner.len() as u128 / self.n as u128) as usize
    }
}

impl Source for Subset {
    fn len(&self) -> usize {
        self.n
    }
    fn classes(&self) -> &[String] {
        self.inner.classes()
    }
    fn label(&self, index: usize) -> u32 {
        self.inner.label(self.map(index))
    }
    fn bytes<'a>(&'a self, index: usize, scratch: &'a mut Vec<u8>) -> imgloader::Result<&'a [u8]> {
        self.inner.bytes(self.map(index), scratch)
    }
    fn name(&self, index: usize) -> String {
        self.inner.name(self.map(index))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 10 samples, label = index / 5 (two classes in order, like a class-folder source).
    #[derive(Debug)]
    struct Ordered(Vec<String>);

    impl Source for Ordered {
        fn len(&self) -> usize {
            10
        }
        fn classes(&self) -> &[String] {
            &self.0
        }
        fn label(&self, index: usize) -> u32 {
            assert!(index < 10);
            (index / 5) as u32
        }
        fn bytes<'a>(
            &'a self,
            index: usize,
            scratch: &'a mut Vec<u8>,
        ) -> imgloader::Result<&'a [u8]> {
            scratch.clear();
            scratch.push(index as u8);
            Ok(scratch)
        }
        fn name(&self, index: usize) -> String {
            format!("sample {index}")
        }
    }

    /// A split of `Ordered` samples with the given class list.
    fn split(classes: &[&str], found: &str) -> OpenedSplit {
        OpenedSplit {
            path: PathBuf::from(found),
            source: Arc::new(Ordered(classes.iter().map(|c| c.to_string()).collect())),
            found: found.into(),
            warnings: Vec::new(),
        }
    }

    #[test]
    fn class_mismatch_names_the_synsets_that_differ() {
        let same = split(&["n01", "n02"], "train.tar");
        assert!(check_classes(&same, &split(&["n01", "n02"], "val.tar")).is_ok());
        let e = check_classes(
            &split(&["n01", "n02", "n03"], "train.tar"),
            &split(&["n01", "n09"], "val.tar + LOC_val_solution.csv"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("2 synset(s) only in train (train.tar): n02, n03")
                && e.contains("1 synset(s) only in val (val.tar + LOC_val_solution.csv): n09"),
            "{e}"
        );
        let many: Vec<String> = (0..8).map(|i| format!("n{i:02}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let e = check_classes(&split(&many, "t"), &split(&["n00"], "v"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("7 synset(s) only in train (t): n01, n02, n03, n04, n05 and 2 more"),
            "{e}"
        );
        // Shards name classes in their manifest's order: the same synsets numbered otherwise.
        let e = check_classes(&split(&["n01", "n02"], "t"), &split(&["n02", "n01"], "v"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("another order: class 0 is n01 in train, n02 in val"),
            "{e}"
        );
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_281_167), "1,281,167");
    }

    #[test]
    fn subset_spreads_over_every_class() {
        let src: Arc<dyn Source> = Arc::new(Ordered(vec!["a".into(), "b".into()]));
        let sub = Subset::spread(src.clone(), 4);
        assert_eq!(sub.len(), 4);
        assert_eq!(sub.classes(), src.classes());
        let names: Vec<String> = (0..4).map(|i| sub.name(i)).collect();
        assert_eq!(names, ["sample 0", "sample 2", "sample 5", "sample 7"]);
        assert_eq!(
            (0..4).map(|i| sub.label(i)).collect::<Vec<_>>(),
            [0, 0, 1, 1]
        );
        let mut scratch = Vec::new();
        assert_eq!(sub.bytes(3, &mut scratch).unwrap(), &[7]);
        // A limit at or above the size is the source itself.
        assert!(Arc::ptr_eq(&Subset::spread(src.clone(), 10), &src));
    }

    #[test]
    fn locate_prefers_tars_and_names_what_it_looked_for() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("train")).unwrap();
        std::fs::create_dir(d.join("val")).unwrap();
        let p = locate(d, true).unwrap();
        assert_eq!(p.train.as_deref(), Some(d.join("train").as_path()));
        std::fs::write(d.join("train.tar"), b"").unwrap();
        let p = locate(d, true).unwrap();
        assert_eq!(p.train.as_deref(), Some(d.join("train.tar").as_path()));
        assert_eq!(p.val, d.join("val"));
        let p = locate(d, false).unwrap();
        assert_eq!(p.train, None);
        std::fs::remove_dir(d.join("val")).unwrap();
        let e = locate(d, false).unwrap_err().to_string();
        assert!(
            e.contains(
                "no val split: looked for val.tar, ILSVRC2012_img_val.tar, val/, ILSVRC/Data/CLS-LOC/val/"
            ),
            "{e}"
        );
        // The official tars and Kaggle's folders.
        std::fs::write(d.join("ILSVRC2012_img_val.tar"), b"").unwrap();
        std::fs::create_dir_all(d.join("ILSVRC/Data/CLS-LOC/train")).unwrap();
        std::fs::remove_file(d.join("train.tar")).unwrap();
        std::fs::remove_dir(d.join("train")).unwrap();
        let p = locate(d, true).unwrap();
        assert_eq!(p.train, Some(d.join("ILSVRC/Data/CLS-LOC/train")));
        assert_eq!(p.val, d.join("ILSVRC2012_img_val.tar"));
    }
}
