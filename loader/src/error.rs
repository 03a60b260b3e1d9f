//! The loader's one error type. Every variant carries the culprit: a path, an archive member, a flag.

use std::path::PathBuf;

/// Errors from opening, indexing, decoding and batching datasets.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O error on a file or folder.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A sample could not be decoded. `sample` is its full name: a path, or `archive › inner tar › member`.
    #[error("{sample}: {reason}")]
    Decode { sample: String, reason: String },
    /// A configuration value is out of range or inconsistent. `what` names the setting.
    #[error("invalid {what}: {reason}")]
    Config { what: &'static str, reason: String },
    /// An image or buffer handed to augmentation has an unusable shape (empty image, pixel count not
    /// matching the size, output slot of the wrong length). `what` names which one.
    #[error("{what}: {reason}")]
    Shape { what: &'static str, reason: String },
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
