//! Datasets of image files in folders: class folders (torchvision `ImageFolder`), or a flat folder with a
//! labels file.
//!
//! Like `ImageFolder` (which walks with `os.walk(followlinks=True)`), symlinks are followed, to files and
//! to folders; a symlink back to a folder being walked, or to one above the dataset folder (`/`), is
//! skipped (and counted in `Skipped::links`) instead of looping or listing the disk, and a class folder
//! that is such a link is refused ([`Error::LinkCycle`]). The walk is bounded ([`WalkLimits`]: depth and
//! entries, far above ImageNet's), so a link to some other big folder fails in bounded time. Broken
//! symlinks are skipped and counted too. Order inside a class is `sorted(os.walk())` order: files of a
//! folder by name, then each sub-folder's files, folders by path.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};

use super::labels::LabelSet;
use super::{FileKind, Layout, OpenOptions, OpenReport, Skipped, Source, file_kind};
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

/// Whether `root` itself holds a (non-hidden) image file: a flat folder, like extracted ImageNet val.
pub(crate) fn has_top_images(root: &Path) -> Result<bool> {
    for entry in fs::read_dir(root).map_err(io_err(root))? {
        let entry = entry.map_err(io_err(root))?;
        let name = entry.file_name();
        if !os_bytes(&name).starts_with(b".")
            && file_kind(&name.to_string_lossy()) == FileKind::Image
            && fs::metadata(entry.path()).is_ok_and(|m| m.is_file())
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Bounds of a folder walk, so that a symlink to a system folder fails in bounded time instead of listing
/// the disk. Links to the dataset folder or above it are refused outright (see [`Walk::ancestors`]); these
/// catch the rest, such as a class folder linking to `/usr`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WalkLimits {
    /// Folder levels below the dataset folder. ImageNet's images sit 1 level down (`class/x.JPEG`), and
    /// nested category trees we know stay under 10; 32 also keeps the recursion far from the stack's end.
    pub depth: usize,
    /// Directory entries read. ImageNet-1k has 1.28M files, ImageNet-21k 14.2M: 50M is 3.5 times the
    /// largest, and a walk that gets there has spent minutes stat-ing files that are not a dataset's.
    pub entries: u64,
}

impl Default for WalkLimits {
    fn default() -> Self {
        WalkLimits {
            depth: 32,
            entries: 50_000_000,
        }
    }
}

/// One walk over a dataset folder: its bounds, where it is, and what it skipped.
struct Walk<'a> {
    /// The dataset folder, for messages.
    root: &'a Path,
    limits: WalkLimits,
    /// Identity of every folder from `/` down to the one being listed (the dataset folder's own ancestors
    /// included): a symlink to one of them is a cycle, and one to `/` or above the dataset would list the
    /// dataset again inside itself, or the whole disk.
    ancestors: Vec<(u64, u64)>,
    entries: u64,
    skipped: Skipped,
}

impl<'a> Walk<'a> {
    fn new(root: &'a Path, limits: WalkLimits) -> Result<Walk<'a>> {
        let real = fs::canonicalize(root).map_err(io_err(root))?;
        let mut ancestors = Vec::new();
        for dir in real.ancestors() {
            let meta = fs::metadata(dir).map_err(io_err(dir))?;
            ancestors.push(dir_id(&meta));
        }
        ancestors.reverse();
        Ok(Walk {
            root,
            limits,
            ancestors,
            entries: 0,
            skipped: Skipped::default(),
        })
    }

    /// Whether the folder `meta` describes is the dataset folder, one above it, or one being walked.
    fn is_ancestor(&self, meta: &fs::Metadata) -> bool {
        cfg!(unix) && self.ancestors.contains(&dir_id(meta))
    }

    /// Entries of `dir` sorted by name (bytes, like Python's `sorted` of str), hidden ones counted and
    /// dropped.
    fn listing(&mut self, dir: &Path) -> Result<Vec<(Vec<u8>, PathBuf)>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_err(dir))? {
            let entry = entry.map_err(io_err(dir))?;
            self.entries += 1;
            if self.entries > self.limits.entries {
                return Err(Error::WalkLimit {
                    root: self.root.to_owned(),
                    at: dir.to_owned(),
                    what: "entries",
                    limit: self.limits.entries,
                });
            }
            let name = os_bytes(&entry.file_name()).to_vec();
            if name.starts_with(b".") {
                self.skipped.hidden += 1;
                continue;
            }
            out.push((name, entry.path()));
        }
        out.sort();
        Ok(out)
    }

    /// Appends the images under `dir` (relative path `rel`, `depth` levels below the dataset folder) to
    /// `found`, with their sizes, in no particular order: callers sort by [`dir_file`], which is
    /// `sorted(os.walk())` order.
    fn walk(
        &mut self,
        dir: &Path,
        rel: &[u8],
        depth: usize,
        found: &mut Vec<(Vec<u8>, u64)>,
    ) -> Result<()> {
        for (name, path) in self.listing(dir)? {
            let meta = match fs::metadata(&path) {
                Ok(m) => m,
                Err(_) => {
                    // A broken symlink (the entry itself exists, or read_dir would not list it).
                    self.skipped.links += 1;
                    continue;
                }
            };
            let mut child = rel.to_vec();
            if !child.is_empty() {
                child.push(b'/');
            }
            child.extend_from_slice(&name);
            if meta.is_dir() {
                if self.is_ancestor(&meta) {
                    self.skipped.links += 1;
                    continue;
                }
                if depth >= self.limits.depth {
                    return Err(Error::WalkLimit {
                        root: self.root.to_owned(),
                        at: path,
                        what: "folder levels below it",
                        limit: self.limits.depth as u64,
                    });
                }
                self.ancestors.push(dir_id(&meta));
                let walked = self.walk(&path, &child, depth + 1, found);
                self.ancestors.pop();
                walked?;
            } else if !meta.is_file() {
                self.skipped.devices += 1;
            } else {
                match file_kind(&String::from_utf8_lossy(&name)) {
                    FileKind::Image => found.push((child, meta.len())),
                    FileKind::UnsupportedImage => self.skipped.unsupported_image += 1,
                    FileKind::Other => self.skipped.non_image += 1,
                }
            }
        }
        Ok(())
    }
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
        Self::open_classes_within(root, WalkLimits::default(), report)
    }

    /// [`open_classes`](Self::open_classes) with other walk bounds (tests).
    pub(crate) fn open_classes_within(
        root: &Path,
        limits: WalkLimits,
        report: &mut OpenReport,
    ) -> Result<FolderSource> {
        report.layout = Layout::ClassFolders;
        let mut walk = Walk::new(root, limits)?;
        let mut class_dirs = Vec::new();
        for (name, path) in walk.listing(root)? {
            match fs::metadata(&path) {
                // A class folder that is the dataset folder or above it: refused rather than skipped,
                // since skipping would silently drop a class and shift every label after it.
                Ok(m) if m.is_dir() && walk.is_ancestor(&m) => {
                    let target = fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
                    return Err(Error::LinkCycle { path, target });
                }
                Ok(m) if m.is_dir() => class_dirs.push((name, path, dir_id(&m))),
                Ok(_) => walk.skipped.outside_class += 1,
                Err(_) => walk.skipped.links += 1,
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
        for (label, (name, path, id)) in class_dirs.into_iter().enumerate() {
            let class = String::from_utf8_lossy(&name).into_owned();
            let mut images = Vec::new();
            walk.ancestors.push(id);
            let walked = walk.walk(&path, &name, 1, &mut images);
            walk.ancestors.pop();
            walked?;
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
        report.skipped.add(&walk.skipped);
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
        report.labels_file = opts.labels.clone();
        report.synsets_file = opts.synsets.clone();
        let labels = LabelSet::load(
            opts.labels.as_deref().unwrap_or(Path::new("")),
            opts.synsets.as_deref(),
        )?;
        let mut walk = Walk::new(root, WalkLimits::default())?;
        let mut images = Vec::new();
        walk.walk(root, &[], 0, &mut images)?;
        if images.is_empty() {
            return Err(Error::EmptyDataset {
                path: root.to_owned(),
                reason: "no .jpg/.jpeg/.png file".into(),
            });
        }
        let names = images.iter().map(|(p, _)| String::from_utf8_lossy(p));
        let (labs, classes) = labels.assign(names, report)?;
        let mut found: Vec<(u32, Vec<u8>, u64)> = labs
            .into_iter()
            .zip(images)
            .map(|(l, (p, size))| (l, p, size))
            .collect();
        found.sort_by(|(la, a, _), (lb, b, _)| (la, dir_file(a)).cmp(&(lb, dir_file(b))));
        report.skipped.add(&walk.skipped);
        report.image_bytes = found.iter().map(|f| f.2).sum();
        Ok(Self::from_found(root, classes, found))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walk_stops_at_the_entry_limit_naming_folder_and_limit() {
        let t = tempfile::tempdir().unwrap();
        for class in ["a", "b"] {
            std::fs::create_dir_all(t.path().join(class)).unwrap();
            for i in 0..5 {
                std::fs::write(t.path().join(class).join(format!("{i}.jpg")), b"x").unwrap();
            }
        }
        // 2 class folders + 10 files: 12 entries.
        let limits = |entries| WalkLimits { depth: 32, entries };
        let mut report = OpenReport::default();
        let src = FolderSource::open_classes_within(t.path(), limits(12), &mut report).unwrap();
        assert_eq!(src.len(), 10);
        let err = FolderSource::open_classes_within(t.path(), limits(11), &mut report).unwrap_err();
        match &err {
            Error::WalkLimit {
                root, at, limit, ..
            } => {
                assert_eq!((root.as_path(), *limit), (t.path(), 11));
                assert_eq!(at, &t.path().join("b"));
            }
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().contains("more than 11 entries"), "{err}");
    }
}
