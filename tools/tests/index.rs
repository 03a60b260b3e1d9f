//! `imgtool index` on a changed tar says why it rebuilds; labels given once are kept in the index.

use crate::util::{dataset, fails, ok, s};

#[test]
fn a_changed_tar_is_reindexed_with_the_reason() {
    let t = tempfile::tempdir().unwrap();
    let d = dataset(t.path(), 2);
    let tar = d.join("train.tar");
    let first = ok(&["index", s(&tar)]);
    assert!(first.contains("1 index(es) built"), "{first}");
    let second = ok(&["index", s(&tar)]);
    assert!(second.contains("nothing rescanned"), "{second}");

    // Touched: same bytes, new mtime.
    let f = std::fs::File::options().write(true).open(&tar).unwrap();
    f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5))
        .unwrap();
    drop(f);
    let third = ok(&["index", s(&tar)]);
    assert!(third.contains("not used: stale"), "{third}");
    assert!(
        third.contains("scanned") && third.contains("1 index(es) built"),
        "{third}"
    );
    assert!(ok(&["index", s(&tar)]).contains("nothing rescanned"));

    // Damaged index: the checksum says so.
    let idx = d.join("train.tar.idx");
    let mut bytes = std::fs::read(&idx).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x20;
    std::fs::write(&idx, &bytes).unwrap();
    let fourth = ok(&["index", s(&tar)]);
    assert!(fourth.contains("checksum mismatch"), "{fourth}");
}

#[test]
fn issue_16_labels_given_once_are_kept_in_the_index() {
    let t = tempfile::tempdir().unwrap();
    let cfg = imgfixtures::SynthConfig {
        classes: 3,
        train_per_class: 1,
        val_per_class: 2,
        min_side: 64,
        max_side: 96,
        ..Default::default()
    };
    imgfixtures::write_download(&cfg, imgfixtures::Download::Official, t.path()).unwrap();
    let val = t.path().join("ILSVRC2012_img_val.tar");
    let csv = t.path().join("LOC_val_solution.csv");
    let first = ok(&["index", s(&val), "--labels", s(&csv)]);
    assert!(first.contains("FlatTar, 6 images in 3 classes"), "{first}");
    assert!(first.contains("(read, and kept in the index)"), "{first}");
    // Later opens need no labels file: index, verify.
    let second = ok(&["index", s(&val)]);
    assert!(
        second.contains("FlatTar, 6 images in 3 classes")
            && second.contains("(labels from the index)"),
        "{second}"
    );
    assert!(second.contains("nothing rescanned"), "{second}");
    ok(&["verify", s(&val)]);
    // A changed labels file makes them stale: read again, without rescanning the tar.
    let text = std::fs::read_to_string(&csv).unwrap();
    std::fs::write(
        &csv,
        text.replace(
            "ILSVRC2012_val_00000001,n00000000",
            "ILSVRC2012_val_00000001,n00000002",
        ),
    )
    .unwrap();
    let third = ok(&["index", s(&val)]);
    assert!(
        third.contains("read again") && third.contains("nothing rescanned"),
        "{third}"
    );
    // A broken one is an error naming it and the line, not the old labels.
    std::fs::write(&csv, "ImageId,PredictionString\nILSVRC2012_val_00000001\n").unwrap();
    let (_, e) = fails(&["index", s(&val)]);
    assert!(e.contains("LOC_val_solution.csv:2"), "{e}");
}
