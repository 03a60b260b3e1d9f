//! Datasets of image files in folders: class folders (torchvision `ImageFolder`), or a flat folder with a
//! labels file.
//!
//! Like `ImageFolder` (which walks with `os.walk(followlinks=True)`), symlinks are followed, to files and
//! to folders; a symlink back to a folder being walked is skipped (and counted in `Skipped::links`)
//! instead of looping. Broken symlinks are skipped and counted too. Order inside a class is
//! `sorted(os.walk())` order: files of a folder by name, then each sub-folder's files, folders by path.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};

use super::labels::LabelSet;
use super::{FileKind, Layout, OpenOptions, OpenReport, Skipped, Source, file_kind, push_limited};
use crate::error::io_err;
use crate::error::{Error, Result};

/// A dataset of files under `root`; sample paths are stored end to end, relative to `root`.
pub(crate) struct FolderSource {
    root: PathBuf,
    classes: Vec<String>,
    /// Relative paths, `/`-separated, as raw OS bytes so that any file name can be opened.
    paths: Vec<u8>,
    ends: Vec<usize>,
    labels: Vec<u32>,
}

impl std::fmt::Debug for FolderSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FolderSource")
            .field("root", &self.root)
            .field("len", &self.labels.len())
            .field("classes", &self.classes.len())
            .finish()
    }
}

#[cfg(unix)]
fn os_bytes(s: &OsStr) -> &[u8] {
    use std::os::unix::ffi::OsStrExt;
    s.as_bytes()
}

#[cfg(not(unix))]
fn os_bytes(s: &OsStr) -> &[u8] {
    // Not a valid OS string round trip on Windows for unpaired surrogates; such names are rare enough.
    s.as_encoded_bytes()
}

#[cfg(unix)]
fn bytes_path(b: &[u8]) -> &Path {
    use std::os::unix::ffi::OsStrExt;
    Path::new(OsStr::from_bytes(b))
}

#[cfg(not(unix))]
fn bytes_path(b: &[u8]) -> &Path {
    // SAFETY: every byte string stored here came from `OsStr::as_encoded_bytes` (see `os_bytes`), joined
    // with ASCII `/` separators, which keeps it a valid encoded OS string.
    Path::new(unsafe { OsStr::from_encoded_bytes_unchecked(b) })
}

/// Identity of a folder, to notice symlink loops.
#[cfg(unix)]
fn dir_id(meta: &fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

#[cfg(not(unix))]
fn dir_id(_meta: &fs::Metadata) -> (u64, u64) {
    (0, 0)
}

/// Whether `root` holds at least one non-hidden folder (following symlinks).
pub(crate) fn has_class_dirs(root: &Path) -> Result<bool> {
    for entry in fs::read_dir(root).map_err(io_err(root))? {
        let entry = entry.map_err(io_err(root))?;
        if !os_bytes(&entry.file_name()).starts_with(b".")
            && fs::metadata(entry.path()).is_ok_and(|m| m.is_dir())
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Entries of `dir` sorted by name (bytes, like Python's `sorted` of str), hidden ones counted and dropped.
fn listing(dir: &Path, skipped: &mut Skipped) -> Result<Vec<(Vec<u8>, PathBuf)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = os_bytes(&entry.file_name()).to_vec();
        if name.starts_with(b".") {
            skipped.hidden += 1;
            continue;
        }
        out.push((name, entry.path()));
    }
    out.sort();
    Ok(out)
}

/// Appends the images under `dir` (relative path `rel`) to `found`, with their sizes, in no particular
/// order: callers sort by [`dir_file`], which is `sorted(os.walk())` order.
fn walk(
    dir: &Path,
    rel: &[u8],
    ancestors: &mut Vec<(u64, u64)>,
    skipped: &mut Skipped,
    found: &mut Vec<(Vec<u8>, u64)>,
) -> Result<()> {
    for (name, path) in listing(dir, skipped)? {
        let meta = match fs::metadata(&path) {
            Ok(m) => m,
            Err(_) => {
                // A broken symlink (the entry itself exists, or read_dir would not list it).
                skipped.links += 1;
                continue;
            }
        };
        let mut child = rel.to_vec();
        if !child.is_empty() {
            child.push(b'/');
        }
        child.extend_from_slice(&name);
        if meta.is_dir() {
            let id = dir_id(&meta);
            if cfg!(unix) && ancestors.contains(&id) {
                skipped.links += 1;
            } else {
                ancestors.push(id);
                walk(&path, &child, ancestors, skipped, found)?;
                ancestors.pop();
            }
        } else if !meta.is_file() {
            skipped.devices += 1;
        } else {
            match file_kind(&String::from_utf8_lossy(&name)) {
                FileKind::Image => found.push((child, meta.len())),
                FileKind::UnsupportedImage => skipped.unsupported_image += 1,
                FileKind::Other => skipped.non_image += 1,
            }
        }
    }
    Ok(())
}

/// `(folder, file)` of a relative path in bytes: the walk order key.
fn dir_file(p: &[u8]) -> (&[u8], &[u8]) {
    match p.iter().rposition(|&b| b == b'/') {
        Some(i) => (&p[..i], &p[i + 1..]),
        None => (&[], p),
    }
}

impl FolderSource {
    fn from_found(
        root: &Path,
        classes: Vec<String>,
        found: Vec<(u32, Vec<u8>, u64)>,
    ) -> FolderSource {
        let mut paths = Vec::new();
        let mut ends = Vec::with_capacity(found.len());
        let mut labels = Vec::with_capacity(found.len());
        for (label, p, _) in found {
            paths.extend_from_slice(&p);
            ends.push(paths.len());
            labels.push(label);
        }
        FolderSource {
            root: root.to_owned(),
            classes,
            paths,
            ends,
            labels,
        }
    }

    /// Opens a folder of class folders.
    pub(crate) fn open_classes(root: &Path, report: &mut OpenReport) -> Result<FolderSource> {
        report.layout = Layout::ClassFolders;
        let mut skipped = Skipped::default();
        let mut class_dirs = Vec::new();
        for (name, path) in listing(root, &mut skipped)? {
            match fs::metadata(&path) {
                Ok(m) if m.is_dir() => class_dirs.push((name, path, dir_id(&m))),
                Ok(_) => skipped.outside_class += 1,
                Err(_) => skipped.links += 1,
            }
        }
        if class_dirs.is_empty() {
            return Err(Error::EmptyDataset {
                path: root.to_owned(),
                reason: "couldn't find any class folder".into(),
            });
        }
        let mut classes = Vec::with_capacity(class_dirs.len());
        let mut found = Vec::new();
        let mut empty = Vec::new();
        let root_id = fs::metadata(root)
            .map(|m| dir_id(&m))
            .map_err(io_err(root))?;
        for (label, (name, path, id)) in class_dirs.into_iter().enumerate() {
            let class = String::from_utf8_lossy(&name).into_owned();
            let mut images = Vec::new();
            walk(
                &path,
                &name,
                &mut vec![root_id, id],
                &mut skipped,
                &mut images,
            )?;
            if images.is_empty() {
                empty.push(class.clone());
            }
            images.sort_by(|(a, _), (b, _)| dir_file(a).cmp(&dir_file(b)));
            classes.push(class);
            found.extend(images.into_iter().map(|(p, size)| (label as u32, p, size)));
        }
        if !empty.is_empty() {
            return Err(Error::EmptyClasses {
                path: root.to_owned(),
                classes: empty,
            });
        }
        report.skipped.add(&skipped);
        report.image_bytes = found.iter().map(|f| f.2).sum();
        Ok(Self::from_found(root, classes, found))
    }

    /// Opens a folder of images labelled by `opts.labels`; images in sub-folders count too.
    pub(crate) fn open_flat(
        root: &Path,
        opts: &OpenOptions,
        report: &mut OpenReport,
    ) -> Result<FolderSource> {
        report.layout = Layout::FlatFolder;
        let labels = LabelSet::load(
            opts.labels.as_deref().unwrap_or(Path::new("")),
            opts.synsets.as_deref(),
        )?;
        let mut skipped = Skipped::default();
        let mut images = Vec::new();
        let root_id = fs::metadata(root)
            .map(|m| dir_id(&m))
            .map_err(io_err(root))?;
        walk(root, &[], &mut vec![root_id], &mut skipped, &mut images)?;
        if images.is_empty() {
            return Err(Error::EmptyDataset {
                path: root.to_owned(),
                reason: "no .jpg/.jpeg/.png file".into(),
            });
        }
        let (mut missing, mut missing_count) = (Vec::new(), 0);
        let mut found = Vec::with_capacity(images.len());
        for (p, size) in images {
            match labels.get(&String::from_utf8_lossy(&p)) {
                Some(l) => found.push((l, p, size)),
                None => push_limited(&mut missing, &mut missing_count, || {
                    String::from_utf8_lossy(&p).into_owned()
                }),
            }
        }
        labels.check(missing, missing_count)?;
        found.sort_by(|(la, a, _), (lb, b, _)| (la, dir_file(a)).cmp(&(lb, dir_file(b))));
        report.skipped.add(&skipped);
        report.image_bytes = found.iter().map(|f| f.2).sum();
        Ok(Self::from_found(root, labels.classes, found))
    }

    fn rel(&self, index: usize) -> &[u8] {
        let start = if index == 0 { 0 } else { self.ends[index - 1] };
        &self.paths[start..self.ends[index]]
    }

    fn path(&self, index: usize) -> PathBuf {
        self.root.join(bytes_path(self.rel(index)))
    }
}

impl Source for FolderSource {
    fn len(&self) -> usize {
        self.labels.len()
    }

    fn classes(&self) -> &[String] {
        &self.classes
    }

    fn label(&self, index: usize) -> u32 {
        self.labels[index]
    }

    fn bytes<'a>(&'a self, index: usize, scratch: &'a mut Vec<u8>) -> Result<&'a [u8]> {
        use std::io::Read;
        let path = self.path(index);
        scratch.clear();
        // The listing skipped non-regular files, but one may have been swapped in since: `open_regular`
        // refuses it rather than wait on a FIFO.
        let (mut file, _) = super::file::open_regular(&path)?;
        file.read_to_end(scratch).map_err(io_err(&path))?;
        Ok(scratch)
    }

    fn name(&self, index: usize) -> String {
        self.path(index).display().to_string()
    }
}
