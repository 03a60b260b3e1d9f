//! Sources backed by tars read in place: one tar (class folders, tar of tars, flat + labels, one shard) or
//! a folder of webdataset shards.
//!
//! Member bytes are read with positioned reads into the caller's scratch buffer, not sliced out of a
//! memory map: a tar truncated while open then gives a short read, reported as [`Error::Member`], where a
//! map would kill the process with SIGBUS. The copy costs about 10 µs per ImageNet JPEG from the page
//! cache, against milliseconds to decode it.

use std::path::Path;

use super::build::{Kind, MAX_CLASSES, Mode, NONE, wds_key};
use super::file::{TarFile, read_regular};
use super::index::{self, FileStamp, IndexData, LabelSources, Labelling};
use super::labels::LabelSet;
use super::tarscan;
use super::{Layout, OpenOptions, OpenReport, Source, push_limited, split_dir};
use crate::error::io_err;
use crate::error::{Error, Result};

/// One open tar and its index.
struct Archive {
    tar: TarFile,
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

/// A dataset read from tars.
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
                &self
                    .archives
                    .iter()
                    .map(|a| &a.tar.path)
                    .collect::<Vec<_>>(),
            )
            .field("len", &self.len())
            .field("classes", &self.classes.len())
            .finish()
    }
}

/// Opens the tar at `path` and gets its index.
fn open_archive(
    path: &Path,
    mode: Mode,
    opts: &OpenOptions,
    report: &mut OpenReport,
) -> Result<Archive> {
    let tar = TarFile::open(path)?;
    if tar.size == 0 {
        return Err(Error::EmptyDataset {
            path: path.to_owned(),
            reason: "empty file".into(),
        });
    }
    let (head, n) = tarscan::head(&tar, 0, tar.size).map_err(io_err(path))?;
    if let Some((kind, cmd)) = tarscan::compression(&head[..n]) {
        return Err(Error::Compressed {
            path: path.to_owned(),
            member: None,
            kind,
            hint: tarscan::decompress_hint(cmd, &path.display().to_string()),
        });
    }
    let index = index::obtain(&tar, mode, opts, report)?;
    report.archives += 1;
    report.skipped.add(&index.skipped);
    report.members += index.members;
    for i in 0..index.len() {
        report.image_bytes += index.record(i).len;
    }
    Ok(Archive { tar, index })
}

/// Index of one webdataset shard, loaded or built and saved; its sample count.
pub(crate) fn index_shard(path: &Path, cache_dir: &Path) -> Result<usize> {
    let opts = OpenOptions {
        cache_dir: Some(cache_dir.to_owned()),
        ..OpenOptions::default()
    };
    let archive = open_archive(path, Mode::Shard, &opts, &mut OpenReport::default())?;
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
/// The most classes named `0..=max` from the ids when shards come without class names.
const IMPLICIT_CLASSES: u32 = 1 << 20;
const _: () = assert!(IMPLICIT_CLASSES <= MAX_CLASSES);

fn shard_classes(dir: &Path) -> Result<Option<Vec<String>>> {
    let manifest = dir.join("manifest.json");
    // `exists`, not `is_file`: a FIFO or folder in their place is an error (from `read_regular`), not
    // taken for no class names.
    if manifest.exists() {
        let text = read_regular(&manifest)?;
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
    if classes.exists() {
        let text = String::from_utf8(read_regular(&classes)?).map_err(|e| Error::LabelsFile {
            path: classes.clone(),
            line: 0,
            reason: format!("not UTF-8 text ({e})"),
        })?;
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
        let mode = match (&opts.labels, opts.labels_if_flat) {
            (None, _) => Mode::Auto,
            (Some(_), false) => Mode::Flat,
            (Some(_), true) => Mode::AutoOrFlat,
        };
        let archive = open_archive(path, mode, opts, report)?;
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
                let n = archive.index.len();
                let (mut labs, classes) = flat_labels(&archive, opts, report)?;
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
            if super::folder::has_top_images(dir)? {
                return Err(Error::NeedsLabels {
                    path: dir.to_owned(),
                    reason: "images without class folders (like an extracted ILSVRC2012_img_val.tar) need a \
                             labels file (OpenOptions::labels / --labels)"
                        .into(),
                });
            }
            return Err(Error::EmptyDataset {
                path: dir.to_owned(),
                reason: "no class folders and no .tar shards; couldn't find any class folder"
                    .into(),
            });
        }
        tars.sort();
        let archives = tars
            .iter()
            .map(|t| open_archive(t, Mode::Shard, opts, report))
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
                            format!("{} › {name}: class {label}", archive.tar.path.display())
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
                let Some(at) = (0..labels.len()).max_by_key(|&i| labels[i]) else {
                    return Err(Error::EmptyDataset {
                        path: dir.to_owned(),
                        reason: "no samples in the shards".into(),
                    });
                };
                let max = labels[at];
                // Each implicit class gets a name string; a million of them is ~40 MB. A dataset with
                // more classes than that names them in a manifest (the ids are checked against it).
                if max >= IMPLICIT_CLASSES {
                    let (a, r) = refs[at];
                    let archive = &archives[a as usize];
                    let image = archive.index.name(&archive.index.record(r as usize));
                    return Err(Error::Layout {
                        path: archive.tar.path.clone(),
                        reason: format!(
                            "`{}.cls` (the label of `{image}`): class id {max}, but without manifest.json \
                             or classes.txt beside the shards classes are named 0..=max, at most \
                             {IMPLICIT_CLASSES} of them: list the class names in {}",
                            wds_key(image),
                            dir.join("manifest.json").display()
                        ),
                    });
                }
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

/// Labels of a flat tar's records, in record order, and its classes: those stored in its index when they
/// were made from the same files (the given ones, else those recorded), else read from the files and
/// stored in the index for the next open.
fn flat_labels(
    archive: &Archive,
    opts: &OpenOptions,
    report: &mut OpenReport,
) -> Result<(Vec<u32>, Vec<String>)> {
    let index = &archive.index;
    let stored = index.label_sources.as_ref();
    let (labels_path, synsets_path) = match (&opts.labels, stored) {
        (Some(l), _) => (l.clone(), opts.synsets.clone()),
        (None, Some(s)) => (
            s.labels.path.clone(),
            s.synsets.as_ref().map(|s| s.path.clone()),
        ),
        (None, None) => {
            return Err(Error::NeedsLabels {
                path: archive.tar.path.clone(),
                reason: "a flat tar (like ILSVRC2012_img_val.tar) needs a labels file \
                         (OpenOptions::labels / --labels)"
                    .into(),
            });
        }
    };
    report.labels_file = Some(labels_path.clone());
    report.synsets_file = synsets_path.clone();
    if let Some(stored) = stored {
        let unchanged = if opts.labels.is_some() {
            let now = LabelSources {
                labels: FileStamp::of(&labels_path)?,
                synsets: synsets_path.as_deref().map(FileStamp::of).transpose()?,
            };
            now.same_content(stored)
        } else {
            // The recorded files: changed ones make the stored labels stale; gone ones leave them in
            // force (keeping them is what the index is for).
            let mut same = |then: &FileStamp| -> Result<bool> {
                match std::fs::symlink_metadata(&then.path) {
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        report.notes.push(format!(
                            "{} is gone: using the labels the index kept",
                            then.path.display()
                        ));
                        Ok(true)
                    }
                    _ => Ok(FileStamp::of(&then.path)?.same_content(then)),
                }
            };
            same(&stored.labels)? && stored.synsets.as_ref().map_or(Ok(true), same)?
        };
        if unchanged {
            report.labels_from_index = true;
            let labs: Vec<u32> = (0..index.len()).map(|i| index.record(i).label).collect();
            if index.unused_labels > 0 {
                report.unused_labels += index.unused_labels;
                report.warnings.push(format!(
                    "{}: {} row(s) label images the tar does not have; ignored, they make no class",
                    labels_path.display(),
                    index.unused_labels
                ));
            }
            return Ok((labs, index.classes()));
        }
        report.notes.push(format!(
            "labels in the index of {} not used: made from other contents of {}{}; read again",
            archive.tar.path.display(),
            labels_path.display(),
            synsets_path
                .as_deref()
                .map(|s| format!(" / {}", s.display()))
                .unwrap_or_default()
        ));
    }
    let sources = LabelSources {
        labels: FileStamp::of(&labels_path)?,
        synsets: synsets_path.as_deref().map(FileStamp::of).transpose()?,
    };
    let set = LabelSet::load(&labels_path, synsets_path.as_deref())?;
    let unused_before = report.unused_labels;
    let names = (0..index.len()).map(|i| index.name(&index.record(i)));
    let (labs, classes) = set.assign(names, report)?;
    let labelling = Labelling {
        sources: &sources,
        labels: &labs,
        classes: &classes,
        unused: report.unused_labels - unused_before,
    };
    index::store_labels(&archive.tar, index, &labelling, opts, report)?;
    Ok((labs, classes))
}

/// A record's member path, with its inner tar in a tar of tars.
fn member_name(archive: &Archive, rec: &index::Record) -> String {
    let name = archive.index.name(rec);
    if rec.group == NONE {
        name.to_owned()
    } else {
        format!("{} › {name}", archive.index.group(rec.group))
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

    fn bytes<'a>(&'a self, index: usize, scratch: &'a mut Vec<u8>) -> Result<&'a [u8]> {
        let (archive, r) = self.locate(index);
        let rec = archive.index.record(r);
        let fail = |source: std::io::Error| Error::Member {
            archive: archive.tar.path.clone(),
            member: member_name(archive, &rec),
            offset: rec.offset,
            len: rec.len,
            source,
        };
        let len = usize::try_from(rec.len).map_err(|_| {
            fail(std::io::Error::new(
                std::io::ErrorKind::OutOfMemory,
                "larger than this machine's address space",
            ))
        })?;
        // Grown, never shrunk: a warm buffer is neither reallocated nor zeroed again.
        if scratch.len() < len {
            scratch.resize(len, 0);
        }
        let buf = &mut scratch[..len];
        archive.tar.read_at(buf, rec.offset).map_err(fail)?;
        Ok(buf)
    }

    fn name(&self, index: usize) -> String {
        let (archive, r) = self.locate(index);
        let rec = archive.index.record(r);
        format!(
            "{} › {}",
            archive.tar.path.display(),
            member_name(archive, &rec)
        )
    }
}
