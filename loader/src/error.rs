//! The loader's one error type. Every variant carries the culprit: a path, an archive member, a flag.
//!
//! A variant that wraps another error names only the culprit in its own message and exposes the cause
//! through `source()`, so `anyhow`'s `{:#}` prints `culprit: cause` once; [`chain`] does the same for
//! plain strings.

use std::path::PathBuf;

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
