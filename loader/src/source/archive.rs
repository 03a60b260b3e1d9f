//! Sources backed by memory-mapped tars: one tar (class folders, tar of tars, flat + labels, one shard) or
//! a folder of webdataset shards.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use memmap2::Mmap;

use super::build::{Kind, Mode, NONE};
use super::index::{self, IndexData};
use super::labels::LabelSet;
use super::tarscan;
use super::{Layout, OpenOptions, OpenReport, Source, push_limited, split_dir};
use crate::error::io_err;
use crate::error::{Error, Result};

/// One mapped tar and its index.
struct Archive {
    path: PathBuf,
    map: Mmap,
    index: IndexData,
}

/// Which record each sample is, when that is not simply record `i` of the one archive.
enum Order {
    /// Sample i is record i of archive 0, labelled by the record.
    Direct,
    /// Sample i is record `refs[i].1` of archive `refs[i].0`, labelled `labels[i]`.
    Mapped {
        refs: Vec<(u32, u32)>,
        labels: Vec<u32>,
    },
}

/// A dataset read from memory-mapped tars.
pub(crate) struct TarSource {
    archives: Vec<Archive>,
    classes: Vec<String>,
    order: Order,
    layout: Layout,
}

impl std::fmt::Debug for TarSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TarSource")
            .field("layout", &self.layout)
            .field(
                "archives",
                &self.archives.iter().map(|a| &a.path).collect::<Vec<_>>(),
            )
            .field("len", &self.len())
            .field("classes", &self.classes.len())
            .finish()
    }
}

fn mtime_ns(path: &Path, meta: &std::fs::Metadata) -> Result<i64> {
    let t = meta.modified().map_err(io_err(path))?;
    Ok(match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i64,
        Err(e) => -(e.duration().as_nanos() as i64),
    })
}

/// Maps the tar at `path` and gets its index.
fn map_tar(
    path: &Path,
    mode: Mode,
    opts: &OpenOptions,
    report: &mut OpenReport,
) -> Result<Archive> {
    let file = File::open(path).map_err(io_err(path))?;
    let meta = file.metadata().map_err(io_err(path))?;
    if meta.len() == 0 {
        return Err(Error::EmptyDataset {
            path: path.to_owned(),
            reason: "empty file".into(),
        });
    }
    let mtime = mtime_ns(path, &meta)?;
    // SAFETY: a read-only private map. If another process truncates the tar while it is mapped, reads of
    // the lost pages fault (SIGBUS), as with any mmap-based reader; the dataset must not be rewritten while
    // open. The index records the tar's size and mtime, so a tar changed between opens is never read
    // through an old index.
    let map = unsafe { Mmap::map(&file) }.map_err(io_err(path))?;
    if let Some((kind, cmd)) = tarscan::compression(&map[..map.len().min(512)]) {
        return Err(Error::Compressed {
            path: path.to_owned(),
            member: None,
            kind,
            hint: tarscan::decompress_hint(cmd, &path.display().to_string()),
        });
    }
    let index = index::obtain(path, &map, mtime, mode, opts, report)?;
    report.archives += 1;
    report.skipped.add(&index.skipped);
    report.members += index.members;
    for i in 0..index.len() {
        report.image_bytes += index.record(i).len;
    }
    Ok(Archive {
        path: path.to_owned(),
        map,
        index,
    })
}

/// Index of one webdataset shard, loaded or built and saved; its sample count.
pub(crate) fn index_shard(path: &Path, cache_dir: &Path) -> Result<usize> {
    let opts = OpenOptions {
        cache_dir: Some(cache_dir.to_owned()),
        ..OpenOptions::default()
    };
    let archive = map_tar(path, Mode::Shard, &opts, &mut OpenReport::default())?;
    Ok(archive.index.len())
}

/// Sorts samples by label, then folder and file name of their path (then archive and record, so that
/// equal names keep a fixed order).
fn sort_refs(archives: &[Archive], refs: &mut [(u32, u32)], labels: &mut [u32]) {
    /// (label, (folder, file), (archive, record))
    type Key<'a> = (u32, (&'a str, &'a str), (u32, u32));
    let mut keyed: Vec<Key<'_>> = labels
        .iter()
        .zip(refs.iter())
        .map(|(&label, &(a, r))| {
            let index = &archives[a as usize].index;
            (
                label,
                split_dir(index.name(&index.record(r as usize))),
                (a, r),
            )
        })
        .collect();
    keyed.sort_unstable();
    for (i, (label, _, r)) in keyed.into_iter().enumerate() {
        labels[i] = label;
        refs[i] = r;
    }
}

/// Class names of webdataset shards in `dir`: `manifest.json` (`{"classes": [...]}` or `[...]`), else
/// `classes.txt` (one name per line), else none.
fn shard_classes(dir: &Path) -> Result<Option<Vec<String>>> {
    let manifest = dir.join("manifest.json");
    if manifest.is_file() {
        let text = std::fs::read(&manifest).map_err(io_err(&manifest))?;
        let bad = |reason: String| Error::LabelsFile {
            path: manifest.clone(),
            line: 0,
            reason,
        };
        let value: serde_json::Value =
            serde_json::from_slice(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
        let list = match &value {
            serde_json::Value::Array(a) => Some(a),
            serde_json::Value::Object(o) => o.get("classes").and_then(|c| c.as_array()),
            _ => None,
        }
        .ok_or_else(|| bad("expected {\"classes\": [\"name\", ...]} or a list of names".into()))?;
        let names = list
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| bad("class names must be strings".into()))?;
        return Ok(Some(names));
    }
    let classes = dir.join("classes.txt");
    if classes.is_file() {
        let text = std::fs::read_to_string(&classes).map_err(io_err(&classes))?;
        let mut names: Vec<String> = text.lines().map(|l| l.trim().to_owned()).collect();
        while names.last().is_some_and(|l| l.is_empty()) {
            names.pop();
        }
        if let Some(n) = names.iter().position(|l| l.is_empty()) {
            return Err(Error::LabelsFile {
                path: classes,
                line: n + 1,
                reason: "empty class name".into(),
            });
        }
        return Ok(Some(names));
    }
    Ok(None)
}

impl TarSource {
    /// Opens one tar of any layout.
    pub(crate) fn open_tar(
        path: &Path,
        opts: &OpenOptions,
        report: &mut OpenReport,
    ) -> Result<TarSource> {
        let mode = if opts.labels.is_some() {
            Mode::Flat
        } else {
            Mode::Auto
        };
        let archive = map_tar(path, mode, opts, report)?;
        match archive.index.kind {
            Kind::ClassFolders | Kind::TarOfTars => {
                let layout = if archive.index.kind == Kind::TarOfTars {
                    Layout::TarOfTars
                } else {
                    Layout::TarClassFolders
                };
                report.layout = layout;
                Ok(TarSource {
                    classes: archive.index.classes(),
                    archives: vec![archive],
                    order: Order::Direct,
                    layout,
                })
            }
            Kind::Flat => {
                report.layout = Layout::FlatTar;
                let labels_path = opts.labels.as_deref().unwrap_or(Path::new(""));
                let labels = LabelSet::load(labels_path, opts.synsets.as_deref())?;
                let n = archive.index.len();
                let names = (0..n).map(|i| archive.index.name(&archive.index.record(i)));
                let (mut labs, classes) = labels.assign(names, report)?;
                let mut refs: Vec<(u32, u32)> = (0..n as u32).map(|i| (0, i)).collect();
                let archives = vec![archive];
                sort_refs(&archives, &mut refs, &mut labs);
                Ok(TarSource {
                    archives,
                    classes,
                    order: Order::Mapped { refs, labels: labs },
                    layout: Layout::FlatTar,
                })
            }
            Kind::Webdataset => {
                let dir = path
                    .parent()
                    .filter(|d| !d.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                Self::shards(dir, vec![archive], report)
            }
        }
    }

    /// Opens a folder of webdataset shards (`*.tar`).
    pub(crate) fn open_shard_dir(
        dir: &Path,
        opts: &OpenOptions,
        report: &mut OpenReport,
    ) -> Result<TarSource> {
        let mut tars = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
            let entry = entry.map_err(io_err(dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            let is_tar = !name.starts_with('.') && name.to_ascii_lowercase().ends_with(".tar");
            if is_tar && std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
                tars.push(path);
            }
        }
        if tars.is_empty() {
            return Err(Error::EmptyDataset {
                path: dir.to_owned(),
                reason: "no class folders and no .tar shards; couldn't find any class folder"
                    .into(),
            });
        }
        tars.sort();
        let archives = tars
            .iter()
            .map(|t| map_tar(t, Mode::Shard, opts, report))
            .collect::<Result<Vec<_>>>()?;
        Self::shards(dir, archives, report)
    }

    fn shards(dir: &Path, archives: Vec<Archive>, report: &mut OpenReport) -> Result<TarSource> {
        report.layout = Layout::Shards;
        let total: usize = archives.iter().map(|a| a.index.len()).sum();
        let (mut refs, mut labels) = (Vec::with_capacity(total), Vec::with_capacity(total));
        for (a, archive) in archives.iter().enumerate() {
            for r in 0..archive.index.len() {
                refs.push((a as u32, r as u32));
                labels.push(archive.index.record(r).label);
            }
        }
        if refs.len() >= NONE as usize {
            return Err(Error::Layout {
                path: dir.to_owned(),
                reason: "more than 2^32-1 samples".into(),
            });
        }
        let classes = match shard_classes(dir)? {
            Some(classes) => {
                let (mut unknown, mut unknown_count) = (Vec::new(), 0);
                for (&(a, r), &label) in refs.iter().zip(&labels) {
                    if label as usize >= classes.len() {
                        let archive = &archives[a as usize];
                        let name = archive.index.name(&archive.index.record(r as usize));
                        push_limited(&mut unknown, &mut unknown_count, || {
                            format!("{} › {name}: class {label}", archive.path.display())
                        });
                    }
                }
                if unknown_count > 0 {
                    return Err(Error::Labels {
                        path: dir.to_owned(),
                        missing: Vec::new(),
                        missing_count: 0,
                        unknown,
                        unknown_count,
                    });
                }
                classes
            }
            None => {
                let max = labels.iter().copied().max().unwrap_or(0);
                (0..=max).map(|c| c.to_string()).collect()
            }
        };
        sort_refs(&archives, &mut refs, &mut labels);
        Ok(TarSource {
            archives,
            classes,
            order: Order::Mapped { refs, labels },
            layout: Layout::Shards,
        })
    }

    fn locate(&self, index: usize) -> (&Archive, usize) {
        match &self.order {
            Order::Direct => (&self.archives[0], index),
            Order::Mapped { refs, .. } => {
                let (a, r) = refs[index];
                (&self.archives[a as usize], r as usize)
            }
        }
    }
}

impl Source for TarSource {
    fn len(&self) -> usize {
        match &self.order {
            Order::Direct => self.archives[0].index.len(),
            Order::Mapped { refs, .. } => refs.len(),
        }
    }

    fn classes(&self) -> &[String] {
        &self.classes
    }

    fn label(&self, index: usize) -> u32 {
        match &self.order {
            Order::Direct => self.archives[0].index.record(index).label,
            Order::Mapped { labels, .. } => labels[index],
        }
    }

    fn bytes<'a>(&'a self, index: usize, _scratch: &'a mut Vec<u8>) -> Result<&'a [u8]> {
        let (archive, r) = self.locate(index);
        let rec = archive.index.record(r);
        // Every record was checked against the tar's size when the index was loaded; `get` keeps a
        // mismatch an error rather than a panic all the same.
        let range = usize::try_from(rec.offset)
            .ok()
            .zip(usize::try_from(rec.offset + rec.len).ok());
        range
            .and_then(|(start, end)| archive.map.get(start..end))
            .ok_or_else(|| Error::Archive {
                archive: archive.path.clone(),
                offset: rec.offset,
                reason: format!(
                    "sample {index} ({} bytes) lies past the end of the archive",
                    rec.len
                ),
            })
    }

    fn name(&self, index: usize) -> String {
        let (archive, r) = self.locate(index);
        let rec = archive.index.record(r);
        let name = archive.index.name(&rec);
        if rec.group == NONE {
            format!("{} › {name}", archive.path.display())
        } else {
            format!(
                "{} › {} › {name}",
                archive.path.display(),
                archive.index.group(rec.group)
            )
        }
    }
}
