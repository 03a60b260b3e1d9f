//! `benches/torchvision_ref.py`, the comparison's reference, run on a tiny dataset: its `--json` output
//! parses and carries the fields `benches/compare` reads, for a folder and for the same tar; bad input is
//! a clear error. Needs IMG_PYTHON (torch + torchvision); without it the test says it is skipped, except
//! under CI, where the reference is always present.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn ref_python() -> Option<PathBuf> {
    match std::env::var_os("IMG_PYTHON") {
        Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ if std::env::var_os("CI").is_some() => panic!("IMG_PYTHON must be set when CI is set"),
        _ => {
            eprintln!("skipped: IMG_PYTHON not set");
            None
        }
    }
}

fn reference(python: &Path, args: &[&str]) -> Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("torchvision_ref.py");
    Command::new(python)
        .arg(script)
        .args(args)
        .output()
        .unwrap()
}

fn json(python: &Path, args: &[&str]) -> serde_json::Value {
    let out = reference(python, args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "torchvision_ref.py {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

#[test]
fn reference_json_parses_for_a_folder_and_its_tar() {
    let Some(python) = ref_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let cfg = imgfixtures::SynthConfig {
        classes: 2,
        train_per_class: 3,
        val_per_class: 1,
        min_side: 40,
        max_side: 80,
        ..Default::default()
    };
    imgfixtures::write_dataset(&cfg, dir.path()).unwrap();
    let folder = dir.path().join("train");
    let tar = dir.path().join("train.tar");

    let v = json(
        &python,
        &[
            folder.to_str().unwrap(),
            "--workers",
            "1",
            "-b",
            "2",
            "--crop-size",
            "32",
            "--epochs",
            "2",
            "--json",
        ],
    );
    assert_eq!(v["tool"], "torchvision");
    assert_eq!(v["pipeline"], "train");
    assert_eq!(v["threads"], 1);
    assert_eq!(v["images"], 12, "6 images, 2 epochs: {v}");
    assert!(v["images_per_sec"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["cpu_ms_per_image"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["peak_rss_bytes"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["epoch_images_per_sec"].as_array().unwrap().len(), 2);
    assert!(v["versions"]["torchvision"].is_string(), "{v}");

    // The tar, read in place, in the same order; decode only, in the main process.
    let v = json(
        &python,
        &[
            tar.to_str().unwrap(),
            "--pipeline",
            "decode",
            "--workers",
            "0",
            "-b",
            "4",
            "--json",
        ],
    );
    assert_eq!(v["pipeline"], "decode");
    assert_eq!(v["images"], 6, "{v}");
    assert_eq!(v["workers"], 0);
}

#[test]
fn reference_names_a_missing_dataset() {
    let Some(python) = ref_python() else { return };
    let out = reference(&python, &["/nonexistent/imagenet", "--json"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/imagenet"), "{err}");
}
