//! Running `imgtool`, small datasets, and the Python reference (IMG_PYTHON) for the command tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn imgtool(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_imgtool"))
        .args(args)
        .output()
        .unwrap()
}

/// Runs imgtool, asserts success, returns stdout.
pub fn ok(args: &[&str]) -> String {
    let out = imgtool(args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "imgtool {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Runs imgtool, asserts a clean failure (an `imgtool: error:` line, no panic), returns (stdout, stderr).
pub fn fails(args: &[&str]) -> (String, String) {
    let out = imgtool(args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "imgtool {args:?} should fail:\n{stdout}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains("imgtool: error: ") || stderr.contains("error: "),
        "{stderr}"
    );
    (stdout, stderr)
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A small synthetic dataset (3 classes, `per_class` train images of 64-160 px) in `dir`.
pub fn dataset(dir: &Path, per_class: usize) -> PathBuf {
    let cfg = imgfixtures::SynthConfig {
        classes: 3,
        train_per_class: per_class,
        val_per_class: 2,
        min_side: 64,
        max_side: 160,
        ..Default::default()
    };
    imgfixtures::write_dataset(&cfg, dir).unwrap();
    dir.to_owned()
}

/// The reference interpreter, or `None` (after saying so) when IMG_PYTHON is unset; under CI a failure.
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

/// Runs `tests/py/<script>` with `args`; returns stdout, panics with stderr on failure.
pub fn run_py(python: &Path, script: &str, args: &[&str]) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/py")
        .join(script);
    let out = Command::new(python)
        .arg(&path)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    assert!(
        out.status.success(),
        "{script} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Regular files under `dir`, recursively, relative, sorted.
pub fn tree(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.push(p.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Runs imgtool for at most `secs` seconds: a hang fails the test (the process is killed) instead of
/// hanging the run. Output goes through files, so a chatty child never blocks on a full pipe.
pub fn imgtool_within(args: &[&str], secs: u64) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_imgtool"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed().as_secs() >= secs {
            let _ = child.kill();
            let _ = child.wait();
            panic!("imgtool {args:?}: still running after {secs} s (hangs?)");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    Output {
        status,
        stdout: std::fs::read(&out_path).unwrap(),
        stderr: std::fs::read(&err_path).unwrap(),
    }
}

pub fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(status.success(), "mkfifo {}", path.display());
}
