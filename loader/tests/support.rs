//! The Python reference (PIL, torchvision) that tests cross-check against, named by IMG_PYTHON, and the
//! committed scripts under tests/ref/ they run.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

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

/// Runs `tests/ref/<script>` with `args`, feeding `stdin`; returns stdout, panics with stderr on failure.
pub fn run_ref(python: &PathBuf, script: &str, args: &[String], stdin: &[u8]) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/ref")
        .join(script);
    let mut child = Command::new(python)
        .arg(&path)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {} {}: {e}", python.display(), path.display()));
    let mut input = child.stdin.take().expect("piped stdin");
    let data = stdin.to_vec();
    // Write from another thread: the script may fill its stdout pipe before reading all of stdin.
    let writer = std::thread::spawn(move || input.write_all(&data));
    let out = child.wait_with_output().expect("wait for reference script");
    writer
        .join()
        .expect("stdin writer")
        .expect("write reference script's stdin");
    assert!(
        out.status.success(),
        "{script} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Every JPEG backend in this build: zune always, libjpeg-turbo with the `turbojpeg` feature.
pub fn backends() -> Vec<imgloader::decode::JpegBackend> {
    use imgloader::decode::JpegBackend;
    [JpegBackend::Zune, JpegBackend::Turbo]
        .into_iter()
        .filter(|b| b.is_available())
        .collect()
}

/// A decoder with default options but for the JPEG backend.
pub fn decoder(jpeg: imgloader::decode::JpegBackend) -> imgloader::Decoder {
    imgloader::Decoder::new(imgloader::DecodeOptions {
        jpeg,
        ..imgloader::DecodeOptions::default()
    })
}
