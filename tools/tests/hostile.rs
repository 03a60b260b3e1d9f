//! Hostile input to `imgtool shard` (and the readers under it): clear errors, no panic, nothing written
//! outside --out.

use std::path::{Path, PathBuf};

use crate::util::{dataset, fails, imgtool_within, mkfifo, ok, s, tree};

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

// ---------------------------------------------------------------------------------------------------------
// Regression tests of the tar-robustness issue (items 2, 3 and 6), through the command line.

/// Every subcommand that reads a dataset, on `src` (with `--out` under `t` where one is needed).
fn readers(src: &str, out: &str) -> Vec<Vec<String>> {
    let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    vec![
        v(&["index", src]),
        v(&["verify", src]),
        v(&["stats", src]),
        v(&["shard", src, "--out", out]),
        v(&["bench", src, "--max-images", "8", "-b", "4"]),
    ]
}

/// Issue item 6: a FIFO named train.tar hung every subcommand (opening a FIFO waits for a writer). Each
/// now refuses it at once, naming it.
#[test]
fn issue_fifo_named_like_a_tar_is_refused_by_every_subcommand() {
    let t = tempfile::tempdir().unwrap();
    let fifo = t.path().join("train.tar");
    mkfifo(&fifo);
    let out = t.path().join("out");
    for args in readers(s(&fifo), s(&out)) {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = imgtool_within(&args, 10);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(!run.status.success(), "{args:?} succeeded");
        assert!(
            stderr.contains("train.tar") && stderr.contains("FIFO") && !stderr.contains("panicked"),
            "{args:?}: {stderr}"
        );
    }
}

/// Issue item 6: a FIFO among the images of a class folder is skipped and counted, never read.
#[test]
fn issue_fifo_in_a_class_folder_is_skipped() {
    let t = tempfile::tempdir().unwrap();
    let d = dataset(&t.path().join("d"), 2);
    let train = d.join("train");
    let class = std::fs::read_dir(&train)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .unwrap();
    mkfifo(&class.join("zz-pipe.JPEG"));
    let out = t.path().join("out");
    for args in readers(s(&train), s(&out)) {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = imgtool_within(&args, 60);
        assert!(
            run.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        if args[0] == "index" {
            let stdout = String::from_utf8_lossy(&run.stdout);
            assert!(stdout.contains("1 device or fifo"), "{stdout}");
        }
    }
}

/// Issue item 2: a tar truncated while `imgtool verify` reads it killed it with SIGBUS (its members were
/// read through a memory map). Now the members past the cut are bad files naming the archive and the
/// member; a tar cut before verify starts has a stale index and fails at the rescan, naming the archive.
#[test]
fn issue_tar_truncated_during_verify_is_an_error_not_sigbus() {
    use std::os::unix::process::ExitStatusExt;
    let t = tempfile::tempdir().unwrap();
    let cfg = imgfixtures::SynthConfig {
        classes: 3,
        train_per_class: 100,
        val_per_class: 1,
        min_side: 300,
        max_side: 500,
        ..Default::default()
    };
    imgfixtures::write_dataset(&cfg, t.path()).unwrap();
    let tar = t.path().join("train.tar");
    let len = std::fs::metadata(&tar).unwrap().len();
    let _ = ok(&["index", s(&tar)]);
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_imgtool"))
        .args(["verify", s(&tar), "-j", "1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Let it open the index and start decoding, then cut the tar to a third.
    std::thread::sleep(std::time::Duration::from_millis(150));
    std::fs::File::options()
        .write(true)
        .open(&tar)
        .unwrap()
        .set_len(len / 3)
        .unwrap();
    let run = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(run.status.signal(), None, "killed by a signal: {text}");
    assert!(!run.status.success(), "{text}");
    assert!(
        text.contains("train.tar") && !text.contains("panicked"),
        "{text}"
    );
    assert!(
        text.contains("unreadable") && text.contains("cannot read member")
            || text.contains("truncated"),
        "{text}"
    );

    // Cut before it starts: the index is stale, the rescan finds the cut.
    let (_, err) = fails(&["verify", s(&tar)]);
    assert!(
        err.contains("train.tar") && err.contains("truncated"),
        "{err}"
    );
}

/// A tar of the files under `dir` (relative names, fixed metadata), in the order given.
fn tar_of(dir: &Path, files: &[PathBuf], dest: &Path) {
    let mut b = tar::Builder::new(Vec::new());
    for f in files {
        let data = std::fs::read(f).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        b.append_data(&mut h, f.strip_prefix(dir).unwrap(), &data[..])
            .unwrap();
    }
    std::fs::write(dest, b.into_inner().unwrap()).unwrap();
}

/// Issue item 3: the sidecar of another tar with the same size and mtime was trusted, and verify then
/// read the wrong bytes and reported false bad files. It is detected and rebuilt.
#[test]
fn issue_foreign_sidecar_with_same_size_and_mtime_is_rebuilt() {
    let t = tempfile::tempdir().unwrap();
    let d = dataset(&t.path().join("d"), 4);
    let train = d.join("train");
    let mut files: Vec<PathBuf> = tree(&train).iter().map(|f| train.join(f)).collect();
    let (a, b) = (t.path().join("a.tar"), t.path().join("b.tar"));
    tar_of(&train, &files, &a);
    files.reverse();
    tar_of(&train, &files, &b);
    let when = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
    for p in [&a, &b] {
        let f = std::fs::File::options().write(true).open(p).unwrap();
        f.set_modified(when).unwrap();
    }
    assert_eq!(
        std::fs::metadata(&a).unwrap().len(),
        std::fs::metadata(&b).unwrap().len()
    );
    let _ = ok(&["index", s(&a)]);
    std::fs::copy(t.path().join("a.tar.idx"), t.path().join("b.tar.idx")).unwrap();
    let verified = ok(&["verify", s(&b)]);
    assert!(!verified.contains("bad files"), "{verified}");
    // verify rebuilt it: b's own index is now used as it is.
    let again = ok(&["index", s(&b)]);
    assert!(again.contains("nothing rescanned"), "{again}");
    // Copied again, `imgtool index` says why it does not use it.
    std::fs::copy(t.path().join("a.tar.idx"), t.path().join("b.tar.idx")).unwrap();
    let noted = ok(&["index", s(&b)]);
    assert!(noted.contains("another tar"), "{noted}");
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
