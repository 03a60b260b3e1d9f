//! Replacing a file so that a reader, a crash or a `kill -9` at any moment sees the old content or the
//! new, never a mix: the one way the toolkit writes what it reads back later (index sidecars, the shard
//! writer's progress file and manifest, the trainer's checkpoints).
//!
//! The bytes go to a temporary file in the same folder (`.<name>.<pid>-<n>.tmp`: unique, so that several
//! processes writing the same index never share one), which is synced, renamed over the destination, and
//! then the folder is synced so that the rename itself survives a power cut. On failure the temporary
//! file is removed. A crash can leave one behind: its name ends in `.tmp` and starts with `.<name>.`, and
//! whoever owns the folder may delete it ([`is_temporary_of`]).

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

static SEQ: AtomicU64 = AtomicU64::new(0);

fn folder_of(dest: &Path) -> &Path {
    dest.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Replaces `dest` with `bytes` atomically and durably; see the module docs.
pub fn write_file(dest: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = folder_of(dest);
    let name = dest.file_name().unwrap_or_default().to_string_lossy();
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let tmp: PathBuf = dir.join(format!(".{name}.{}-{seq}.tmp", std::process::id()));
    let write = || -> io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, dest)
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    File::open(dir).and_then(|d| d.sync_all())
}

/// Whether `file_name` is a temporary file that [`write_file`] may have left for a destination named
/// `dest_name` in the same folder.
pub fn is_temporary_of(file_name: &str, dest_name: &str) -> bool {
    temporary_owner(file_name, dest_name).is_some()
}

/// The id of the process that wrote `file_name`, when it is a temporary file of [`write_file`] for a
/// destination named `dest_name`: a caller cleaning up can leave alone the files of a process still alive.
pub fn temporary_owner(file_name: &str, dest_name: &str) -> Option<u32> {
    let (pid, n) = file_name
        .strip_prefix('.')
        .and_then(|rest| rest.strip_prefix(dest_name))
        .and_then(|rest| rest.strip_prefix('.'))
        .and_then(|rest| rest.strip_suffix(".tmp"))
        .and_then(|id| id.split_once('-'))?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("a.json");
        write_file(&dest, b"one").unwrap();
        write_file(&dest, b"two").unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"two");
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["a.json"]);
    }

    #[test]
    fn a_failed_write_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("a.json");
        write_file(&dest, b"old").unwrap();
        // A folder in the way of the rename: the write fails and the old content stays.
        let blocked = dir.path().join("sub");
        std::fs::create_dir(&blocked).unwrap();
        std::fs::write(blocked.join("x"), b"").unwrap();
        assert!(write_file(&blocked, b"new").is_err());
        assert_eq!(std::fs::read(&dest).unwrap(), b"old");
        assert!(
            std::fs::read_dir(dir.path()).unwrap().all(|e| !e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".tmp"))
        );
    }

    #[test]
    fn temporaries_are_recognised() {
        assert_eq!(
            temporary_owner(".progress.json.123-0.tmp", "progress.json"),
            Some(123)
        );
        assert_eq!(
            temporary_owner(".progress.json.99999999999-0.tmp", "progress.json"),
            None
        );
        assert!(is_temporary_of(".progress.json.123-0.tmp", "progress.json"));
        assert!(!is_temporary_of(".progress.json.tmp", "progress.json"));
        assert!(!is_temporary_of(
            ".progress.json.12a-0.tmp",
            "progress.json"
        ));
        assert!(!is_temporary_of("progress.json", "progress.json"));
        assert!(!is_temporary_of(".other.json.1-2.tmp", "progress.json"));
    }
}
