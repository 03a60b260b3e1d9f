//! `imgtool verify`: odd and bad files by full name, counts, exit status.

use crate::util::{dataset, fails, ok, s};

#[test]
fn odd_and_bad_files_are_listed_by_name() {
    let t = tempfile::tempdir().unwrap();
    let class = t.path().join("odd").join("n01");
    std::fs::create_dir_all(&class).unwrap();
    for f in imgfixtures::odd::all() {
        std::fs::write(class.join(f.name), &f.bytes).unwrap();
    }
    let root = t.path().join("odd");
    let (stdout, err) = fails(&["verify", s(&root), "-j", "2"]);
    assert!(err.contains("3 bad file(s)"), "{err}");
    let path = |name: &str| class.join(name).display().to_string();
    for line in [
        format!("cmyk: {}", path("cmyk.jpg")),
        format!("ycck: {}", path("ycck.jpg")),
        format!("grayscale: {}", path("gray.jpg")),
        format!("png-named-jpeg: {}", path("png_as.JPEG")),
        format!("truncated: {}: ", path("truncated.jpg")),
        format!("empty: {}: ", path("empty.JPEG")),
        format!("not-an-image: {}: ", path("not_an_image.JPEG")),
    ] {
        assert!(stdout.contains(&line), "{line} missing in\n{stdout}");
    }
    for good in ["rgb.jpg", "444.jpg", "progressive.jpg", "restart.jpg"] {
        assert!(!stdout.contains(&path(good)), "{good} listed:\n{stdout}");
    }

    let out = crate::util::imgtool(&["verify", s(&root), "--json"]);
    assert!(!out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["images"], imgfixtures::odd::all().len());
    let bad: Vec<&str> = v["bad"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["kind"].as_str().unwrap())
        .collect();
    assert_eq!(bad, ["empty", "not-an-image", "truncated"]);
    assert_eq!(v["odd"].as_array().unwrap().len(), 4);
}

#[test]
fn good_data_passes_and_counts_are_checked() {
    let t = tempfile::tempdir().unwrap();
    let d = dataset(t.path(), 2);
    let stdout = ok(&["verify", s(&d.join("train.tar"))]);
    assert!(stdout.contains("decoded 6 images in 3 classes"), "{stdout}");
    assert!(
        !stdout.contains("bad files") && !stdout.contains("odd files"),
        "{stdout}"
    );
    let json = ok(&["verify", s(&d.join("val")), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        (v["ok"].as_bool(), v["images"].as_u64()),
        (Some(true), Some(6))
    );

    let (stdout, err) = fails(&["verify", s(&d.join("train.tar")), "--expect", "imagenet"]);
    assert!(stdout.contains("counts: MISMATCH"), "{stdout}");
    assert!(
        err.contains(
            "expected 1281167 or 50000 images in 1000 classes, found 6 images in 3 classes"
        ),
        "{err}"
    );
    let (_, err) = fails(&["verify", s(&t.path().join("missing"))]);
    assert!(err.contains("missing"), "{err}");
}

/// Issue item 10: `bench --json` printed `inf`/`NaN` when no image decoded, and `verify --json` printed
/// nothing when the dataset could not be opened. Every `--json` run prints one JSON object, whatever
/// happens; a failure is `{"ok": false, "error": …}` on stdout and a non-zero exit.
#[test]
fn issue_10_json_output_is_json_in_every_failure() {
    let t = tempfile::tempdir().unwrap();
    let broken = t.path().join("broken");
    std::fs::create_dir_all(broken.join("cls")).unwrap();
    let odd = imgfixtures::odd::odd_dir();
    for (name, fixture) in [("a.jpg", "truncated.jpg"), ("b.jpg", "not_an_image.JPEG")] {
        std::fs::copy(odd.join(fixture), broken.join("cls").join(name)).unwrap();
    }
    let empty = t.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let missing = t.path().join("missing");
    let (b, e, m) = (s(&broken), s(&empty), s(&missing));

    /// Runs imgtool; returns (exit ok, the one JSON object on stdout).
    fn json(args: &[&str]) -> (bool, serde_json::Value) {
        let out = crate::util::imgtool(args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        let v = serde_json::from_str(&stdout)
            .unwrap_or_else(|err| panic!("{args:?}: not JSON ({err}):\n{stdout}\n{stderr}"));
        (out.status.success(), v)
    }
    /// A failure: non-zero exit, `ok: false` and an error naming `culprit`.
    fn failed(args: &[&str], culprit: &str) {
        let (success, v) = json(args);
        assert!(!success, "{args:?} should fail: {v}");
        assert_eq!(v["ok"], false, "{args:?}: {v}");
        let error = v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{args:?}: {v}"));
        assert!(error.contains(culprit), "{args:?}: {error}");
    }

    for cmd in ["verify", "stats", "bench"] {
        failed(&[cmd, m, "--json"], m);
        failed(&[cmd, e, "--json"], e);
    }
    failed(&["stats", b, "--json", "--buckets", "0"], "--buckets");
    failed(&["bench", b, "--json", "-j", "0"], "threads");

    // Nothing decodes: a rate per image is null, not inf or NaN.
    let (success, v) = json(&["bench", b, "--json", "--pipeline", "decode", "-j", "1"]);
    assert!(success, "{v}");
    assert_eq!(
        (v["images"].as_u64(), v["bad_samples"].as_u64()),
        (Some(0), Some(2))
    );
    assert_eq!(v["images_per_sec"], 0.0, "{v}");
    assert!(v["cpu_ms_per_image"].is_null(), "{v}");
    // Nothing timed: every rate is null.
    let (success, v) = json(&[
        "bench",
        b,
        "--json",
        "--pipeline",
        "decode",
        "--epochs",
        "0",
    ]);
    assert!(success, "{v}");
    for key in [
        "images_per_sec",
        "images_per_sec_per_thread",
        "mb_per_sec",
        "cpu_ms_per_image",
    ] {
        assert!(v[key].is_null(), "{key}: {v}");
    }
    // The loader pipelines give up or go on; either way the output is JSON.
    for pipeline in ["train", "val"] {
        let (success, v) = json(&["bench", b, "--json", "--pipeline", pipeline, "-j", "1"]);
        assert!(success || v["error"].is_string(), "{v}");
    }
    // Bad files: the report, with ok false; no header read: the distributions are null.
    let (success, v) = json(&["verify", b, "--json"]);
    assert!(
        !success && v["ok"] == false && v["bad"].as_array().unwrap().len() == 2,
        "{v}"
    );
    let junk = t.path().join("junk");
    std::fs::create_dir_all(junk.join("cls")).unwrap();
    std::fs::copy(odd.join("not_an_image.JPEG"), junk.join("cls/x.jpg")).unwrap();
    let (success, v) = json(&["stats", s(&junk), "--json"]);
    assert!(success && v["width"].is_null(), "{v}");
    assert_eq!(v["unreadable_headers"].as_array().unwrap().len(), 1, "{v}");
}

/// Issue 12: libjpeg-turbo, the default decoder, took a damaged JPEG that PIL refuses for a good one (a
/// fatal error after a warning read as a warning). Now verify lists it as bad, and a file that libjpeg only
/// warns about (PIL decodes it too) as odd.
#[test]
fn damaged_jpegs_are_bad_or_odd_as_pil_sees_them() {
    use imgloader::decode::{DecodeError, DecodeOptions, Decoder, JpegBackend};
    let good = imgfixtures::odd::all()
        .into_iter()
        .find(|f| f.name == "rgb.jpg")
        .unwrap()
        .bytes;
    let mut d = Decoder::new(DecodeOptions {
        jpeg: JpegBackend::Turbo,
        ..DecodeOptions::default()
    });
    let variants = imgfixtures::corrupt::variants(&good, 4);
    let fatal = variants
        .iter()
        .find(|v| matches!(d.decode(&v.bytes), Err(DecodeError::Turbo { .. })))
        .expect("a variant libjpeg refuses");
    let warned = variants
        .iter()
        .find(|v| {
            d.decode_region(&v.bytes, imgloader::decode::whole)
                .is_ok_and(|r| r.warnings > 0)
        })
        .expect("a variant libjpeg decodes with a warning");
    let t = tempfile::tempdir().unwrap();
    let class = t.path().join("n01");
    std::fs::create_dir_all(&class).unwrap();
    std::fs::write(class.join("good.jpg"), &good).unwrap();
    std::fs::write(class.join("fatal.jpg"), &fatal.bytes).unwrap();
    std::fs::write(class.join("warned.jpg"), &warned.bytes).unwrap();
    let out = crate::util::imgtool(&["verify", s(t.path()), "--json"]);
    assert!(!out.status.success(), "a bad file must fail verify");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names = |key: &str| -> Vec<String> {
        v[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| format!("{} {}", f["kind"], f["name"]))
            .collect()
    };
    let (bad, odd) = (names("bad"), names("odd"));
    assert!(
        bad.len() == 1 && bad[0].contains("corrupt") && bad[0].contains("fatal.jpg"),
        "{bad:?} ({})",
        fatal.name
    );
    assert!(
        odd.len() == 1 && odd[0].contains("damaged-data") && odd[0].contains("warned.jpg"),
        "{odd:?} ({})",
        warned.name
    );
}
