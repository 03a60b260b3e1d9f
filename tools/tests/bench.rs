//! `imgtool bench`: the decode pipeline, JSON fields the comparison script reads, bad samples, limits.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// 3 classes × 4 small images as class folders, plus a copy with two broken files; made once.
fn bench_data() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let cfg = imgfixtures::SynthConfig {
            classes: 3,
            train_per_class: 4,
            val_per_class: 1,
            min_side: 40,
            max_side: 90,
            seed: 5,
            ..Default::default()
        };
        imgfixtures::write_dataset(&cfg, dir.path()).unwrap();
        let broken = dir.path().join("broken/cls");
        std::fs::create_dir_all(&broken).unwrap();
        let odd = imgfixtures::odd::odd_dir();
        for (name, fixture) in [
            ("a.jpg", "rgb.jpg"),
            ("b.JPEG", "truncated.jpg"),
            ("c.JPEG", "not_an_image.JPEG"),
            ("d.jpg", "gray.jpg"),
        ] {
            std::fs::copy(odd.join(fixture), broken.join(name)).unwrap();
        }
        dir
    })
    .path()
}

fn bench(src: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_imgtool"))
        .arg("bench")
        .arg(src)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The value of `"key":` in a flat one-line JSON object, as written (numbers, strings with quotes, lists).
fn field<'a>(json: &'a str, key: &str) -> &'a str {
    let tag = format!("\"{key}\":");
    let start = json
        .find(&tag)
        .unwrap_or_else(|| panic!("{key} missing in {json}"))
        + tag.len();
    let rest = &json[start..];
    let end = if rest.starts_with('[') {
        rest.find(']').unwrap() + 1
    } else {
        rest.find([',', '}']).unwrap()
    };
    &rest[..end]
}

fn number(json: &str, key: &str) -> f64 {
    field(json, key)
        .parse()
        .unwrap_or_else(|e| panic!("{key} in {json}: {e}"))
}

fn train_dir() -> PathBuf {
    bench_data().join("train")
}

#[test]
fn decode_pipeline_reports_json() {
    let (ok, out, err) = bench(
        &train_dir(),
        &["--pipeline", "decode", "-j", "2", "--epochs", "2", "--json"],
    );
    assert!(ok, "{err}");
    let json = out.trim();
    assert!(json.starts_with('{') && json.ends_with('}'), "{out}");
    assert_eq!(field(json, "pipeline"), "\"decode\"");
    assert_eq!(number(json, "threads"), 2.0);
    assert_eq!(number(json, "epochs"), 2.0);
    assert_eq!(number(json, "images"), 24.0, "12 images, 2 epochs");
    assert_eq!(number(json, "bad_samples"), 0.0);
    assert!(number(json, "images_per_sec") > 0.0, "{json}");
    assert!(number(json, "mb_per_sec") > 0.0, "{json}");
    assert!(number(json, "cpu_ms_per_image") > 0.0, "{json}");
    assert!(number(json, "peak_rss_bytes") > 0.0, "{json}");
    let per_epoch = field(json, "epoch_rss_bytes");
    assert_eq!(per_epoch.split(',').count(), 2, "{per_epoch}");
}

#[test]
fn decode_pipeline_counts_bad_samples_and_goes_on() {
    let broken = bench_data().join("broken");
    let (ok, out, err) = bench(&broken, &["--pipeline", "decode", "-j", "2", "--json"]);
    assert!(ok, "{err}");
    assert_eq!(number(&out, "images"), 2.0, "{out}");
    assert_eq!(number(&out, "bad_samples"), 2.0, "{out}");
    let (ok, text, err) = bench(&broken, &["--pipeline", "decode", "-j", "1"]);
    assert!(ok, "{err}");
    assert!(
        text.starts_with("decode: 2 images") && text.contains("2 bad samples"),
        "{text}"
    );
}

#[test]
fn max_images_stops_after_whole_batches() {
    for pipeline in ["train", "decode"] {
        let (ok, out, err) = bench(
            &train_dir(),
            &[
                "--pipeline",
                pipeline,
                "-b",
                "4",
                "--epochs",
                "3",
                "--max-images",
                "6",
                "--crop-size",
                "32",
                "--json",
            ],
        );
        assert!(ok, "{err}");
        let images = number(&out, "images");
        match pipeline {
            // Two batches of 4: the batch that crosses the limit is finished.
            "train" => assert_eq!(images, 8.0, "{out}"),
            _ => assert_eq!(images, 6.0, "{out}"),
        }
        assert_eq!(number(&out, "epochs"), 1.0, "{out}");
    }
}

#[test]
fn bench_refuses_bad_settings() {
    let (ok, _, err) = bench(&train_dir(), &["--pipeline", "decode", "-j", "0"]);
    assert!(!ok && err.contains("threads"), "{err}");
    let (ok, _, err) = bench(&train_dir(), &["--pipeline", "decode", "-b", "0"]);
    assert!(!ok && err.contains("batch size"), "{err}");
    let (ok, _, err) = bench(&bench_data().join("missing"), &["--pipeline", "decode"]);
    assert!(!ok && err.contains("missing"), "{err}");
}

#[test]
fn jpeg_decoder_flag_is_checked() {
    let (ok, _, err) = bench(&train_dir(), &["--pipeline", "decode", "--jpeg", "libpng"]);
    assert!(
        !ok && err.contains("unknown JPEG decoder \"libpng\""),
        "{err}"
    );
    let (ok, out, err) = bench(
        &train_dir(),
        &["--pipeline", "train", "--jpeg", "turbo", "--json"],
    );
    if imgloader::decode::JpegBackend::Turbo.is_available() {
        assert!(ok, "{err}");
        assert_eq!(field(&out, "jpeg"), "\"libjpeg-turbo\"", "{out}");
    } else {
        assert!(
            !ok && err.contains("--jpeg libjpeg-turbo") && err.contains("turbojpeg"),
            "{err}"
        );
    }
}
