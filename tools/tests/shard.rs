//! `imgtool shard`: round trip through the loader, determinism, resume after a kill, interop with Python.

use std::path::Path;
use std::time::{Duration, Instant};

use imgloader::{Decoder, OpenOptions, Source};

use imgfixtures::psnr;

use crate::util::{dataset, fails, ok, ref_python, run_py, s};

fn open(p: &Path) -> std::sync::Arc<dyn Source> {
    imgloader::open(p, &OpenOptions::default()).unwrap()
}

/// The shards and manifest of a shard folder, by name (indexes hold mtimes and are left out).
fn outputs(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_str().unwrap();
            n.ends_with(".tar") || n == "manifest.json"
        })
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p.file_name().unwrap().to_str().unwrap().to_owned(), bytes)
        })
        .collect();
    v.sort();
    v
}

#[test]
fn round_trip_keeps_labels_and_pixels() {
    let t = tempfile::tempdir().unwrap();
    let d = dataset(t.path(), 5);
    let src_tar = d.join("train.tar");
    let src = open(&src_tar);
    let mut dec = (Decoder::default(), Decoder::default());
    for (run, (extra, exact)) in [
        (&["--num-shards", "3", "--meta"][..], true),
        (&["--quality", "95", "--shard-size", "20KiB"][..], false),
        (&["--max-side", "48", "--num-shards", "2"][..], false),
        (&["--max-side", "48", "--chroma", "420"][..], false),
    ]
    .into_iter()
    .enumerate()
    {
        let out = t.path().join(format!("s{run}"));
        let args = [&["shard", s(&src_tar), "--out", s(&out)][..], extra].concat();
        let stdout = ok(&args);
        assert!(stdout.contains("15 samples in 3 classes"), "{stdout}");
        let back = open(&out);
        assert_eq!(back.len(), src.len());
        assert_eq!(back.classes(), src.classes());
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for i in 0..src.len() {
            // Keys start with the source index, so the shards list the samples in source order.
            assert_eq!(back.label(i), src.label(i), "{}", back.name(i));
            let (orig, got) = (
                src.bytes(i, &mut a).unwrap(),
                back.bytes(i, &mut b).unwrap(),
            );
            if exact {
                assert_eq!(orig, got);
                continue;
            }
            let o = dec.0.decode(orig).unwrap();
            let g = dec.1.decode(got).unwrap();
            if extra.contains(&"--max-side") {
                assert_eq!(o.width.max(o.height).min(48), g.width.max(g.height));
            } else {
                assert_eq!((o.width, o.height), (g.width, g.height));
                let db = psnr(o.pixels, g.pixels);
                assert!(db >= 35.0, "{}: {db:.1} dB", back.name(i));
            }
        }
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
        assert_eq!(manifest["samples"], 15);
        assert_eq!(manifest["class_counts"], serde_json::json!([5, 5, 5]));
    }
    // The folder and the tar of the same images give identical shards.
    let (x, y) = (t.path().join("from-tar"), t.path().join("from-folder"));
    ok(&[
        "shard",
        s(&src_tar),
        "--out",
        s(&x),
        "--num-shards",
        "2",
        "--seed",
        "9",
    ]);
    ok(&[
        "shard",
        s(&d.join("train")),
        "--out",
        s(&y),
        "--num-shards",
        "2",
        "--seed",
        "9",
    ]);
    assert_eq!(outputs(&x), outputs(&y));
}

#[test]
fn a_killed_run_resumes_to_identical_shards() {
    let t = tempfile::tempdir().unwrap();
    let d = dataset(t.path(), 8);
    let src = d.join("train.tar");
    let common = [
        "--shard-size",
        "12KiB",
        "--max-side",
        "80",
        "--quality",
        "85",
        "--seed",
        "3",
    ];
    let whole = t.path().join("whole");
    ok(&[&["shard", s(&src), "--out", s(&whole)][..], &common].concat());
    let shards = outputs(&whole).len() - 1;
    assert!(shards >= 4, "{shards} shards");

    let part = t.path().join("part");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_imgtool"))
        .args([&["shard", s(&src), "--out", s(&part)][..], &common].concat())
        .args(["--pause-per-sample-ms", "40", "-j", "2"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !part.join("shard-000000.tar").exists() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no shard appeared"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before the kill"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(60)); // into the next shard
    child.kill().unwrap();
    child.wait().unwrap();
    let left = outputs(&part);
    assert!(
        !left.is_empty() && left.len() < shards && !part.join("manifest.json").exists(),
        "{:?}",
        left.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    let stdout = ok(&[&["shard", s(&src), "--out", s(&part)][..], &common].concat());
    assert!(stdout.contains("resumed: kept"), "{stdout}");
    assert_eq!(outputs(&part), outputs(&whole));
    assert!(
        std::fs::read_dir(&part).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_str()
            .unwrap()
            .ends_with(".tmp"))
    );
    // Another seed into the same folder is refused, and leaves it alone.
    let (_, err) = fails(
        &[
            &["shard", s(&src), "--out", s(&part)][..],
            &common[..6],
            &["--seed", "4"],
        ]
        .concat(),
    );
    assert!(err.contains("other settings"), "{err}");
    assert_eq!(outputs(&part), outputs(&whole));
}

#[test]
fn help_and_bad_arguments() {
    let help = ok(&["shard", "--help"]);
    assert!(help.contains("Example: imgtool shard"), "{help}");
    for cmd in ["verify", "stats", "index"] {
        let help = ok(&[cmd, "--help"]);
        assert!(help.contains(&format!("Example: imgtool {cmd}")), "{help}");
    }
    let t = tempfile::tempdir().unwrap();
    let d = dataset(t.path(), 1);
    let src = d.join("val.tar");
    let out = t.path().join("o");
    let o = s(&out);
    let (_, err) = fails(&[
        "shard",
        s(&src),
        "--out",
        o,
        "--num-shards",
        "2",
        "--shard-size",
        "1G",
    ]);
    assert!(err.contains("cannot be used with"), "{err}");
    let (_, err) = fails(&["shard", s(&src), "--out", o, "--shard-size", "12XB"]);
    assert!(err.contains("unknown unit"), "{err}");
    let (_, err) = fails(&["shard", s(&src), "--out", o, "--quality", "0"]);
    assert!(err.contains("quality"), "{err}");
    let (_, err) = fails(&["shard", s(&src), "--out", o, "--chroma", "411"]);
    assert!(
        err.contains("--chroma") && err.contains("auto, 444 or 420"),
        "{err}"
    );
    let (_, err) = fails(&["shard", s(&src), "--out", o, "--num-shards", "7"]);
    assert!(err.contains("7 shards for 6 samples"), "{err}");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("precious.txt"), b"keep me").unwrap();
    let (_, err) = fails(&["shard", s(&src), "--out", o]);
    assert!(err.contains("not empty") && err.contains(o), "{err}");
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 1);
}

#[test]
fn python_tarfile_reads_our_shards_and_we_read_theirs() {
    let Some(py) = ref_python() else { return };
    let t = tempfile::tempdir().unwrap();
    let d = dataset(t.path(), 4);
    let out = t.path().join("shards");
    ok(&[
        "shard",
        s(&d.join("train.tar")),
        "--out",
        s(&out),
        "--num-shards",
        "3",
        "--meta",
    ]);
    // Ours, read the way webdataset groups members: key = path up to the first dot of the base name.
    let seen: serde_json::Value =
        serde_json::from_str(&run_py(&py, "wds_read.py", &[s(&out)])).unwrap();
    let src = open(&d.join("train.tar"));
    let seen = seen.as_object().unwrap();
    assert_eq!(seen.len(), src.len());
    for (key, v) in seen {
        let index: usize = key[..8].parse().unwrap();
        assert_eq!(
            v["exts"],
            serde_json::json!(["cls", "jpg", "json"]),
            "{key}"
        );
        assert_eq!(v["cls"], src.label(index), "{key}");
        assert_eq!(
            v["name"].as_str().unwrap(),
            src.name(index).rsplit(" › ").next().unwrap()
        );
    }
    // Theirs: a webdataset-layout tar written by Python's tarfile, keys with folders, extra members.
    let theirs = t.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    run_py(
        &py,
        "wds_write.py",
        &[s(&d.join("train")), s(&theirs.join("their-000.tar"))],
    );
    let back = open(&theirs);
    assert_eq!(back.len(), src.len());
    let mut a = Vec::new();
    let mut b = Vec::new();
    for i in 0..src.len() {
        assert_eq!(back.label(i), src.label(i));
        assert_eq!(
            back.bytes(i, &mut a).unwrap(),
            src.bytes(i, &mut b).unwrap()
        );
    }
    let stdout = ok(&["verify", s(&theirs)]);
    assert!(
        stdout.contains("decoded 12 images in 3 classes"),
        "{stdout}"
    );
}

/// Issue item 7: copying (no re-encode) used to check headers only, so a JPEG cut short and a
/// "decompression bomb" (a tiny file whose header declares 60000x60000) went into the shards.
#[test]
fn issue_7_copy_mode_refuses_truncated_and_bomb_like_a_decode() {
    let t = tempfile::tempdir().unwrap();
    let class = t.path().join("src/n01");
    std::fs::create_dir_all(&class).unwrap();
    let odd = imgfixtures::odd::odd_dir();
    let good = std::fs::read(odd.join("rgb.jpg")).unwrap();
    std::fs::write(class.join("good.jpg"), &good).unwrap();
    std::fs::copy(odd.join("truncated.jpg"), class.join("cut.jpg")).unwrap();
    let mut bomb = good.clone();
    let sof = bomb.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    bomb[sof + 5..sof + 7].copy_from_slice(&60000u16.to_be_bytes());
    bomb[sof + 7..sof + 9].copy_from_slice(&60000u16.to_be_bytes());
    std::fs::write(class.join("bomb.jpg"), &bomb).unwrap();
    let src = t.path().join("src");

    let (_, err) = fails(&["shard", s(&src), "--out", s(&t.path().join("strict"))]);
    assert!(
        err.contains("bomb.jpg") || err.contains("cut.jpg"),
        "no culprit named: {err}"
    );
    assert!(
        err.contains("over the limit") || err.contains("truncated"),
        "{err}"
    );

    let out = t.path().join("skip");
    let stdout = ok(&["shard", s(&src), "--out", s(&out), "--skip-bad"]);
    assert!(stdout.contains("left out 2 bad sample(s)"), "{stdout}");
    assert!(
        stdout.contains("bomb.jpg") && stdout.contains("image is 60000x60000"),
        "{stdout}"
    );
    assert!(
        stdout.contains("cut.jpg") && stdout.contains("truncated JPEG"),
        "{stdout}"
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["samples"], 1, "{manifest}");
    assert_eq!(manifest["bad"].as_array().unwrap().len(), 2, "{manifest}");
    let back = open(&out);
    assert_eq!(back.len(), 1);
    let mut scratch = Vec::new();
    assert_eq!(back.bytes(0, &mut scratch).unwrap(), &good[..]);
}
