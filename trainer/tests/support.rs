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

/// A folder for data the tests of this binary share (a dataset, finished runs), under cargo's target tmp
/// folder. A `TempDir` held in a static is never dropped, so each run of the tests would leave its copy
/// (hundreds of MB of checkpoints) in the system's temp folder; these folders are named by process id
/// instead, and those of processes that are gone are removed by the next run.
pub fn shared_dir(name: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("imgtrain-tests");
    std::fs::create_dir_all(&root).unwrap();
    let me = std::process::id();
    for entry in std::fs::read_dir(&root).unwrap().flatten() {
        let file_name = entry.file_name();
        let pid = file_name
            .to_str()
            .and_then(|n| n.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok());
        if let Some(pid) = pid
            && pid != me
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    let dir = root.join(format!("{me}-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
