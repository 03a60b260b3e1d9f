//! The Python reference (torch + torchvision) that tests cross-check against, named by IMG_PYTHON.

use std::path::{Path, PathBuf};

/// The reference interpreter, or `None` (after saying so on stderr) when IMG_PYTHON is unset.
/// Under CI, which always has the reference, an unset IMG_PYTHON is a failure instead.
pub fn ref_python() -> Option<PathBuf> {
    match std::env::var_os("IMG_PYTHON") {
        Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ if std::env::var_os("CI").is_some() => panic!("IMG_PYTHON must be set when CI is set"),
        _ => {
            eprintln!("skipped: IMG_PYTHON not set");
            None
        }
    }
}

/// A file of the trainer crate, e.g. `scripts/export_torchvision.py`.
pub fn crate_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}
