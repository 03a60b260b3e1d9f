//! The dataset of a run: where its splits are ([`locate`]), opening them, and [`Subset`] for `--limit-*`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use imgloader::{OpenOptions, Source};

use crate::error::{Result, TrainError};

/// Where the splits of a dataset are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataPaths {
    /// The training split (`None` when the run only evaluates).
    pub train: Option<PathBuf>,
    /// The validation split.
    pub val: PathBuf,
}

/// Finds the splits under `data`: `train.tar` and `val.tar`, or `train/` and `val/` folders (class
/// folders or webdataset shards). A tar wins over a folder of the same split (typically its extracted
/// copy): it is read in place through its index, without a file open per image. `need_train` is false
/// for evaluate-only runs.
pub fn locate(data: &Path, need_train: bool) -> Result<DataPaths> {
    let err = |reason: String| TrainError::Data {
        path: data.to_owned(),
        reason,
    };
    match std::fs::metadata(data) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(err(
                "is a file; DATA is a folder holding train/ and val/ (or train.tar and val.tar)"
                    .into(),
            ));
        }
        Err(e) => return Err(err(format!("cannot read the dataset folder: {e}"))),
    }
    let find = |split: &str| -> Option<PathBuf> {
        let tar = data.join(format!("{split}.tar"));
        if tar.is_file() {
            return Some(tar);
        }
        let dir = data.join(split);
        dir.is_dir().then_some(dir)
    };
    let missing = |split: &str| {
        err(format!(
            "no {split} split: looked for {split}.tar and {split}/ (class folders or webdataset shards)"
        ))
    };
    let train = if need_train {
        Some(find("train").ok_or_else(|| missing("train"))?)
    } else {
        None
    };
    let val = find("val").ok_or_else(|| missing("val"))?;
    Ok(DataPaths { train, val })
}

/// Opens a split, keeping `limit` samples of it (spread over the split) when asked.
pub fn open_split(
    split: &'static str,
    path: &Path,
    limit: Option<usize>,
) -> Result<Arc<dyn Source>> {
    let source =
        imgloader::open(path, &OpenOptions::default()).map_err(|source| TrainError::Loader {
            split,
            path: path.to_owned(),
            source: Box::new(source),
        })?;
    Ok(match limit {
        Some(n) => Subset::spread(source, n),
        None => source,
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
            e.contains("no val split: looked for val.tar and val/"),
            "{e}"
        );
    }
}
