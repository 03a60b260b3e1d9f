//! `imgtool` as a user runs it.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::OnceLock;

fn imgtool(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_imgtool"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = imgtool(args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "imgtool {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn fails(args: &[&str]) -> String {
    let out = imgtool(args);
    assert!(!out.status.success(), "imgtool {args:?} should fail");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(stderr.starts_with("imgtool: error: "), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

/// A small dataset made by `imgtool synth`, once per test binary.
fn data() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("d");
        let args = [
            "synth",
            "--out",
            out.to_str().unwrap(),
            "--classes",
            "3",
            "--train-per-class",
            "6",
        ];
        let stdout = ok(&[&args[..], &["--val-per-class", "2"]].concat());
        assert!(
            stdout.contains("3 classes: 18 train + 6 val images"),
            "{stdout}"
        );
        dir
    })
    .path()
}

fn path(rel: &str) -> String {
    data().join("d").join(rel).to_str().unwrap().to_owned()
}

#[test]
fn synth_is_deterministic_and_refuses_to_clobber() {
    let other = tempfile::tempdir().unwrap();
    let out = other.path().join("d");
    let o = out.to_str().unwrap();
    ok(&[
        "synth",
        "--out",
        o,
        "--classes",
        "3",
        "--train-per-class",
        "6",
        "--val-per-class",
        "2",
    ]);
    for tar in ["train.tar", "val.tar"] {
        assert_eq!(
            std::fs::read(out.join(tar)).unwrap(),
            std::fs::read(path(tar)).unwrap(),
            "{tar}"
        );
    }
    let err = fails(&["synth", "--out", o, "--classes", "3"]);
    assert!(err.contains(o), "{err}");
    ok(&[
        "synth",
        "--out",
        o,
        "--classes",
        "2",
        "--train-per-class",
        "2",
        "--val-per-class",
        "1",
        "--force",
    ]);
    assert_eq!(std::fs::read_dir(out.join("train")).unwrap().count(), 2);
    let err = fails(&["synth", "--out", o, "--classes", "0", "--force"]);
    assert!(err.contains("classes"), "{err}");
}

#[test]
fn index_builds_then_reuses_the_sidecar() {
    let tar = path("train.tar");
    let first = ok(&["index", &tar]);
    assert!(first.contains("18 images in 3 classes"), "{first}");
    let second = ok(&["index", &tar]);
    assert!(
        second.contains("index loaded, nothing rescanned"),
        "{second}"
    );
    let rebuilt = ok(&["index", &tar, "--rebuild"]);
    assert!(rebuilt.contains("scanned"), "{rebuilt}");
    let folder = ok(&["index", &path("val")]);
    assert!(
        folder.contains("ClassFolders, 6 images in 3 classes"),
        "{folder}"
    );
}

#[test]
fn bench_reports_json() {
    let out = ok(&[
        "bench",
        &path("val.tar"),
        "--pipeline",
        "val",
        "-j",
        "2",
        "-b",
        "4",
        "--json",
    ]);
    let line = out.trim();
    assert!(line.starts_with('{') && line.ends_with('}'), "{out}");
    for field in [
        "\"images_per_sec\":",
        "\"threads\":2",
        "\"pipeline\":\"val\"",
        "\"images\":6",
        "\"bad_samples\":0",
    ] {
        assert!(line.contains(field), "{field} missing in {line}");
    }
    let text = ok(&[
        "bench",
        &path("train"),
        "--pipeline",
        "train",
        "-j",
        "1",
        "-b",
        "5",
        "--crop-size",
        "64",
    ]);
    assert!(text.contains("train: 18 images"), "{text}");
}

#[test]
fn bad_input_is_a_clear_error() {
    let missing = data().join("nope.tar");
    let err = fails(&["index", missing.to_str().unwrap()]);
    assert!(err.contains("nope.tar"), "{err}");

    let gz = data().join("train.tar.gz");
    std::fs::write(&gz, [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3]).unwrap();
    let err = fails(&["index", gz.to_str().unwrap()]);
    assert!(
        err.contains("train.tar.gz") && err.contains("gzip"),
        "{err}"
    );

    let junk = data().join("junk.tar");
    std::fs::write(&junk, b"this is not a tar archive at all, just some text").unwrap();
    let err = fails(&["index", junk.to_str().unwrap()]);
    assert!(err.contains("junk.tar"), "{err}");

    let err = fails(&["bench", &path("val.tar"), "-j", "0"]);
    assert!(err.contains("threads"), "{err}");
    let err = fails(&["bench", &path("val.tar"), "-b", "0"]);
    assert!(err.contains("batch size"), "{err}");
}
