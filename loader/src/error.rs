//! The loader's one error type. Every variant carries the culprit: a path, an archive member, a flag.
//!
//! A variant that wraps another error names only the culprit in its own message and exposes the cause
//! through `source()`, so `anyhow`'s `{:#}` prints `culprit: cause` once; [`chain`] does the same for
//! plain strings.

use std::path::{Path, PathBuf};

/// Errors from opening, indexing, decoding and batching datasets.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O error on a file or folder.
    #[error("{}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A sample could not be decoded. `sample` is its full name: a path, or `archive › inner tar › member`.
    #[error("{sample}")]
    Decode {
        sample: String,
        #[source]
        source: crate::decode::DecodeError,
    },
    /// More bad samples than the policy allows (`BadSamples::Skip` caps).
    #[error("too many bad samples (limit {limit}); the last: {last}")]
    TooManyBadSamples { limit: usize, last: String },
    /// A worker thread panicked while filling a batch: a bug, reported instead of hanging.
    #[error("a loader worker panicked while filling batch {batch}: {message}")]
    WorkerPanic { batch: usize, message: String },
    /// The epoch was dropped or failed while this work was pending.
    #[error("cancelled")]
    Cancelled,
    /// A configuration value is out of range or inconsistent. `what` names the setting.
    #[error("invalid {what}: {reason}")]
    Config { what: &'static str, reason: String },
    /// An image or buffer handed to augmentation has an unusable shape (empty image, pixel count not
    /// matching the size, output slot of the wrong length). `what` names which one.
    #[error("{what}: {reason}")]
    Shape { what: &'static str, reason: String },
    /// A tar is malformed or truncated; `offset` is the byte of `archive` where reading went wrong.
    #[error("{}: at byte {offset}: {reason}", archive.display())]
    Archive {
        archive: PathBuf,
        offset: u64,
        reason: String,
    },
    /// A member's bytes could not be read from its archive: the archive shrank since it was indexed (a
    /// short read), or an I/O error. `member` is its path (`inner tar › member` in a tar of tars); `offset`
    /// is where its data starts in `archive`.
    #[error("{}: cannot read member `{member}` ({len} bytes at byte {offset})", archive.display())]
    Member {
        archive: PathBuf,
        member: String,
        offset: u64,
        len: u64,
        #[source]
        source: std::io::Error,
    },
    /// A path that must be a regular file (a tar, an image, a labels file) is a FIFO, a socket, a device
    /// or a folder. Checked before opening: opening a FIFO for reading waits for a writer, forever.
    #[error("{}: is a {kind}, not a regular file", path.display())]
    NotAFile { path: PathBuf, kind: &'static str },
    /// A compressed file where random access needs an uncompressed tar. `member` names an inner tar.
    #[error(
        "{}{}: {kind}-compressed; tars are read in place with random access, which needs an \
         uncompressed tar: decompress it once (e.g. `{hint}`)",
        path.display(), member.as_ref().map(|m| format!(" › {m}")).unwrap_or_default()
    )]
    Compressed {
        path: PathBuf,
        member: Option<String>,
        kind: &'static str,
        hint: String,
    },
    /// An index sidecar cannot be built or used.
    #[error("index {}: {reason}", path.display())]
    Index { path: PathBuf, reason: String },
    /// Images without a label, or labels naming an unknown class. The lists hold the first 20 of each.
    #[error("{}: {}", path.display(), labels_problems(missing, *missing_count, unknown, *unknown_count))]
    Labels {
        path: PathBuf,
        missing: Vec<String>,
        missing_count: usize,
        unknown: Vec<String>,
        unknown_count: usize,
    },
    /// A labels or synset-list file cannot be parsed. `line` is 1-based; 0 means the whole file.
    #[error("{}{}: {reason}", path.display(), if *line > 0 { format!(":{line}") } else { String::new() })]
    LabelsFile {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    /// The dataset has no image.
    #[error("{}: no images: {reason}", path.display())]
    EmptyDataset { path: PathBuf, reason: String },
    /// Class folders (or per-class tars) without any image; torchvision's `ImageFolder` refuses them too.
    #[error(
        "{}: found no valid file for the classes {}. Supported extensions are: .jpg, .jpeg, .png (any case)",
        path.display(), classes.join(", ")
    )]
    EmptyClasses { path: PathBuf, classes: Vec<String> },
    /// A class folder is a symlink to the dataset folder or to a folder above it (`target`, resolved):
    /// following it would list the dataset inside itself, or the whole disk.
    #[error(
        "{}: class folder is a symlink to {}, which holds the dataset: following it would loop",
        path.display(), target.display()
    )]
    LinkCycle { path: PathBuf, target: PathBuf },
    /// Walking the dataset folder `root` went past a bound (`limit` `what`) at `at`; the bounds are far
    /// above any real dataset's, so a symlink to a big folder elsewhere is the likely cause.
    #[error(
        "{}: stopped walking {} at more than {limit} {what} (far more than a dataset has: a symlink to \
         some big folder?)",
        at.display(), root.display()
    )]
    WalkLimit {
        root: PathBuf,
        at: PathBuf,
        what: &'static str,
        limit: u64,
    },
    /// A flat tar or folder of images (ImageNet val as shipped) opened without a labels file.
    #[error("{}: {reason}", path.display())]
    NeedsLabels { path: PathBuf, reason: String },
    /// The dataset's layout is not one we read, or is ambiguous.
    #[error("{}: {reason}", path.display())]
    Layout { path: PathBuf, reason: String },
    /// A decoded sample could not be resized or encoded again (shard writer).
    #[error("{sample}: cannot re-encode: {reason}")]
    Encode { sample: String, reason: String },
    /// A shard output folder cannot be written or resumed.
    #[error("{}: {reason}", path.display())]
    ShardDir { path: PathBuf, reason: String },
}

fn labels_problems(
    missing: &[String],
    missing_count: usize,
    unknown: &[String],
    unknown_count: usize,
) -> String {
    let mut parts = Vec::new();
    if missing_count > 0 {
        parts.push(format!(
            "{missing_count} image(s) have no label{}",
            list(missing, missing_count)
        ));
    }
    if unknown_count > 0 {
        parts.push(format!(
            "{unknown_count} label(s) name an unknown class{}",
            list(unknown, unknown_count)
        ));
    }
    parts.join("; ")
}

/// ` (a, b, … and N more)` for error messages; empty when there is nothing.
fn list(items: &[String], count: usize) -> String {
    if items.is_empty() {
        return String::new();
    }
    let more = count.saturating_sub(items.len());
    let tail = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    format!(" ({}{tail})", items.join(", "))
}

/// Maps an I/O error to [`Error::Io`] naming `path`: `.map_err(io_err(path))`.
pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The error and its sources joined by `: ` (what `anyhow` prints with `{:#}`).
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        out.push_str(": ");
        out.push_str(&e.to_string());
        cur = e.source();
    }
    out
}
