//! Datasets of encoded images with integer labels, read in place.
//!
//! [`open`] looks at a path and picks the layout:
//!
//! | path | layout | labels from |
//! | --- | --- | --- |
//! | folder with (non-hidden) sub-folders | class folders, like torchvision's `ImageFolder` | sorted sub-folder names |
//! | folder + [`OpenOptions::labels`] | flat folder of images | the labels file |
//! | folder of `*.tar` files (no sub-folders) | webdataset shards (`key.jpg` + `key.cls`) | `.cls` members |
//! | tar of class folders (`n01440764/x.JPEG`, maybe under `./` or one top folder) | tar class folders | sorted folder names |
//! | tar of per-class tars (`ILSVRC2012_img_train.tar`) | tar of tars | sorted inner tar names |
//! | tar + [`OpenOptions::labels`] (`ILSVRC2012_img_val.tar`) | flat tar | the labels file, then its index |
//! | a tar with `.cls` members | one webdataset shard | `.cls` members |
//!
//! Samples are ordered by label, then like `sorted(os.walk(class_dir))` orders a class folder: by the
//! member's folder, then its file name. A folder, its tar, its tar of tars and its shards therefore list
//! the same images at the same indices.
//!
//! Which files are images: names ending in `.jpg`, `.jpeg` or `.png` in any case. torchvision's
//! `IMG_EXTENSIONS` also lists `.ppm .bmp .pgm .tif .tiff .webp`; our decoders read JPEG and PNG only, so
//! those are skipped and counted in [`Skipped::unsupported_image`] rather than failing at decode time.
//! Hidden files and folders (a name starting with `.`, such as macOS `._x.JPEG` resource forks) are
//! skipped everywhere; torchvision would list them and then fail to decode them.
//!
//! Tars are read in place with positioned reads and never extracted; each tar gets an index sidecar
//! (`train.tar.idx`, see `INDEX_FORMAT.md` beside this file) so a second open reads no tar header. A flat
//! tar's index also keeps its labels and the size and CRC-32 of the files they came from: later opens need
//! no labels file, and a changed labels file (given, or the recorded one) makes the labels be read again. A tar
//! truncated while open gives errors naming the member, never a crash; a path that should be a file but
//! is a FIFO, socket or device is refused before it is opened.
//!
//! Tar members: directory entries are skipped; symlinks, hard links, devices, fifos, absolute paths and
//! paths with a `..` component are rejected and counted, never followed; `./` components are dropped. A
//! tar of class folders may have one folder above the classes (`train/n01440764/x.JPEG`): it is dropped
//! when every image is at least three levels deep under it and nothing else is beside it. A tar holding
//! any `.cls` member is read as a webdataset shard. A tar whose members are `.tar` files and no image is
//! a tar of tars; the class of an inner tar is its file name without `.tar`.
//!
//! Webdataset shards: a sample's key is the member path up to the first dot of its base name
//! (`n01/x.y.jpg` is key `n01/x`, extension `y.jpg`); `key.jpg`/`.jpeg`/`.png` (any case) is the image,
//! `key.cls` holds its class index as decimal text; other members (`.json`, …) are skipped. Class names
//! come from `manifest.json` (`{"classes": [...]}` or `[...]`) or `classes.txt` (one per line) beside the
//! shards, else are `"0"..="max"`. A shard folder holds `*.tar` files and no sub-folder.

mod archive;
mod build;
mod file;
mod folder;
mod index;
mod labels;
mod tarscan;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::Result;
use crate::error::io_err;

/// A random-access dataset of encoded images with integer labels.
pub trait Source: Send + Sync + std::fmt::Debug {
    /// Number of samples.
    fn len(&self) -> usize;
    /// Whether there are no samples (an opened source always has some).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Class names; label `i` names `classes()[i]`.
    fn classes(&self) -> &[String];
    /// Label of sample `index`. Panics if `index >= len()`.
    fn label(&self, index: usize) -> u32;
    /// Encoded bytes of sample `index`, read into `scratch`, whose capacity is reused: once it has grown
    /// to the largest sample, reading costs no allocation. Panics if `index >= len()`.
    fn bytes<'a>(&'a self, index: usize, scratch: &'a mut Vec<u8>) -> Result<&'a [u8]>;
    /// Full human name for messages: a path, or `archive › inner tar › member`.
    fn name(&self, index: usize) -> String;
}

/// What to do with a tar's index sidecar.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum IndexPolicy {
    /// Load the sidecar if it is valid for the tar as it is now, else build one and save it (next to the
    /// tar, else in the cache folder, else keep it in memory).
    #[default]
    Use,
    /// Build a new index from the tar and save it, whatever is there.
    Rebuild,
    /// Never write: load a valid sidecar, else build the index in memory.
    ReadOnly,
}

/// How to open a dataset. Everything is optional; `OpenOptions::default()` autodetects.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Labels for a flat tar or folder of images (ImageNet val): `ILSVRC2012_validation_ground_truth.txt`
    /// (needs [`synsets`](Self::synsets)), `LOC_val_solution.csv`, or `filename synset` lines.
    pub labels: Option<PathBuf>,
    /// A synset list: `map_clsloc.txt` (`n02119789 1 kit_fox`: explicit devkit ids), or one synset per
    /// line first (`LOC_synset_mapping.txt`: id = line number). When given, the classes are its sorted
    /// synsets and every label must be one of them. Required with `ILSVRC2012_validation_ground_truth.txt`.
    pub synsets: Option<PathBuf>,
    /// Use [`labels`](Self::labels) only if the dataset turns out flat: a tar or folder of class folders
    /// keeps the labels its folders give. For labels files found beside a split rather than asked for.
    pub labels_if_flat: bool,
    /// What to do with index sidecars.
    pub index: IndexPolicy,
    /// Where indexes go when the tar's folder is not writable. Default: `$XDG_CACHE_HOME/imgtoolkit/index`,
    /// else `$HOME/.cache/imgtoolkit/index`.
    pub cache_dir: Option<PathBuf>,
}

/// The layout [`open`] found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Layout {
    /// A folder of class folders.
    #[default]
    ClassFolders,
    /// A folder of images labelled by a labels file.
    FlatFolder,
    /// A tar of class folders.
    TarClassFolders,
    /// A tar of per-class tars (`ILSVRC2012_img_train.tar`).
    TarOfTars,
    /// A tar of images labelled by a labels file (`ILSVRC2012_img_val.tar`).
    FlatTar,
    /// Webdataset tars: one shard, or a folder of them.
    Shards,
}

/// Entries that were not taken as samples, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Skipped {
    /// Files whose extension is not an image's (also `.cls`/`.json` members of shards).
    pub non_image: u64,
    /// Images our decoders do not read (`.bmp .ppm .pgm .tif .tiff .webp`).
    pub unsupported_image: u64,
    /// Directory entries of tars.
    pub directories: u64,
    /// Hidden files and folders (name starting with `.`). On disk a hidden folder counts once (it is not
    /// entered); in a tar every member under it counts.
    pub hidden: u64,
    /// Files outside any class folder (at the top of a class-folder dataset).
    pub outside_class: u64,
    /// Tar symlinks and hard links (rejected, never followed); broken or looping symlinks in folders.
    pub links: u64,
    /// Tar character/block devices and fifos; sockets and devices in folders.
    pub devices: u64,
    /// Tar members with an absolute path (rejected).
    pub absolute: u64,
    /// Tar members with a `..` component (rejected).
    pub dotdot: u64,
    /// Other tar entries: pax global headers, GNU sparse files, volume labels.
    pub other: u64,
}

impl Skipped {
    /// All skipped entries.
    pub fn total(&self) -> u64 {
        self.non_image
            + self.unsupported_image
            + self.directories
            + self.hidden
            + self.outside_class
            + self.links
            + self.devices
            + self.absolute
            + self.dotdot
            + self.other
    }

    fn add(&mut self, o: &Skipped) {
        self.non_image += o.non_image;
        self.unsupported_image += o.unsupported_image;
        self.directories += o.directories;
        self.hidden += o.hidden;
        self.outside_class += o.outside_class;
        self.links += o.links;
        self.devices += o.devices;
        self.absolute += o.absolute;
        self.dotdot += o.dotdot;
        self.other += o.other;
    }
}

/// What [`open_with_report`] found and did, for `imgtool index` and logs.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct OpenReport {
    /// The layout found.
    pub layout: Layout,
    /// Samples.
    pub images: usize,
    /// Classes.
    pub classes: usize,
    /// Total encoded bytes of all samples.
    pub image_bytes: u64,
    /// Entries not taken, by reason (from the index when it was loaded).
    pub skipped: Skipped,
    /// Tars (archives and shards) opened.
    pub archives: usize,
    /// Tar headers in the archives, as counted when their indexes were built.
    pub members: u64,
    /// Tar headers parsed during this open (0 when every index was loaded: nothing was rescanned).
    pub members_scanned: u64,
    /// Index sidecars loaded as they were.
    pub indexes_loaded: usize,
    /// Indexes built during this open (saved or not).
    pub indexes_built: usize,
    /// Index files loaded or written.
    pub index_files: Vec<PathBuf>,
    /// Index notes: why one was rebuilt, where it was saved instead, or that it stayed in memory.
    pub notes: Vec<String>,
    /// Rows of the labels file for images the dataset does not have (ignored: they make no class).
    pub unused_labels: u64,
    /// What the caller should pass on to the user although the open succeeded, one line each (such as
    /// unused label rows).
    pub warnings: Vec<String>,
    /// The labels file of a flat dataset: the one given, or the one a tar's index recorded its labels from.
    pub labels_file: Option<PathBuf>,
    /// The synset list used with [`labels_file`](Self::labels_file), if any.
    pub synsets_file: Option<PathBuf>,
    /// Whether a flat tar's labels were those kept in its index (the labels files were not parsed).
    pub labels_from_index: bool,
}

/// Open the dataset at `path`, autodetecting its layout (see the module docs).
pub fn open(path: &Path, opts: &OpenOptions) -> Result<Arc<dyn Source>> {
    open_with_report(path, opts).map(|(source, _)| source)
}

/// [`open`], also returning what was found and done.
pub fn open_with_report(path: &Path, opts: &OpenOptions) -> Result<(Arc<dyn Source>, OpenReport)> {
    let mut report = OpenReport::default();
    let meta = std::fs::metadata(path).map_err(io_err(path))?;
    let source: Arc<dyn Source> = if meta.is_dir() {
        let flat = opts.labels.is_some()
            && (!opts.labels_if_flat
                || (!folder::has_class_dirs(path)? && folder::has_top_images(path)?));
        if flat {
            Arc::new(folder::FolderSource::open_flat(path, opts, &mut report)?)
        } else if folder::has_class_dirs(path)? {
            Arc::new(folder::FolderSource::open_classes(path, &mut report)?)
        } else {
            Arc::new(archive::TarSource::open_shard_dir(path, opts, &mut report)?)
        }
    } else {
        Arc::new(archive::TarSource::open_tar(path, opts, &mut report)?)
    };
    report.images = source.len();
    report.classes = source.classes().len();
    tracing::debug!(
        path = %path.display(),
        samples = report.images,
        classes = report.classes,
        archives = report.archives,
        indexes_loaded = report.indexes_loaded,
        indexes_built = report.indexes_built,
        members_scanned = report.members_scanned,
        "dataset opened"
    );
    Ok((source, report))
}

/// Loads or builds (and saves, falling back to `cache_dir`) the index of one webdataset shard; returns its
/// sample count. The shard writer indexes each shard it finishes.
pub(crate) fn index_shard(path: &Path, cache_dir: &Path) -> Result<usize> {
    archive::index_shard(path, cache_dir)
}

/// Which kind of file a name is, by its extension (after the last dot, any case).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileKind {
    Image,
    UnsupportedImage,
    Other,
}

pub(crate) fn file_kind(name: &str) -> FileKind {
    match name.rsplit_once('.') {
        Some((_, ext)) => ext_kind(ext),
        None => FileKind::Other,
    }
}

pub(crate) fn ext_kind(ext: &str) -> FileKind {
    const IMAGE: [&str; 3] = ["jpg", "jpeg", "png"];
    const UNSUPPORTED: [&str; 6] = ["ppm", "bmp", "pgm", "tif", "tiff", "webp"];
    if IMAGE.iter().any(|e| ext.eq_ignore_ascii_case(e)) {
        FileKind::Image
    } else if UNSUPPORTED.iter().any(|e| ext.eq_ignore_ascii_case(e)) {
        FileKind::UnsupportedImage
    } else {
        FileKind::Other
    }
}

/// `(folder, file name)` of a `/`-separated path: the order key inside a class, as `sorted(os.walk())` +
/// `sorted(fnames)` give it (all files of a folder before those of its sub-folders).
pub(crate) fn split_dir(path: &str) -> (&str, &str) {
    path.rsplit_once('/').unwrap_or(("", path))
}

/// Counts up to `LIST_MAX` names of a problem list, keeping the total.
pub(crate) const LIST_MAX: usize = 20;

pub(crate) fn push_limited(
    list: &mut Vec<String>,
    count: &mut usize,
    item: impl FnOnce() -> String,
) {
    if list.len() < LIST_MAX {
        list.push(item());
    }
    *count += 1;
}
