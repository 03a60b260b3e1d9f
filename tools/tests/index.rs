//! `imgtool index` on a changed tar says why it rebuilds.

use crate::util::{dataset, ok, s};

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
