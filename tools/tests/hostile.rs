//! Hostile input to `imgtool shard` (and the readers under it): clear errors, no panic, nothing written
//! outside --out.

use std::path::Path;

use crate::util::{dataset, fails, ok, s, tree};

/// A tar header for `name` with `size`, of type `kind`, with a valid checksum.
fn header(name: &[u8], size: u64, kind: tar::EntryType, link: Option<&str>) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.set_size(size);
    h.set_mode(0o644);
    h.set_entry_type(kind);
    if let Some(l) = link {
        h.set_link_name(l).unwrap();
    }
    h.set_cksum();
    h
}

fn append(out: &mut Vec<u8>, name: &str, data: &[u8], kind: tar::EntryType, link: Option<&str>) {
    let h = header(name.as_bytes(), data.len() as u64, kind, link);
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

/// Runs shard on `src` expecting failure; checks that nothing appeared in `t` but what was there.
fn refused(t: &Path, src: &Path, wants: &[&str]) {
    let before = tree(t);
    let out = t.join("out");
    let (_, err) = fails(&["shard", s(src), "--out", s(&out)]);
    for w in wants {
        assert!(err.contains(w), "{w} missing in {err}");
    }
    assert_eq!(tree(t), before, "files appeared");
}

#[test]
fn traversal_links_and_absolute_names_never_leave_out() {
    let t = tempfile::tempdir().unwrap();
    let jpeg = imgfixtures::odd::all()
        .into_iter()
        .find(|f| f.name == "rgb.jpg")
        .unwrap()
        .bytes;
    let mut tar = Vec::new();
    use tar::EntryType::{Link, Regular, Symlink};
    append(&mut tar, "c1/ok.jpg", &jpeg, Regular, None);
    append(&mut tar, "../evil.jpg", &jpeg, Regular, None);
    append(&mut tar, "c1/../../evil2.jpg", &jpeg, Regular, None);
    append(&mut tar, "/tmp/evil3.jpg", &jpeg, Regular, None);
    append(&mut tar, "c1/link.jpg", b"", Symlink, Some("/etc/passwd"));
    append(&mut tar, "c1/hard.jpg", b"", Link, Some("../../etc/passwd"));
    append(&mut tar, "c2/..hidden..jpg", &jpeg, Regular, None);
    append(&mut tar, "c2/a b;$(rm -rf).jpg", &jpeg, Regular, None);
    tar.extend_from_slice(&[0; 1024]);
    let src = t.path().join("hostile.tar");
    std::fs::write(&src, &tar).unwrap();
    let out = t.path().join("out");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_imgtool"))
        .args(["shard", s(&src), "--out", s(&out), "--meta"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    // The symlink and the hard link are both links.
    for why in [
        "2 link (rejected)",
        "1 absolute path (rejected)",
        "2 `..` in path (rejected)",
    ] {
        assert!(stderr.contains(why), "{why} missing in {stderr}");
    }
    let files = tree(t.path());
    assert_eq!(
        files,
        [
            "hostile.tar",
            "out/.shard-progress.json",
            "out/manifest.json",
            "out/shard-000000.tar",
            "out/shard-000000.tar.idx",
        ]
    );
    let back = imgloader::open(&out, &imgloader::OpenOptions::default()).unwrap();
    assert_eq!(back.len(), 2);
    let names: Vec<String> = (0..2).map(|i| back.name(i)).collect();
    assert!(names[0].ends_with("00000000_ok.jpg"), "{names:?}");
    assert!(
        names[1].ends_with("00000001_a_b___rm_-rf_.jpg"),
        "{names:?}"
    );
    let _ = ok(&["verify", s(&out)]);
}

#[test]
fn broken_archives_are_refused_cleanly() {
    let t = tempfile::tempdir().unwrap();
    let d = dataset(&t.path().join("d"), 2);
    let good = std::fs::read(d.join("train.tar")).unwrap();

    let truncated = t.path().join("truncated.tar");
    std::fs::write(&truncated, &good[..good.len() / 2 + 100]).unwrap();
    refused(t.path(), &truncated, &["truncated.tar", "truncated?"]);

    // A member claiming more data than the archive holds.
    let mut lying = Vec::new();
    append(
        &mut lying,
        "c/x.jpg",
        b"0123",
        tar::EntryType::Regular,
        None,
    );
    let h = header(b"c/x.jpg", 1 << 40, tar::EntryType::Regular, None);
    lying[..512].copy_from_slice(h.as_bytes());
    let lying_path = t.path().join("lying.tar");
    std::fs::write(&lying_path, &lying).unwrap();
    refused(
        t.path(),
        &lying_path,
        &["lying.tar", "claims 1099511627776 bytes"],
    );

    let gz = t.path().join("train.tar.gz");
    std::fs::write(&gz, [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 1, 2, 3]).unwrap();
    refused(t.path(), &gz, &["train.tar.gz", "gzip", "gzip -dc"]);

    let empty_tar = t.path().join("empty.tar");
    std::fs::write(&empty_tar, [0u8; 10240]).unwrap();
    refused(t.path(), &empty_tar, &["empty.tar", "no images"]);

    let zero = t.path().join("zero.tar");
    std::fs::write(&zero, b"").unwrap();
    refused(t.path(), &zero, &["zero.tar", "empty file"]);

    let text = t.path().join("notes.tar");
    std::fs::write(&text, "just some text, not a tar at all\n".repeat(40)).unwrap();
    refused(t.path(), &text, &["notes.tar"]);

    // A hostile archive inside a tar of tars.
    let mut outer = Vec::new();
    append(&mut outer, "n01.tar", &lying, tar::EntryType::Regular, None);
    outer.extend_from_slice(&[0; 1024]);
    let outer_path = t.path().join("outer.tar");
    std::fs::write(&outer_path, &outer).unwrap();
    refused(t.path(), &outer_path, &["outer.tar", "n01.tar"]);
}

/// Fails unless `text` is free of raw control characters (line ends aside) and of the forged line.
fn assert_clean(what: &str, text: &str) {
    for c in text.chars() {
        assert!(c == '\n' || !c.is_control(), "{what}: raw {c:?} in\n{text}");
    }
    assert!(
        !text.lines().any(|l| l.starts_with("0 bad")),
        "{what}: forged line in\n{text}"
    );
}

/// Issue item 8: member names with a newline and terminal escapes were printed raw, so a name could
/// forge an "all good" line or clear the screen. Every human output escapes them; JSON keeps them exact.
#[test]
fn issue_8_names_with_control_characters_are_escaped_in_text_output() {
    let t = tempfile::tempdir().unwrap();
    let odd = imgfixtures::odd::odd_dir();
    let jpeg = std::fs::read(odd.join("rgb.jpg")).unwrap();
    let junk = std::fs::read(odd.join("not_an_image.JPEG")).unwrap();
    let evil = "n01/a\n0 bad, 100 good\x1b[2J.jpg";
    let evil_class = "n0\x1b]2;pwned\x07";
    let mut tar = Vec::new();
    use tar::EntryType::Regular;
    append(&mut tar, "n01/good.jpg", &jpeg, Regular, None);
    append(&mut tar, evil, &junk, Regular, None);
    append(
        &mut tar,
        &format!("{evil_class}/b.jpg"),
        &jpeg,
        Regular,
        None,
    );
    tar.extend_from_slice(&[0; 1024]);
    // The dataset's own path is untrusted text too.
    let src = t.path().join("data\x1b[31m.tar");
    std::fs::write(&src, &tar).unwrap();
    let escaped = "a\\n0 bad, 100 good\\u{1b}[2J.jpg";

    let (stdout, stderr) = fails(&["verify", s(&src), "-j", "1"]);
    assert_clean("verify stdout", &stdout);
    assert_clean("verify stderr", &stderr);
    assert!(stdout.contains(escaped), "{stdout}");
    assert!(stdout.contains("data\\u{1b}[31m.tar"), "{stdout}");
    let out = crate::util::imgtool(&["verify", s(&src), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let name = v["bad"][0]["name"].as_str().unwrap();
    assert!(
        name.ends_with(&evil[4..]),
        "JSON keeps the exact name: {name:?}"
    );

    let stats = ok(&["stats", s(&src), "-j", "1"]);
    assert_clean("stats", &stats);
    assert!(
        stats.contains(escaped) && stats.contains("n0\\u{1b}]2;pwned\\u{7}"),
        "{stats}"
    );

    let index = crate::util::imgtool(&["index", s(&src)]);
    assert!(index.status.success());
    assert_clean("index", &String::from_utf8_lossy(&index.stdout));
    assert_clean("index stderr", &String::from_utf8_lossy(&index.stderr));

    let out = t.path().join("out");
    let run = crate::util::imgtool(&["shard", s(&src), "--out", s(&out), "--skip-bad"]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr),
    );
    assert!(run.status.success(), "{stderr}");
    assert_clean("shard stdout", &stdout);
    assert_clean("shard stderr", &stderr);
    assert!(stdout.contains(escaped), "{stdout}");

    // Errors too: the message names the file.
    let (_, stderr) = fails(&["shard", s(&src), "--out", s(&t.path().join("strict"))]);
    assert_clean("shard error", &stderr);
    assert!(stderr.contains(escaped), "{stderr}");
}
