//! `imgtool stats`: counts and distributions, as text and JSON.

use crate::util::{dataset, fails, ok, s};

#[test]
fn text_and_json_agree_with_the_data() {
    let t = tempfile::tempdir().unwrap();
    let d = dataset(t.path(), 4);
    let text = ok(&["stats", s(&d.join("train.tar")), "--buckets", "4"]);
    for part in [
        "12 images in 3 classes",
        "(12 JPEG)",
        "images per class (images): min 4",
        "width (px): min ",
        "file size (KB)",
        " | #",
    ] {
        assert!(text.contains(part), "{part} missing in\n{text}");
    }
    let json = ok(&["stats", s(&d.join("train")), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["images"], 12);
    let counts: Vec<u64> = v["class_counts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["images"].as_u64().unwrap())
        .collect();
    assert_eq!(counts, [4, 4, 4]);
    // Sides lie in the generator's 64..=160 range; every histogram counts every image once.
    for key in ["width", "height"] {
        let (min, max) = (
            v[key]["min"].as_f64().unwrap(),
            v[key]["max"].as_f64().unwrap(),
        );
        assert!(
            (64.0..=160.0).contains(&min) && min <= max && max <= 160.0,
            "{key}: {min} {max}"
        );
    }
    for key in [
        "width",
        "height",
        "shorter_side",
        "megapixels",
        "file_size_kb",
    ] {
        let h = v[key]["histogram"].as_array().unwrap();
        assert_eq!(h.len(), 10);
        assert_eq!(
            h.iter().map(|b| b["count"].as_u64().unwrap()).sum::<u64>(),
            12,
            "{key}"
        );
    }
    let total: u64 = std::fs::read_dir(d.join("train"))
        .unwrap()
        .flat_map(|c| std::fs::read_dir(c.unwrap().path()).unwrap())
        .map(|f| f.unwrap().metadata().unwrap().len())
        .sum();
    assert_eq!(v["bytes"], total);
    let (_, err) = fails(&["stats", s(&d.join("train")), "--buckets", "0"]);
    assert!(err.contains("buckets"), "{err}");
}

/// `imgtool stats ... | head -1`: a reader that goes away early is not a failure, and nothing panics.
#[test]
fn closed_stdout_is_not_an_error() {
    use std::process::{Command, Stdio};
    let t = tempfile::tempdir().unwrap();
    let d = dataset(t.path(), 4);
    let child = Command::new(env!("CARGO_BIN_EXE_imgtool"))
        .args(["stats", s(&d.join("train.tar")), "--buckets", "50"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Close our end of the pipe before the tool writes: every write of the tool fails with EPIPE.
    let mut child = child;
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {err}", out.status);
    assert!(!err.contains("panicked"), "{err}");
}
